"""Logits -> the scores a token is drawn from, and the draw: temperature, the grammar mask with
the release mass kept, top-k/top-p/min-p within event types, and inverse-CDF sampling.

Pure numpy, no torch: the sampler hands a numpy copy of each step's logits here (a few dozen
small torch ops per draw cost more than the decode step of a small model). Where numba is
installed, `draw` runs every step for a row in one compiled call (`_draw_rows`), the sampler's
whole draw and state advance is one too (`draw_and_advance`, for `sampling.SamplerState`), and
the within-type ranking alone is compiled too (`_rank_drops_rows`, the same float ops as the
numpy `_rank_cut`). Settings are duck-typed
(`sampling.SamplingSettings`: temperature, top_k, top_p, min_p, within_type, keep_release_mass,
truncates).
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np

from .vocab import N_PITCHES, RANGES, EventType, note_off_id, note_on_id

if TYPE_CHECKING:
    from .sampling import SamplingSettings


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Divide by the temperature: below 1 sharpens the distribution, above 1 flattens it."""
    return logits / max(temperature, 1e-5)


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest logits per row of (B, V) (k <= 0 keeps all; ties at the k-th stay)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k, axis=-1)[:, -k, None]
    return np.where(logits < kth, -np.inf, logits)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep, per row of (B, V), the smallest set of tokens whose probability reaches p."""
    if p >= 1.0:
        return logits
    probs = _softmax(logits)
    order = np.argsort(-probs, axis=-1, kind="stable")
    ranked = np.take_along_axis(probs, order, -1)
    drop_ranked = ranked.cumsum(-1) - ranked >= p  # the mass before this token already reaches p
    drop = np.empty_like(drop_ranked)
    np.put_along_axis(drop, order, drop_ranked, -1)
    return np.where(drop, -np.inf, logits)


def min_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep, per row of (B, V), the tokens at least p times as likely as the likeliest one."""
    if p <= 0.0:
        return logits
    return np.where(logits < logits.max(-1, keepdims=True) + math.log(p), -np.inf, logits)


# Each event type's ids are one run of columns (vocab.RANGES): its first column and, per column,
# the index of its type. Only the types in CUT_TYPES are cut (see `truncate`).
_TYPE_STARTS = np.array([first for _, first, _ in RANGES])
_COLUMN_TYPE = np.repeat(np.arange(len(RANGES)), [count for _, _, count in RANGES])
CUT_TYPES = (EventType.NOTE_ON, EventType.VELOCITY)
_CUT_COLUMNS = np.isin(_COLUMN_TYPE, [i for i, (etype, _, _) in enumerate(RANGES)
                                      if etype in CUT_TYPES])


def truncate(logits: np.ndarray, settings: SamplingSettings) -> np.ndarray:
    """(B, V) logits with settings' top-k, top-p and min-p applied.

    With `settings.within_type` (the default) they cut only the pitch of a NOTE_ON and the
    value of a VELOCITY (CUT_TYPES), each measured on that type's own distribution, and a token
    must pass all three; the probability of each event type, and the time shifts and releases,
    stay as the model gives them. A stray pitch or a rare velocity is dropped, but the timing is
    not touched: cutting across the whole vocabulary drops the long time shifts first (their
    mass is spread over 100 ids), and even cutting within the time shifts drops the rare long
    ones; both made the music denser than the model meant (benchmarks/music_stats.py, see the
    model card). Without `within_type`: top-k, then top-p, then min-p, over all ids.
    """
    s = settings
    if not s.truncates:
        return logits
    if not s.within_type:
        return _cut(logits, s)
    if (logits.dtype != np.float32 or logits.shape[-1] != len(_COLUMN_TYPE)
            or not _no_nan_or_posinf(logits)):
        return truncate_reference(logits, s)
    return _truncate_within(logits, s)


def _no_nan_or_posinf(x: np.ndarray) -> bool:
    top = x.max()  # NaN if any is, +inf if any is
    return not (np.isnan(top) or top == np.inf)


