"""Count-based baselines over token ids: an add-one unigram and an interpolated Kneser-Ney n-gram.

Pure numpy, no torch: they give the transformer's NLL a floor to beat on the same tokens.
Both score exactly what the transformer scores: every token of START + piece + END after START.
A token's n-gram context is padded on the left with PAD (which never occurs inside a piece), so the
first events of a piece have their own contexts ("PAD PAD START" for a 4-gram).

The n-gram is Chen & Goodman's interpolated *modified* Kneser-Ney: three discounts per order
(for counts 1, 2 and 3+) estimated from count-of-counts, continuation counts for the lower orders,
and a uniform distribution over the vocabulary at the bottom. Every n-gram of up to 7 tokens is
packed into one int64 key (9 bits per token), so fitting is a few `np.unique` calls over the
training stream and scoring is `np.searchsorted`, with no per-token Python loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .vocab import BASE_VOCAB_SIZE, PAD_ID

BITS_PER_TOKEN = 9  # 2**9 = 512 > BASE_VOCAB_SIZE (n-grams model music ids only)
MAX_ORDER = 7  # 7 * 9 = 63 bits fit an int64


# --- unigram ---------------------------------------------------------------------------------

def _targets(pieces: Sequence[np.ndarray]) -> np.ndarray:
    """Every scored token: each piece without its first (START) token, concatenated."""
    parts = [np.asarray(p[1:], dtype=np.int64) for p in pieces if len(p) > 1]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def fit_unigram(pieces: Sequence[np.ndarray], vocab_size: int = BASE_VOCAB_SIZE) -> np.ndarray:
    """Add-one (Laplace) unigram: log-probabilities (vocab_size,) in nats."""
    counts = np.bincount(_targets(pieces), minlength=vocab_size).astype(np.float64)
    return np.log((counts + 1.0) / (counts.sum() + vocab_size))


def unigram_nll(log_probs: np.ndarray, pieces: Sequence[np.ndarray]) -> tuple[float, int]:
    """(total NLL in nats, tokens scored) of `pieces` under a unigram from `fit_unigram`."""
    targets = _targets(pieces)
    return float(-log_probs[targets].sum()), len(targets)


# --- n-gram keys -----------------------------------------------------------------------------

def _gram_keys(pieces: Sequence[np.ndarray], order: int) -> list[np.ndarray]:
    """Keys of the k-grams ending at every scored token, for k = 1..order (one array per k).

    The key of tokens (t1..tk) is sum t_i * 512**(k-i): the context of a key is `key >> 9`, its
    lower-order suffix is `key & (512**(k-1) - 1)`.
    """
    pad = order - 1
    padded, is_target = [], []
    for piece in pieces:
        if len(piece) < 2:
            continue
        padded.append(np.full(pad, PAD_ID, np.int64))
        padded.append(np.asarray(piece, dtype=np.int64))
        mask = np.ones(pad + len(piece), bool)
        mask[: pad + 1] = False  # padding and START are context only
        is_target.append(mask)
    if not padded:
        return [np.zeros(0, np.int64) for _ in range(order)]
    stream = np.concatenate(padded)
    positions = np.flatnonzero(np.concatenate(is_target))
    keys = [stream[positions]]
    for k in range(2, order + 1):  # prepend the token k-1 places back
        keys.append(keys[-1] + (stream[positions - (k - 1)] << (BITS_PER_TOKEN * (k - 1))))
    return keys


def _suffix(keys: np.ndarray, k: int) -> np.ndarray:
    """Drop the oldest token of k-gram keys, giving (k-1)-gram keys."""
    return keys & ((1 << (BITS_PER_TOKEN * (k - 1))) - 1)


# --- Kneser-Ney ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _OrderTable:
    """Counts for one order: sorted gram keys with their (continuation) counts, and per context
    the denominator and the back-off weight gamma."""

    gram_keys: np.ndarray
    gram_counts: np.ndarray
    ctx_keys: np.ndarray
    ctx_total: np.ndarray
    ctx_gamma: np.ndarray
    discounts: np.ndarray  # (4,): D(0)=0, D(1), D(2), D(3+)


@dataclass(frozen=True)
class KneserNey:
    order: int
    vocab_size: int
    tables: tuple[_OrderTable, ...]  # tables[k-1] holds order k


def _discounts(counts: np.ndarray) -> np.ndarray:
    """Modified-KN discounts from the count-of-counts n1..n4 (Chen & Goodman 1998, eq. 26)."""
    n1, n2, n3, n4 = (max(int(np.sum(counts == c)), 1) for c in (1, 2, 3, 4))
    y = n1 / (n1 + 2 * n2)
    d = np.array([0.0, 1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3])
    return np.clip(d, 0.0, np.arange(4.0))  # a discount never exceeds its count


def _order_table(gram_keys: np.ndarray, gram_counts: np.ndarray) -> _OrderTable:
    discounts = _discounts(gram_counts)
    ctx_keys, inverse = np.unique(gram_keys >> BITS_PER_TOKEN, return_inverse=True)
    total = np.bincount(inverse, weights=gram_counts, minlength=len(ctx_keys))
    held_out = np.bincount(inverse, weights=discounts[np.minimum(gram_counts, 3)],
                           minlength=len(ctx_keys))
    return _OrderTable(gram_keys, gram_counts, ctx_keys, total, held_out / total, discounts)


def fit_kneser_ney(pieces: Sequence[np.ndarray], order: int = 4,
                   vocab_size: int = BASE_VOCAB_SIZE) -> KneserNey:
    """Fit an interpolated modified Kneser-Ney model of `order` (1..7) on whole pieces."""
    if not 1 <= order <= MAX_ORDER:
        raise ValueError(f"order must be 1..{MAX_ORDER}, got {order}")
    keys = _gram_keys(pieces, order)
    if len(keys[0]) == 0:
        raise ValueError("no tokens to fit on")
    grams, counts = np.unique(keys[-1], return_counts=True)
    tables = [_order_table(grams, counts)]
    for k in range(order, 1, -1):  # continuation count: distinct left extensions of each gram
        grams, counts = np.unique(_suffix(grams, k), return_counts=True)
        tables.append(_order_table(grams, counts))
    return KneserNey(order, vocab_size, tuple(reversed(tables)))


def _lookup(sorted_keys: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index, found) of each query in a sorted key array."""
    index = np.searchsorted(sorted_keys, queries)
    index = np.minimum(index, max(len(sorted_keys) - 1, 0))
    found = (sorted_keys[index] == queries) if len(sorted_keys) else np.zeros(len(queries), bool)
    return index, found


