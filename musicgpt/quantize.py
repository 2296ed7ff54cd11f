"""Reduced-precision copies of a model for sampling on CPU: bf16 weights, or int8 weights.

Decoding one token reads every weight once, so at batch 1 a step costs about the bytes of the
weights. Halving (bf16) or quartering (int8) them is the one large speed-up left once the Python
overhead is gone. Training never uses these copies; the original model is left untouched.

"int8" is weight-only: each Linear's W (in, out) is stored as int8 (out, in) with one scale per
output column (symmetric, max-abs). The product goes through `torch._weight_int8pack_mm`, the
fused CPU kernel gpt-fast uses, fed bf16 activations (its fp32 path is slow); everything else
(norms, embeddings, the KV cache and attention) stays fp32, because CPU attention in bf16 runs
5-7x slower than in fp32. Where a torch build lacks the kernel, the weights are dequantised on the
fly (same numbers, no speed-up).
"bfloat16" casts the whole model, cache included: the fast mode on a GPU, not on a CPU.
"auto" (the CLI's and the app's default) is int8 on a CPU and the model's own weights elsewhere.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .layers import Linear
from .model import GPT

SAMPLING_DTYPES = ("float32", "bfloat16", "int8")


class Int8Linear(nn.Module):
    """y = x @ (Q * scale) + b, Q int8 (out, in), scale (out,): a quarter of a Linear's bytes."""

    def __init__(self, linear: Linear):
        super().__init__()
        w = linear.weight.detach().float().t()  # (out, in)
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        self.register_buffer("q", q)
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.register_buffer("bias", linear.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        if hasattr(torch, "_weight_int8pack_mm") and flat.device.type == "cpu":
            out = torch._weight_int8pack_mm(flat, self.q, self.scale)
        else:
            out = flat @ (self.q.to(flat.dtype) * self.scale[:, None]).t()
        return (out.to(x.dtype) + self.bias).view(*x.shape[:-1], -1)


def sampling_copy(model: GPT, dtype: str | torch.dtype | None) -> GPT:
    """`model` itself for fp32 (or None), else an eval-mode copy with int8 or bf16 weights."""
    if dtype == "auto":
        dtype = "int8" if model.wte.weight.device.type == "cpu" else None
    name = _dtype_name(dtype)
    if name == "float32" or (name == "bfloat16" and model.wte.weight.dtype == torch.bfloat16):
        return model
    low = copy.deepcopy(model).eval()
    if name == "int8":
        _swap_linears(low)
        return low
    return low.to(torch.bfloat16)


def _dtype_name(dtype: str | torch.dtype | None) -> str:
    aliases = {None: "float32", torch.float32: "float32", "fp32": "float32", "float32": "float32",
               torch.bfloat16: "bfloat16", "bf16": "bfloat16", "bfloat16": "bfloat16",
               "int8": "int8", torch.int8: "int8"}
    if dtype not in aliases:
        raise ValueError(f"unknown sampling dtype {dtype!r}; "
                         f"choose from auto, {', '.join(SAMPLING_DTYPES)}")
    return aliases[dtype]


def _swap_linears(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, Linear):
            setattr(module, name, Int8Linear(child))
        else:
            _swap_linears(child)
