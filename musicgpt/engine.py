"""The fast decode steps: one cached (B, 1) step through a GPT's weights, for sampling on CPU.
Nothing about MIDI or sampling; reads the model's weights, owns none. Two of them, one contract
(`step(token (B,), pos, cache) -> logits (B, V)`), picked by `fast_step_for`:

- `KernelStep` (the default where numba is installed): the whole step is one compiled call
  (kernel.py) over weights packed once per model; asked to (decode.py's `roll`), a relative
  model's cache rolls past its length instead of being re-prefilled. int8 weights read an int16
  copy of the cache; finished rows are skipped.
- `FastStep` (torch ops, the fallback): the same weights as a flat list of tensor ops. A decode
  step of this model is memory traffic and overhead, not arithmetic (6.8 MFLOP): at batch 1 on
  one Xeon core its 16 fp32 matrices stream from L3 in ~0.55 ms (24 GB/s; int8 ~0.23 ms), and
  `GPT.forward` adds ~40 module calls, a mask and index tensors (1.9-2.2 ms a step in all).
  FastStep walks the same weights with ~16 plain ops per layer and no modules: keys and values
  are written into the caller's `layers.KVCache` at an int position (views, no index tensors),
  and for the one new query the Music-Transformer skew reduces to q . E[pos - j], a slice of the
  distance table kept in reverse order, added to q . k by one `baddbmm`.

Logits equal `GPT.forward`'s within fp32 rounding (tests/test_engine.py). Prefill (and
FastStep's window re-prefill) goes through `GPT.forward` (one call per window, batched over T).
"""

from __future__ import annotations

import math
import os
import threading
import weakref

import numpy as np
import torch

from . import kernel
from .layers import KVCache, Linear
from .model import GPT


class FastStep:
    """`step(token (B,), pos, cache) -> logits (B, V)`: `model(token[:, None], [pos], pos + 1,
    cache)[:, -1]` in ~16 tensor ops per layer.

    Built per decode (`fast_step_for`, ~1 ms): it keeps references to the model's matrices and
    makes two small derived tensors per layer, the query projection with 1/sqrt(D) folded in (a
    power of two, so the products round exactly as the eager path's scaled queries) and the
    distance table in reverse order. Nothing here is mutable, so threads may share one.
    """

    def __init__(self, model: GPT):
        c = model.config
        self.n_head, self.head_dim, self.width = c.n_head, c.head_dim, (c.n_embd,)
        self.wte = model.wte.weight
        self.wte_t = self.wte.t()
        self.wpe = None if model.wpe is None else model.wpe.weight
        self.ln_f = (model.ln_f.weight, model.ln_f.bias, model.ln_f.eps)
        self.layers = [_Layer(block, 1.0 / math.sqrt(c.head_dim)) for block in model.blocks]

    def __call__(self, token: torch.Tensor, pos: int, cache: KVCache) -> torch.Tensor:
        B, H, D = token.shape[0], self.n_head, self.head_dim
        BH, n, width = B * H, pos + 1, self.width
        layer_norm = torch.layer_norm
        x = self.wte.index_select(0, token)  # (B, C)
        if self.wpe is not None:
            x = x + self.wpe[pos]
        for layer, kv in zip(self.layers, cache.layers, strict=True):
            h = layer_norm(x, width, layer.ln_1[0], layer.ln_1[1], layer.eps)
            q, new = layer.qkv(h)  # (B, C) scaled queries, (B, 2C) keys and values
            new = new.view(B, 2, H, D)
            kv.k.select(2, pos).copy_(new[:, 0])
            kv.v.select(2, pos).copy_(new[:, 1])
            keys = kv.k[:, :, :n].reshape(BH, n, D).transpose(1, 2)  # a view: (B*H, D, n)
            q1 = q.view(BH, 1, D)
            if layer.rel is None:
                scores = torch.bmm(q1, keys)
            else:  # q . E[pos - j] for keys j = 0..pos: a slice of the reversed table
                rel = torch.mm(q.view(BH, D), layer.rel[layer.rel.shape[0] - n :].t())
                scores = torch.baddbmm(rel.view(BH, 1, n), q1, keys)
            y = torch.bmm(scores.softmax(-1), kv.v[:, :, :n].reshape(BH, n, D))
            x = layer.proj(y.view(B, -1), x)
            h = layer_norm(x, width, layer.ln_2[0], layer.ln_2[1], layer.eps)
            x = layer.mlp(h, x)
        x = layer_norm(x, width, *self.ln_f)
        return torch.mm(x, self.wte_t)  # (B, V), tied output projection


