"""Music statistics of note arrays, overlap between two sets of them, and a copying check.

Pure numpy, no torch, no MIDI files. Notes are `events.NoteArrays` in 10 ms steps; ids are token
ids as in `vocab`. Used to compare generated samples with held-out real music.

Per-piece features: note density (notes per second from the first onset to the last release),
pitch range, pitch-class entropy, mean polyphony (notes sounding, averaged over the time at least
one sounds), mean inter-onset interval; plus two histograms (pitch classes, inter-onset intervals)
and two fault counts (stuck notes, long silences).

Set-level comparison follows the overlapping-area (OA) measure of Yang & Lerch, "On the evaluation
of generative models in music" (2020), applied directly to each feature's distribution over pieces
(they apply it to distributions of pairwise distances): the area under the minimum of the two sets'
Gaussian kernel density estimates, 1 for identical sets and 0 for disjoint ones. Histograms are
pooled over each set and compared by histogram intersection, sum(min(p, q)), the discrete OA.

Copying: a piece is reduced to its pitch-interval sequence: all notes ordered by onset, then pitch
(chords read bottom to top), and the interval between each note and the next, so the sequence is
transposition invariant and ignores timing and velocity. Each run of `n` notes (n - 1 intervals)
packs into one int64; a piece's copy share is the fraction of its runs found anywhere in the
training set. The longest copied run counts notes covered by consecutive found runs, an upper bound
on the longest passage copied verbatim (consecutive runs may come from different training pieces).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .events import NoteArrays
from .vocab import STEPS_PER_S, is_note_on, note_pitch, shift_steps

IOI_EDGES_S = np.geomspace(0.01, 4.0, 19)  # 18 log bins; IOIs past 4 s land in the last one
STUCK_NOTE_S = 10.0  # the decoder cuts an unreleased note at exactly 10 s, hence ">="
LONG_SILENCE_S = 4.0
COPY_NGRAM_NOTES = 8


# --- per-piece features ----------------------------------------------------------------------

def excerpt(notes: NoteArrays, seconds: float) -> NoteArrays:
    """The first `seconds` after the first onset, shifted to start at 0, releases cut there."""
    if len(notes) == 0:
        return notes
    origin = int(notes.start_step.min())
    limit = int(round(seconds * STEPS_PER_S))
    start = notes.start_step - origin
    keep = start < limit
    return NoteArrays(notes.pitch[keep], notes.velocity[keep], start[keep],
                      np.minimum(notes.end_step[keep] - origin, limit))


def silent_gaps_steps(notes: NoteArrays) -> np.ndarray:
    """Lengths (steps) of the stretches with no note sounding, between first onset and last end."""
    if len(notes) < 2:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(notes.start_step, kind="stable")
    start, end = notes.start_step[order], notes.end_step[order]
    covered_until = np.maximum.accumulate(end)[:-1]  # latest release among earlier onsets
    gaps = start[1:] - covered_until
    return gaps[gaps > 0]


def sounding_steps(notes: NoteArrays) -> int:
    """Steps during which at least one note sounds."""
    if len(notes) == 0:
        return 0
    span = int(notes.end_step.max() - notes.start_step.min())
    return span - int(silent_gaps_steps(notes).sum())


def note_density_per_s(notes: NoteArrays) -> float:
    if len(notes) == 0:
        return 0.0
    span_s = (notes.end_step.max() - notes.start_step.min()) / STEPS_PER_S
    return float(len(notes) / span_s)


def pitch_range_semitones(notes: NoteArrays) -> int:
    return int(notes.pitch.max() - notes.pitch.min()) if len(notes) else 0


def pitch_class_histogram(notes: NoteArrays) -> np.ndarray:
    """Note counts per pitch class C..B, (12,) float."""
    return np.bincount(np.asarray(notes.pitch) % 12, minlength=12).astype(np.float64)


def entropy_bits(counts: np.ndarray) -> float:
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def mean_polyphony(notes: NoteArrays) -> float:
    """Sum of note durations over the time at least one note sounds (1.0 for a melody)."""
    sounding = sounding_steps(notes)
    return float((notes.end_step - notes.start_step).sum() / sounding) if sounding else 0.0


def inter_onset_intervals_s(notes: NoteArrays) -> np.ndarray:
    """Gaps between successive distinct onset times, in seconds (chord notes share one onset)."""
    onsets = np.unique(notes.start_step)
    return np.diff(onsets) / STEPS_PER_S


def ioi_histogram(notes: NoteArrays, edges_s: np.ndarray = IOI_EDGES_S) -> np.ndarray:
    """Counts of inter-onset intervals in log-spaced bins (longer than the last edge: last bin)."""
    ioi = np.clip(inter_onset_intervals_s(notes), edges_s[0], edges_s[-1])
    return np.histogram(ioi, bins=edges_s)[0].astype(np.float64)


def stuck_notes(notes: NoteArrays, min_s: float = STUCK_NOTE_S) -> int:
    return int(((notes.end_step - notes.start_step) >= min_s * STEPS_PER_S).sum())


def long_silences(notes: NoteArrays, min_s: float = LONG_SILENCE_S) -> int:
    return int((silent_gaps_steps(notes) > min_s * STEPS_PER_S).sum())


def piece_features(notes: NoteArrays) -> dict[str, float]:
    """The scalar features of one piece, by name."""
    ioi = inter_onset_intervals_s(notes)
    return {
        "note_density_per_s": note_density_per_s(notes),
        "pitch_range_semitones": float(pitch_range_semitones(notes)),
        "pitch_class_entropy_bits": entropy_bits(pitch_class_histogram(notes)),
        "mean_polyphony": mean_polyphony(notes),
        "mean_ioi_s": float(ioi.mean()) if len(ioi) else 0.0,
    }


# --- key -------------------------------------------------------------------------------------

# Krumhansl-Kessler key profiles (probe-tone ratings), tonic first.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def estimate_key(notes: NoteArrays) -> tuple[int, str] | None:
    """The key of some notes by the Krumhansl-Schmuckler method: (tonic 0-11 with C = 0, "major"
    or "minor") whose profile correlates best with the notes' pitch classes weighted by how long
    each sounds; None for no notes. Ties go to the lower tonic, major first."""
    weights = np.bincount(np.asarray(notes.pitch) % 12,
                          weights=np.asarray(notes.end_step - notes.start_step, np.float64),
                          minlength=12)
    if len(notes) == 0 or weights.std() == 0:
        return None
    best, key = -np.inf, None
    for mode, profile in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE)):
        for tonic in range(12):
            r = float(np.corrcoef(weights, np.roll(profile, tonic))[0, 1])
            if r > best + 1e-12:
                best, key = r, (tonic, mode)
    return key


def relative_key(key: tuple[int, str]) -> tuple[int, str]:
    """The relative minor of a major key (C major -> A minor) and the relative major of a minor
    one."""
    tonic, mode = key
    return ((tonic + 9) % 12, "minor") if mode == "major" else ((tonic + 3) % 12, "major")


def same_or_relative_key(a: tuple[int, str] | None, b: tuple[int, str] | None) -> bool:
    """Whether two keys are equal or relative (False when either is unknown)."""
    return a is not None and b is not None and (a == b or relative_key(a) == b)


# --- comparing two sets ----------------------------------------------------------------------

def histogram_overlap(p: np.ndarray, q: np.ndarray) -> float:
    """Intersection of two histograms after normalising each to sum 1."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    return float(np.minimum(p / p.sum(), q / q.sum()).sum())


