"""Relative attention: Huang et al.'s skewing against Shaw et al.'s materialised (L, L, D) table.

    python benchmarks/bench_relative.py [--lengths 512 1024 2048 --heads 4 --head-dim 64
        --repeats 5 --threads 1 --max-naive-gb 6]

Both sides compute the same causal relative attention, batch 1, fp32,
softmax((q.k + q.E[i-j]) / sqrt(D)) @ v, forward AND backward (gradients to q, k, v and E), since
training is where the memory goes. They differ only in the relative term:
- skewed: q @ E^T, (L, D) x (D, L), then pad/reshape/slice (musicgpt.relative, the model's code);
- naive: gather E[i-j] into an (L, L, D) tensor and contract it with q (Shaw et al.).
Time: median of `--repeats`, the two sides interleaved in one child process per length.
Peak memory: one child process per (side, length) that builds its inputs, reads
resource.getrusage(RUSAGE_SELF).ru_maxrss (the resident high-water mark), runs the side once and
reads it again; the growth is the side's peak working memory. A naive case whose (L, L, D) table
alone would pass `--max-naive-gb` is reported with its computed size and skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import torch
from common import REPO, interleaved, load_average, machine, maxrss_mb

from musicgpt.relative import skewed_relative_logits

SIDES = ("skewed", "naive")


def _inputs(length: int, heads: int, head_dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, heads, length, head_dim, generator=g, requires_grad=True)
               for _ in range(3))
    rel_emb = torch.randn(length, head_dim, generator=g, requires_grad=True)  # unit scale, like q
    return q, k, v, rel_emb


def _naive_relative(q: torch.Tensor, rel_emb: torch.Tensor) -> torch.Tensor:
    """Shaw et al.: table[i, j] = E[i - j] (clamped; future keys are masked), (L, L, D)."""
    L = q.shape[2]
    distance = (torch.arange(L)[:, None] - torch.arange(L)[None, :]).clamp(min=0)
    table = rel_emb[distance]  # (L, L, D): the tensor skewing avoids
    return torch.einsum("bhid,ijd->bhij", q, table)


def attention(side: str, q, k, v, rel_emb) -> torch.Tensor:
    L, D = q.shape[2], q.shape[3]
    rel = skewed_relative_logits(q, rel_emb, L) if side == "skewed" else _naive_relative(q, rel_emb)
    scores = (q @ k.transpose(-2, -1) + rel) / math.sqrt(D)
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    return scores.masked_fill(~causal, -math.inf).softmax(-1) @ v


def _step(side: str, tensors) -> None:
    for t in tensors:
        t.grad = None
    attention(side, *tensors).square().mean().backward()


def naive_table_gb(length: int, head_dim: int) -> float:
    return length * length * head_dim * 4 / 2**30


def child(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    tensors = _inputs(args.length, args.heads, args.head_dim)
    if args.memory:
        before = maxrss_mb()
        _step(args.side, tensors)
        return {"peak_growth_mb": round(maxrss_mb() - before, 1)}
    q, k, v, rel_emb = tensors
    with torch.no_grad():  # both sides compute the same function
        diff = float((attention("skewed", *tensors) - attention("naive", *tensors)).abs().max())
    sides = {side: (lambda s=side: _step(s, tensors)) for side in SIDES if side in args.run}
    for fn in sides.values():  # warm-up
        fn()
    return {"seconds": interleaved(sides, args.repeats), "max_abs_diff": diff}


def _run_child(args: argparse.Namespace, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", "--heads", str(args.heads), "--head-dim",
           str(args.head_dim), "--threads", str(args.threads), "--repeats", str(args.repeats),
           *extra]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _row(args: argparse.Namespace, length: int) -> dict:
    naive_ok = naive_table_gb(length, args.head_dim) <= args.max_naive_gb
    run = ["skewed", "naive"] if naive_ok else ["skewed"]
    timing = _run_child(args, ["--length", str(length), "--run", *run])
    memory = {side: _run_child(args, ["--length", str(length), "--side", side, "--memory"])
              for side in run}
    return {"length": length, "naive_table_gb": naive_table_gb(length, args.head_dim),
            "naive_ran": naive_ok, "timing": timing, "memory": memory}


def _print_row(row: dict) -> None:
    t, m = row["timing"]["seconds"], row["memory"]
    skew_ms, skew_mb = t["skewed"] * 1e3, m["skewed"]["peak_growth_mb"]
    if row["naive_ran"]:
        naive_ms, naive_mb = t["naive"] * 1e3, m["naive"]["peak_growth_mb"]
        print(f"| {row['length']} | {skew_ms:.0f} | {naive_ms:.0f} | {naive_ms / skew_ms:.1f}x | "
              f"{skew_mb:.0f} | {naive_mb:.0f} | {naive_mb / max(skew_mb, 1):.1f}x | "
              f"{row['timing']['max_abs_diff']:.1e} |")
    else:
        print(f"| {row['length']} | {skew_ms:.0f} | skipped | | {skew_mb:.0f} | skipped: the "
              f"table alone is {row['naive_table_gb']:.1f} GiB (x3 with its gradient and "
              f"einsum copies) | | |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CI has 2 cores)")
    parser.add_argument("--max-naive-gb", type=float, default=6.0,
                        help="skip a naive case whose (L, L, D) table is larger (GiB)")
    parser.add_argument("--json-out", help="write the rows as JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--run", nargs="+", default=list(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    torch.set_num_threads(args.threads)
    print(f"{machine()}; load {load_average()}; batch 1, {args.heads} heads, head_dim "
          f"{args.head_dim}, fp32, forward+backward, median of {args.repeats}")
    print("\n| L | skewed ms | naive ms | time ratio | skewed peak MB | naive peak MB | "
          "memory ratio | max diff |\n|---|---|---|---|---|---|---|---|")
    rows = []
    for length in args.lengths:
        rows.append(_row(args, length))
        _print_row(rows[-1])
    print(f"load after: {load_average()}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