# The cut types' column runs, and every type's count.
_CUT_RUNS = [(i, first, count) for i, (etype, first, count) in enumerate(RANGES)
             if etype in CUT_TYPES]
_TYPE_COUNTS = np.array([count for _, _, count in RANGES])
_RANKED_TYPES = _CUT_RUNS[-1][0] + 1  # types up to the last cut one: their probs are ranked
_RANKED_END = int(_TYPE_STARTS[_RANKED_TYPES - 1] + _TYPE_COUNTS[_RANKED_TYPES - 1])
_PACK_SHIFT = 8  # bits of a column index within a type (count <= 256) in a packed sort key
assert all(0 < count <= 1 << _PACK_SHIFT for _, _, count in _CUT_RUNS)


def _truncate_within(logits: np.ndarray, s: SamplingSettings) -> np.ndarray:
    """`truncate_reference`'s numbers, each float op as there, for full-vocabulary float32 logits
    with no NaN or +inf (the sampler's), with the top-p/top-k ranking done per cut type only
    (128 + 32 columns of 409).

    The reference ranks the whole row by (type, likeliest first) and takes one float32 cumsum
    along it, so the mass before a VELOCITY value counts on from the cumsum of the three types
    before it: that start is rebuilt here from their probabilities, sorted, in the same order."""
    top = np.maximum.reduceat(logits, _TYPE_STARTS, axis=-1)
    top = np.where(np.isfinite(top), top, 0.0)
    weight = np.exp(logits - np.repeat(top, _TYPE_COUNTS, axis=-1))
    mass = np.add.reduceat(weight, _TYPE_STARTS, axis=-1)
    keep = weight > 0
    ranking = s.top_k > 0 or s.top_p < 1
    if ranking:  # within each type: weight / the type's mass, as the reference divides
        probs = weight[:, :_RANKED_END] / np.repeat(np.maximum(mass[:, :_RANKED_TYPES], 1e-30),
                                                     _TYPE_COUNTS[:_RANKED_TYPES], axis=-1)
    if s.min_p > 0:
        for _, first, count in _CUT_RUNS:
            cols = slice(first, first + count)
            keep[:, cols] &= weight[:, cols] >= np.float64(s.min_p)
    if ranking:
        if _rank_drops is not None:  # compiled: the same float ops, row by row
            keep[:, :_RANKED_END] &= ~_rank_drops(probs, np.float32(s.top_p), s.top_k, _RUNS)
        else:
            _rank_cut(probs, keep, s)
    kept = np.add.reduceat(np.where(keep, weight, 0.0), _TYPE_STARTS, axis=-1)
    with np.errstate(divide="ignore"):
        scale = np.log(mass) - np.log(np.where(kept > 0, kept, 1.0))
    out = np.where(keep, logits, -np.inf)  # a type not cut keeps all it had: its scale is 0
    for i, first, count in _CUT_RUNS:
        out[:, first : first + count] += scale[:, i : i + 1]
    return out


def _rank_cut(probs: np.ndarray, keep: np.ndarray, s: SamplingSettings) -> None:
    """`keep` without the columns top-p/top-k drop within each cut type (numpy, row-parallel)."""
    start, done_to = None, 0  # the reference's cumsum where the next type's run begins
    for i, first, count in _CUT_RUNS:
        cols = slice(first, first + count)
        between = [np.sort(probs[:, _TYPE_STARTS[j] : _TYPE_STARTS[j] + _TYPE_COUNTS[j]],
                           axis=-1)[:, ::-1] for j in range(done_to, i)]  # only their sum counts
        if between:
            start = _running(np.concatenate(between, axis=-1), start)[:, -1:]
        ranked, order = _ranked(probs[:, cols], i)
        total = _running(ranked, start)
        before = total - ranked
        before -= before[:, :1]
        drop = before >= s.top_p
        if s.top_k > 0:
            drop[:, s.top_k :] = True
        if drop.any():
            keep[:, cols] &= ~_unsort(drop, order)
        start, done_to = total[:, -1:], i + 1


