"""GPT-2 decoder over token ids: weights only. Nothing about MIDI or sampling.

The KV cache is a value (`layers.KVCache`, made by `new_cache`) that the decode loop owns and
passes in: `forward(idx, input_pos, cache=cache)`. The model keeps no per-generation state, so
one loaded model serves concurrent generations. One attention path for training and decoding:
a forward with a cache writes each layer's keys/values at `input_pos` and attends over the
buffer. Decode steps are (B, 1) with static shapes when `attend_len` is None (torch.compile /
CUDA graphs); on CPU eager the sampler passes `attend_len` so a step reads only the filled part
of the buffer. The layers live in layers.py (absolute attention) and relative.py; `ATTENTION`
picks one by `Config.attention`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Config
from .layers import MLP, CausalSelfAttention, KVCache, init_normal
from .relative import RelativeSelfAttention

# Config.attention -> the attention layer of every block
ATTENTION: dict[str, type[CausalSelfAttention]] = {
    "absolute": CausalSelfAttention,
    "relative": RelativeSelfAttention,
}


class Block(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = ATTENTION[config.attention](config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)
        self.dropout = config.dropout

    def forward(self, x, input_pos=None, mask=None, attend_len=None, kv=None, last_only=False):
        """`last_only`: (B, 1, C) for the last position alone (keys and values of all)."""
        y = self.attn(self.ln_1(x), input_pos, mask, attend_len, kv, last_only)
        x = (x[:, -1:] if last_only else x) + self._drop(y)
        return x + self._drop(self.mlp(self.ln_2(x)))

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        """Residual dropout, a no-op call skipped when off (decode steps are overhead-bound)."""
        return F.dropout(x, self.dropout) if self.training and self.dropout > 0 else x


def _embedding(n: int, width: int) -> nn.Embedding:
    """nn.Embedding drawn as its own reset would (same random stream), except that on the meta
    device nothing is drawn: there its reset imports torch._dynamo, 1.5 s of every load."""
    return nn.Embedding(n, width, _weight=init_normal(torch.empty(n, width), 1.0))


class GPT(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.wte = _embedding(config.vocab_size, config.n_embd)
        # relative attention carries positions in each layer, so it has no position table
        self.wpe = (_embedding(config.block_size, config.n_embd)
                    if config.attention == "absolute" else None)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        ones = torch.ones(config.block_size, config.block_size, dtype=torch.bool)
        # on the meta device (shapes only) tril would import torch._dynamo: 1.5 s of every load
        self.register_buffer("causal_mask", ones if ones.is_meta else ones.tril(),
                             persistent=False)
        self.apply(self._init_weights)
        for name, param in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("c_proj.weight"):
                init_normal(param.data, 0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Embedding):
            init_normal(module.weight.data, 0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def device(self) -> torch.device:
        """Where the weights live (and so where inputs and caches go)."""
        return self.wte.weight.device

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """Fresh KV buffers for `batch_size` x `max_len` (<= block_size) positions, a value the
        caller owns and passes to `forward`; dropping it frees them."""
        max_len = max_len or self.config.block_size
        if max_len > self.config.block_size:
            raise ValueError(f"cache length {max_len} exceeds block_size {self.config.block_size}")
        c, param = self.config, self.wte.weight
        return KVCache(c.n_layer, batch_size, c.n_head, max_len, c.head_dim, param.dtype,
                       param.device)

    def forward(self, idx: torch.Tensor, input_pos: torch.Tensor | None = None,
                attend_len: int | None = None, cache: KVCache | None = None,
                last_only: bool = False) -> torch.Tensor:
        """idx (B, T) -> logits (B, T, vocab). With `cache`, `input_pos` (T,) says where idx sits.

        Without `input_pos` the sequence starts at position 0 and no cache is read or written.
        `attend_len` (cache only) limits attention to the first positions of the buffer; it must
        cover every position in `input_pos`. Left None, a step attends over the whole buffer
        through the causal mask, so its shapes never change. `last_only`: logits (B, 1, vocab)
        for the last position alone (a prefill needs no others).
        """
        B, T = idx.shape
        mask = None
        layers = cache.layers if cache is not None else [None] * len(self.blocks)
        cache_pos = input_pos if cache is not None else None
        if input_pos is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} exceeds block_size {self.config.block_size}")
            input_pos = torch.arange(T, device=idx.device)
        elif cache is None:
            raise ValueError("input_pos needs a KV cache: pass cache=model.new_cache(...)")
        elif T > 1 or attend_len is None:  # one query at the newest position needs no mask
            visible = attend_len or cache.max_len
            mask = self.causal_mask[input_pos, :visible]  # (T, visible)
        x = self.wte(idx) if self.wpe is None else self.wte(idx) + self.wpe(input_pos)
        if self.training and self.config.dropout > 0:
            x = F.dropout(x, self.config.dropout)
        for i, (block, kv) in enumerate(zip(self.blocks, layers, strict=True)):
            # the last block writes every position's keys and values but attends from, and
            # feeds forward, the last position only (a quarter of a prefill's work)
            x = block(x, cache_pos, mask, attend_len, kv, last_only and i == len(layers) - 1)
        x = self.ln_f(x)
        return F.linear(x, self.wte.weight)  # output projection tied to the embedding
