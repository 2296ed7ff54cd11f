"""Checks of command-line values, each failing as a one-line `UserError` before any work starts.

The CLI turns a UserError into `musicgpt: error: ...` on stderr and exit status 2. Every check
says which flag is wrong and what it wants.
"""

from __future__ import annotations

import math
from pathlib import Path

MAX_GENERATE_SECONDS = 3 * 3600.0  # what one `generate` may ask for: the reader's piece limit
MAX_SEED = 2**63 - 1


class UserError(Exception):
    """A problem with the user's input, reported as one line."""


def require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def seconds(flag: str, value: float | None, *, most: float = MAX_GENERATE_SECONDS,
            zero_ok: bool = False) -> None:
    """A length in seconds: a finite number > 0 (>= 0 with `zero_ok`) and at most `most`."""
    if value is None:
        return
    low_ok = value >= 0 if zero_ok else value > 0
    require(math.isfinite(value) and low_ok and value <= most,
            f"{flag} wants seconds {'>= 0' if zero_ok else '> 0'} and at most {most:g}, "
            f"got {value:g}")


def at_least(flag: str, value: int | None, low: int = 1) -> None:
    require(value is None or value >= low, f"{flag} must be >= {low}, got {value}")


def seed(value: int | None) -> None:
    require(value is None or 0 <= value <= MAX_SEED,
            f"--seed must be 0..{MAX_SEED} (2**63 - 1), got {value}")


def out_file(flag: str, value: str) -> Path:
    """An output file name: not empty, not a folder, in a folder (or where one can be made)."""
    require(bool(value.strip()), f"{flag} is empty: give a file name such as piece.mid")
    path = Path(value)
    require(not path.is_dir(), f"{flag} {value} is a folder; give a file name such as "
                               f"{path / 'piece.mid'}")
    blocking = next((p for p in path.parents if p.exists()), None)
    require(blocking is None or blocking.is_dir(),
            f"{flag} {value}: {blocking} is a file, not a folder")
    return path


def out_folder(flag: str, value: str) -> Path:
    """An output folder: not empty, and not a file (nor below one)."""
    require(bool(value.strip()), f"{flag} is empty: give a folder")
    path = Path(value)
    blocking = next((p for p in (path, *path.parents) if p.exists()), None)
    require(blocking is None or blocking.is_dir(),
            f"{flag} {value}: {blocking} is a file, not a folder")
    return path


def not_a_checkpoint(flag: str, path: Path, hint: str) -> None:
    """Refuse a checkpoint folder where another kind of folder belongs."""
    from .checkpoint import has_weights

    require(not (path / "config.json").is_file() or not has_weights(path),
            f"{flag} {path} is a checkpoint folder; {hint}")


def device(name: str):
    """The torch device `name` names, if this machine has it."""
    from .device import pick_device

    try:
        return pick_device(name)
    except ValueError as exc:
        raise UserError(f"--device: {exc}") from exc


def sampling_memory(num_samples: int, config, torch_device) -> None:
    """Refuse a batch whose KV cache, logits and attention scores cannot fit in free memory."""
    per_sample = _sampling_bytes_per_sample(config)
    free = _free_memory(torch_device)
    need = num_samples * per_sample
    require(free is None or need <= free,
            f"--num-samples {num_samples:,} would need about {_size(need)} of memory "
            f"({_size(per_sample)} per sample) and {_size(free or 0)} is free; ask for fewer")


def _sampling_bytes_per_sample(config) -> int:
    """fp32 bytes one sample holds while sampling: its KV cache, a window of logits, and one
    layer's attention scores over the window."""
    block = config.block_size
    kv = 2 * config.n_layer * block * config.n_embd
    return 4 * (kv + block * config.vocab_size + config.n_head * block * block)


def _free_memory(torch_device) -> int | None:
    """Free bytes on the device (GPU memory for CUDA, else available RAM); None if unknown."""
    if getattr(torch_device, "type", "cpu") == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(torch_device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} PB"