def _rank_drops_rows(probs, top_p, top_k, runs):
    """(B, n) columns that top-p/top-k drop, for probs (B, n) float32 of the ranked types; `runs`
    (type index, first column, count) of every type up to the last cut one, cut ones flagged by
    a fourth 1. `_rank_cut`'s float32 ops in its order, one row at a time: each cut type ranked
    likeliest first (ties by column), its running mass counted on from the types before it."""
    B, n = probs.shape
    drop = np.zeros((B, n), np.bool_)
    for b in range(B):
        total = np.float32(0.0)
        for r in range(runs.shape[0]):
            index, first, count, cut = runs[r, 0], runs[r, 1], runs[r, 2], runs[r, 3]
            p = probs[b, first : first + count]
            if cut == 0:  # only their sum counts, added largest first
                ranked = np.sort(p)[::-1]
                for k in range(count):
                    total = np.float32(total + ranked[k])
                continue
            if index == 0:
                order = np.argsort(-p, kind="mergesort")
            else:  # the reference's key: type index - prob, in float64
                order = np.argsort(np.float64(index) - p.astype(np.float64), kind="mergesort")
            first_before = np.float32(0.0)
            for k in range(count):
                value = p[order[k]]
                total = np.float32(total + value)
                before = np.float32(total - value)
                if k == 0:
                    first_before = before
                before = np.float32(before - first_before)
                if before >= top_p or (top_k > 0 and k >= top_k):
                    drop[b, first + order[k]] = True
    return drop


def _ranked(probs: np.ndarray, type_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, n) probabilities of one type -> (them in the reference's order, each one's column):
    ascending type_index - prob in float64, ties by column (a stable argsort), through one sort
    of packed int64 keys. For type 0 the key is -prob, exact: float32 bits are monotonic in a
    non-negative value. Otherwise float64 type_index - prob, whose bits are monotonic too and
    whose top 12 (sign, exponent) are the same when [type_index - 1, type_index] is one binade."""
    n = probs.shape[1]
    columns = np.arange(n)
    if type_index == 0:
        bits = probs.view(np.int32).astype(np.int64)
        packed = np.sort(((0x7F800000 - bits) << _PACK_SHIFT) | columns, axis=-1)
        order = packed & ((1 << _PACK_SHIFT) - 1)
        ranked = (0x7F800000 - (packed >> _PACK_SHIFT)).astype(np.int32).view(np.float32)
        return ranked, order
    key = (np.float64(type_index) - probs).view(np.int64)
    if type_index < 2 or type_index & (type_index - 1) == 0:  # [t - 1, t] spans two binades
        order = np.argsort(key, axis=-1, kind="stable")
    else:
        packed = np.sort(((key & ((1 << 52) - 1)) << _PACK_SHIFT) | columns, axis=-1)
        order = packed & ((1 << _PACK_SHIFT) - 1)
    flat = order + (np.arange(len(probs)) * n)[:, None]
    return probs.ravel()[flat], order


def _running(ranked: np.ndarray, start: np.ndarray | None) -> np.ndarray:
    """The float32 cumsum of `ranked` along rows, counting on from `start` (B, 1) if given."""
    if start is None:
        return ranked.cumsum(-1)
    return np.concatenate([start, ranked], axis=-1).cumsum(-1)[:, 1:]


def truncate_reference(logits: np.ndarray, settings: SamplingSettings) -> np.ndarray:
    """`truncate` within types over the whole row at once: the reference `truncate`'s fast
    path is tested against, and the path for logits holding NaN or +inf."""
    s = settings
    starts = _TYPE_STARTS[_TYPE_STARTS < logits.shape[-1]]
    column_type = _COLUMN_TYPE[: logits.shape[-1]]
    cut = _CUT_COLUMNS[: logits.shape[-1]]
    top = np.maximum.reduceat(logits, starts, axis=-1)  # (B, types); -inf: the type is masked
    top = np.where(np.isfinite(top), top, 0.0)[:, column_type]
    weight = np.exp(logits - top)  # 1 for each type's likeliest value, 0 where masked
    mass = np.add.reduceat(weight, starts, axis=-1)
    keep = weight >= np.where(cut, s.min_p, 0.0)
    keep &= weight > 0
    if s.top_k > 0 or s.top_p < 1:
        probs = weight / np.maximum(mass, 1e-30)[:, column_type]  # within the type
        order = np.argsort(column_type - probs, axis=-1, kind="stable")  # by type, likeliest first
        ranked = np.take_along_axis(probs, order, -1)
        before = ranked.cumsum(-1) - ranked  # types keep their columns in this order
        before -= before[:, starts][:, column_type]
        rank = np.arange(len(column_type)) - starts[column_type]
        drop = (before >= s.top_p) | ((rank >= s.top_k) if s.top_k > 0 else False)
        keep &= ~(_unsort(drop, order) & cut)
    kept = np.add.reduceat(np.where(keep, weight, 0.0), starts, axis=-1)
    with np.errstate(divide="ignore"):
        scale = np.log(mass) - np.log(np.where(kept > 0, kept, 1.0))
    return np.where(keep, logits + scale[:, column_type], -np.inf)


def _unsort(ranked: np.ndarray, order: np.ndarray) -> np.ndarray:
    """`ranked` (B, n) back in column order: out[b, order[b, k]] = ranked[b, k]."""
    out = np.empty_like(ranked)
    n = ranked.shape[1]
    out.ravel()[order + (np.arange(len(order)) * n)[:, None]] = ranked
    return out


def _cut(logits: np.ndarray, s: SamplingSettings) -> np.ndarray:
    return min_p_filter(top_p_filter(top_k_filter(logits, s.top_k), s.top_p), s.min_p)


def sample(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(B, V) logits -> (B,) ids drawn from the softmax (inverse CDF, one uniform per row)."""
    return _sample_at(logits, rng.random(len(logits)))


