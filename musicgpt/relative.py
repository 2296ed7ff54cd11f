"""Relative-position self-attention (Shaw et al. 2018) with Music Transformer's skewing.

A subclass of `layers.CausalSelfAttention` (same projections and `qkv`; its own
`forward` and `attention_weights`), chosen by `Config.attention == "relative"` through
`model.ATTENTION`. Nothing about MIDI or sampling; imports torch and layers.py only.

logits[i, j] = (q_i . k_j + q_i . E[pos_i - j]) / sqrt(D) for key j <= query position pos_i.

E (`rel_emb`, shape (block_size, D)) holds one learned vector per distance 0..block_size-1, shared
by the heads of a layer (tensor2tensor's `heads_share_relative_embedding`; Huang et al. used one
per head). Sharing keeps the budget of the absolute model: a relative model drops the position
table `wpe` (block_size x n_embd) and adds n_layer x block_size x head_dim, the same count when
n_layer == n_head. Distances are clipped at the context: a cache never holds more than block_size
positions, so every distance fits.

The relative term never builds Shaw's (L, L, D) tensor: Huang et al. multiply Q by the distance
table once, (T, D) x (D, L) -> (T, L), and "skew" the result (pad a column, reshape, drop a row)
so that column j of row i holds distance pos_i - j. Cost O(T*L) memory, the size of the logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Config
from .layers import CausalSelfAttention, LayerKV, init_normal


def skew(rel: torch.Tensor) -> torch.Tensor:
    """(..., T, N) with column c = distance N-1-c -> (..., T, N) with column j = key j.

    Queries are the last T of N keys (query i sits at position N-T+i). Entry [i, j] of the result
    is rel[i, j + T-1-i], the logit for distance (N-T+i) - j; entries above that diagonal
    (j > N-T+i, future keys) are garbage and must be masked. Pad, reshape, slice, as in Huang et
    al. (square case) and Transformer-XL's shift (T <= N).
    """
    return _skew_padded(F.pad(rel, (1, 0)))


def _skew_padded(padded: torch.Tensor) -> torch.Tensor:
    """`skew` of a tensor whose zero column is already in front: (..., T, N+1) -> (..., T, N)."""
    *lead, T, N1 = padded.shape
    return padded.view(*lead, N1, T)[..., 1:, :].reshape(*lead, T, N1 - 1)  # views, no copy


def skewed_relative_logits(q: torch.Tensor, rel_emb: torch.Tensor, n_keys: int) -> torch.Tensor:
    """q (B, H, T, D) at positions n_keys-T..n_keys-1 -> q_i . E[pos_i - j] as (B, H, T, n_keys).

    Future keys (j > pos_i) hold garbage; callers mask them. A zero row in front of the distance
    table makes the matmul write the skew's pad column, saving a (T, n_keys) copy (~10% of a
    CPU training step of the attention).
    """
    by_distance = F.pad(rel_emb[:n_keys].flip(0), (0, 0, 1, 0))  # row c+1 = distance n_keys-1-c
    return _skew_padded(q @ by_distance.transpose(0, 1))


def indexed_relative_logits(q: torch.Tensor, rel_emb: torch.Tensor, input_pos: torch.Tensor,
                            n_keys: int) -> torch.Tensor:
    """q (B, H, 1, D) at position input_pos (1,) -> q . E[pos - j] for keys j < n_keys.

    The decode step: gathers the n_keys distance rows (no host sync, static shapes). Keys after
    pos are clamped to distance 0 and must be masked by the caller.
    """
    distance = (input_pos - torch.arange(n_keys, device=q.device)).clamp(min=0)  # (n_keys,)
    return q @ rel_emb.index_select(0, distance).transpose(0, 1)


class RelativeSelfAttention(CausalSelfAttention):
    """Causal self-attention whose logits add a learned term per query-key distance.

    Shares the absolute layer's projections and `qkv`; adds the distance table.
    """

    def __init__(self, config: Config):
        super().__init__(config)
        # rel_emb[r] is the embedding of distance r = query position - key position
        rel_emb = init_normal(torch.empty(config.block_size, config.head_dim), 0.02)
        self.rel_emb = nn.Parameter(rel_emb)

    def _relative(self, q_scaled: torch.Tensor, input_pos: torch.Tensor | None,
                  n_keys: int) -> torch.Tensor:
        """Relative logits (B, H, T, n_keys) for queries already scaled by 1/sqrt(D)."""
        if input_pos is None:  # training / uncached: positions 0..T-1
            return skewed_relative_logits(q_scaled, self.rel_emb, n_keys)
        if q_scaled.shape[2] == 1:
            return indexed_relative_logits(q_scaled, self.rel_emb, input_pos, n_keys)
        return self._prefill_logits(q_scaled, input_pos, n_keys)

    def _prefill_logits(self, q: torch.Tensor, input_pos: torch.Tensor, n_keys: int):
        """Skewed logits for a contiguous run of T > 1 queries, zero-padded to n_keys columns."""
        T = q.shape[2]
        first = int(input_pos[0])
        if int(input_pos[-1]) != first + T - 1:
            raise ValueError("relative attention needs input_pos to be a contiguous run")
        end = first + T  # keys 0..end-1 can be visible to these queries
        if end > n_keys:
            raise ValueError(f"attend_len {n_keys} does not cover position {end - 1}")
        rel = skewed_relative_logits(q, self.rel_emb, end)
        if n_keys == end:  # a prefill attending over just what it wrote: nothing to pad
            return rel
        return F.pad(rel, (0, n_keys - end))  # later keys are masked by the causal mask

    def _scores(self, q_scaled, k, rel, allowed) -> torch.Tensor:
        """(q.k)/sqrt(D) + relative term, -inf where `allowed` (T, n_keys) is False."""
        scores = (q_scaled @ k.transpose(-2, -1)).add_(rel)
        return scores if allowed is None else scores.masked_fill_(~allowed, -math.inf)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head causal softmax (B, H, T, T) for x (B, T, C), content plus relative term.

        The fused kernel returns no weights; this slow path is for drawing attention arcs.
        """
        q, k, _ = self.qkv(x)
        T = x.shape[1]
        q = q * (1.0 / math.sqrt(self.head_dim))
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        return self._scores(q, k, self._relative(q, None, T), causal).softmax(-1)

    def forward(self, x, input_pos=None, mask=None, attend_len=None, kv: LayerKV | None = None,
                last_only: bool = False):
        """Same contract as CausalSelfAttention.forward; `mask` (T, cache_len) bool or None."""
        B, T, C = x.shape
        q, k, v = self.qkv(x)
        q = q * (1.0 / math.sqrt(self.head_dim))  # scaling (T, D) is cheaper than (T, n_keys)
        cached = kv is not None and input_pos is not None  # no positions: uncached
        if not cached:
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        else:
            k, v = kv.update(input_pos, k, v)
            if attend_len is not None:
                k, v = k[:, :, :attend_len], v[:, :, :attend_len]
                mask = None if mask is None else mask[..., :attend_len]
            if mask is None and T > 1:  # only a lone query may go unmasked (it sees the past)
                mask = input_pos[:, None] >= torch.arange(k.shape[2], device=x.device)
        if last_only:  # the last query alone (skewed or indexed relative logits both fit it)
            q, T = q[:, :, -1:], 1
            mask = None if mask is None else mask[..., -1:, :]
            input_pos = None if input_pos is None else input_pos[-1:]
        if cached and _chunks_pay(q, input_pos, k.shape[2]):
            y = self._attend_in_chunks(q, k, v)
        else:
            rel = self._relative(q, input_pos if cached else None, k.shape[2])
            y = self._attend(q, k, v, rel, mask)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))

    def _attend(self, q_scaled, k, v, rel, allowed) -> torch.Tensor:
        """softmax(scores) @ v, (B, H, T, D).

        On CPU, SDPA with a float mask runs its math kernel, and the explicit form here, which
        skips that kernel's extra masked-softmax passes, measured ~15% faster (forward+backward,
        T=512). Elsewhere SDPA's fused kernels take the relative term as an additive mask.
        """
        dropout = self.dropout if self.training else 0.0
        if _explicit_softmax(q_scaled):
            weights = self._scores(q_scaled, k, rel, allowed).softmax(-1)
            return F.dropout(weights, dropout, training=dropout > 0) @ v
        bias = rel if allowed is None else rel.masked_fill(~allowed, -math.inf)
        return F.scaled_dot_product_attention(q_scaled, k, v, attn_mask=bias, dropout_p=dropout,
                                              scale=1.0)


    def _attend_in_chunks(self, q_scaled, k, v) -> torch.Tensor:
        """`_attend` for a CPU prefill of positions 0..T-1 (keys: those T), PREFILL_CHUNK queries
        at a time, each over the keys up to its last query only: the masked upper triangle of
        the (T, T) scores is never computed (a 384-token window: 6 chunks do 58% of the work)."""
        T = q_scaled.shape[2]
        # `skewed_relative_logits`' table for all T keys, made once: a chunk ending at key `end`
        # multiplies its last end+1 rows, whose first (distance end, not zeros) lands on future
        # keys only, which are masked
        by_distance = F.pad(self.rel_emb[:T].flip(0), (0, 0, 1, 0)).transpose(0, 1)
        causal = torch.ones(T, T, dtype=torch.bool, device=q_scaled.device).tril()
        parts = []
        for first in range(0, T, PREFILL_CHUNK):
            end = min(T, first + PREFILL_CHUNK)
            q = q_scaled[:, :, first:end]
            rel = _skew_padded(q @ by_distance[:, T - end:])
            y = self._attend(q, k[:, :, :end], v[:, :, :end], rel, causal[first:end, :end])
            parts.append(y.transpose(1, 2))
        # (B, H, T, D) as a view of a (B, T, H, D) tensor: `forward` merges the heads uncopied
        return torch.cat(parts, 1).transpose(1, 2)


PREFILL_CHUNK = 64  # queries per chunk of a CPU prefill (_attend_in_chunks)


def _chunks_pay(q: torch.Tensor, input_pos: torch.Tensor, n_keys: int) -> bool:
    """A CPU prefill from position 0 over exactly its own keys, long enough to chunk."""
    T = q.shape[2]
    return (_explicit_softmax(q) and T >= 2 * PREFILL_CHUNK and n_keys == T
            and int(input_pos[0]) == 0)


def _explicit_softmax(q: torch.Tensor) -> bool:
    return q.device.type == "cpu"
