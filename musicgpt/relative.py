"""Relative-position self-attention (Shaw et al. 2018) with Music Transformer's skewing.

Drop-in for `model.CausalSelfAttention` (same `qkv`, `forward`, `attention_weights`, `kv_cache`),
chosen by `Config.attention == "relative"`. Nothing about MIDI or sampling; imports torch only.

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
from .model import Linear  # model.py imports this module lazily, only for "relative"


def skew(rel: torch.Tensor) -> torch.Tensor:
    """(..., T, N) with column c = distance N-1-c -> (..., T, N) with column j = key j.

    Queries are the last T of N keys (query i sits at position N-T+i). Entry [i, j] of the result
    is rel[i, j + T-1-i], the logit for distance (N-T+i) - j; entries above that diagonal
    (j > N-T+i, future keys) are garbage and must be masked. Pad, reshape, slice: views and one
    padded copy, as in Huang et al. (square case) and Transformer-XL's shift (T <= N).
    """
    *lead, T, N = rel.shape
    padded = F.pad(rel, (1, 0))  # (..., T, N+1)
    return padded.view(*lead, N + 1, T)[..., 1:, :].reshape(*lead, T, N)


def skewed_relative_logits(q: torch.Tensor, rel_emb: torch.Tensor, n_keys: int) -> torch.Tensor:
    """q (B, H, T, D) at positions n_keys-T..n_keys-1 -> q_i . E[pos_i - j] as (B, H, T, n_keys).

    Future keys (j > pos_i) hold garbage; callers mask them.
    """
    by_distance = rel_emb[:n_keys].flip(0)  # (n_keys, D), row c = distance n_keys-1-c
    return skew(q @ by_distance.transpose(0, 1))


def indexed_relative_logits(q: torch.Tensor, rel_emb: torch.Tensor, input_pos: torch.Tensor,
                            n_keys: int) -> torch.Tensor:
    """q (B, H, 1, D) at position input_pos (1,) -> q . E[pos - j] for keys j < n_keys.

    The decode step: gathers the n_keys distance rows (no host sync, static shapes). Keys after
    pos are clamped to distance 0 and must be masked by the caller.
    """
    distance = (input_pos - torch.arange(n_keys, device=q.device)).clamp(min=0)  # (n_keys,)
    return q @ rel_emb.index_select(0, distance).transpose(0, 1)


class RelativeSelfAttention(nn.Module):
    """Causal self-attention whose logits add a learned term per query-key distance."""

    def __init__(self, config: Config):
        super().__init__()
        self.n_head, self.head_dim, self.dropout = config.n_head, config.head_dim, config.dropout
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = Linear(config.n_embd, config.n_embd)
        # rel_emb[r] is the embedding of distance r = query position - key position
        rel_emb = torch.empty(config.block_size, config.head_dim).normal_(0.0, 0.02)
        self.rel_emb = nn.Parameter(rel_emb)
        self.kv_cache = None  # a model.KVCache while generating

    def qkv(self, x: torch.Tensor):
        """(B, T, C) -> q, k, v each (B, H, T, D)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        return (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))

    def _bias(self, q: torch.Tensor, input_pos: torch.Tensor | None, n_keys: int,
              allowed: torch.Tensor | None) -> torch.Tensor:
        """Additive float mask (B, H, T, n_keys): relative logits / sqrt(D), -inf where masked.

        SDPA scales q.k by 1/sqrt(D) itself, so the relative term is pre-scaled the same way.
        `allowed` (T, n_keys) bool; None means every key is visible (a decode step).
        """
        T = q.shape[2]
        if input_pos is None:  # training / uncached: positions 0..T-1
            rel = skewed_relative_logits(q, self.rel_emb, T)
            allowed = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        elif T == 1:
            rel = indexed_relative_logits(q, self.rel_emb, input_pos, n_keys)
        else:
            rel = self._prefill_logits(q, input_pos, n_keys)
        rel = rel * (1.0 / math.sqrt(self.head_dim))
        return rel if allowed is None else rel.masked_fill(~allowed, -math.inf)

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
        return F.pad(rel, (0, n_keys - end))  # later keys are masked by the causal mask

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head causal softmax (B, H, T, T) for x (B, T, C), content plus relative term.

        The fused kernel returns no weights; this slow path is for drawing attention arcs.
        """
        q, k, _ = self.qkv(x)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        return (scores + self._bias(q, None, x.shape[1], None)).softmax(-1)

    def forward(self, x, input_pos=None, mask=None, attend_len=None):
        """Same contract as CausalSelfAttention.forward; `mask` (T, cache_len) bool or None."""
        B, T, C = x.shape
        q, k, v = self.qkv(x)
        dropout = self.dropout if self.training else 0.0
        if self.kv_cache is None:
            bias = self._bias(q, None, T, None)
        else:
            k, v = self.kv_cache.update(input_pos, k, v)
            if attend_len is not None:
                k, v = k[:, :, :attend_len], v[:, :, :attend_len]
                mask = None if mask is None else mask[..., :attend_len]
            bias = self._bias(q, input_pos, k.shape[2], mask)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

