"""The decode step as one compiled function (numba): a whole cached (B, 1) step of the GPT, with
no per-op dispatch, on numpy arrays. Nothing about MIDI or sampling; no torch import.

Why: a decode step of the shipped model is ~6.8 MFLOP and ~3.4 MB of int8 weights, yet through
torch it costs ~100 op dispatches of 1-3 µs each on top of its arithmetic (engine.py). Here the
weights are walked by plain loops that LLVM vectorises: each matrix is stored (in, out), so a
product is a run of contiguous multiply-adds over the outputs (no horizontal sums), several input
rows per pass and, at batch 3 or more, three batch rows per widened weight (`_linear`). int8
weights are widened to fp32 in registers and activations stay fp32 (more exact than the bf16
activations of torch's int8 kernel); fp32 weights run the same code. In attention the relative
term q . E[distance_j] of every head comes first, multiply-added over the keys from a transposed
distance table (`_position_scores`: 0.03 ms of a batch-1 step at 500 keys, where a dot product
per key, each with its sum across lanes, took 0.11 ms); then each head adds its content term
q . k_j in a loop of its own.

Past the cache's length the cache can roll (relative attention only; `_slot_and_keys`): each
position's keys and values are computed once, the front slots stay and a ring holds the most
recent positions, so a decode never re-prefills a window.

`Weights` packs a model's arrays once (engine.KernelStep says where they come from); `step` runs
one position for a batch against a KV cache laid out (L, B, H, T, D) (layers.KVCache). Compiled
on first use and cached on disk (numba's `cache=True`, next to this file or in the user's cache
folder), so only the first run after an install pays the compile (10-20 s on the Xeon).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

try:
    import numba
except ImportError:  # the torch FastStep runs instead (engine.fast_step_for)
    numba = None

# fp contraction and reassociation (vectorised sums); never assume no NaN/inf
_FASTMATH = {"contract", "reassoc", "nsz", "arcp"}


class Weights(NamedTuple):
    """A model's weights for `step`, each a C-contiguous numpy array. Matrices are (L, in, out),
    fp32 or int8; an int8 matrix's true weight is w * scale[out] (scale all ones for fp32)."""

    wte_t: np.ndarray   # (C, V) tied output projection, fp32
    wte: np.ndarray     # (V, C) token embedding
    wpe: np.ndarray     # (block, C) absolute positions, or (0, C) for relative attention
    ln: np.ndarray      # (L, 4, C): ln_1 weight, ln_1 bias, ln_2 weight, ln_2 bias
    ln_f: np.ndarray    # (2, C)
    w_qkv: np.ndarray   # (L, C, 3C)
    s_qkv: np.ndarray   # (L, 3C)
    b_qkv: np.ndarray   # (L, 3C)
    w_proj: np.ndarray  # (L, C, C)
    s_proj: np.ndarray
    b_proj: np.ndarray
    w_fc: np.ndarray    # (L, C, 4C)
    s_fc: np.ndarray
    b_fc: np.ndarray
    w_out: np.ndarray   # (L, 4C, C)
    s_out: np.ndarray
    b_out: np.ndarray
    rel: np.ndarray     # (L, R, D): row r is distance r; R == 0 for absolute attention
    rel_t: np.ndarray   # (L, D, R): rel transposed, column c is distance R - 1 - c
    n_head: int
    eps: float


def available() -> bool:
    return numba is not None


def step(weights: Weights, tokens: np.ndarray, pos: int, k_cache: np.ndarray,
         v_cache: np.ndarray, logits: np.ndarray, n_pin: int = 0,
         copy: QuantizedCache | None = None, skip: np.ndarray | None = None) -> None:
    """Write the keys/values of `tokens` (B,) int64 at `pos` into the caches (L, B, H, T, D) and
    the next-token logits (B, V) into `logits`.

    Below the cache's length T a step attends over positions 0..pos. From T on (relative
    attention only: it has no position past the context) the cache rolls: the first `n_pin`
    slots stay and the rest hold the most recent T - n_pin positions (`_slot_and_keys`).
    With `copy` (an int16 `QuantizedCache` of the same caches, half their bytes) attention reads
    that copy; the step writes both. Rows where `skip` (B,) bool is set (finished pieces) are not
    attended nor written: their logits are finite and mean nothing; the others' are unchanged."""
    w = weights
    if pos >= k_cache.shape[3] and (w.rel.shape[1] == 0 or not 0 <= n_pin < k_cache.shape[3]):
        raise ValueError(f"position {pos} is past a cache of {k_cache.shape[3]}; only relative "
                         "attention can roll, keeping fewer slots in front than it has")
    copy = copy or _NO_COPY
    skip = np.zeros(len(tokens), np.bool_) if skip is None else skip
    _step(tokens, pos, w.wte_t, w.wte, w.wpe, w.ln, w.ln_f, w.w_qkv, w.s_qkv, w.b_qkv,
          w.w_proj, w.s_proj, w.b_proj, w.w_fc, w.s_fc, w.b_fc, w.w_out, w.s_out, w.b_out,
          w.rel, w.rel_t, w.n_head, w.eps, k_cache, v_cache, logits, n_pin, copy.k, copy.v,
          copy.k_scale, copy.v_scale, skip)


