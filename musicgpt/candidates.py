"""Best of N: write several candidates for each piece or span and keep the one that fares best.

A sampler draws one token at a time and cannot take back a piece that drifts into silence or a
drone. Candidates are written in one batch, and the per-piece checks (piece_checks.py) tell the
failures apart. They cost more than their share of rows: a batch runs until its densest
candidate has its seconds (best of 3: 2.6-4x the time of one piece at batch 1 on one CPU
thread, 2-2.2x for a span; BENCHMARKS.md).

- generate: a candidate whose new music passes the checks, then the one with fewest flags (a late
  start and a thin stretch count), then the one holding the smallest share of its notes to the
  guard (`piece_score`);
- infill: a candidate that does not drone (a note over most of the span where the original held
  none), then one whose notes/s are within 2x of the music around the span, then the lowest
  `join_nll` minus pitch-class agreement: how unlikely the model finds
  the music that follows after the new middle (mean NLL of the suffix's first tokens read left
  to right), less how well the middle's pitch classes agree with the 8 s on each side (cosine,
  piece_checks.span_figures). Both spread about 0.15 between candidates of one span. Measured on
  30 validation spans x 4 candidates (see the model card): picking by `join_nll` alone gave a
  median agreement of 0.759, the first candidate 0.797, this score 0.842 (the originals 0.820).
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import torch
import torch.nn.functional as F

from .controls import key_of, relative_key_name
from .events import NoteArrays, ids_to_arrays
from .piece_checks import piece_checks, span_checks, within_2x
from .vocab import END_ID, STEPS_PER_S, seconds_to_steps

SUFFIX_TOKENS = 64  # suffix tokens `join_nll` scores


def piece_score(ids: np.ndarray, start_step: int, max_seconds: float | None,
                settings=None) -> tuple:
    """How a generated piece's new music (from `start_step`, `max_seconds` long) fares by the
    per-piece checks and the controls `settings` asks for; lower is better: fails, then how far
    it misses the controls (`control_miss`), then how many checks it fails (a late start and a
    thin stretch included), then the share of its notes held to the guard."""
    end = None if max_seconds is None else start_step + seconds_to_steps(max_seconds)
    notes = ids_to_arrays(ids)
    checks = piece_checks(notes, start_step, end)
    flags = sum(bool(checks[f]) for f in ("sparse", "dead_air", "late_start", "wall", "drone",
                                          "thin"))
    miss = 0.0 if settings is None else control_miss(notes, start_step, end, settings)
    return int(checks["fails"]), miss, flags, checks["held_share"]


def control_miss(notes, start_step: int, end_step: int | None, settings) -> float:
    """How far the new notes (struck from `start_step` to `end_step`) are from the key and
    density `settings` asks for: a key other than the asked one counts 1 (its relative 0.5);
    notes/s off by more than 25% count |log2(found / asked)|. 0 when neither is asked."""
    if settings.key is None and settings.density is None:
        return 0.0
    new = notes.start_step >= start_step
    if end_step is not None:
        new &= notes.start_step < end_step
    miss = 0.0
    if settings.key is not None:
        found = key_of(NoteArrays(*(getattr(notes, f.name)[new] for f in fields(notes))))
        miss += (0.0 if found == settings.key else 0.5 if found == relative_key_name(settings.key)
                 else 1.0)
    if settings.density is not None:
        last = end_step if end_step is not None else int(notes.end_step.max(initial=start_step))
        seconds = max(last - start_step, 1) / STEPS_PER_S
        ratio = max(int(new.sum()), 1) / seconds / settings.density
        miss += 0.0 if abs(ratio - 1) <= 0.25 else abs(float(np.log2(ratio)))
    return miss


def best_of_groups(scores: list, candidates: int) -> list[int]:
    """Per group of `candidates` consecutive scores, the index of the lowest (first of equals)."""
    return [min(range(first, min(first + candidates, len(scores))), key=scores.__getitem__)
            for first in range(0, len(scores), candidates)]


def choose_pieces(pieces: list[np.ndarray], candidates: int, start_step: int,
                  max_seconds: float | None, settings=None) -> list[int]:
    """The index of the best generated piece of each group of `candidates` (`piece_score`)."""
    return best_of_groups([piece_score(p, start_step, max_seconds, settings) for p in pieces],
                          candidates)


@torch.inference_mode()
def join_nll(model, header: np.ndarray, prefix: np.ndarray, middle: np.ndarray,
             suffix: np.ndarray, n_suffix: int = SUFFIX_TOKENS) -> float:
    """Mean NLL (nats per token) of the first `n_suffix` tokens of `suffix` read left to right
    after `header`, as much of `prefix` as fits the context, and `middle` (nan: none to score)."""
    block = model.config.block_size
    head = suffix[suffix != END_ID][: max(min(n_suffix, block - len(header) - len(middle) - 1), 0)]
    if not len(head):
        return float("nan")
    room = block - len(header) - len(middle) - len(head)
    ids = np.concatenate([header, prefix[max(len(prefix) - room, 0) :], middle, head])
    device = next(model.parameters()).device
    tokens = torch.as_tensor(ids, dtype=torch.long, device=device)[None]
    logits = model(tokens[:, :-1]).float()[0, -len(head) :]
    return float(F.cross_entropy(logits, tokens[0, -len(head) :]))


def middle_score(model, cut, piece: np.ndarray, middle: np.ndarray, original, t1: int,
                 t2: int) -> tuple[int, int, float]:
    """(drones, notes/s not within 2x of the music around, join NLL - pitch-class agreement with
    the music around) of one infilled candidate `piece` (its new `middle`) of the span [t1, t2)
    of `original` (notes); lower is better."""
    check = span_checks(ids_to_arrays(piece), original, t1, t2)
    new = check["new"]
    off_density = not within_2x(new["onsets_per_s"], new["context_onsets_per_s"])
    nll = join_nll(model, cut.header, cut.prefix, middle, cut.suffix)
    return (int(check["drone"]), int(off_density),
            (nll if np.isfinite(nll) else 0.0) - new["pc_agreement"])


def choose_middles(model, cut, pieces: list[np.ndarray], middles: list[np.ndarray],
                   original: np.ndarray, t1: int, t2: int, candidates: int) -> list[int]:
    """The index of the best infilled candidate of each group of `candidates` (`middle_score`;
    `original` is the piece's ids)."""
    notes = ids_to_arrays(original)
    return best_of_groups([middle_score(model, cut, p, m, notes, t1, t2)
                           for p, m in zip(pieces, middles, strict=True)], candidates)
