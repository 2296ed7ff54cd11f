"""Checks of command-line values, each failing as a one-line `UserError` before any work starts.

The CLI turns a UserError into `musicgpt: error: ...` on stderr and exit status 2. Every check
says which flag is wrong and what it wants.
"""

from __future__ import annotations

import math
import os
import stat
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


MIDI_MAGIC = b"MThd"  # what every Standard MIDI File starts with


def out_midi_files(flag: str, paths: list[Path], inputs: tuple[str | None, ...] = ()) -> list[Path]:
    """The files a command will write as MIDI, each a regular file or new, refused (one line,
    nothing changed) when it is anything else: a device, a FIFO or a folder; an existing file
    that is not MIDI (weights, a WAV, a text); or one of the command's `inputs`. A symlink is
    followed: its target is what gets written (returned in its place)."""
    return [_out_midi_file(flag, path, inputs) for path in paths]


def _out_midi_file(flag: str, path: Path, inputs: tuple[str | None, ...]) -> Path:
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if os.path.lexists(target):
        kind = _kind(target)
        require(kind == "file", f"{flag} {path} is {kind}, not a regular file; give a file "
                                f"name such as piece.mid")
        require(_starts_with(target, MIDI_MAGIC),
                f"{flag} {path} exists and is not a MIDI file; it is left as it is (give "
                f"another name, or remove it first)")
        for given in filter(None, inputs):
            require(not _same_file(target, Path(given)),
                    f"{flag} {path} is also this command's input {given}; give another name")
    return target


def _kind(path: Path) -> str:
    """'file', or what else `path` is, in words."""
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file"


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(len(magic))
    except OSError:
        return False
    return head == magic or not head  # an empty file holds nothing to lose


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def not_same_folder(flag: str, out: Path, other_flag: str, other: str | None) -> None:
    """Refuse an output folder that is an input folder: its files (a manifest.json, say) would
    be replaced."""
    require(other is None or not _same_file(out, Path(other)),
            f"{flag} {out} is the same folder as {other_flag} {other}; give another folder")


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
    from .checkpoint_paths import has_weights

    require(not (path / "config.json").is_file() or not has_weights(path),
            f"{flag} {path} is a checkpoint folder; {hint}")


def device(name: str):
    """The torch device `name` names, if this machine has it."""
    from .device import pick_device

    try:
        return pick_device(name)
    except ValueError as exc:
        raise UserError(f"--device: {exc}") from exc


def sampling_memory(num_samples: int, config, torch_device, guided: bool = False) -> None:
    """Refuse a batch whose KV cache, logits and attention scores cannot fit in the memory this
    process can get; style guidance decodes every row twice (two caches, one set of weights)."""
    per_sample = _sampling_bytes_per_sample(config) * (2 if guided else 1)
    need = num_samples * per_sample
    free = free_memory(torch_device)
    require(free is None or need <= free,
            f"--num-samples {num_samples:,} would need about {_size(need)} of memory "
            f"({_size(per_sample)} per sample{', style guidance counted' if guided else ''}) "
            f"and {_size(free or 0)} is free; ask for fewer")


def training_memory(config, torch_device) -> None:
    """Refuse a model and batch that training cannot fit in the memory this process can get:
    weights, gradients and AdamW's two moments in fp32, plus a lower bound of one micro-batch's
    activations (a few per layer and token, the attention scores, the logits)."""
    tokens = config.batch_size * config.block_size
    state = 16 * config.approx_params()
    per_layer = tokens * (16 * config.n_embd + config.n_head * config.block_size)
    need = state + 4 * (config.n_layer * per_layer + 3 * tokens * config.vocab_size)
    free = free_memory(torch_device)
    require(free is None or need <= free,
            f"this model and batch would need at least {_size(need)} of memory to train "
            f"({_size(state)} for the weights and optimizer, the rest for --batch-size "
            f"{config.batch_size} x --block-size {config.block_size}) and {_size(free or 0)} "
            f"is free; make the model or the batch smaller (--grad-accum keeps the batch)")


def forward_memory(flag: str, batch_size: int, config, torch_device) -> None:
    """Refuse a batch of windows whose forward pass (no gradients) cannot fit."""
    per_window = 4 * config.block_size * (8 * config.n_embd + config.n_head * config.block_size
                                          + 2 * config.vocab_size)
    free = free_memory(torch_device)
    require(free is None or batch_size * per_window <= free,
            f"{flag} {batch_size:,} would need about {_size(batch_size * per_window)} of "
            f"memory and {_size(free or 0)} is free; ask for fewer")


def workers(value: int | None) -> int | None:
    """--workers, at most the cores this process may run on (more only adds processes)."""
    at_least("--workers", value)
    return None if value is None else min(value, usable_cores())


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _sampling_bytes_per_sample(config) -> int:
    """fp32 bytes one sample holds while sampling: its KV cache, a window of logits, and one
    layer's attention scores over the window."""
    block = config.block_size
    kv = 2 * config.n_layer * block * config.n_embd
    return 4 * (kv + block * config.vocab_size + config.n_head * block * block)


def free_memory(torch_device) -> int | None:
    """Bytes this process can still allocate: GPU memory for CUDA; else the least of the
    available RAM, its cgroup's room and its address-space and data ulimits; None if unknown."""
    if getattr(torch_device, "type", "cpu") == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(torch_device)[0])
    known = [v for v in (_ram_available(), cgroup_room(), _ulimit_room()) if v is not None]
    return min(known) if known else None


def _ram_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


_CGROUP_FILES = (("memory.max", "memory.current"),  # cgroup v2, then v1
                 ("memory.limit_in_bytes", "memory.usage_in_bytes"))


def cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Limit minus usage of this process's memory cgroup (v2 or v1); None without a limit."""
    for folder in _cgroup_folders(root):
        for limit_name, usage_name in _CGROUP_FILES:
            try:
                limit = (folder / limit_name).read_text().strip()
                usage = int((folder / usage_name).read_text().strip())
            except (OSError, ValueError):
                continue
            if limit.isdigit() and int(limit) < 2**60:
                return max(0, int(limit) - usage)
    return None


def _cgroup_folders(root: Path) -> list[Path]:
    """The memory cgroup folders of this process, its own first, then the mount's root."""
    folders = []
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers in ("", "memory") or "memory" in controllers.split(","):
                base = root if controllers == "" else root / "memory"
                folders.append(base / path.lstrip("/"))
    except (OSError, ValueError):
        pass
    return [*folders, root, root / "memory"]


def _ulimit_room() -> int | None:
    """Room left under RLIMIT_AS (address space, against VmSize) and RLIMIT_DATA (VmData)."""
    import resource

    room = []
    for limit, field in ((resource.RLIMIT_AS, "VmSize:"), (resource.RLIMIT_DATA, "VmData:")):
        soft = resource.getrlimit(limit)[0]
        if soft != resource.RLIM_INFINITY:
            room.append(max(0, soft - _status_bytes(field)))
    return min(room) if room else None


def _status_bytes(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} PB"
