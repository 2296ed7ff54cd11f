"""The fast decode step: one cached (B, 1) step through a GPT's weights as a flat list of tensor
ops, for sampling on CPU. Nothing about MIDI or sampling; reads the model's weights, owns none.

A decode step of a small model is overhead, not arithmetic: `GPT.forward` pays for ~40 module
calls, a mask, index tensors and shape checks per step (4.4 ms for 6.8 MFLOP on a Xeon core).
`FastStep` walks the same weights with ~25 plain ops per layer and no modules, writing keys and
values into the caller's `layers.KVCache` at an int position (views, no index tensors). The
relative term is q . E[d] for distances d = 0..pos, flipped to key order, so it reads the
model's own `rel_emb` and never a derived copy: weights edited in place are seen at once.

Logits equal `GPT.forward`'s within fp32 rounding (tests/test_engine.py). int8 layers
(`quantize.Int8Linear`) run their own fused kernel, as in the eager path. Prefill and the
window's re-prefill still go through `GPT.forward` (one call per window, batched over T).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .layers import KVCache, Linear
from .model import GPT


def _linear(layer) -> tuple:
    """(kind, tensors) for a Linear (W (in, out), b) or an int8 layer (q, scale, bias)."""
    if isinstance(layer, Linear):
        return ("f", layer.weight, layer.bias)
    return ("q", layer.q, layer.scale, layer.bias)


def _apply(lin: tuple, x: torch.Tensor) -> torch.Tensor:
    """x (B, in) -> (B, out) through a `_linear` tuple."""
    if lin[0] == "f":
        return torch.addmm(lin[2], x, lin[1])
    flat = x.to(torch.bfloat16)
    if hasattr(torch, "_weight_int8pack_mm"):
        out = torch._weight_int8pack_mm(flat, lin[1], lin[2])
    else:
        out = flat @ (lin[1].to(flat.dtype) * lin[2][:, None]).t()
    return out.float().add_(lin[3])


class FastStep:
    """`step(token (B,), pos, cache) -> logits (B, V)`: `model(token[:, None], [pos], pos + 1,
    cache)[:, -1]` in fewer ops. Holds references to the model's tensors, no copies."""

    def __init__(self, model: GPT):
        c = model.config
        self.n_head, self.head_dim, self.n_embd = c.n_head, c.head_dim, c.n_embd
        self.scale = 1.0 / math.sqrt(c.head_dim)
        self.wte, self.wpe = model.wte.weight, None if model.wpe is None else model.wpe.weight
        self.ln_f = (model.ln_f.weight, model.ln_f.bias)
        self.layers = [self._layer(block) for block in model.blocks]

    @staticmethod
    def _layer(block) -> dict:
        attn = block.attn
        return {"ln_1": (block.ln_1.weight, block.ln_1.bias),
                "ln_2": (block.ln_2.weight, block.ln_2.bias),
                "qkv": _linear(attn.c_attn), "proj": _linear(attn.c_proj),
                "fc": _linear(block.mlp.c_fc), "out": _linear(block.mlp.c_proj),
                "rel": getattr(attn, "rel_emb", None)}

    def __call__(self, token: torch.Tensor, pos: int, cache: KVCache) -> torch.Tensor:
        x = self.wte[token]  # (B, C)
        if self.wpe is not None:
            x = x + self.wpe[pos]
        for layer, kv in zip(self.layers, cache.layers, strict=True):
            x = self._block(x, layer, kv, pos)
        x = F.layer_norm(x, (self.n_embd,), *self.ln_f)
        return x @ self.wte.t()  # (B, V), tied output projection

    def _block(self, x: torch.Tensor, layer: dict, kv, pos: int) -> torch.Tensor:
        B, H, D = x.shape[0], self.n_head, self.head_dim
        h = F.layer_norm(x, (self.n_embd,), *layer["ln_1"])
        q, k, v = _apply(layer["qkv"], h).view(B, 3, H, D).unbind(1)  # each (B, H, D)
        kv.k[:, :, pos] = k
        kv.v[:, :, pos] = v
        n = pos + 1
        q = q.unsqueeze(2)  # (B, H, 1, D)
        scores = q @ kv.k[:, :, :n].transpose(-1, -2)  # (B, H, 1, n)
        if layer["rel"] is not None:  # q . E[pos - j]: distances 0..pos, flipped to key order
            scores = scores + (q @ layer["rel"][:n].t()).flip(-1)
        weights = (scores * self.scale).softmax(-1)
        y = (weights @ kv.v[:, :, :n]).view(B, self.n_embd)
        x = x + _apply(layer["proj"], y)
        h = F.layer_norm(x, (self.n_embd,), *layer["ln_2"])
        return x + _apply(layer["out"], F.gelu(_apply(layer["fc"], h), approximate="tanh"))


def fast_step_for(model: GPT) -> FastStep | None:
    """A `FastStep` over `model`, or None where the eager forward must run: not on a CPU, in
    training mode, bf16 weights (CPU attention in bf16 is slow), or a forward replaced on the
    instance (a wrapper or a test's spy sees every step)."""
    if (model.device.type != "cpu" or model.training or "forward" in vars(model)
            or model.wte.weight.dtype != torch.float32):
        return None
    return FastStep(model)
