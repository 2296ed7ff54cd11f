"""Which torch device to run on: `pick_device("auto")` prefers CUDA, then Apple's MPS, then CPU."""

from __future__ import annotations

import torch


def pick_device(name: str) -> torch.device:
    """The torch device called `name`; "auto" picks the best one this machine has."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)
