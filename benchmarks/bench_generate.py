"""Generation tokens/s: musicgpt's KV-cached sampler against Hugging Face GPT2LMHeadModel.generate.

Both sides compute the same function: the same random weights (HF's copied from ours and checked
to agree within 1e-4), fp32, top-k 40, temperature 1, no top-p, no grammar mask (HF has none),
exactly --new-tokens new tokens from a one-token primer (END is pinned to about -100 so ours never
stops early; HF gets eos_token_id=None). Each side runs once as warm-up, then --repeats times,
interleaved, and the median counts. Our reduced-precision modes (bf16 weights, int8 weights;
`quantize.sampling_copy`, made once before timing) are timed against the same HF run, and their
validation NLL is compared with fp32 on a trained checkpoint (random weights would make that
check meaningless).

    python benchmarks/bench_generate.py                      # full run (1024 new tokens)
    python benchmarks/bench_generate.py --new-tokens 256 --repeats 2 --threads 1
    python benchmarks/bench_generate.py --engine --threads 1  # old (eager) vs new (fast) path
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from common import (
    BENCH_CONFIG,
    add_side_arguments,
    hf_model_from,
    interleaved,
    load_average,
    machine,
    max_logit_difference,
    our_model,
    report_memory,
    reset_peak_memory,
    side_peak_memory,
)
from engine_table import print_engine_table

from musicgpt.assets import default_model_dir
from musicgpt.checkpoint import has_weights
from musicgpt.data import has_token_cache
from musicgpt.model import GPT
from musicgpt.quantize import sampling_copy
from musicgpt.sampling import SamplingSettings, generate
from musicgpt.vocab import END_ID, PAD_ID, START_ID

SETTINGS = SamplingSettings(temperature=1.0, top_k=40, top_p=1.0, grammar=False,
                            within_type=False)  # top-k over the whole vocabulary, as HF does
DEFAULT_CHECKPOINT = default_model_dir()  # the shipped model


def bench_model() -> GPT:
    """Random weights, END pinned to a logit of about -100 (a constant feature read by END only)."""
    model = our_model()
    with torch.no_grad():
        model.ln_f.bias[0] = 10.0
        model.wte.weight[END_ID, 0] = -10.0
    return model


def ours_runner(model: GPT, batch: int, new_tokens: int):
    def run():
        rows = generate(model, [START_ID], max_new_tokens=new_tokens, num_samples=batch,
                        settings=SETTINGS, seed=0)
        assert all(len(r) == new_tokens + 1 for r in rows), "stopped early"
    return run


def hf_runner(hf, batch: int, new_tokens: int):
    ids = torch.full((batch, 1), START_ID)
    mask = torch.ones_like(ids)

    def run():
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=mask, do_sample=True, top_k=40, top_p=1.0,
                              temperature=1.0, max_new_tokens=new_tokens, eos_token_id=None,
                              pad_token_id=PAD_ID)
        assert out.shape == (batch, new_tokens + 1)
    return run


def speed(args, ours: GPT, hf) -> list[tuple]:
    rows = []
    for batch in args.batch_sizes:
        sides = {"hf": hf_runner(hf, batch, args.new_tokens),
                 "ours fp32": ours_runner(ours, batch, args.new_tokens)}
        for dtype in args.dtypes:
            sides[f"ours {dtype}"] = ours_runner(sampling_copy(ours, dtype), batch,
                                                 args.new_tokens)
        for run in sides.values():  # warm-up: first long generation in a process is slower
            run()
        timings = interleaved(sides, args.repeats)
        tokens, hf_time = batch * args.new_tokens, timings["hf"]
        for name, t in timings.items():
            rows.append((batch, name, tokens / t.wall_s, hf_time.wall_s / t.wall_s,
                         tokens / t.cpu_s, hf_time.cpu_s / t.cpu_s))
    return rows


@torch.no_grad()
def nll_check(checkpoint: Path, data_dir: Path, dtypes: list[str], windows: int) -> list[tuple]:
    """Validation NLL (nats/token) of a trained checkpoint in fp32 and each reduced precision."""
    from musicgpt.checkpoint import load_model_from_checkpoint
    from musicgpt.data import TokenWindows, load_split

    model = load_model_from_checkpoint(checkpoint)
    val = TokenWindows(load_split(data_dir, "val"), model.config.block_size, seed=1)
    batches = [torch.from_numpy(val.batch(i, 4)) for i in range(math.ceil(windows / 4))]
    results, reference = [], None
    for dtype in ["float32", *dtypes]:
        low = sampling_copy(model, dtype)
        total = count = 0.0
        for batch in batches:
            logits = low(batch[:, :-1]).float()
            target = batch[:, 1:]
            total += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=PAD_ID,
                reduction="sum").item()
            count += int((target != PAD_ID).sum())
        nll = total / count
        reference = reference or nll
        results.append((dtype, nll, 100.0 * (nll - reference) / reference))
    return results


def memory_child(args) -> None:
    """--memory: one side, one batch size, in this process; print peak RSS as JSON."""
    ours = bench_model()
    model = hf_model_from(ours) if args.side == "hf" else sampling_copy(ours, args.side)
    del ours
    setup = reset_peak_memory()
    run = (hf_runner if args.side == "hf" else ours_runner)(model, args.batch_sizes[0],
                                                            args.new_tokens)
    run()
    report_memory(setup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=1024)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 3, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", nargs="*", default=["int8"],
                        help="reduced-precision modes to time and check (int8, bfloat16)")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                        help="trained checkpoint for the NLL check")
    parser.add_argument("--val-data", type=Path, default=None,
                        help="preprocessed tokens with a val split (load_split); without it "
                             "the NLL check is skipped")
    parser.add_argument("--nll-windows", type=int, default=32)
    parser.add_argument("--engine", action="store_true",
                        help="only the old-vs-new decode path table on --checkpoint "
                             "(engine_table.py; needs no transformers)")
    parser.add_argument("--logit-tokens", type=int, default=512)
    add_side_arguments(parser, "float32")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    if args.memory:
        return memory_child(args)
    if args.engine:
        print(f"machine: {machine()}; load average {load_average()}; checkpoint "
              f"{args.checkpoint}; {args.new_tokens} new tokens per row, one thread, "
              f"median of {args.repeats} after a warm-up")
        return print_engine_table(args)

    print(f"machine: {machine()}; load average {load_average()}")
    print(f"config: {BENCH_CONFIG.short()}, vocab {BENCH_CONFIG.vocab_size}; "
          f"{args.new_tokens} new tokens, top-k 40; median of {args.repeats} after a warm-up")
    ours = bench_model()
    hf = hf_model_from(ours)
    print(f"same function: max |logit difference| ours vs HF = "
          f"{max_logit_difference(ours, hf):.2e}")
    start = time.perf_counter()
    print("                          wall clock            |  CPU time (process_time)")
    for batch, name, tok_s, ratio, cpu_tok_s, cpu_ratio in speed(args, ours, hf):
        print(f"batch {batch}  {name:15s} {tok_s:8.1f} tok/s {ratio:5.2f}x HF  | "
              f"{cpu_tok_s:8.1f} tok/s {cpu_ratio:5.2f}x HF")
    print(f"(timing took {time.perf_counter() - start:.0f} s; load average {load_average()})")
    if (args.checkpoint and has_weights(args.checkpoint) and args.dtypes and args.val_data
            and has_token_cache(args.val_data)):
        print(f"validation NLL on {args.checkpoint} "
              f"({args.nll_windows} windows of {args.val_data}):")
        for dtype, nll, delta in nll_check(args.checkpoint, args.val_data, args.dtypes,
                                           args.nll_windows):
            print(f"  {dtype:9s} {nll:.4f} nats/token  ({delta:+.2f}% vs fp32)")
    if not args.no_memory:
        print("peak RSS per side (own process, VmHWM reset after set-up), MB:")
        for batch in args.batch_sizes:
            for side in ["hf", "float32", *args.dtypes]:
                mem = side_peak_memory(Path(__file__), side, args.threads, "--batch-sizes",
                                       str(batch), "--new-tokens", str(args.new_tokens))
                print(f"  batch {batch} {side:9s} peak {mem['peak_mb']:7.1f}  "
                      f"(set-up {mem['setup_mb']:.1f}, generation +{mem['growth_mb']:.1f})")


if __name__ == "__main__":
    sys.exit(main())
