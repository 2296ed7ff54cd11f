"""Per-piece checks: does each generated piece, and each infilled span, sound like music?

Means over a set hide the empty piece, so these look at one piece (or one span) at a time and
say which way it fails. Pure numpy, no torch, no MIDI files; notes are `events.NoteArrays` in
10 ms steps.

A generated piece is judged over a window of its own time (the new music: from the primer's end,
or from 0 without one, for the asked seconds):
- **sparse**: under `SPARSE_ONSETS_PER_S` note onsets per second in the window;
- **dead air**: `DEAD_AIR_S` or more with no note sounding, after the first note (primer notes
  count as sounding), up to the window's end;
- **late start**: the first new onset `LATE_START_S` or more after the window starts;
- **wall**: mean polyphony over the sounding time of the window above `WALL_POLYPHONY`;
- **held share**: the share of the window's notes held `HELD_NOTE_S` or more (the sampler's note
  guard ends a note at 6 s, so these are the notes it had to end, or dangling ones); a piece
  with more than `HELD_SHARE_FAIL` of them drones.
- **thin**: some `THIN_WINDOW_S` of the window hold fewer than `THIN_ONSETS_PER_S` onsets per
  second (a piece can pass the sparse check on average and still open with 20 s of a few held
  notes).
A piece **fails** when it is sparse, has dead air, is a wall or drones (late start alone is not
a failure: a third of real MIDI files open with a lead-in, but it is reported; nor is a thin
stretch, which real music has too, but best of N counts both).

An infilled span is compared with the original music of the same span:
- notes/s and mean polyphony each within 2x of the original's;
- **drone**: one note sounds over `DRONE_SPAN_SHARE` of the span or more where the original
  held none that long;
- **empty**: no onset in the span (where the original had one);
- pitch-class agreement: cosine between the span's pitch-class histogram (onsets in the span,
  weighted by sounding time inside it) and that of `CONTEXT_S` on each side.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .events import NoteArrays
from .vocab import STEPS_PER_S

SPARSE_ONSETS_PER_S = 2.0
DEAD_AIR_S = 3.0
LATE_START_S = 1.5
WALL_POLYPHONY = 8.0
HELD_NOTE_S = 5.9
HELD_SHARE_FAIL = 0.05
DRONE_SPAN_SHARE = 0.8
CONTEXT_S = 8.0
THIN_WINDOW_S = 10.0
THIN_ONSETS_PER_S = 1.0
PIECE_FLAGS = ("sparse", "dead_air", "late_start", "wall", "drone", "thin", "fails")


def _clip(notes: NoteArrays, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the notes sounding inside [lo, hi), cut to it."""
    inside = (notes.end_step > lo) & (notes.start_step < hi)
    return np.maximum(notes.start_step[inside], lo), np.minimum(notes.end_step[inside], hi)


def sounding_profile(notes: NoteArrays, lo: int, hi: int) -> np.ndarray:
    """(hi - lo,) notes sounding at each 10 ms step of [lo, hi)."""
    starts, ends = _clip(notes, lo, hi)
    delta = np.zeros(hi - lo + 1, dtype=np.int64)
    np.add.at(delta, starts - lo, 1)
    np.add.at(delta, ends - lo, -1)
    return np.cumsum(delta[:-1])


def longest_silence_steps(profile: np.ndarray) -> int:
    """Longest run of steps with nothing sounding in `profile`."""
    silent = np.concatenate([[0], (profile == 0).astype(np.int8), [0]])
    edges = np.diff(silent)
    runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    return int(runs.max()) if len(runs) else 0


def _polyphony(profile: np.ndarray) -> float:
    sounding = profile > 0
    return float(profile[sounding].mean()) if sounding.any() else 0.0


def piece_checks(notes: NoteArrays, start_step: int = 0,
                 end_step: int | None = None) -> dict[str, float | bool]:
    """The checks of one piece over the window [start_step, end_step) (default: to its last
    release): figures and flags (see the module docstring)."""
    if end_step is None:
        end_step = int(notes.end_step.max()) if len(notes) else start_step
    end_step = max(end_step, start_step)
    seconds = max(end_step - start_step, 1) / STEPS_PER_S
    new = (notes.start_step >= start_step) & (notes.start_step < end_step)
    onsets = notes.start_step[new]
    first = int(onsets.min()) if len(onsets) else end_step
    earlier = notes.start_step < start_step
    air_from = start_step if earlier.any() else first
    profile = sounding_profile(notes, start_step, end_step)
    lengths = (notes.end_step - notes.start_step)[new]
    held = float((lengths >= HELD_NOTE_S * STEPS_PER_S - 0.5).mean()) if len(lengths) else 0.0
    out = {
        "onsets_per_s": len(onsets) / seconds,
        "first_onset_s": (first - start_step) / STEPS_PER_S,
        "longest_silence_s": longest_silence_steps(profile[air_from - start_step :]) / STEPS_PER_S,
        "polyphony": _polyphony(profile),
        "held_share": held,
        "thinnest_onsets_per_s": thinnest_onsets_per_s(onsets, start_step, end_step),
    }
    out["sparse"] = out["onsets_per_s"] < SPARSE_ONSETS_PER_S
    out["dead_air"] = out["longest_silence_s"] >= DEAD_AIR_S
    out["late_start"] = out["first_onset_s"] >= LATE_START_S
    out["wall"] = out["polyphony"] > WALL_POLYPHONY
    out["drone"] = held > HELD_SHARE_FAIL
    out["thin"] = out["thinnest_onsets_per_s"] < THIN_ONSETS_PER_S
    out["fails"] = bool(out["sparse"] or out["dead_air"] or out["wall"] or out["drone"])
    return out


