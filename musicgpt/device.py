"""Which torch device to run on: `pick_device("auto")` prefers CUDA, then Apple's MPS, then CPU."""

from __future__ import annotations

import torch


def pick_device(name: str) -> torch.device:
    """The torch device called `name`; "auto" picks the best one this machine has.

    ValueError (one line) for a name torch does not know or a device this machine lacks.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _has_mps():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from exc
    missing = _missing(device)
    if missing:
        raise ValueError(f"device {name!r}: {missing}; use --device cpu or auto")
    return device


def _has_mps() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def _missing(device: torch.device) -> str | None:
    """Why this machine cannot run on `device` (None if it can, or if torch cannot tell)."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device here (torch.cuda.is_available() is False)"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"only {torch.cuda.device_count()} CUDA device(s) here"
    elif device.type == "mps":
        if not _has_mps():
            return "no Apple MPS device here"
    elif device.type != "cpu":
        backend = getattr(torch, device.type, None)  # torch.xpu and the like
        available = getattr(backend, "is_available", None)
        if available is not None and not available():
            return f"no {device.type} device here"
    return None
