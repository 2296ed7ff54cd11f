"""Sampling threads under load: the same generation idle and beside a busy core, old vs new policy.

    python benchmarks/bench_threads.py [--checkpoint DIR] [--seconds 30] [--batches 1 4]
        [--repeats 3] [--dtype auto] [--load busy|sleep] [--json-out FILE]

Issue 11: decoding used every core torch was given, and with another process keeping one core
busy a batch-1 piece took 2.1x as long. The old policy is all of torch's threads; the new one is
`sampling.sampling_threads` (1 at batch 1). For each batch size and policy the same pieces (same
seeds) are made on an idle machine and with a busy-loop process pinned to one core (started
before, killed after), interleaved so drifting load hits both alike; the table gives the median
milliseconds per decode step (a step makes one token per row) and the slowdown under load.
Targets: the new policy at most 1.2x slower under one busy core at batch 1, and no slower than
the old one idle (within noise). `--load sleep` starts a sleeping process instead of the busy
loop: it checks the script's plumbing without loading the machine (the tests use it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import load_average, machine

from musicgpt.assets import default_model_dir
from musicgpt.checkpoint import load_sampling_model
from musicgpt.sampling import SamplingSettings, generate_pieces, sampling_threads

LOAD_CODE = {  # the other process, pinned to one core
    "busy": "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True: pass",
    "sleep": "import os, sys, time; os.sched_setaffinity(0, {int(sys.argv[1])}); time.sleep(600)",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="model folder (default: the shipped model)")
    parser.add_argument("--seconds", type=float, default=30.0, help="music per piece (30)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4],
                        help="batch sizes (1 4)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell, median (3)")
    parser.add_argument("--dtype", default="auto", help="sampling weights (auto: int8 on CPU)")
    parser.add_argument("--load", default="busy", choices=sorted(LOAD_CODE),
                        help="the other process: a busy loop (default) or a sleeper (dry run)")
    parser.add_argument("--json-out", help="write the figures as JSON here")
    args = parser.parse_args(argv)

    path = Path(args.checkpoint) if args.checkpoint else default_model_dir()
    model = load_sampling_model(path, "cpu", args.dtype)
    c = model.config
    settings = SamplingSettings.from_config(c)
    all_threads = torch.get_num_threads()
    generate_pieces(model, None, max_new_tokens=64, settings=settings, seed=0)  # warm-up
    rows = [row for batch in args.batches
            for row in measure(model, settings, batch, all_threads, args)]
    print(f"{path.name}: {c.short()}, {args.dtype} weights; {machine()}; load "
          f"{load_average()}; other process: {args.load} on core {busy_core()}")
    print(f"{args.seconds:g} s of music per piece, median of {args.repeats}\n")
    print("| batch | policy | threads | idle ms/step | loaded ms/step | slowdown |\n"
          "|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['batch']} | {row['policy']} | {row['threads']} | {row['idle_ms']:.2f} | "
              f"{row['loaded_ms']:.2f} | {row['slowdown']:.2f}x |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(
            {"checkpoint": str(path), "config": c.short(), "load": args.load,
             "seconds": args.seconds, "rows": rows}, indent=1))
    return 0


def measure(model, settings: SamplingSettings, batch: int, all_threads: int,
            args: argparse.Namespace) -> list[dict]:
    """Old and new policy at one batch size: median ms per step, idle and loaded."""
    policies = {"old (all threads)": all_threads, "new": sampling_threads(batch, model)}
    times = {(name, loaded): [] for name in policies for loaded in (False, True)}
    for repeat in range(args.repeats):
        for loaded in (False, True):
            with other_process(args.load if loaded else None):
                for name, threads in policies.items():
                    times[name, loaded].append(
                        ms_per_step(model, settings, batch, threads, args.seconds, repeat))
    return [{"batch": batch, "policy": name, "threads": threads,
             "idle_ms": statistics.median(times[name, False]),
             "loaded_ms": statistics.median(times[name, True]),
             "slowdown": statistics.median(times[name, True]) / statistics.median(
                 times[name, False])} for name, threads in policies.items()]


def ms_per_step(model, settings: SamplingSettings, batch: int, threads: int, seconds: float,
                seed: int) -> float:
    start = time.perf_counter()
    made = generate_pieces(model, None, max_seconds=seconds, num_samples=batch,
                           settings=settings, seed=seed, threads=threads)
    steps = max(1, max(stop.tokens for stop in made.stops))
    return 1000 * (time.perf_counter() - start) / steps


def busy_core() -> int:
    """The core the other process is pinned to: the last one this process may use."""
    return max(os.sched_getaffinity(0))


@contextlib.contextmanager
def other_process(kind: str | None):
    """Run the block beside the other process (`kind` from LOAD_CODE; None: alone)."""
    if kind is None:
        yield
        return
    process = subprocess.Popen([sys.executable, "-c", LOAD_CODE[kind], str(busy_core())])
    try:
        time.sleep(0.2)  # let it start spinning
        yield
    finally:
        process.kill()
        process.wait()


if __name__ == "__main__":
    sys.exit(main())