def gram_probabilities(model: KneserNey, grams: np.ndarray) -> np.ndarray:
    """P(last token | previous order-1 tokens) for each row of `grams` (m, order) of token ids."""
    grams = np.asarray(grams, dtype=np.int64)
    keys = [grams[:, -1]]
    for k in range(2, model.order + 1):
        keys.append(keys[-1] + (grams[:, -k] << (BITS_PER_TOKEN * (k - 1))))
    prob = np.full(len(grams), 1.0 / model.vocab_size)
    for k, table in enumerate(model.tables, start=1):
        ctx_index, ctx_found = _lookup(table.ctx_keys, keys[k - 1] >> BITS_PER_TOKEN)
        gram_index, gram_found = _lookup(table.gram_keys, keys[k - 1])
        count = np.where(gram_found, table.gram_counts[gram_index], 0)
        total = table.ctx_total[ctx_index]
        discounted = np.maximum(count - table.discounts[np.minimum(count, 3)], 0.0)
        mixed = (discounted + total * table.ctx_gamma[ctx_index] * prob) / np.maximum(total, 1)
        prob = np.where(ctx_found, mixed, prob)  # an unseen context backs off entirely
    return prob


def kneser_ney_nll(model: KneserNey, pieces: Sequence[np.ndarray],
                   chunk_tokens: int = 1 << 21) -> tuple[float, int]:
    """(total NLL in nats, tokens scored) of `pieces`, in chunks to bound memory."""
    total, count, batch, batch_tokens = 0.0, 0, [], 0
    for piece in list(pieces) + [None]:
        if piece is not None:
            batch.append(piece)
            batch_tokens += len(piece)
        if batch and (piece is None or batch_tokens >= chunk_tokens):
            keys = _gram_keys(batch, model.order)[-1]
            grams = np.stack([(keys >> (BITS_PER_TOKEN * (model.order - 1 - i))) & 511
                              for i in range(model.order)], axis=1)
            total -= float(np.log(gram_probabilities(model, grams)).sum())
            count += len(keys)
            batch, batch_tokens = [], 0
    return total, count
