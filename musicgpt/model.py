"""GPT-2 decoder over token ids, with a preallocated KV cache. Nothing about MIDI or sampling.

One attention path for training and decoding: every forward may take `input_pos`; a layer with a
cache writes its keys/values there and attends over the buffer. Decode steps are (B, 1) with
static shapes when `attend_len` is None (torch.compile / CUDA graphs); on CPU eager the sampler
passes `attend_len` so a step reads only the filled part of the buffer.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Config


class Linear(nn.Module):
    """y = x @ W + b with W stored (in, out): ~20% faster than nn.Linear for batch-1 CPU decode."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out).normal_(0.0, 0.02))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
        return out.view(*x.shape[:-1], out.shape[-1])


class KVCache(nn.Module):
    """Key/value buffers (B, H, max_len, D) filled in place at explicit positions."""

    def __init__(self, batch_size: int, n_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        super().__init__()
        shape = (batch_size, n_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        self.k.index_copy_(2, input_pos, k)
        self.v.index_copy_(2, input_pos, v)
        return self.k, self.v


class CausalSelfAttention(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.n_head, self.head_dim, self.dropout = config.n_head, config.head_dim, config.dropout
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = Linear(config.n_embd, config.n_embd)
        self.kv_cache: KVCache | None = None

    def qkv(self, x: torch.Tensor):
        """(B, T, C) -> q, k, v each (B, H, T, D); also used by attention.py for the weights."""
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

    def forward(self, x, input_pos=None, mask=None, attend_len=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x)
        dropout = self.dropout if self.training else 0.0
        if self.kv_cache is None or input_pos is None:  # uncached pass, even with a cache set
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            k, v = self.kv_cache.update(input_pos, k, v)
            if attend_len is not None:
                k, v = k[:, :, :attend_len], v[:, :, :attend_len]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        if config.attention == "relative":  # late import: relative.py subclasses the attention here
            from .relative import RelativeSelfAttention

            self.attn = RelativeSelfAttention(config)
        else:
            self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)
        self.dropout = config.dropout

    def forward(self, x, input_pos=None, mask=None, attend_len=None):
        x = x + self._drop(self.attn(self.ln_1(x), input_pos, mask, attend_len))
        return x + self._drop(self.mlp(self.ln_2(x)))

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        """Residual dropout, a no-op call skipped when off (decode steps are overhead-bound)."""
        return F.dropout(x, self.dropout) if self.training and self.dropout > 0 else x


class GPT(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        # relative attention carries positions in each layer, so it has no position table
        self.wpe = (nn.Embedding(config.block_size, config.n_embd)
                    if config.attention == "absolute" else None)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.register_buffer("causal_mask", torch.ones(config.block_size, config.block_size,
                                                       dtype=torch.bool).tril(), persistent=False)
        self.cache_batch_size = 0
        self.apply(self._init_weights)
        for name, param in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, 0.0, 0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, 0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def setup_cache(self, batch_size: int, max_len: int | None = None) -> None:
        """Allocate per-layer KV buffers for `batch_size` x `max_len` (<= block_size) once."""
        max_len = max_len or self.config.block_size
        if max_len > self.config.block_size:
            raise ValueError(f"cache length {max_len} exceeds block_size {self.config.block_size}")
        param = self.wte.weight
        for block in self.blocks:
            block.attn.kv_cache = KVCache(batch_size, self.config.n_head, max_len,
                                          self.config.head_dim, param.dtype, param.device)
        self.cache_batch_size = batch_size

    def clear_cache(self) -> None:
        for block in self.blocks:
            block.attn.kv_cache = None
        self.cache_batch_size = 0

    def forward(self, idx: torch.Tensor, input_pos: torch.Tensor | None = None,
                attend_len: int | None = None) -> torch.Tensor:
        """idx (B, T) -> logits (B, T, vocab). With a cache, `input_pos` (T,) says where idx sits.

        Without `input_pos` the sequence starts at position 0 and no cache is read or written.
        `attend_len` (cache only) limits attention to the first positions of the buffer; it must
        cover every position in `input_pos`. Left None, a step attends over the whole buffer
        through the causal mask, so its shapes never change.
        """
        B, T = idx.shape
        mask = None
        cache_pos = input_pos if self.cache_batch_size else None
        if input_pos is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} exceeds block_size {self.config.block_size}")
            input_pos = torch.arange(T, device=idx.device)
        elif not self.cache_batch_size:
            raise ValueError("input_pos needs a KV cache: call setup_cache first")
        elif T > 1 or attend_len is None:  # one query at the newest position needs no mask
            visible = attend_len or self.blocks[0].attn.kv_cache.k.shape[2]
            mask = self.causal_mask[input_pos, :visible]  # (T, visible)
        x = self.wte(idx) if self.wpe is None else self.wte(idx) + self.wpe(input_pos)
        if self.training and self.config.dropout > 0:
            x = F.dropout(x, self.config.dropout)
        for block in self.blocks:
            x = block(x, cache_pos, mask, attend_len)
        x = self.ln_f(x)
        return F.linear(x, self.wte.weight)  # output projection tied to the embedding

    def loss(self, idx: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
        logits = self(idx)
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1),
                               ignore_index=ignore_index)