def thinnest_onsets_per_s(onsets: np.ndarray, lo: int, hi: int) -> float:
    """The fewest onsets per second in any `THIN_WINDOW_S` of [lo, hi) (windows every 0.5 s;
    the whole window's rate when it is shorter)."""
    width = int(THIN_WINDOW_S * STEPS_PER_S)
    if hi - lo <= width:
        return len(onsets) / max(hi - lo, 1) * STEPS_PER_S
    onsets = np.sort(onsets)
    starts = np.arange(lo, hi - width + 1, STEPS_PER_S // 2)
    counts = np.searchsorted(onsets, starts + width) - np.searchsorted(onsets, starts)
    return float(counts.min()) / THIN_WINDOW_S


def summarize_pieces(checks: Sequence[dict]) -> dict[str, float]:
    """Over a set of `piece_checks`: the share of pieces with each flag, and the mean held share."""
    n = max(len(checks), 1)
    out = {flag: sum(bool(c[flag]) for c in checks) / n for flag in PIECE_FLAGS}
    out["mean_held_share"] = float(np.mean([c["held_share"] for c in checks])) if checks else 0.0
    out["pieces"] = len(checks)
    return out


def pitch_class_weights(notes: NoteArrays, lo: int, hi: int) -> np.ndarray:
    """(12,) sounding steps per pitch class of the notes struck in [lo, hi), cut to it."""
    struck = (notes.start_step >= lo) & (notes.start_step < hi)
    length = np.minimum(notes.end_step[struck], hi) - notes.start_step[struck]
    return np.bincount(notes.pitch[struck] % 12, weights=length, minlength=12)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norm) if norm > 0 else 0.0


def span_figures(notes: NoteArrays, lo: int, hi: int) -> dict[str, float]:
    """Notes/s, polyphony, the longest share of the span one note sounds, and pitch-class
    agreement with `CONTEXT_S` on each side, of the music in [lo, hi); and the notes/s of those
    `CONTEXT_S` on each side."""
    span = max(hi - lo, 1)
    starts, ends = _clip(notes, lo, hi)
    context = int(CONTEXT_S * STEPS_PER_S)
    around = (pitch_class_weights(notes, max(lo - context, 0), lo)
              + pitch_class_weights(notes, hi, hi + context))
    onsets = ((notes.start_step >= lo) & (notes.start_step < hi)).sum()
    before, after = max(lo - context, 0), min(hi + context, int(notes.end_step.max(initial=hi)))
    around_onsets = (((notes.start_step >= before) & (notes.start_step < lo))
                     | ((notes.start_step >= hi) & (notes.start_step < after))).sum()
    around_s = max(lo - before + after - hi, 1) / STEPS_PER_S
    return {"onsets": int(onsets), "onsets_per_s": onsets / (span / STEPS_PER_S),
            "context_onsets_per_s": around_onsets / around_s,
            "polyphony": _polyphony(sounding_profile(notes, lo, hi)),
            "longest_note_share": float((ends - starts).max() / span) if len(starts) else 0.0,
            "pc_agreement": cosine(pitch_class_weights(notes, lo, hi), around)}


def within_2x(new: float, old: float) -> bool:
    if old <= 0 or new <= 0:
        return old <= 0 and new <= 0
    return 0.5 <= new / old <= 2.0


def span_checks(infilled: NoteArrays, original: NoteArrays, lo: int, hi: int) -> dict:
    """One infilled span [lo, hi) against the original music of the same span."""
    new, old = span_figures(infilled, lo, hi), span_figures(original, lo, hi)
    return {"new": new, "original": old,
            "density_ok": within_2x(new["onsets_per_s"], old["onsets_per_s"]),
            "polyphony_ok": within_2x(new["polyphony"], old["polyphony"]),
            "drone": (new["longest_note_share"] >= DRONE_SPAN_SHARE
                      and old["longest_note_share"] < DRONE_SPAN_SHARE),
            "empty": new["onsets"] == 0 and old["onsets"] > 0,
            "pc_delta": new["pc_agreement"] - old["pc_agreement"]}


def summarize_spans(checks: Sequence[dict]) -> dict[str, float]:
    """Over a set of `span_checks`: shares of drones, empty spans, density and polyphony within
    2x, and the median pitch-class agreement of the infills and of the originals."""
    n = max(len(checks), 1)
    new = [c["new"]["pc_agreement"] for c in checks]
    old = [c["original"]["pc_agreement"] for c in checks]
    return {"spans": len(checks),
            "drone": sum(c["drone"] for c in checks) / n,
            "empty": sum(c["empty"] for c in checks) / n,
            "density_within_2x": sum(c["density_ok"] for c in checks) / n,
            "polyphony_within_2x": sum(c["polyphony_ok"] for c in checks) / n,
            "pc_agreement_median": float(np.median(new)) if new else float("nan"),
            "pc_agreement_original_median": float(np.median(old)) if old else float("nan")}
