"""Old vs new decode path in one run (`bench_generate.py --engine`): the decode step alone, eager
`GPT.forward` (the reference) against `engine.FastStep` (the default), timed step by step
interleaved (each position runs both, each on its own cache, so machine load hits both alike);
tokens/s of `generate` with every step on `GPT.forward` (`fast=False`) against FastStep, per
weight mode and batch; the time from a 512-token primer to the first new token; and the largest
logit difference between the two paths over a piece decoded step by step.

The model is a trained checkpoint (the shipped one by default), the sampler its own settings
with one candidate per row unless told, END left on (rows may stop early: tokens/s counts the
tokens made). Sides run interleaved after a warm-up; medians count.
"""

from __future__ import annotations

import time

import torch
from common import interleaved

from musicgpt.checkpoint import load_sampling_model
from musicgpt.decode import _eager_step
from musicgpt.engine import FastStep
from musicgpt.sampling import SamplingSettings, generate_pieces
from musicgpt.vocab import START_ID


def _runner(model, batch: int, new_tokens: int, candidates: int, fast: bool, made: list):
    settings = SamplingSettings(candidates=candidates)

    def run():
        pieces = generate_pieces(model, [START_ID], max_new_tokens=new_tokens, num_samples=batch,
                                 settings=settings, seed=0, threads=1, fast=fast)
        made.append(sum(len(row) - 1 for row in pieces.rows) * candidates)
    return run


def speed_rows(checkpoint, dtypes, batches, new_tokens: int, repeats: int,
               candidates: int = 1) -> list[dict]:
    """One row per (dtype, batch): tokens/s eager and fast, and their ratio."""
    rows = []
    for dtype in dtypes:
        model = load_sampling_model(checkpoint, torch.device("cpu"), dtype)
        for batch in batches:
            made = {"eager": [], "fast": []}
            sides = {name: _runner(model, batch, new_tokens, candidates, name == "fast",
                                   made[name]) for name in made}
            for run in sides.values():
                run()  # warm-up
            timing = interleaved(sides, repeats)
            tok_s = {name: made[name][-1] / timing[name].wall_s for name in sides}
            rows.append({"dtype": dtype, "batch": batch, "candidates": candidates,
                         "eager_tok_s": tok_s["eager"], "fast_tok_s": tok_s["fast"],
                         "ratio": tok_s["fast"] / tok_s["eager"]})
    return rows


@torch.inference_mode()
def step_rows(checkpoint, dtypes, batches, length: int = 512) -> list[dict]:
    """Mean ms per decode step, eager vs FastStep, positions 1..length-1 after a one-token
    prefill, no draw; each position runs both paths back to back (interleaved)."""
    rows = []
    for dtype in dtypes:
        model = load_sampling_model(checkpoint, torch.device("cpu"), dtype)
        n = min(length, model.config.block_size)
        positions = torch.arange(n)
        for batch in batches:
            steps = {"eager": _eager_step(model, n, False), "fast": FastStep(model)}
            ids = torch.randint(0, 300, (batch, n), generator=torch.Generator().manual_seed(0))
            caches = {name: model.new_cache(batch, n) for name in steps}
            spent = dict.fromkeys(steps, 0.0)
            for name in steps:
                model(ids[:, :1], positions[:1], 1, caches[name])
            for pos in range(1, n):
                for name, step in steps.items():
                    start = time.perf_counter()
                    step(ids[:, pos], pos, caches[name])
                    spent[name] += time.perf_counter() - start
            ms = {name: 1e3 * spent[name] / (n - 1) for name in steps}
            rows.append({"dtype": dtype, "batch": batch, "eager_ms": ms["eager"],
                         "fast_ms": ms["fast"], "ratio": ms["eager"] / ms["fast"]})
    return rows


def first_token_ms(checkpoint, dtype: str, primer_len: int, repeats: int) -> dict:
    """Median ms from a `primer_len`-token history (START included) to the first new token."""
    model = load_sampling_model(checkpoint, torch.device("cpu"), dtype)
    primer = torch.randint(0, 300, (primer_len - 1,), generator=torch.Generator().manual_seed(0))
    out = {}
    for fast in (False, True, False, True):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            generate_pieces(model, primer.tolist(), max_new_tokens=1, seed=0, threads=1,
                            settings=SamplingSettings(candidates=1), fast=fast)
            times.append(time.perf_counter() - start)
        out["fast" if fast else "eager"] = 1e3 * sorted(times)[len(times) // 2]
    return out


@torch.inference_mode()
def logit_difference(checkpoint, dtype: str, length: int) -> float:
    """Max |logit| difference, eager vs fast, over `length` tokens decoded one step at a time."""
    model = load_sampling_model(checkpoint, torch.device("cpu"), dtype)
    length = min(length, model.config.block_size)
    ids = torch.randint(0, 300, (1, length), generator=torch.Generator().manual_seed(1))
    caches = model.new_cache(1, length), model.new_cache(1, length)
    step, worst = FastStep(model), 0.0
    for cache in caches:
        model(ids[:, :1], torch.arange(1), 1, cache)
    for pos in range(1, length):
        eager = model(ids[:, pos : pos + 1], torch.tensor([pos]), pos + 1, caches[0])[:, -1]
        worst = max(worst, float((step(ids[:, pos], pos, caches[1]) - eager).abs().max()))
    return worst


def print_engine_table(args) -> None:
    """The whole --engine report, in the order BENCHMARKS.md shows it."""
    print("| step, weights | batch | eager ms/step | FastStep ms/step | eager tok/s | "
          "FastStep tok/s | FastStep / eager |")
    print("|---|---|---|---|---|---|---|")
    for r in step_rows(args.checkpoint, ["float32", "int8"], args.batch_sizes):
        print(f"| step, {r['dtype']} | {r['batch']} | {r['eager_ms']:.3f} | {r['fast_ms']:.3f} | "
              f"{1e3 * r['batch'] / r['eager_ms']:.0f} | {1e3 * r['batch'] / r['fast_ms']:.0f} | "
              f"{r['ratio']:.2f}x |")
    print("| weights | batch | candidates | eager tok/s | fast tok/s | fast / eager |")
    print("|---|---|---|---|---|---|")
    rows = speed_rows(args.checkpoint, ["float32", "int8"], args.batch_sizes, args.new_tokens,
                      args.repeats)
    rows += speed_rows(args.checkpoint, ["int8"], [1], args.new_tokens, args.repeats, 3)
    for r in rows:
        print(f"| {r['dtype']} | {r['batch']} | {r['candidates']} | {r['eager_tok_s']:.0f} | "
              f"{r['fast_tok_s']:.0f} | {r['ratio']:.2f}x |")
    for dtype in ("float32", "int8"):
        ms = first_token_ms(args.checkpoint, dtype, 512, args.repeats)
        print(f"{dtype}: 512-token primer to first new token: eager {ms['eager']:.1f} ms, "
              f"fast {ms['fast']:.1f} ms")
        print(f"{dtype}: max |logit difference| eager vs fast over {args.logit_tokens} steps: "
              f"{logit_difference(args.checkpoint, dtype, args.logit_tokens):.2e}")
