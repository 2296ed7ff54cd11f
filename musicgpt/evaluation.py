"""Negative log-likelihood of a model over token pieces or a MIDI folder, in nats.

What is scored: every token of START + piece + END after START, each exactly once. A piece longer
than the context is scored with a sliding window: windows of `block_size` inputs advance by
`stride` (default block_size / 2), and each window scores only the targets no earlier window
scored, so every token after the first window sees at least block_size - stride tokens of context.
Windows from many pieces are batched together (sorted by length to waste little padding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .model import GPT
from .vocab import PAD_ID

ProgressFn = Callable[[int, int], None]  # (windows done, windows in all)

# A point of reference for a figure: the shipped model on its own validation split (129 files of
# POP909 and ASAP, whole pieces, sliding window; MODEL_CARD.md). Update it with the model.
SHIPPED_VALIDATION_NLL = (2.1423, 90.2)  # nats/token, nats/second of music


def reference_line() -> str:
    per_token, per_second = SHIPPED_VALIDATION_NLL
    return (f"for reference: the shipped model scores {per_token:.4f} nats/token, "
            f"{per_second:.1f} nats/second on its validation split (129 files; MODEL_CARD.md); "
            f"lower is better")


@dataclass(frozen=True)
class Window:
    """Inputs piece[start : start + length], targets piece[start + 1 : start + length + 1];
    the targets at piece positions >= `first_scored` count."""

    piece: int
    start: int
    length: int
    first_scored: int


def plan_windows(n_tokens: int, block_size: int, stride: int | None = None,
                 piece: int = 0) -> list[Window]:
    """Windows that score positions 1..n_tokens-1 of one piece exactly once."""
    stride = stride or max(1, block_size // 2)
    if not 1 <= stride <= block_size:
        raise ValueError(f"stride must be 1..{block_size}, got {stride}")
    if n_tokens < 2:
        return []
    if n_tokens - 1 <= block_size:
        return [Window(piece, 0, n_tokens - 1, 1)]
    windows, scored_until, start = [], 1, 0  # positions < scored_until are done
    while scored_until < n_tokens:
        start = min(start, n_tokens - 1 - block_size)
        windows.append(Window(piece, start, block_size, scored_until))
        scored_until = start + block_size + 1
        start += stride
    return windows


@torch.no_grad()
def score_pieces(model: GPT, pieces: Sequence[np.ndarray], *, batch_size: int = 16,
                 stride: int | None = None, progress: ProgressFn | None = None) -> np.ndarray:
    """Summed NLL (nats) per piece, float64 (len(pieces),). A piece scores len(piece) - 1 tokens."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    block_size = model.config.block_size
    windows = [w for i, p in enumerate(pieces) for w in plan_windows(len(p), block_size, stride, i)]
    windows.sort(key=lambda w: w.length, reverse=True)
    device = model.device
    totals = np.zeros(len(pieces), dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        for first in range(0, len(windows), batch_size):
            batch = windows[first : first + batch_size]
            inputs, targets, counted = _batch_arrays(pieces, batch)
            logits = model(torch.from_numpy(inputs).to(device)).float()
            nll = F.cross_entropy(logits.transpose(1, 2), torch.from_numpy(targets).to(device),
                                  reduction="none").double().cpu().numpy()
            np.add.at(totals, [w.piece for w in batch], (nll * counted).sum(axis=1))
            if progress is not None:
                progress(min(first + batch_size, len(windows)), len(windows))
    finally:
        model.train(was_training)
    return totals


@torch.no_grad()
def token_nll(model: GPT, ids, stride: int | None = None) -> np.ndarray:
    """NLL (nats, float64) of each token of one piece given the tokens before it, (len(ids),);
    position 0 has no prediction (NaN). One forward pass when the piece fits the context, else
    the sliding windows of `score_pieces` (each token scored once, with at least
    block_size - stride tokens of context)."""
    ids = np.asarray(ids, dtype=np.int64)
    out = np.full(len(ids), np.nan)
    device = model.device
    was_training = model.training
    model.eval()
    try:
        for w in plan_windows(len(ids), model.config.block_size, stride):
            inputs, targets, counted = _batch_arrays([ids], [w])
            logits = model(torch.from_numpy(inputs).to(device)).float()
            nll = F.cross_entropy(logits.transpose(1, 2), torch.from_numpy(targets).to(device),
                                  reduction="none").double().cpu().numpy()[0]
            keep = counted[0] > 0
            out[w.start + 1 : w.start + 1 + w.length][keep] = nll[keep]
    finally:
        model.train(was_training)
    return out


def _batch_arrays(pieces: Sequence[np.ndarray], batch: list[Window]):
    """(inputs, targets, counted) arrays of shape (B, longest window), PAD-filled on the right."""
    width = max(w.length for w in batch)
    inputs = np.full((len(batch), width), PAD_ID, dtype=np.int64)
    targets = np.full((len(batch), width), PAD_ID, dtype=np.int64)
    counted = np.zeros((len(batch), width), dtype=np.float64)
    for row, w in enumerate(batch):
        chunk = np.asarray(pieces[w.piece][w.start : w.start + w.length + 1], dtype=np.int64)
        inputs[row, : w.length] = chunk[:-1]
        targets[row, : w.length] = chunk[1:]
        counted[row, w.first_scored - w.start - 1 : w.length] = 1.0
    return inputs, targets, counted


# --- MIDI folders ----------------------------------------------------------------------------

@dataclass
class EvaluationResult:
    nll_per_token: float  # nats per scored token
    nll_per_second: float  # nats per second of music
    files: int  # files scored
    tokens: int  # tokens scored: each piece's tokens after START, END included
    seconds: float  # music scored
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"} per unreadable file
    clipped: list[dict] = field(default_factory=list)  # {"path", "note"}: notes cut (limits)

    def to_dict(self) -> dict:
        return asdict(self)


def read_midi_folder(midi_dir: str | Path, clipped: list[dict] | None = None,
                     ) -> tuple[list[str], list[np.ndarray], list[dict]]:
    """(relative paths, START..END ids, skipped files with reasons) for every MIDI file below,
    read with the corpus limits (pipeline.within_limits); the pieces those changed are added to
    `clipped` as {"path", "note"}."""
    from .data import find_midi_files
    from .pipeline import read_midi_piece

    root = Path(midi_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"MIDI folder not found: {root}")
    names, pieces, skipped = [], [], []
    for path in find_midi_files(root):
        rel, piece = path.relative_to(root).as_posix(), read_midi_piece(path)
        if piece.ids is None:
            skipped.append({"path": rel, "reason": piece.reason})
        else:
            names.append(rel)
            pieces.append(piece.ids)
            if piece.note and clipped is not None:
                clipped.append({"path": rel, "note": piece.note})
    return names, pieces, skipped


def evaluate_pieces(model: GPT, pieces: Sequence[np.ndarray], *, batch_size: int = 16,
                    stride: int | None = None, progress: ProgressFn | None = None,
                    skipped: list[dict] | None = None) -> EvaluationResult:
    """Score already tokenised START..END pieces (e.g. a preprocessed validation split)."""
    from .events import ids_to_seconds

    pieces = [p for p in pieces if len(p) > 1]
    if not pieces:
        raise ValueError("nothing to score: no piece has a token after START")
    totals = score_pieces(model, pieces, batch_size=batch_size, stride=stride, progress=progress)
    tokens = sum(len(p) - 1 for p in pieces)
    seconds = sum(ids_to_seconds(p) for p in pieces)
    nll = float(totals.sum())
    return EvaluationResult(nll / tokens, nll / seconds if seconds > 0 else float("nan"),
                            len(pieces), tokens, round(seconds, 2), list(skipped or []))


def evaluate_midi_folder(model: GPT, midi_dir: str | Path, **kwargs) -> EvaluationResult:
    """Score every readable MIDI file below `midi_dir`; unreadable ones are listed in `skipped`,
    those whose notes were cut to the corpus limit in `clipped`."""
    clipped: list[dict] = []
    _, pieces, skipped = read_midi_folder(midi_dir, clipped)
    if not pieces:
        reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:3])
        raise ValueError(f"no readable MIDI files in {midi_dir}" + (f" ({reasons})" if reasons
                                                                     else ""))
    result = evaluate_pieces(model, pieces, skipped=skipped, **kwargs)
    result.clipped = clipped
    return result