class QuantizedCache(NamedTuple):
    """An int16 copy of a KV cache (L, B, H, T, D), one fp32 scale per slot's vector of D: what
    an int8-weight step reads (attention over 512 cached positions is memory traffic, and this
    halves it). Rounding error: 1/65534 of each vector's largest value."""

    k: np.ndarray
    v: np.ndarray
    k_scale: np.ndarray  # (L, B, H, T)
    v_scale: np.ndarray

    @classmethod
    def of(cls, k_cache: np.ndarray, v_cache: np.ndarray,
           filled: int | None = None) -> QuantizedCache:
        """The copy of the first `filled` slots (default all) of `k_cache` and `v_cache` as they
        are now; later slots are left unset until a step writes them."""
        copy = cls(np.empty(k_cache.shape, np.int16), np.empty(v_cache.shape, np.int16),
                   np.empty(k_cache.shape[:4], np.float32), np.empty(v_cache.shape[:4],
                                                                     np.float32))
        filled = k_cache.shape[3] if filled is None else min(filled, k_cache.shape[3])
        _quantize_cache(k_cache, v_cache, *copy, filled)
        return copy


_NO_COPY = QuantizedCache(*(np.zeros((0, 0, 0, 0, 0), np.int16),) * 2,
                          *(np.zeros((0, 0, 0, 0), np.float32),) * 2)


def _layer_norm(x, weight, bias, eps, out):
    B, C = x.shape
    for b in range(B):
        mean = np.float32(0.0)
        for c in range(C):
            mean += x[b, c]
        mean /= C
        var = np.float32(0.0)
        for c in range(C):
            d = x[b, c] - mean
            var += d * d
        inv = np.float32(1.0) / np.float32(math.sqrt(var / C + eps))
        for c in range(C):
            out[b, c] = (x[b, c] - mean) * inv * weight[c] + bias[c]


def _linear(x, w, scale, bias, out):
    """out (B, n_out) = (x (B, n_in) @ w (n_in, n_out)) * scale + bias.

    Rows go three at a time (`_rows3`: each weight is widened once for three rows), then one at
    a time; either way the inner loop is a run of multiply-adds over contiguous outputs, several
    input rows per pass so the accumulator is loaded and stored once per 4-8 products."""
    B = x.shape[0]
    n_out = w.shape[1]
    out[:] = 0.0
    b = 0
    while b + 3 <= B:
        _rows3(x, w, b, out)
        b += 3
    while b < B:
        _rows1(x, w, b, out)
        b += 1
    for b in range(B):
        for o in range(n_out):
            out[b, o] = out[b, o] * scale[o] + bias[o]


def _rows1(x, w, b, out):
    """out[b] += x[b] @ w, eight input rows per pass."""
    f32 = np.float32
    n_in = x.shape[1]
    n_out = w.shape[1]
    dst = out[b]
    i = 0
    while i + 8 <= n_in:
        r0, r1, r2, r3, r4, r5, r6, r7 = w[i], w[i + 1], w[i + 2], w[i + 3], w[i + 4], \
            w[i + 5], w[i + 6], w[i + 7]
        a0, a1, a2, a3, a4, a5, a6, a7 = x[b, i], x[b, i + 1], x[b, i + 2], x[b, i + 3], \
            x[b, i + 4], x[b, i + 5], x[b, i + 6], x[b, i + 7]
        for o in range(n_out):
            dst[o] += (((a0 * f32(r0[o]) + a1 * f32(r1[o])) + (a2 * f32(r2[o]) + a3 * f32(r3[o])))
                       + ((a4 * f32(r4[o]) + a5 * f32(r5[o])) + (a6 * f32(r6[o])
                                                                + a7 * f32(r7[o]))))
        i += 8
    while i < n_in:
        a, r = x[b, i], w[i]
        for o in range(n_out):
            dst[o] += a * f32(r[o])
        i += 1


