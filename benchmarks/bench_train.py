"""Training tokens/s: musicgpt's GPT against Hugging Face GPT2LMHeadModel, same weights and step.

One training step on each side: forward over (batch, seq) ids, cross-entropy on next-token
targets (fp32 logits), backward, gradient clipping at 1.0, AdamW (decay on matrices only). Same
initial weights (HF's copied from ours), fp32, dropout equal on both sides (--dropout; attention
dropout > 0 sends CPU SDPA to a slower kernel on both). One warm-up step, then --steps steps per
side, interleaved, median per step.

    python benchmarks/bench_train.py                          # batch 8, seq 512
    python benchmarks/bench_train.py --steps 2 --threads 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from common import (
    BENCH_CONFIG,
    add_side_arguments,
    hf_model_from,
    interleaved,
    load_average,
    machine,
    our_model,
    random_music_ids,
    report_memory,
    reset_peak_memory,
    side_peak_memory,
)


def step_runner(model: torch.nn.Module, logits_of, batch: int, seq: int):
    """A closure doing one full training step on fixed random ids."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": rest, "weight_decay": 0.0}], lr=1e-4,
                                  betas=(0.9, 0.95))
    ids = random_music_ids((batch, seq + 1))

    def run():
        logits = logits_of(ids[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                               ids[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return run


def build_sides(dropout: float, batch: int, seq: int) -> dict:
    ours = our_model(BENCH_CONFIG.replace(dropout=dropout)).train()
    hf = hf_model_from(ours, dropout=dropout).train()
    return {"hf": step_runner(hf, lambda x: hf(input_ids=x).logits, batch, seq),
            "ours": step_runner(ours, ours, batch, seq)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dropout", type=float, default=0.0)
    add_side_arguments(parser, "ours")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sides = build_sides(args.dropout, args.batch_size, args.seq)
    if args.memory:
        sides = {args.side: sides[args.side]}  # drop the other model before measuring
        import gc

        gc.collect()
        setup = reset_peak_memory()
        sides[args.side]()
        sides[args.side]()  # the second step holds AdamW's moments too
        return report_memory(setup)

    print(f"machine: {machine()}; load average {load_average()}")
    print(f"config: {BENCH_CONFIG.short()}; batch {args.batch_size} x seq {args.seq}, fp32, "
          f"dropout {args.dropout} on both sides; warm-up 1 step, median of {args.steps}")
    for run in sides.values():
        run()
    timings = interleaved(sides, args.steps)
    tokens, hf = args.batch_size * args.seq, timings["hf"]
    for name, t in timings.items():
        print(f"{name:5s} wall {tokens / t.wall_s:7.1f} tok/s {hf.wall_s / t.wall_s:5.2f}x HF | "
              f"CPU {tokens / t.cpu_s:7.1f} tok/s {hf.cpu_s / t.cpu_s:5.2f}x HF")
    print(f"(load average {load_average()})")
    if not args.no_memory:
        for side in sides:
            mem = side_peak_memory(Path(__file__), side, args.threads, "--batch-size",
                                   str(args.batch_size), "--seq", str(args.seq),
                                   "--dropout", str(args.dropout))
            print(f"peak RSS {side:5s} {mem['peak_mb']:7.1f} MB "
                  f"(set-up {mem['setup_mb']:.1f}, two steps +{mem['growth_mb']:.1f})")


if __name__ == "__main__":
    sys.exit(main())
