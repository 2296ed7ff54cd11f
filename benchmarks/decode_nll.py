"""Validation NLL through the decode loop itself, per decode path (issue 19's accuracy check).

    python benchmarks/decode_nll.py --data-dir /work/cache_ship [--pieces 20 --tokens 1024]

Teacher forcing through `decode.decode_steps`: its `draw` records log p(the true next token) and
returns the true token, so every path is scored exactly as it samples: the prefill, each cached
step, and past the context either the sliding window (re-prefilled) or the rolling cache (the
kernel, asked to roll). Pieces are validation pieces with at least `--tokens` tokens (START, the
piece's style token where the model has one, then the piece), their first `--tokens` tokens,
one piece at a time, one thread. NLL is reported within the context (positions below block_size)
and past it, with each path's difference from the eager float32 reference.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

import musicgpt.engine
from musicgpt.assets import default_model_dir
from musicgpt.checkpoint import load_sampling_model
from musicgpt.data import load_split, piece_styles
from musicgpt.decode import decode_steps
from musicgpt.training_data import style_slots
from musicgpt.vocab import START_ID, style_id

# name -> (weights, fast, kernel on, roll)
PATHS = {
    "eager float32 (GPT.forward)": ("float32", False, False, False),
    "FastStep float32": ("float32", True, False, False),
    "kernel float32": ("float32", True, True, False),
    "kernel float32, rolling cache": ("float32", True, True, True),
    "eager int8": ("int8", False, False, False),
    "FastStep int8": ("int8", True, False, False),
    "kernel int8 (int16 cache copy)": ("int8", True, True, False),
    "kernel int8, rolling cache": ("int8", True, True, True),
}


def piece_ids(data_dir: Path, config, n_pieces: int, n_tokens: int) -> list[tuple[list, int]]:
    """(START, the style token if the model has one for the piece, then the piece's tokens;
    how many of them go in front: 1 or 2)."""
    val, labels = load_split(data_dir, "val"), piece_styles(data_dir, "val")
    slots = style_slots(config, labels)
    order = np.random.default_rng(0).permutation(len(val))
    pieces = []
    for i in order:
        if len(val[i]) < n_tokens:
            continue
        front = [START_ID] + ([style_id(slots[i])] if slots[i] >= 0 else [])
        pieces.append(((front + [int(t) for t in val[i][1:]])[:n_tokens], len(front)))
        if len(pieces) == n_pieces:
            break
    return pieces


@torch.inference_mode()
def token_logp(model, ids: list[int], n_front: int, fast: bool, roll: bool) -> np.ndarray:
    """log p(ids[t]) for t >= n_front (NaN before), through `decode_steps` as generate runs it:
    history START (+ style), the style kept in front."""
    history = torch.tensor([ids[:n_front]])
    keep_front = history[:, 1:] if n_front > 1 else None
    target = torch.tensor(ids)
    out = np.full(len(ids), np.nan)
    t = n_front

    def draw(logits):
        nonlocal t
        out[t] = float(torch.log_softmax(logits[0].double(), -1)[ids[t]])
        t += 1
        return target[t - 1 : t]

    for _ in decode_steps(model, history, len(ids) - n_front, draw, keep_front=keep_front,
                          fast=fast, roll=roll):
        pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=default_model_dir())
    parser.add_argument("--pieces", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = {dtype: load_sampling_model(args.checkpoint, "cpu", dtype)
              for dtype in ("float32", "int8")}
    block = models["float32"].config.block_size
    pieces = piece_ids(args.data_dir, models["float32"].config, args.pieces, args.tokens)
    print(f"{len(pieces)} validation pieces x {args.tokens} tokens, block_size {block}")
    results = {}
    for name, (dtype, fast, kernel_on, roll) in PATHS.items():
        musicgpt.engine._KERNEL_ON = kernel_on
        start = time.perf_counter()
        logp = np.stack([token_logp(models[dtype], ids, n, fast, roll) for ids, n in pieces])
        results[name] = (-logp, time.perf_counter() - start)
    reference = results[next(iter(PATHS))][0]
    print("| path | NLL, positions < block | past it | vs eager float32 (within / past) | s |")
    print("|---|---:|---:|---:|---:|")
    for name, (nll, seconds) in results.items():
        within, past = np.nanmean(nll[:, :block]), np.nanmean(nll[:, block:])
        ref_in, ref_past = np.nanmean(reference[:, :block]), np.nanmean(reference[:, block:])
        print(f"| {name} | {within:.4f} | {past:.4f} | {100 * (within / ref_in - 1):+.3f}% / "
              f"{100 * (past / ref_past - 1):+.3f}% | {seconds:.0f} |")
        assert math.isfinite(within)


if __name__ == "__main__":
    main()