def _rows3(x, w, b, out):
    """out[b:b+3] += x[b:b+3] @ w, four input rows per pass, each weight widened once."""
    f32 = np.float32
    n_in = x.shape[1]
    n_out = w.shape[1]
    d0, d1, d2 = out[b], out[b + 1], out[b + 2]
    i = 0
    while i + 4 <= n_in:
        r0, r1, r2, r3 = w[i], w[i + 1], w[i + 2], w[i + 3]
        a0, a1, a2, a3 = x[b, i], x[b, i + 1], x[b, i + 2], x[b, i + 3]
        c0, c1, c2, c3 = x[b + 1, i], x[b + 1, i + 1], x[b + 1, i + 2], x[b + 1, i + 3]
        e0, e1, e2, e3 = x[b + 2, i], x[b + 2, i + 1], x[b + 2, i + 2], x[b + 2, i + 3]
        for o in range(n_out):
            w0, w1, w2, w3 = f32(r0[o]), f32(r1[o]), f32(r2[o]), f32(r3[o])
            d0[o] += (a0 * w0 + a1 * w1) + (a2 * w2 + a3 * w3)
            d1[o] += (c0 * w0 + c1 * w1) + (c2 * w2 + c3 * w3)
            d2[o] += (e0 * w0 + e1 * w1) + (e2 * w2 + e3 * w3)
        i += 4
    while i < n_in:
        r, a, c, e = w[i], x[b, i], x[b + 1, i], x[b + 2, i]
        for o in range(n_out):
            wo = f32(r[o])
            d0[o] += a * wo
            d1[o] += c * wo
            d2[o] += e * wo
        i += 1


def _slot_and_keys(pos, cap, n_pin):
    """Where position `pos` is written in a cache of `cap` slots, and how many slots it sees.

    Below `cap` a position is its own slot. From `cap` on the cache rolls: the first `n_pin`
    slots stay (the tokens a window keeps in front) and the others form a ring, each new
    position overwriting the oldest."""
    if pos < cap:
        return pos, pos + 1
    ring = cap - n_pin
    return n_pin + (pos - n_pin) % ring, cap


def _distance(j, pos, slot, cap, n_pin):
    """Query position `pos` (written at `slot`) to the key in slot `j`: plain below `cap`; once
    rolling, ring slots count back from `slot`, and pinned slot j sits at cap - 1 - j, where a
    full window starting with it would put it."""
    if pos < cap:
        return pos - j
    if j < n_pin:
        return cap - 1 - j
    ring = cap - n_pin
    return (slot - j) % ring


def _attend(qkv, layer, pos, n_pin, rel, rel_t, n_head, k_cache, v_cache, kq, vq, k_scale,
            v_scale, y, scores, position, skip):
    """Write this position's keys/values, then y (B, C) = softmax(q.k + q.E[distance]) v per
    head, over the slots `_slot_and_keys` gives (the whole past below the cache's length).

    Keys and values are read from `kq`/`vq` times their per-slot scales where those have slots
    (the int16 copy, `quantize_cache`), else from the fp32 cache itself; both are written.
    Below the cache's length the relative term q.E[pos - j] of every head comes first, from the
    transposed table (`_position_scores`, into `position` (H, n)); a rolling cache's distances
    wrap, so there each key's distance row is read in `_head`."""
    B = qkv.shape[0]
    C = y.shape[1]
    D = C // n_head
    cap = k_cache.shape[3]
    quantized = kq.shape[3] > 0
    slot, n = _slot_and_keys(pos, cap, n_pin)
    inv_sqrt = np.float32(1.0 / math.sqrt(D))
    table = rel[layer]
    by_keys = table.shape[0] > 0 and pos < cap
    for b in range(B):
        if skip[b]:
            y[b] = 0.0
            continue
        if by_keys:
            _position_scores(qkv[b], inv_sqrt, rel_t[layer], pos, n, position)
        for h in range(n_head):
            q = qkv[b, h * D : (h + 1) * D] * inv_sqrt
            k_new = qkv[b, C + h * D : C + (h + 1) * D]
            v_new = qkv[b, 2 * C + h * D : 2 * C + (h + 1) * D]
            k_cache[layer, b, h, slot, :] = k_new
            v_cache[layer, b, h, slot, :] = v_new
            s = scores[:n]
            out = y[b, h * D : (h + 1) * D]
            known = position[h, :n] if by_keys else position[h, :0]
            if quantized:
                _quantize_row(k_new, kq[layer, b, h, slot], k_scale[layer, b, h], slot)
                _quantize_row(v_new, vq[layer, b, h, slot], v_scale[layer, b, h], slot)
                _head(q, kq[layer, b, h], vq[layer, b, h], k_scale[layer, b, h],
                      v_scale[layer, b, h], True, table, known, pos, slot, cap, n_pin, s, out)
            else:  # the scales are not read
                _head(q, k_cache[layer, b, h], v_cache[layer, b, h], s, s, False, table, known,
                      pos, slot, cap, n_pin, s, out)


