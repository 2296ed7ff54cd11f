"""KV cache against recomputing the prefix: tokens/s of musicgpt's sampler both ways.

Same model (random weights, 6 x 512 x 8, context 2048, fp32), same sampling (top-k 40, no grammar
mask), batch 1, exactly --new-tokens new tokens from a one-token primer. The cached side is
`generate` (prefill, then one (B, 1) step per token into preallocated buffers); the other side runs
a full forward over the whole sequence for every new token, as an uncached decoder must. The
recompute side costs O(n^2): 1024 tokens take a few minutes of CPU.

    python benchmarks/bench_kvcache.py                      # 1024 new tokens
    python benchmarks/bench_kvcache.py --new-tokens 256 --threads 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from bench_generate import SETTINGS, bench_model, ours_runner
from common import (
    BENCH_CONFIG,
    add_side_arguments,
    interleaved,
    load_average,
    machine,
    report_memory,
    reset_peak_memory,
    side_peak_memory,
)

from musicgpt.model import GPT
from musicgpt.scoring import sample, top_k_filter
from musicgpt.vocab import START_ID


def recompute_runner(model: GPT, new_tokens: int):
    """Decode without a cache: every step re-reads the whole sequence."""

    def run():
        rng = np.random.default_rng(0)
        seq = torch.tensor([[START_ID]])
        with torch.no_grad():
            for _ in range(new_tokens):
                logits = model(seq)[:, -1]
                token = sample(top_k_filter(logits.numpy(), SETTINGS.top_k), rng)
                seq = torch.cat([seq, torch.from_numpy(token)[:, None]], 1)
        assert seq.shape[1] == new_tokens + 1
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=1)
    add_side_arguments(parser, "cache")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    model = bench_model()
    sides = {"kv cache": ours_runner(model, 1, args.new_tokens),
             "recompute": recompute_runner(model, args.new_tokens)}
    if args.memory:  # recompute's peak is its last, longest forward: run only that one
        setup = reset_peak_memory()
        if args.side == "recompute":
            model(torch.full((1, args.new_tokens), START_ID))
        else:
            sides[args.side]()
        return report_memory(setup)

    print(f"machine: {machine()}; load average {load_average()}")
    print(f"config: {BENCH_CONFIG.short()}; batch 1, {args.new_tokens} new tokens, top-k 40; "
          f"warm-up (full length cached, 64 tokens recomputed), then median of {args.repeats}")
    ours_runner(model, 1, args.new_tokens)()
    recompute_runner(model, min(64, args.new_tokens))()
    timings = interleaved(sides, args.repeats)
    cached, full = timings["kv cache"], timings["recompute"]
    for name, t in timings.items():
        print(f"{name:10s} wall {args.new_tokens / t.wall_s:7.1f} tok/s | "
              f"CPU {args.new_tokens / t.cpu_s:7.1f} tok/s")
    print(f"KV cache speed-up: {full.wall_s / cached.wall_s:.1f}x wall, "
          f"{full.cpu_s / cached.cpu_s:.1f}x CPU time (load average {load_average()})")
    if not args.no_memory:
        for side in sides:
            mem = side_peak_memory(Path(__file__), side, args.threads,
                                   "--new-tokens", str(args.new_tokens))
            print(f"peak RSS {side:10s} {mem['peak_mb']:7.1f} MB "
                  f"(set-up {mem['setup_mb']:.1f}, decoding +{mem['growth_mb']:.1f})")


if __name__ == "__main__":
    sys.exit(main())