def _scott_bandwidth(x: np.ndarray) -> float:
    return float(x.std(ddof=1) * len(x) ** (-0.2)) if len(x) > 1 else 0.0


def kde_overlap(a: Sequence[float], b: Sequence[float], max_points: int = 20_000) -> float:
    """Overlapping area of the Gaussian KDEs (Scott's bandwidth) of two samples of a feature.

    Bandwidths are floored at 1/1000 of the pooled range, so a sample with no spread acts as a
    near point mass.
    """
    a = np.asarray(a, np.float64)[np.isfinite(a)]
    b = np.asarray(b, np.float64)[np.isfinite(b)]
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    pooled = np.concatenate([a, b])
    if np.ptp(pooled) == 0:
        return 1.0
    floor = np.ptp(pooled) / 1000
    bw = [max(_scott_bandwidth(x), floor) for x in (a, b)]
    lo, hi = pooled.min() - 5 * max(bw), pooled.max() + 5 * max(bw)
    points = int(min(max_points, max(512, (hi - lo) / (min(bw) / 4))))
    grid, step = np.linspace(lo, hi, points, retstep=True)
    density = [_kde(x, h, grid) for x, h in zip((a, b), bw, strict=True)]
    return float(min(1.0, np.minimum(*density).sum() * step))


def _kde(x: np.ndarray, bandwidth: float, grid: np.ndarray) -> np.ndarray:
    out = np.zeros_like(grid)
    for chunk in np.array_split(x, max(1, len(x) // 64)):
        z = (grid[:, None] - chunk[None, :]) / bandwidth
        out += np.exp(-0.5 * z * z).sum(axis=1)
    return out / (len(x) * bandwidth * np.sqrt(2 * np.pi))


def compare_sets(a: Sequence[NoteArrays], b: Sequence[NoteArrays]) -> dict[str, dict]:
    """Per feature: mean and std in each set and their overlap (KDE OA or histogram overlap)."""
    feats_a, feats_b = [piece_features(n) for n in a], [piece_features(n) for n in b]
    out: dict[str, dict] = {}
    for name in feats_a[0] if feats_a else []:
        va = np.array([f[name] for f in feats_a])
        vb = np.array([f[name] for f in feats_b])
        out[name] = {"a_mean": float(va.mean()), "a_std": float(va.std()),
                     "b_mean": float(vb.mean()) if len(vb) else float("nan"),
                     "b_std": float(vb.std()) if len(vb) else float("nan"),
                     "overlap": kde_overlap(va, vb)}
    for name, fn in (("pitch_class_histogram", pitch_class_histogram),
                     ("ioi_histogram", ioi_histogram)):
        ha, hb = (np.sum([fn(n) for n in notes], axis=0) if len(notes) else np.zeros(0)
                  for notes in (a, b))
        out[name] = {"a": (ha / max(ha.sum(), 1)).tolist(), "b": (hb / max(hb.sum(), 1)).tolist(),
                     "overlap": histogram_overlap(ha, hb) if len(ha) and len(hb) else float("nan")}
    return out


def nearest_set_shares(pieces: dict[str, Sequence[NoteArrays]],
                       reference: dict[str, Sequence[NoteArrays]]) -> dict[str, float]:
    """Per name in `pieces`: the share of its pieces whose features lie nearest to the centroid
    of the `reference` set of the same name (features z-scored over all reference pieces, then
    Euclidean distance). With samples per style as `pieces` and validation music per style as
    `reference`, a style token works when its samples land on their own style.
    """
    names = list(reference)
    refs = {name: _feature_matrix(reference[name]) for name in names}
    pooled = np.vstack(list(refs.values()))
    mu, sd = pooled.mean(0), np.maximum(pooled.std(0), 1e-9)
    centroids = np.stack([((refs[name] - mu) / sd).mean(0) for name in names])
    shares = {}
    for name, group in pieces.items():
        z = (_feature_matrix(group) - mu) / sd
        nearest = np.linalg.norm(z[:, None] - centroids[None], axis=-1).argmin(1)
        shares[name] = float(np.mean(nearest == names.index(name)))
    return shares


def _feature_matrix(pieces: Sequence[NoteArrays]) -> np.ndarray:
    return np.array([list(piece_features(n).values()) for n in pieces]).reshape(len(pieces), -1)


# --- copying ---------------------------------------------------------------------------------

def ids_to_onset_pitches(ids) -> np.ndarray:
    """Pitches of every NOTE_ON, ordered by onset time then pitch (vectorised; no decoding)."""
    ids = np.asarray(ids, dtype=np.int64)
    time_steps = np.cumsum(shift_steps(ids))
    on = is_note_on(ids)
    pitch, onset = note_pitch(ids[on]), time_steps[on]
    return pitch[np.lexsort((pitch, onset))]


def interval_ngram_keys(pitches: np.ndarray, n: int = COPY_NGRAM_NOTES) -> np.ndarray:
    """One int64 per run of `n` successive notes: its n - 1 pitch intervals, 8 bits each."""
    if not 2 <= n <= 8:
        raise ValueError(f"n-gram length must be 2..8 notes, got {n}")
    intervals = np.diff(np.asarray(pitches, dtype=np.int64)) + 127  # 0..254
    count = len(intervals) - (n - 1) + 1
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    keys = np.zeros(count, dtype=np.int64)
    for i in range(n - 1):
        keys = (keys << 8) | intervals[i : i + count]
    return keys


def training_ngram_set(pieces: Sequence[np.ndarray], n: int = COPY_NGRAM_NOTES) -> np.ndarray:
    """Sorted unique interval n-gram keys of every training piece (token id arrays)."""
    keys = [interval_ngram_keys(ids_to_onset_pitches(p), n) for p in pieces]
    return np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)


def copy_stats(pitches: np.ndarray, train_keys: np.ndarray,
               n: int = COPY_NGRAM_NOTES) -> tuple[float, int]:
    """(share of the piece's n-note runs found in training, longest copied run in notes).

    `train_keys` must be sorted and unique, as `training_ngram_set` returns them.

    Share is NaN for a piece shorter than `n` notes; the run is 0 when nothing is found.
    """
    keys = interval_ngram_keys(pitches, n)
    if len(keys) == 0:
        return float("nan"), 0
    index = np.minimum(np.searchsorted(train_keys, keys), max(len(train_keys) - 1, 0))
    found = train_keys[index] == keys if len(train_keys) else np.zeros(len(keys), bool)
    if not found.any():
        return 0.0, 0
    edges = np.diff(np.concatenate([[0], found.astype(np.int8), [0]]))
    longest_windows = int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max())
    return float(found.mean()), longest_windows + n - 1
