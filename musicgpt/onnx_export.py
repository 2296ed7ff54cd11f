"""A checkpoint as an ONNX decoder (`musicgpt export --onnx DIR`), for absolute and relative
attention, in Hugging Face Optimum's decoder layout: inputs `input_ids` (B, T), `position_ids`
(B, T), `past_key_values.N.key/value` (B, H, P, D); outputs `logits` (B, T, V) and
`present.N.key/value` (B, H, P+T, D). The cache is a value passed in and out, as in the torch
decode loop (model.py), so any ONNX runtime can decode: prefill with P = 0, then one token per
step feeding the presents back. Positions of the cache start at 0 (re-prefill from 0 to slide).

Beside model.onnx: config.json (the musicgpt Config plus the graph's names and opset) and
vocab.json (token names by id). Needs the optional `onnx` extra (onnx, onnxruntime) only to
check the export; torch writes the graph.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .files import make_readable, tmp_path, writing
from .model import GPT
from .vocab import VOCAB_SIZE, id_to_name

OPSET = 17


class _Decoder(nn.Module):
    """GPT.forward with the cache as inputs and outputs (B, H, P, D) per layer."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, *past):
        m = self.model
        x = m.wte(input_ids)
        if m.wpe is not None:
            x = x + m.wpe(position_ids)
        presents = []
        for i, block in enumerate(m.blocks):
            attn = block.attn
            q, k, v = attn.qkv(block.ln_1(x))  # (B, H, T, D)
            k, v = torch.cat([past[2 * i], k], 2), torch.cat([past[2 * i + 1], v], 2)
            presents += [k, v]
            y = _attend(q, k, v, position_ids, getattr(attn, "rel_emb", None),
                        1.0 / math.sqrt(attn.head_dim))
            B, T = input_ids.shape
            x = x + attn.c_proj(y.transpose(1, 2).reshape(B, T, -1))
            x = x + block.mlp(block.ln_2(x))
        return (F.linear(m.ln_f(x), m.wte.weight), *presents)


def _attend(q, k, v, position_ids, rel_emb, scale: float):
    """Causal attention of queries at `position_ids` (B, T) over keys at 0..N-1, plus
    q . E[query position - key position] for relative attention."""
    n_keys = k.shape[2]
    distance = position_ids[:, None, :, None] - torch.arange(n_keys)  # (B, 1, T, N)
    scores = q @ k.transpose(-1, -2)
    if rel_emb is not None:
        by_distance = q @ rel_emb.t()  # (B, H, T, block_size)
        index = distance.clamp(0, rel_emb.shape[0] - 1).expand(*scores.shape)
        scores = scores + torch.gather(by_distance, -1, index)
    scores = (scores * scale).masked_fill(distance < 0, -math.inf)
    return scores.softmax(-1) @ v


def io_names(n_layer: int) -> tuple[list[str], list[str]]:
    """(input names, output names) in Optimum's decoder layout."""
    kv = [f"{n}.{i}.{part}" for i in range(n_layer) for n in ("past_key_values",)
          for part in ("key", "value")]
    present = [name.replace("past_key_values", "present") for name in kv]
    return ["input_ids", "position_ids", *kv], ["logits", *present]


def export_onnx(model: GPT, out: Path) -> Path:
    """Write model.onnx, config.json and vocab.json into `out`; returns the model's path."""
    c, model = model.config, model.float().eval()
    inputs, outputs = io_names(c.n_layer)
    ids = torch.zeros(1, 2, dtype=torch.long)
    past = [torch.zeros(1, c.n_head, 3, c.head_dim) for _ in range(2 * c.n_layer)]
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "position_ids": {0: "batch", 1: "tokens"},
            "logits": {0: "batch", 1: "tokens"}}
    axes |= {name: {0: "batch", 2: "past"} for name in inputs[2:]}
    axes |= {name: {0: "batch", 2: "past_and_tokens"} for name in outputs[1:]}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(_Decoder(model), (ids, ids + 3, *past), str(path), input_names=inputs,
                          output_names=outputs, dynamic_axes=axes, opset_version=OPSET,
                          dynamo=False)
    make_readable(path)
    _write_json(out / "config.json", {**asdict(c), "onnx": {
        "opset": OPSET, "inputs": inputs, "outputs": outputs, "layout": "optimum-decoder",
        "head_dim": c.head_dim}})
    _write_json(out / "vocab.json", {str(i): id_to_name(i) for i in range(VOCAB_SIZE)})
    return path


def _write_json(path: Path, data: dict) -> None:
    tmp = tmp_path(path)
    with writing(path, tmp):
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)
    make_readable(path)
