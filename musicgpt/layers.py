"""The layers a GPT block is built from: Linear, KV cache, causal self-attention, MLP.

Their own module so that model.py (which assembles blocks) and relative.py (which subclasses the
attention) both import from here and never from each other. Nothing about MIDI or sampling.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Config


def init_normal(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """`tensor` filled from N(0, std) in place; a meta tensor (shapes only) is left as is, since
    random init on the meta device goes through slow reference kernels (~1.5 s per model)."""
    return tensor if tensor.is_meta else tensor.normal_(0.0, std)


class Linear(nn.Module):
    """y = x @ W + b with W stored (in, out): ~20% faster than nn.Linear for batch-1 CPU decode."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(init_normal(torch.empty(n_in, n_out), 0.02))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
        return out.view(*x.shape[:-1], out.shape[-1])


class LayerKV:
    """One layer's key/value buffers (B, H, max_len, D), filled in place at explicit positions."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, owner: KVCache | None = None):
        self.k, self.v, self.owner = k, v, owner

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        if self.owner is not None:
            self.owner.writes += 1
        run = _cpu_run(input_pos)
        if run is not None:  # a CPU prefill: a slice copies ~4x faster than index_copy_
            self.k[:, :, run].copy_(k)
            self.v[:, :, run].copy_(v)
        else:
            self.k.index_copy_(2, input_pos, k)
            self.v.index_copy_(2, input_pos, v)
        return self.k, self.v


def _cpu_run(positions: torch.Tensor) -> slice | None:
    """`positions` (on a CPU, where reading them costs no device sync) as a slice, when they are
    two or more consecutive ones."""
    if positions.device.type != "cpu" or positions.numel() < 2:
        return None
    first = int(positions[0])
    run = torch.arange(first, first + positions.numel())
    return slice(first, first + positions.numel()) if torch.equal(positions, run) else None


class KVCache:
    """A generation's KV cache: a value the decode loop owns and passes to each forward.

    The model holds only weights, so one loaded model serves any number of concurrent decodes,
    each with its own cache (`GPT.new_cache`), and another runtime can take the same buffers:
    all layers' keys are one (L, B, H, max_len, D) tensor `k` (values `v`), and each layer's
    `LayerKV` is a view of its slice. `writes` counts the forwards that wrote it (a copy kept
    beside it, engine.KernelStep's int16 one, knows when to be made again).
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.layers = [LayerKV(self.k[i], self.v[i], self) for i in range(n_layer)]
        self.batch_size, self.max_len = batch_size, max_len
        self.writes = 0


class CausalSelfAttention(nn.Module):
    """GPT-2 attention through the fused SDPA kernel; the base that relative attention extends.

    Holds weights only; a forward given its layer's `LayerKV` (from the caller's `KVCache`) writes
    there and attends over it, so one forward serves training, prefill and decode steps.
    """

    def __init__(self, config: Config):
        super().__init__()
        self.n_head, self.head_dim, self.dropout = config.n_head, config.head_dim, config.dropout
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = Linear(config.n_embd, config.n_embd)

    def qkv(self, x: torch.Tensor):
        """(B, T, C) -> q, k, v each (B, H, T, D); also used by arcs.py for the weights."""
        B, T, _ = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, self.head_dim)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head causal softmax (B, H, T, T) for x (B, T, C), recomputed from q and k.

        The fused kernel returns no weights; this slow path is for drawing attention arcs.
        """
        q, k, _ = self.qkv(x)
        T = x.shape[1]
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        return scores.masked_fill(~causal, -math.inf).softmax(-1)

    def forward(self, x, input_pos=None, mask=None, attend_len=None, kv: LayerKV | None = None,
                last_only: bool = False):
        """(B, T, C) -> (B, T, C), or with `last_only` (B, 1, C): the last query alone (every
        position's keys and values still go to `kv`)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x)
        dropout = self.dropout if self.training else 0.0
        if last_only:  # the last query alone: it sees every key, so no causal mask
            q, T = q[:, :, -1:], 1
            mask = None if mask is None else mask[..., -1:, :]
        if kv is None or input_pos is None:  # uncached pass
            y = F.scaled_dot_product_attention(q, k, v, is_causal=not last_only,
                                               dropout_p=dropout)
        else:
            k, v = kv.update(input_pos, k, v)
            if attend_len is not None:
                k, v = k[:, :, :attend_len], v[:, :, :attend_len]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    """GPT-2's feed-forward: 4x wide, tanh-approximated GELU (one fused op, as GPT-2 trained)."""

    def __init__(self, config: Config):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x):
        h = self.c_fc(x)
        gelu = F.gelu if h.requires_grad else torch._C._nn.gelu_  # in place unless backward needs h
        return self.c_proj(gelu(h, approximate="tanh"))