class _Layer:
    """One block's tensors for `FastStep`, fp32 (`Linear`: W (in, out), b) or int8
    (`quantize.Int8Linear`: Q (out, in), bf16 scale, b), and its products."""

    def __init__(self, block, scale: float):
        attn, mlp = block.attn, block.mlp
        self.ln_1 = (block.ln_1.weight, block.ln_1.bias)
        self.ln_2 = (block.ln_2.weight, block.ln_2.bias)
        self.eps = block.ln_1.eps
        rel = getattr(attn, "rel_emb", None)  # row L-1-r holds distance r
        self.rel = None if rel is None else rel.detach().flip(0)
        C = attn.c_proj.bias.shape[0]
        self.int8 = not isinstance(attn.c_attn, Linear)
        if self.int8:
            a = attn.c_attn
            self.q = (a.q[:C], a.scale[:C] * scale, a.bias[:C] * scale)
            self.kv = (a.q[C:], a.scale[C:], a.bias[C:])
            self.wp, self.wf, self.wo = (_int8(m) for m in (attn.c_proj, mlp.c_fc, mlp.c_proj))
        else:
            w, b = attn.c_attn.weight.detach(), attn.c_attn.bias.detach()
            self.q = (w[:, :C] * scale, b[:C] * scale)
            self.kv = (w[:, C:], b[C:])  # a strided view: addmm reads it in place
            self.wp, self.wf, self.wo = ((m.weight, m.bias)
                                         for m in (attn.c_proj, mlp.c_fc, mlp.c_proj))

    def qkv(self, h: torch.Tensor):
        if self.int8:
            h = h.to(torch.bfloat16)
            return _int8_mm(h, *self.q), _int8_mm(h, *self.kv)
        return torch.addmm(self.q[1], h, self.q[0]), torch.addmm(self.kv[1], h, self.kv[0])

    def proj(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x + the attention's output projection of y."""
        if self.int8:
            return x + _int8_mm(y.to(torch.bfloat16), *self.wp)
        return torch.addmm(self.wp[1], y, self.wp[0]).add_(x)

    def mlp(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x + the feed-forward of h (tanh GELU in place)."""
        if self.int8:
            f = torch._C._nn.gelu_(_int8_mm(h.to(torch.bfloat16), *self.wf), approximate="tanh")
            return x + _int8_mm(f.to(torch.bfloat16), *self.wo)
        f = torch._C._nn.gelu_(torch.addmm(self.wf[1], h, self.wf[0]), approximate="tanh")
        return torch.addmm(self.wo[1], f, self.wo[0]).add_(x)


def _int8(layer) -> tuple:
    return layer.q, layer.scale, layer.bias


def _int8_mm(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor):
    """bf16 x (B, in) through int8 Q (out, in) and scale, + fp32 bias -> fp32 (B, out): the
    numbers of `quantize.Int8Linear` at decode-step sizes."""
    if _HAS_INT8_KERNEL:
        out = torch._weight_int8pack_mm(x, q, scale)
    else:
        out = x @ (q.to(x.dtype) * scale[:, None]).t()
    return torch.add(out, bias)  # bf16 + fp32 -> fp32, as out.float() + bias


_HAS_INT8_KERNEL = hasattr(torch, "_weight_int8pack_mm")


class KernelStep:
    """`FastStep`'s contract, `step(token (B,), pos, cache) -> logits (B, V)`, run by the compiled
    step of kernel.py: the whole step is one call, no torch op per layer.

    The weights are packed into numpy arrays once per model (`_packed`, kept while the model's
    weights are unchanged); the cache's (L, B, H, T, D) tensors are read and written in place
    through numpy views, so a prefill through `GPT.forward` and these steps share one cache.
    With int8 weights attention reads an int16 copy of the cache (`kernel.QuantizedCache`, half
    the bytes), kept on the cache and made again whenever a forward has written the cache since.
    A relative model's step may go past the cache's length: the cache rolls (`rolls`, kernel.step),
    and rows marked in `skip` (finished pieces) cost no attention. With TORCH_FROM_ROWS rows or
    more still running and more than one torch thread (or float32 weights), a step within the
    cache is `FastStep`'s (faster there; its logits are the same within 1e-4 in float32).
    """

    rolls = True

    def __init__(self, model: GPT):
        self.weights = _packed(model)
        self.vocab_size = model.config.vocab_size
        self.quantized_cache = self.weights.w_qkv.dtype == np.int8
        self.torch_step = FastStep(model)

    def __call__(self, token: torch.Tensor, pos: int, cache: KVCache, n_pin: int = 0,
                 skip: np.ndarray | None = None) -> torch.Tensor:
        live = token.shape[0] - (0 if skip is None else int(skip.sum()))
        if (live >= TORCH_FROM_ROWS and pos < cache.max_len
                and (torch.get_num_threads() > 1 or not self.quantized_cache)):
            cache.writes += 1  # written behind the int16 copy's back: make it again when needed
            return self.torch_step(token, pos, cache)
        logits = torch.empty(token.shape[0], self.vocab_size)
        k, v = cache.k.numpy(), cache.v.numpy()
        copy = None
        if self.quantized_cache:
            held = getattr(cache, "kernel_copy", None)
            if held is None or held[0] != cache.writes:
                # the slots written so far: before `pos` (a step writes its own slot)
                held = (cache.writes, kernel.QuantizedCache.of(k, v, pos))
                cache.kernel_copy = held
            copy = held[1]
        tokens = np.ascontiguousarray(token.numpy(), np.int64)  # one compiled signature
        kernel.step(self.weights, tokens, pos, k, v, logits.numpy(), n_pin, copy, skip)
        return logits


# From this many rows still running, a step within the cache runs `FastStep` where torch has
# more than one thread (sampling_threads gives a second from 10 rows), or with float32 weights:
# its batched products win there (Xeon, int8, positions 300/500: 8 rows 1.59/1.98 ms on two
# threads vs the kernel's 2.24/2.85; float32, one thread, positions 1-511: 8 rows 4.33 ms vs
# 4.72). With int8 weights on one thread the kernel won at every batch measured, 6 to 24 rows
# (8 rows 2.24/2.85 vs FastStep's 2.50/3.30).
TORCH_FROM_ROWS = 7

_PACKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PACK_LOCK = threading.Lock()


def _packed(model: GPT) -> kernel.Weights:
    """`model`'s kernel.Weights, packed on first use and again whenever a weight changed
    (tensor versions count in-place updates, such as an optimiser step; weights made under
    torch.inference_mode have none, so only a replaced tensor is seen there)."""
    tensors = list(model.parameters()) + list(model.buffers())
    # an inference tensor (made under torch.inference_mode) has no version counter
    stamp = tuple((t.data_ptr(), -1 if t.is_inference() else t._version) for t in tensors)
    with _PACK_LOCK:
        held = _PACKS.get(model)
        if held is None or held[0] != stamp:
            held = (stamp, _pack(model))
            _PACKS[model] = held
        return held[1]


def _pack(model: GPT) -> kernel.Weights:
    c = model.config

    def arr(t: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(t.detach().float().numpy())

    def matrices(name: str):
        """(L, in, out) weights, (L, out) scales and biases of one Linear of every block."""
        ws, ss, bs = [], [], []
        for block in model.blocks:
            layer = block.get_submodule(name)
            if isinstance(layer, Linear):
                w = layer.weight.detach().numpy()
                ws.append(w)
                ss.append(np.ones(w.shape[1], np.float32))
            else:  # quantize.Int8Linear: Q (out, in) int8, scale (out,) bf16
                ws.append(layer.q.numpy().T)
                ss.append(arr(layer.scale))
            bs.append(arr(layer.bias))
        return np.ascontiguousarray(np.stack(ws)), np.stack(ss), np.stack(bs)

    with torch.no_grad():
        wte = arr(model.wte.weight)
        wpe = (np.zeros((0, c.n_embd), np.float32) if model.wpe is None
               else arr(model.wpe.weight))
        ln = np.stack([np.stack([arr(b.ln_1.weight), arr(b.ln_1.bias), arr(b.ln_2.weight),
                                 arr(b.ln_2.bias)]) for b in model.blocks])
        rels = [getattr(b.attn, "rel_emb", None) for b in model.blocks]
        rel = (np.zeros((c.n_layer, 0, c.head_dim), np.float32) if rels[0] is None
               else np.stack([arr(r) for r in rels]))  # (L, R, D): row r = distance r
        rel_t = np.ascontiguousarray(rel[:, ::-1].transpose(0, 2, 1))  # column c: R - 1 - c
        return kernel.Weights(
            np.ascontiguousarray(wte.T), wte, wpe, ln,
            np.stack([arr(model.ln_f.weight), arr(model.ln_f.bias)]),
            *matrices("attn.c_attn"), *matrices("attn.c_proj"), *matrices("mlp.c_fc"),
            *matrices("mlp.c_proj"), rel, rel_t, c.n_head, float(model.ln_f.eps))


def fast_step_for(model: GPT, kind: str = "auto") -> FastStep | KernelStep | None:
    """The fastest step `model` allows, or None where the eager forward must run: not on a CPU,
    in training mode, bf16 weights (CPU attention in bf16 is slow), or a forward replaced on the
    instance (a wrapper or a test's spy sees every step). `kind`: "auto" (the compiled
    `KernelStep` where numba is installed, else `FastStep`), "kernel" or "torch"."""
    if (model.device.type != "cpu" or model.training or "forward" in vars(model)
            or model.wte.weight.dtype != torch.float32):
        return None
    if kind == "kernel" or (kind == "auto" and kernel.available() and _KERNEL_ON):
        return KernelStep(model)
    return FastStep(model)


def warm_up(model: GPT) -> None:
    """Compile (or load from numba's disk cache) the kernel `model` samples with, by one step on
    a two-slot cache, and the compiled draw: the first run after an install then pays its
    compile here (10-20 s; the app's "Preparing the sampling weights"), not in a generation."""
    step = fast_step_for(model)
    if not isinstance(step, KernelStep):
        return
    from .sampling import warm_up_draw

    with torch.inference_mode():
        cache = model.new_cache(1, 2)
        model(torch.zeros(1, 1, dtype=torch.long), torch.arange(1), 1, cache)
        step(torch.zeros(1, dtype=torch.long), 1, cache, skip=np.zeros(1, dtype=bool))
    warm_up_draw()


# MUSICGPT_KERNEL=0 keeps sampling on the torch FastStep (for comparing the two)
_KERNEL_ON = os.environ.get("MUSICGPT_KERNEL", "1") != "0"
