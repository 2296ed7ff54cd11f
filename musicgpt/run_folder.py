"""A run folder's files besides the checkpoint: the rule that a trained checkpoint is never
replaced by accident, and metrics.jsonl (one JSON line per step, trimmed on resume)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .checkpoint_paths import checkpoint_dir, has_weights
from .config import loads_json
from .files import tmp_path, writing


class RunExistsError(ValueError):
    """A new run asked for in a folder whose checkpoint it would overwrite."""


def check_run_folder(out_dir: str | Path, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse to start a new run over `out_dir`'s checkpoint unless told to (`overwrite`): a
    trained checkpoint is never replaced by accident; refuse `resume` with nothing to resume."""
    ckpt = Path(out_dir) / "checkpoint"
    if resume and overwrite:
        raise ValueError("--resume continues the checkpoint and --overwrite replaces it: "
                         "give one of them")
    if resume and not has_weights(ckpt):
        raise ValueError(f"--resume: nothing to resume in {out_dir} (no checkpoint in {ckpt}); "
                         f"leave out --resume to start a new run there, or give --out the run "
                         f"folder that holds checkpoint/")
    if resume or overwrite or not has_weights(ckpt):
        return
    raise RunExistsError(f"{ckpt} already holds a checkpoint{_step_of(ckpt)}; continue it with "
                         f"--resume, or start over with --overwrite (replaces it)")


def _step_of(ckpt: Path) -> str:
    """' (step N)' from a checkpoint's state.json, or '' when it has none."""
    try:
        state = loads_json((checkpoint_dir(ckpt) / "state.json").read_text())
        return f" (step {int(state['step'])})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def append_jsonl(path: Path, record: dict) -> None:
    """One JSON line; a value that is not a finite number is written as null (strict JSON)."""
    clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v
             for k, v in record.items()}
    with writing(path), path.open("a") as log:
        log.write(json.dumps(clean, allow_nan=False) + "\n")


def trim_metrics(path: Path, start_step: int) -> None:
    """Drop the lines of steps after `start_step` (a resumed run redoes them), all or nothing."""
    try:
        lines = path.read_text().splitlines(keepends=True)
    except (OSError, UnicodeDecodeError):
        return
    kept = [line for line in lines if _line_step(line) <= start_step]
    if len(kept) == len(lines):
        return
    tmp = tmp_path(path)
    with writing(path, tmp):
        tmp.write_text("".join(kept))
        os.replace(tmp, path)


def _line_step(line: str) -> float:
    try:
        return float(loads_json(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")  # not a record of ours: dropped with the redone steps
