"""Where a checkpoint's files are, asked without loading anything: no torch, no safetensors.

Commands that only need to know whether a folder is a checkpoint (`preprocess` refusing one as
`--out`, say) import this, so they start without paying for torch. checkpoint.py re-exports it.
"""

from __future__ import annotations

from pathlib import Path


def checkpoint_dir(path: str | Path) -> Path:
    """`path`, or `path.old` when a save was cut off between its two renames."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if not (path / "config.json").is_file() and (old / "config.json").is_file():
        return old
    return path


def has_weights(path: str | Path) -> bool:
    """Whether `path` (or the `.old` a cut-off save left) holds a config and weights to load."""
    folder = checkpoint_dir(path)
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def has_training_state(path: str | Path) -> bool:
    """Whether `path` (or its `.old`) holds a training state that `--resume` can continue from."""
    return (checkpoint_dir(path) / "state.json").is_file()


def resolve_checkpoint(path: str | Path, flag: str = "--checkpoint") -> Path:
    """The checkpoint folder that `path` names: `path` itself when it holds a checkpoint, else
    the run folder's `path/checkpoint`. FileNotFoundError naming both places otherwise."""
    path = Path(path)
    if has_weights(path):
        return path
    if has_weights(path / "checkpoint"):
        return path / "checkpoint"
    missing = " (no such folder)" if not path.exists() else ""
    raise FileNotFoundError(f"no checkpoint at {flag} {path}{missing}: looked for config.json "
                            f"and model.safetensors in {path} and in {path / 'checkpoint'} (a "
                            f"run folder)")
