"""Old vs new decode paths in one run (`bench_generate.py --engine`): the decode step alone, eager
`GPT.forward` (the reference, today's path when issue 19 was filed), `engine.FastStep` (torch
ops, the fallback without numba) and `engine.KernelStep` (kernel.py, the default), timed step by
step interleaved (each position runs all three, each on its own cache, so machine load hits them
alike); tokens/s of `generate` on each path (`fast=False`; FastStep; the kernel, whose cache
rolls past the context where the others re-prefill a window), per weight mode and batch; the
time from a 512-token primer to the first new token; and the largest logit difference from the
eager path over a piece decoded step by step.

The model is a trained checkpoint (the shipped one by default), the sampler its own settings
with one candidate per row unless told, END left on (rows may stop early: tokens/s counts the
tokens made). Sides run interleaved after a warm-up; medians count.
"""

from __future__ import annotations

import time

import torch
from common import interleaved

import musicgpt.engine
from musicgpt.checkpoint import load_sampling_model
from musicgpt.decode import _eager_step
from musicgpt.engine import FastStep, KernelStep
from musicgpt.sampling import SamplingSettings, generate_pieces
from musicgpt.vocab import START_ID

PATHS = ("eager", "FastStep", "kernel")


def _runner(model, batch: int, new_tokens: int, candidates: int, path: str, made: list,
            primer: list[int] = (START_ID,)):
    settings = SamplingSettings(candidates=candidates)

    def run():
        musicgpt.engine._KERNEL_ON = path == "kernel"
        try:
            pieces = generate_pieces(model, list(primer), max_new_tokens=new_tokens,
                                     num_samples=batch, settings=settings, seed=0, threads=1,
                                     fast=path != "eager")
        finally:
            musicgpt.engine._KERNEL_ON = True
        made.append(sum(len(row) - 1 for row in pieces.rows) * candidates)
    return run


def speed_rows(checkpoint, dtypes, batches, new_tokens: int, repeats: int,
               candidates: int = 1) -> list[dict]:
    """One row per (dtype, batch): tokens/s on each path."""
    rows = []
    for dtype in dtypes:
        model = load_sampling_model(checkpoint, torch.device("cpu"), dtype)
        for batch in batches:
            made = {name: [] for name in PATHS}
            sides = {name: _runner(model, batch, new_tokens, candidates, name, made[name])
                     for name in PATHS}
            for run in sides.values():
                run()  # warm-up (and the kernel's compile, once)
            timing = interleaved(sides, repeats)
            rows.append({"dtype": dtype, "batch": batch, "candidates": candidates,
                         **{name: made[name][-1] / timing[name].wall_s for name in sides}})
    return rows


@torch.inference_mode()
def step_rows(checkpoint, dtypes, batches, length: int = 512) -> list[dict]:
    """Mean ms per decode step on each path, positions 1..length-1 after a one-token prefill, no
    draw; each position runs the paths back to back (interleaved)."""
    rows = []
    for dtype in dtypes:
        model = load_sampling_model(checkpoint, torch.device("cpu"), dtype)
        n = min(length, model.config.block_size)
        positions = torch.arange(n)
        for batch in batches:
            steps = {"eager": _eager_step(model, n, False), "FastStep": FastStep(model),
                     "kernel": KernelStep(model)}
            ids = torch.randint(0, 300, (batch, n), generator=torch.Generator().manual_seed(0))
            caches = {name: model.new_cache(batch, n) for name in steps}
            spent = dict.fromkeys(steps, 0.0)
            for name, step in steps.items():
                model(ids[:, :1], positions[:1], 1, caches[name])
                step(ids[:, 1], 1, model.new_cache(batch, n))  # warm-up (a compile, once)
            for pos in range(1, n):
                for name, step in steps.items():
                    start = time.perf_counter()
                    step(ids[:, pos], pos, caches[name])
                    spent[name] += time.perf_counter() - start
            rows.append({"dtype": dtype, "batch": batch,
                         **{name: 1e3 * spent[name] / (n - 1) for name in steps}})
    return rows


def first_token_ms(checkpoint, dtype: str, primer_len: int, repeats: int) -> dict:
    """Median ms from a `primer_len`-token history (START included) to the first new token."""
    model = load_sampling_model(checkpoint, torch.device("cpu"), dtype)
    primer = torch.randint(0, 300, (primer_len - 1,), generator=torch.Generator().manual_seed(0))
    times = {name: [] for name in PATHS}
    for _ in range(2):
        for name in PATHS:
            for _ in range(repeats):
                run = _runner(model, 1, 1, 1, name, [], primer.tolist())
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * sorted(t)[len(t) // 2] for name, t in times.items()}


@torch.inference_mode()
def logit_difference(checkpoint, dtype: str, length: int, kind=FastStep) -> float:
    """Max |logit| difference from eager over `length` tokens decoded one step at a time."""
    model = load_sampling_model(checkpoint, torch.device("cpu"), dtype)
    length = min(length, model.config.block_size)
    ids = torch.randint(0, 300, (1, length), generator=torch.Generator().manual_seed(1))
    caches = model.new_cache(1, length), model.new_cache(1, length)
    step, worst = kind(model), 0.0
    for cache in caches:
        model(ids[:, :1], torch.arange(1), 1, cache)
    for pos in range(1, length):
        eager = model(ids[:, pos : pos + 1], torch.tensor([pos]), pos + 1, caches[0])[:, -1]
        worst = max(worst, float((step(ids[:, pos], pos, caches[1]) - eager).abs().max()))
    return worst


def print_engine_table(args) -> None:
    """The whole --engine report, in the order BENCHMARKS.md shows it."""
    print("| step, weights | batch | eager ms | FastStep ms | kernel ms | kernel tok/s | "
          "kernel / eager | kernel / FastStep |")
    print("|---|---|---|---|---|---|---|---|")
    for r in step_rows(args.checkpoint, ["float32", "int8"], args.batch_sizes):
        print(f"| step, {r['dtype']} | {r['batch']} | {r['eager']:.3f} | {r['FastStep']:.3f} | "
              f"{r['kernel']:.3f} | {1e3 * r['batch'] / r['kernel']:.0f} | "
              f"{r['eager'] / r['kernel']:.2f}x | {r['FastStep'] / r['kernel']:.2f}x |")
    print("| generate, weights | batch | candidates | eager tok/s | FastStep tok/s | "
          "kernel tok/s | kernel / eager |")
    print("|---|---|---|---|---|---|---|")
    rows = speed_rows(args.checkpoint, ["float32", "int8"], args.batch_sizes, args.new_tokens,
                      args.repeats)
    rows += speed_rows(args.checkpoint, ["int8"], [1], args.new_tokens, args.repeats, 3)
    for r in rows:
        print(f"| {r['dtype']} | {r['batch']} | {r['candidates']} | {r['eager']:.0f} | "
              f"{r['FastStep']:.0f} | {r['kernel']:.0f} | {r['kernel'] / r['eager']:.2f}x |")
    for dtype in ("float32", "int8"):
        ms = first_token_ms(args.checkpoint, dtype, 512, args.repeats)
        print(f"{dtype}: 512-token primer to first new token: "
              + ", ".join(f"{name} {ms[name]:.1f} ms" for name in PATHS))
        print(f"{dtype}: max |logit difference| from eager over {args.logit_tokens} steps: "
              f"FastStep {logit_difference(args.checkpoint, dtype, args.logit_tokens):.2e}, "
              f"kernel "
              f"{logit_difference(args.checkpoint, dtype, args.logit_tokens, KernelStep):.2e}")
