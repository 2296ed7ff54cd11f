"""What the every-piece rules cost in speed: old sampler vs each rule vs best of N, one run.

    python benchmarks/bench_every_piece.py [--pieces 6 --seconds 30 --spans 10]

Times, on one torch thread at batch 1 (as `musicgpt generate` runs), `--pieces` pieces of
`--seconds` s with no primer for each sampler setting, and `--spans` infills of 6 s with 1 and
with the shipped number of candidates; prints seconds of music per wall second and the ratio to
the old sampler (no silence, lead-in or release rules, one candidate). Same seeds for every row.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    import torch

    from musicgpt.assets import default_model_dir, primer_midi_files
    from musicgpt.checkpoint import load_sampling_model
    from musicgpt.infilling import infill
    from musicgpt.pipeline import midi_file_to_primer
    from musicgpt.sampling import SamplingSettings, generate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pieces", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--spans", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = load_sampling_model(default_model_dir())
    shipped = SamplingSettings.from_config(model.config)
    old = SamplingSettings.from_config(model.config, max_silence_s=None, max_lead_in_s=None,
                                       release_ramp_s=None, candidates=1)
    rows = {"old sampler (no rules, 1 candidate)": old,
            "+ silence and lead-in guards": SamplingSettings.from_config(
                model.config, release_ramp_s=None, candidates=1),
            "+ release ramp": SamplingSettings.from_config(model.config, candidates=1)}
    for n in sorted({2, 3, shipped.candidates} - {1}):
        rows[f"+ best of {n}"] = SamplingSettings.from_config(model.config, candidates=n)
    generate(model, None, max_seconds=2, settings=old, seed=0)  # warm up
    print(f"generate: {args.pieces} pieces of {args.seconds:g} s, batch 1, one thread")
    print("| sampler | s of music per wall s | vs old |\n|---|---|---|")
    base = None
    for name, settings in rows.items():
        start = time.perf_counter()
        for seed in range(args.pieces):
            generate(model, None, max_seconds=args.seconds, settings=settings, seed=seed)
        rate = args.pieces * args.seconds / (time.perf_counter() - start)
        base = base or rate
        print(f"| {name} | {rate:.2f} | {rate / base:.2f}x |", flush=True)

    primers = [midi_file_to_primer(p) for p in primer_midi_files()[:4]]
    print(f"\ninfill: {args.spans} spans of 6 s (3-9 s of the shipped primers)")
    print("| infill | s per span | vs 1 candidate |\n|---|---|---|")
    base = None
    for n in sorted({1, shipped.candidates, 4}):
        settings = SamplingSettings.from_config(model.config, candidates=n)
        start = time.perf_counter()
        for k in range(args.spans):
            infill(model, primers[k % len(primers)], 3.0, 9.0, settings=settings, seed=k)
        per = (time.perf_counter() - start) / args.spans
        base = base or per
        print(f"| {n} candidate{'s' if n > 1 else ''} | {per:.3f} | {per / base:.2f}x |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
