"""Seconds of music per wall second at batch 1: how much faster than real time a model writes.

    python benchmarks/bench_music_speed.py [--checkpoint DIR] [--pieces 5 --seconds 30]
        [--dtypes float32 int8] [--threads N] [--json-out FILE]

Issue 4's target for the shipped model is at least 10 s of music per wall second on CPU. Each
piece starts from nothing (START) with the checkpoint's own sampling settings and seed i, and
stops at `--seconds` of music, so the figure includes everything a user waits for: prefill,
sliding-window re-prefills past the context, the grammar mask and the draw. The weight modes run
interleaved (piece i in every mode, then piece i+1), so a load spike hits them alike; the table
gives total music over total wall time per mode, tokens per second, and tokens per second of
music (the model's own density: a denser model is slower in music seconds at the same tok/s).
The token-speed comparison with Hugging Face's GPT-2 is bench_generate.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from common import load_average, machine

from musicgpt.assets import default_model_dir
from musicgpt.checkpoint import load_model_from_checkpoint
from musicgpt.events import ids_to_seconds
from musicgpt.quantize import SAMPLING_DTYPES, sampling_copy
from musicgpt.sampling import SamplingSettings, generate

TARGET_MUSIC_S_PER_S = 10.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="model folder (default: the shipped model)")
    parser.add_argument("--pieces", type=int, default=5, help="pieces per mode, seeds 0.. (5)")
    parser.add_argument("--seconds", type=float, default=30.0, help="music per piece (30)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "int8"],
                        choices=SAMPLING_DTYPES)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--json-out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    path = Path(args.checkpoint) if args.checkpoint else default_model_dir()
    model = load_model_from_checkpoint(path)
    c = model.config
    settings = SamplingSettings.from_config(c)
    copies = {name: sampling_copy(model, name) for name in args.dtypes}  # made once, not timed
    for copy in copies.values():  # warm-up: first calls allocate and pick kernels
        generate(copy, None, max_new_tokens=64, settings=settings, seed=0)
    totals = {name: {"music_s": 0.0, "wall_s": 0.0, "tokens": 0} for name in copies}
    load_before = load_average()
    for seed in range(args.pieces):
        for name, copy in copies.items():
            start = time.perf_counter()
            (row,) = generate(copy, None, max_new_tokens=int(args.seconds * 200),
                              max_seconds=args.seconds, settings=settings, seed=seed)
            totals[name]["wall_s"] += time.perf_counter() - start
            totals[name]["music_s"] += ids_to_seconds(row)
            totals[name]["tokens"] += len(row) - 1

    print(f"{path.name}: {c.short()}, {model.num_params():,} parameters; {machine()}, "
          f"load {load_before} -> {load_average()}")
    print(f"{args.pieces} pieces x {args.seconds:g} s from START, batch 1, temperature "
          f"{settings.temperature:g}, top-k {settings.top_k} (0 = off), top-p {settings.top_p:g} "
          f"(1 = off)\n")
    print("| weights | music s / wall s | tokens/s | tokens per music s | vs target "
          f"{TARGET_MUSIC_S_PER_S:g} |\n|---|---|---|---|---|")
    for name, t in totals.items():
        speed = t["music_s"] / t["wall_s"]
        t.update(music_s_per_s=speed, tokens_per_s=t["tokens"] / t["wall_s"],
                 tokens_per_music_s=t["tokens"] / max(t["music_s"], 1e-9))
        print(f"| {name} | {speed:.1f} | {t['tokens_per_s']:.0f} | "
              f"{t['tokens_per_music_s']:.1f} | {speed / TARGET_MUSIC_S_PER_S:.2f}x |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(
            {"checkpoint": str(path), "config": c.short(), "pieces": args.pieces,
             "seconds": args.seconds, "threads": torch.get_num_threads(), "modes": totals},
            indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
