"""Reduced-precision models for sampling on CPU: bf16 weights, or int8 weights.

Decoding one token reads every weight once, so at batch 1 a step costs about the bytes of the
weights. Halving (bf16) or quartering (int8) them is the one large speed-up left once the Python
overhead is gone. Training, evaluation and attention maps never use them.

Quantise once, when the model is loaded (gpt-fast quantises offline), not on every generation:
`checkpoint.load_sampling_model` converts a freshly loaded model in place
(`quantize_for_sampling`), and `generate` samples from whatever model it is given.
`sampling_copy` keeps the original model too, for side-by-side comparisons (benchmarks, tests).

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
# From this many rows (a prefill, not a decode step) an int8 layer multiplies in bf16 (its int8
# values are exact in bf16): on a Xeon with AMX, 384 rows took 0.35 ms instead of the int8
# kernel's 3.1 ms (256 x 1024 weights, one thread); at 1-8 rows the int8 kernel wins.
PREFILL_ROWS = 32


class Int8Linear(nn.Module):
    """y = x @ (Q * scale) + b, Q int8 (out, in), scale (out,): a decode step reads a quarter of
    a Linear's bytes (a prefill reads a bf16 copy of Q)."""

    def __init__(self, linear: Linear):
        super().__init__()
        w = linear.weight.detach().float().t()  # (out, in)
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        self.register_buffer("q", q)
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.register_buffer("bias", linear.bias.detach().float().clone())
        # Q as bf16 for a prefill's matmul, made once (not saved): converting Q on every call
        # took ~10% of a prefill. Kept (out, in) as Q: an (in, out) copy multiplied ~15% faster
        # but rounded some row counts differently
        self.register_buffer("q16", q.to(torch.bfloat16), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        if flat.shape[0] >= PREFILL_ROWS:  # a prefill: one bf16 matmul beats the int8 kernel
            out = torch.mm(flat, self.q16.t()).mul_(self.scale)
        elif hasattr(torch, "_weight_int8pack_mm") and flat.device.type == "cpu":
            out = torch._weight_int8pack_mm(flat, self.q, self.scale)
        else:
            out = flat @ (self.q.to(flat.dtype) * self.scale[:, None]).t()
        # cast, then add in place: adding the fp32 bias to bf16 would cast into a temporary
        return out.float().add_(self.bias).view(*x.shape[:-1], -1)


def sampling_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> str:
    """"float32", "bfloat16" or "int8" for a dtype name or alias; "auto" is int8 on a CPU only.

    Raises ValueError for an unknown name, so a caller can refuse it before loading anything.
    """
    if dtype == "auto":
        return "int8" if torch.device(device).type == "cpu" else "float32"
    aliases = {None: "float32", torch.float32: "float32", "fp32": "float32", "float32": "float32",
               torch.bfloat16: "bfloat16", "bf16": "bfloat16", "bfloat16": "bfloat16",
               "int8": "int8", torch.int8: "int8"}
    if dtype not in aliases:
        raise ValueError(f"unknown sampling dtype {dtype!r}; "
                         f"choose from auto, {', '.join(SAMPLING_DTYPES)}")
    return aliases[dtype]


def quantize_for_sampling(model: GPT, dtype: str | torch.dtype | None) -> GPT:
    """Turn `model` itself (eval mode) into its sampling form: int8 or bf16 weights, fp32 as is.

    In place, so a model loaded only to sample from costs no second copy; its fp32 Linear
    weights are dropped. Returns the model for chaining.
    """
    name = sampling_dtype(dtype, model.device)
    if _as_is(model, name):
        return model
    model.eval()
    if name == "int8":
        _swap_linears(model)
        return model
    return model.to(torch.bfloat16)


def sampling_copy(model: GPT, dtype: str | torch.dtype | None) -> GPT:
    """`model` itself for fp32 (or None), else an eval-mode copy with int8 or bf16 weights.

    For comparing precisions on one model (benchmarks, tests); to sample, load the model once
    with `checkpoint.load_sampling_model` instead of copying it on every call.
    """
    name = sampling_dtype(dtype, model.device)
    return model if _as_is(model, name) else quantize_for_sampling(copy.deepcopy(model), name)


def _as_is(model: GPT, name: str) -> bool:
    """Nothing to convert: fp32 asked, or bf16 asked of a model already in bf16."""
    return name == "float32" or (name == "bfloat16" and model.wte.weight.dtype == torch.bfloat16)


def _swap_linears(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, Linear):
            setattr(module, name, Int8Linear(child))
        else:
            _swap_linears(child)