def _position_scores(q_row, inv_sqrt, table_t, pos, n, out):
    """out[h, :n] = q_h . E[pos - j] for every head h and key j < n, from the transposed table
    (D, R), whose columns run from distance R - 1 down: key j's distance is column
    R - 1 - pos + j, so each of the D rows is one contiguous run over the keys, and a pass
    multiply-adds four of them into every head's scores (no sum across lanes). `out` (H, >= n)
    must be C-contiguous and the runs are slices: indexed any other way, LLVM did not vectorise
    the loop (4x slower)."""
    f32 = np.float32
    H = out.shape[0]
    D = table_t.shape[0]
    off = table_t.shape[1] - 1 - pos
    for h in range(H):
        out[h, :n] = 0.0
    d = 0
    while d + 4 <= D:
        e0, e1 = table_t[d, off : off + n], table_t[d + 1, off : off + n]
        e2, e3 = table_t[d + 2, off : off + n], table_t[d + 3, off : off + n]
        for h in range(H):
            a0, a1 = q_row[h * D + d] * inv_sqrt, q_row[h * D + d + 1] * inv_sqrt
            a2, a3 = q_row[h * D + d + 2] * inv_sqrt, q_row[h * D + d + 3] * inv_sqrt
            o = out[h]
            for j in range(n):
                o[j] += (a0 * e0[j] + a1 * e1[j]) + (a2 * e2[j] + a3 * e3[j])
        d += 4
    while d < D:
        e = table_t[d, off : off + n]
        for h in range(H):
            a = q_row[h * D + d] * inv_sqrt
            o = out[h]
            for j in range(n):
                o[j] += a * f32(e[j])
        d += 1


def _head(q, keys, values, k_scale, v_scale, quantized, table, known, pos, slot, cap, n_pin,
          s, out):
    """One head: out (D,) = softmax over the n = len(s) visible slots of q.k_j + q.E[distance],
    times the values; keys and values are fp32, or int16 times their slot's scale. The relative
    term is `known` (n,) where given, else read per key from the table (empty: absolute). Each
    term is its own tight loop over the keys (one loop with branches in it ran at half speed)."""
    n = s.shape[0]
    D = q.shape[0]
    for j in range(n):
        kj = keys[j]
        content = np.float32(0.0)
        for d in range(D):
            content += q[d] * np.float32(kj[d])
        s[j] = content * k_scale[j] if quantized else content
    if known.shape[0] > 0:
        for j in range(n):
            s[j] += known[j]
    elif table.shape[0] > 0:  # a rolling cache: each key's distance row
        for j in range(n):
            ej = table[_distance(j, pos, slot, cap, n_pin)]
            position = np.float32(0.0)
            for d in range(D):
                position += q[d] * ej[d]
            s[j] += position
    top = s[0]
    for j in range(1, n):
        top = max(top, s[j])
    total = np.float32(0.0)
    for j in range(n):
        e = np.float32(math.exp(s[j] - top))
        s[j] = e
        total += e
    if quantized:
        for j in range(n):
            s[j] *= v_scale[j]
    _weighted_sum(s, values, n, out)
    inv = np.float32(1.0) / total
    for d in range(D):
        out[d] *= inv


def _weighted_sum(w, values, n, out):
    """out (D,) = sum_j w[j] values[j], four rows per pass over out."""
    f32 = np.float32
    D = out.shape[0]
    out[:] = 0.0
    j = 0
    while j + 4 <= n:
        w0, w1, w2, w3 = w[j], w[j + 1], w[j + 2], w[j + 3]
        v0, v1, v2, v3 = values[j], values[j + 1], values[j + 2], values[j + 3]
        for d in range(D):
            out[d] += (w0 * f32(v0[d]) + w1 * f32(v1[d])) + (w2 * f32(v2[d]) + w3 * f32(v3[d]))
        j += 4
    while j < n:
        wj, vj = w[j], values[j]
        for d in range(D):
            out[d] += wj * f32(vj[d])
        j += 1