def _sample_at(logits: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    cdf = _softmax(logits).cumsum(-1, dtype=np.float64)
    target = uniform * cdf[:, -1]
    return (cdf > target[:, None]).argmax(-1)


def draw(logits: np.ndarray, allowed: np.ndarray | None, settings: SamplingSettings,
         rng: np.random.Generator) -> np.ndarray:
    """(B, V) logits -> (B,) ids: `sample(draw_scores(logits, allowed, settings), rng)`.

    Where numba is installed this is one compiled call (`_draw_rows`) for full-vocabulary
    float32 logits cut within types or not at all: the same steps, row by row, in float32, with
    its own exp, log and sums (and a release's log-probability taken as score - log-sum where
    the release mass left it as it was), so a score may differ from numpy's in its last bits,
    and a draw where the uniform falls within that of a boundary (the recorded draws all agree;
    a test asks 99.5% of random rows). numpy's steps, dozens of calls of a few microseconds
    each, cost as much as half a decode step once the step has pushed them out of the caches.
    NaN or +inf in the logits take the numpy steps."""
    s = settings
    uniform = rng.random(len(logits))
    if (_draw_rows is not None and (s.within_type or not s.truncates)
            and logits.dtype == np.float32 and logits.shape[-1] == len(_COLUMN_TYPE)):
        logits = np.ascontiguousarray(logits)
        mask = _NO_MASK if allowed is None else np.ascontiguousarray(allowed)
        tokens = np.empty(len(logits), np.int64)
        if _draw_rows(logits, mask, np.float32(max(s.temperature, 1e-5)),
                      s.keep_release_mass, s.truncates, s.top_k, np.float32(s.top_p),
                      float(s.min_p), uniform, tokens, *_DRAW_TABLES):
            return tokens
    return _sample_at(draw_scores(logits, allowed, settings), uniform)


_PITCHES = np.arange(N_PITCHES)


def _run_of(ids: np.ndarray) -> slice | np.ndarray:
    """`ids` as a slice when they are one ascending run of columns (a view, no gather)."""
    first = int(ids[0])
    return slice(first, first + len(ids)) if (ids == np.arange(first, first + len(ids))).all() \
        else ids


_ON_COLUMNS, _OFF_COLUMNS = _run_of(note_on_id(_PITCHES)), _run_of(note_off_id(_PITCHES))


def release_mass_kept(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """(B, V) logits whose masked note mass is moved to the releases the grammar allows.

    The probability of a NOTE_OFF of a silent pitch goes to the NOTE_OFFs of the sounding
    pitches, in proportion (the model meant a release and missed the pitch); that of a NOTE_ON of
    a sounding pitch goes to its NOTE_OFF. Rows with nothing sounding are left as they are.
    """
    probs = _softmax(logits)
    on_ids, off_ids = _ON_COLUMNS, _OFF_COLUMNS
    on, off = probs[:, on_ids], probs[:, off_ids]
    sounding = allowed[:, off_ids]
    off = off + np.where(sounding & ~allowed[:, on_ids], on, 0.0)
    lost = np.where(sounding, 0.0, off).sum(1, keepdims=True)
    kept = np.where(sounding, off, 0.0)
    total = kept.sum(1, keepdims=True)
    scale = np.where(total > 0, 1.0 + lost / np.maximum(total, 1e-30), 1.0)
    probs[:, off_ids] = np.where(sounding, kept * scale, off)
    with np.errstate(divide="ignore"):
        return np.log(probs)


def draw_scores(logits: np.ndarray, allowed: np.ndarray | None,
                settings: SamplingSettings) -> np.ndarray:
    """(B, V) logits -> the scores to draw from: temperature, the grammar mask `allowed` (None:
    no mask) with the release mass kept, then top-k/top-p/min-p (`truncate`)."""
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        scores = apply_temperature(logits, settings.temperature)
        if allowed is not None:
            if settings.keep_release_mass:
                scores = release_mass_kept(scores, allowed)
            scores = np.where(allowed, scores, -np.inf)
        scores = truncate(scores, settings)
    return _finite_or_greedy(scores, logits, allowed)


def _finite_or_greedy(scores: np.ndarray, logits: np.ndarray,
                      allowed: np.ndarray | None) -> np.ndarray:
    """`scores`, except rows a tiny temperature left without a usable score (every allowed one
    underflowed to -inf, or NaN or +inf appeared): those take the limit of temperature -> 0,
    the likeliest allowed token, so a draw never leaves the grammar or reads NaN."""
    bad = ~np.isfinite(scores.max(-1))  # NaN or +inf in the row, or nothing finite
    if not bad.any():
        return scores
    masked = logits if allowed is None else np.where(allowed, logits, -np.inf)
    masked = np.where(np.isnan(masked), -np.inf, masked)
    best = np.zeros_like(masked, dtype=bool)
    best[np.arange(len(masked)), masked.argmax(-1)] = True
    return np.where(bad[:, None], np.where(best, 0.0, -np.inf), scores)


def _softmax(logits: np.ndarray) -> np.ndarray:
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)


# the ranked types' runs for the compiled ranking: (type index, first column, count, cut)
_RUNS = np.array([(i, first, count, int(any(i == c for c, _, _ in _CUT_RUNS)))
                  for i, (_, first, count) in enumerate(RANGES[:_RANKED_TYPES])], np.int64)


def _draw_rows_impl(logits, allowed, temperature, keep_release_mass, truncates, top_k, top_p,
                    min_p, uniform, tokens, starts, counts, cut, on_first, off_first):
    """`draw`'s compiled steps: tokens (B,) from logits (B, V), `allowed` (B, V) or (0, 0) for no
    mask. False (tokens unset) where a logit is NaN or +inf: the numpy steps take those."""
    B, V = logits.shape
    for b in range(B):
        for v in range(V):
            if np.isnan(logits[b, v]) or logits[b, v] == np.inf:
                return False
    masked = allowed.shape[0] > 0
    scores = np.empty(V, np.float32)
    spare = np.empty(V, np.float32)
    keep = np.empty(V, np.bool_)
    no_mask = np.empty(0, np.bool_)
    for b in range(B):
        tokens[b] = _draw_row(logits[b], allowed[b] if masked else no_mask, masked, temperature,
                              keep_release_mass, truncates, top_k, top_p, min_p, uniform[b],
                              starts, counts, cut, on_first, off_first, scores, spare, keep)
    return True


def _draw_row(logits, allowed, masked, temperature, keep_release_mass, truncates, top_k, top_p,
              min_p, uniform, starts, counts, cut, on_first, off_first, scores, spare, keep):
    """One row's draw from logits (V,) with no NaN or +inf, `allowed` (V,) where `masked`;
    `scores`, `spare` and `keep` (V,) are work space."""
    V = logits.shape[0]
    for v in range(V):
        scores[v] = logits[v] / temperature
    if masked:
        if keep_release_mass:
            _keep_release_mass_row(scores, allowed, on_first, off_first, spare)
        for v in range(V):
            if not allowed[v]:
                scores[v] = -np.inf
    if truncates:
        _truncate_row(scores, top_k, top_p, min_p, starts, counts, cut, spare, keep)
    top = scores[0]
    for v in range(1, V):
        top = max(top, scores[v])
    if not np.isfinite(top):  # `_finite_or_greedy`: the likeliest allowed token
        best, pick = -np.inf, 0
        for v in range(V):
            x = logits[v] if not masked or allowed[v] else -np.inf
            if x > best:
                best, pick = x, v
        return pick
    return _sample_row(scores, top, uniform, spare)


def _keep_release_mass_row(scores, allowed, on_first, off_first, probs):
    """`release_mass_kept` for one row, in place: the scores become log-probabilities (a log
    taken only of the releases whose probability changed, the others' as score - log sum)."""
    top = scores[0]
    for v in range(1, scores.shape[0]):
        top = max(top, scores[v])
    total = np.float32(0.0)
    for v in range(scores.shape[0]):
        probs[v] = np.exp(scores[v] - top)
        total += probs[v]
    log_total = np.log(total)
    for v in range(scores.shape[0]):
        probs[v] = probs[v] / total
        scores[v] = scores[v] - top - log_total if probs[v] > 0 else -np.inf
    lost = np.float32(0.0)
    kept = np.float32(0.0)
    for p in range(N_PITCHES):
        off = probs[off_first + p]
        if allowed[off_first + p]:  # sounding
            if not allowed[on_first + p]:  # its NOTE_ON is masked: that mass is a release
                off = off + probs[on_first + p]
                probs[off_first + p] = off
                scores[off_first + p] = np.log(off) if off > 0 else -np.inf
            kept += off
        else:
            lost += off
    if kept > 0 and lost > 0:
        scale = np.float32(1.0) + lost / kept
        for p in range(N_PITCHES):
            off = probs[off_first + p]
            if allowed[off_first + p] and off > 0:
                scores[off_first + p] = np.log(off * scale)


def _truncate_row(scores, top_k, top_p, min_p, starts, counts, cut, weight, keep):
    """`_truncate_within` for one row of scores, in place."""
    n_types = starts.shape[0]
    mass = np.empty(n_types, np.float32)
    for t in range(n_types):
        first, count = starts[t], counts[t]
        top = scores[first]
        for c in range(first + 1, first + count):
            top = max(top, scores[c])
        if not np.isfinite(top):
            top = np.float32(0.0)
        total = np.float32(0.0)
        for c in range(first, first + count):
            w = np.exp(scores[c] - top)  # 1 for the type's likeliest value, 0 where masked
            weight[c] = w
            keep[c] = w > 0 and (cut[t] == 0 or np.float64(w) >= min_p)
            total += w
        mass[t] = total
    if top_k > 0 or top_p < 1:  # within each cut type: ranked likeliest first, ties by column
        for t in range(n_types):
            if not cut[t]:
                continue
            first, count = starts[t], counts[t]
            held = max(mass[t], np.float32(1e-30))
            order = np.argsort(-weight[first : first + count], kind="mergesort")
            before = np.float32(0.0)
            for k in range(count):
                c = first + order[k]
                if before >= top_p or (top_k > 0 and k >= top_k):
                    keep[c] = False
                before += weight[c] / held
    for t in range(n_types):
        first, count = starts[t], counts[t]
        kept = np.float32(0.0)
        for c in range(first, first + count):
            if keep[c]:
                kept += weight[c]
        scale = np.float32(0.0)  # a type not cut keeps all it had
        if cut[t]:
            scale = np.log(mass[t]) - (np.log(kept) if kept > 0 else np.float32(0.0))
        for c in range(first, first + count):
            scores[c] = scores[c] + scale if keep[c] else -np.inf


def _sample_row(scores, top, uniform, probs):
    """`_sample_at` for one row whose largest score `top` is finite: the float32 softmax, its
    float64 running sum, the first id whose sum passes uniform x the whole."""
    total = np.float32(0.0)
    for v in range(scores.shape[0]):
        probs[v] = np.exp(scores[v] - top)
        total += probs[v]
    whole = 0.0
    for v in range(scores.shape[0]):
        probs[v] = probs[v] / total
        whole += np.float64(probs[v])
    target = uniform * whole
    running = 0.0
    for v in range(scores.shape[0]):
        running += np.float64(probs[v])
        if running > target:
            return v
    return 0


def _draw_and_advance_impl(logits, uniform, token, allowed, sounding, g_ended, onset_step,
                           new_steps, started, heard, music, done, ended, n_new, lead_in, gap,
                           ramp_steps, max_note_steps, max_steps, ramp_per_step, temperature,
                           keep_release_mass, truncates, top_k, top_p, min_p, steps_table, is_on,
                           is_off, pitch, end_id, pad_id, starts, counts, cut, on_first,
                           off_first):
    """`sampling.SamplerState.draw` in one compiled call, for its numpy steps' state (updated in
    place; -1 for a rule that is off): per row the release ramp on the logits, the grammar mask
    less the too-long shifts of the silence guard (unmasked past END), `_draw_row`, the longest
    note's release once overdue, PAD for finished rows; then the grammar, onsets, music length
    and silence guard advance by the token, and the row's END and length are checked. Returns
    how many rows the grammar saw end. Logits must hold no NaN or +inf."""
    B, V = logits.shape
    raw = np.empty(V, np.float32)
    mask = np.empty(V, np.bool_)
    scores = np.empty(V, np.float32)
    spare = np.empty(V, np.float32)
    keep = np.empty(V, np.bool_)
    longest = steps_table.max()
    newly_ended = 0
    for b in range(B):
        oldest_p, oldest_held = 0, -1  # the longest-held sounding note (the first of equals)
        for v in range(V):
            raw[v] = logits[b, v]
        for p in range(N_PITCHES):
            if sounding[b, p]:
                held = new_steps[b] - onset_step[b, p]
                if held > oldest_held:
                    oldest_p, oldest_held = p, held
                if ramp_steps >= 0 and held > ramp_steps:  # float64 sum, as numpy's
                    x = np.float64(raw[off_first + p]) + (held - ramp_steps) * ramp_per_step
                    raw[off_first + p] = np.float32(x)
        for v in range(V):
            mask[v] = allowed[b, v] or g_ended[b]
        if not g_ended[b]:
            room, limited = 0, False
            if lead_in >= 0 and not started[b]:
                room, limited = lead_in - new_steps[b], True
            elif gap >= 0 and music[b]:
                quiet = True
                for p in range(N_PITCHES):
                    quiet = quiet and not sounding[b, p]
                if quiet:
                    room, limited = gap - (new_steps[b] - heard[b]), True
            if limited and room < longest:
                for v in range(V):
                    if steps_table[v] > 0 and steps_table[v] > room:  # a shift, too long
                        mask[v] = False
        t = _draw_row(raw, mask, True, temperature, keep_release_mass, truncates, top_k, top_p,
                      min_p, uniform[b], starts, counts, cut, on_first, off_first, scores, spare,
                      keep)
        if max_note_steps >= 0 and oldest_held >= max_note_steps:
            t = off_first + oldest_p
        if done[b]:
            t = pad_id
        else:
            n_new[b] += 1
        token[b] = t
        if not g_ended[b]:  # the grammar (events.NoteGrammar.observe)
            if is_on[t] or is_off[t]:
                p = pitch[t]
                sounding[b, p] = is_on[t]
                allowed[b, on_first + p] = not is_on[t]
                allowed[b, off_first + p] = is_on[t]
            elif t == end_id:
                g_ended[b] = True
                allowed[b, :] = False
                newly_ended += 1
        if steps_table[t] > 0:
            new_steps[b] += steps_table[t]
        elif is_on[t]:
            onset_step[b, pitch[t]] = new_steps[b]
        if lead_in >= 0 or gap >= 0:  # the silence guard's observe
            now = False
            for p in range(N_PITCHES):
                now = now or sounding[b, p]
            started[b] = started[b] or is_on[t]
            music[b] = music[b] or now
            if now or is_off[t]:
                heard[b] = new_steps[b]
        ended[b] = ended[b] or t == end_id
        done[b] = done[b] or ended[b] or (max_steps >= 0 and new_steps[b] >= max_steps)
    return newly_ended


_NO_MASK = np.zeros((0, 0), np.bool_)
# the tables `_draw_rows` reads: each type's first column and count, which types are cut, and
# the first NOTE_ON and NOTE_OFF columns
_DRAW_TABLES = (_TYPE_STARTS.astype(np.int64), _TYPE_COUNTS.astype(np.int64),
                np.array([int(etype in CUT_TYPES) for etype, _, _ in RANGES], np.int64),
                int(note_on_id(0)), int(note_off_id(0)))
assert _ON_COLUMNS == slice(_DRAW_TABLES[3], _DRAW_TABLES[3] + N_PITCHES)
assert _OFF_COLUMNS == slice(_DRAW_TABLES[4], _DRAW_TABLES[4] + N_PITCHES)

try:
    import numba
except ImportError:
    numba = None
if numba is not None:
    def _jit(fn):
        return numba.njit(cache=True, nogil=True)(fn)
    _rank_drops = _jit(_rank_drops_rows)
    _keep_release_mass_row = _jit(_keep_release_mass_row)
    _truncate_row = _jit(_truncate_row)
    _sample_row = _jit(_sample_row)
    _draw_row = _jit(_draw_row)
    _draw_rows = _jit(_draw_rows_impl)
    draw_and_advance = _jit(_draw_and_advance_impl)
else:
    _rank_drops = _draw_rows = draw_and_advance = None


# settings (duck-typed) for `warm_up`'s draw: release mass kept, top-p within types
_WARM_SETTINGS = SimpleNamespace(temperature=1.0, top_k=0, top_p=0.9, min_p=0.0, within_type=True,
                                 keep_release_mass=True, truncates=True)


def warm_up() -> None:
    """Compile (or load) the compiled ranking and draw now rather than at the first draw."""
    if _rank_drops is not None:
        _rank_drops(np.full((1, _RANKED_END), 0.01, np.float32), np.float32(0.9), 0, _RUNS)
        logits = np.zeros((1, len(_COLUMN_TYPE)), np.float32)
        draw(logits, np.ones(logits.shape, bool), _WARM_SETTINGS, np.random.default_rng(0))