def _quantize_row(x, dst, scales, slot):
    """dst (D,) int16 = x / scale rounded, scales[slot] = max |x| / 32767."""
    top = np.float32(0.0)
    for d in range(x.shape[0]):
        top = max(top, abs(x[d]))
    scale = top / np.float32(32767.0) if top > 0 else np.float32(1.0)
    inv = np.float32(1.0) / scale
    for d in range(x.shape[0]):
        dst[d] = np.int16(np.rint(x[d] * inv))
    scales[slot] = scale


def _quantize_cache(k_cache, v_cache, kq, vq, k_scale, v_scale, filled):
    """The int16 copy of the first `filled` slots of the fp32 caches (after a prefill wrote
    them)."""
    L, B, H, _, _ = k_cache.shape
    for layer in range(L):
        for b in range(B):
            for h in range(H):
                for t in range(filled):
                    _quantize_row(k_cache[layer, b, h, t], kq[layer, b, h, t],
                                  k_scale[layer, b, h], t)
                    _quantize_row(v_cache[layer, b, h, t], vq[layer, b, h, t],
                                  v_scale[layer, b, h], t)


def _gelu_tanh(f):
    c = np.float32(math.sqrt(2.0 / math.pi))
    B, n = f.shape
    for b in range(B):
        for i in range(n):
            v = f[b, i]
            f[b, i] = np.float32(0.5) * v * (np.float32(1.0) + np.float32(
                math.tanh(c * (v + np.float32(0.044715) * v * v * v))))


def _step_impl(tokens, pos, wte_t, wte, wpe, ln, ln_f, w_qkv, s_qkv, b_qkv, w_proj, s_proj,
               b_proj, w_fc, s_fc, b_fc, w_out, s_out, b_out, rel, rel_t, n_head, eps,
               k_cache, v_cache, logits, n_pin, kq, vq, k_scale, v_scale, skip):
    B = tokens.shape[0]
    C = wte.shape[1]
    L = w_qkv.shape[0]
    x = np.empty((B, C), np.float32)
    for b in range(B):
        x[b] = wte[tokens[b]]
        if wpe.shape[0] > 0:
            x[b] += wpe[pos]
    h = np.empty((B, C), np.float32)
    y = np.empty((B, C), np.float32)
    t = np.empty((B, C), np.float32)
    qkv = np.empty((B, 3 * C), np.float32)
    f = np.empty((B, w_fc.shape[2]), np.float32)
    scores = np.empty(min(pos + 1, k_cache.shape[3]), np.float32)
    position = np.empty((n_head, scores.shape[0]), np.float32)
    for layer in range(L):
        _layer_norm(x, ln[layer, 0], ln[layer, 1], eps, h)
        _linear(h, w_qkv[layer], s_qkv[layer], b_qkv[layer], qkv)
        _attend(qkv, layer, pos, n_pin, rel, rel_t, n_head, k_cache, v_cache, kq, vq, k_scale,
                v_scale, y, scores, position, skip)
        _linear(y, w_proj[layer], s_proj[layer], b_proj[layer], t)
        x += t
        _layer_norm(x, ln[layer, 2], ln[layer, 3], eps, h)
        _linear(h, w_fc[layer], s_fc[layer], b_fc[layer], f)
        _gelu_tanh(f)
        _linear(f, w_out[layer], s_out[layer], b_out[layer], t)
        x += t
    _layer_norm(x, ln_f[0], ln_f[1], eps, h)
    V = wte_t.shape[1]
    _linear(h, wte_t, np.ones(V, np.float32), np.zeros(V, np.float32), logits)


if numba is not None:
    def _jit(fn):
        return numba.njit(cache=True, fastmath=_FASTMATH, nogil=True)(fn)
    _layer_norm = _jit(_layer_norm)
    _rows1 = _jit(_rows1)
    _rows3 = _jit(_rows3)
    _linear = _jit(_linear)
    _slot_and_keys = _jit(_slot_and_keys)
    _distance = _jit(_distance)
    _quantize_row = _jit(_quantize_row)
    _quantize_cache = _jit(_quantize_cache)
    _weighted_sum = _jit(_weighted_sum)
    _head = _jit(_head)
    _position_scores = _jit(_position_scores)
    _attend = _jit(_attend)
    _gelu_tanh = _jit(_gelu_tanh)
    _step = _jit(_step_impl)
else:
    _step = _step_impl  # never called: engine.fast_step_for checks available()
