"""Music statistics of generated samples against the validation files, with overlaps.

    python benchmarks/music_stats.py --data-dir /work/cache_ship [--checkpoint DIR]
        [--samples 30 --seconds 30 --batch 10 --seed 0] [--samples-file samples.npz]
        [--json-out music_stats.json]

Samples: `--samples` pieces of `--seconds` s from START, made in batches of `--batch`, batch i
with seed `--seed` + i (so the set is reproducible), with the checkpoint's sampling settings.
`--samples-file` saves them (or reuses them if the file exists; `benchmarks/copying.py` reads it).
Real music: the first `--seconds` s (from the first onset) of each validation piece, so both sets
have the same length. The table gives each feature's mean and spread in both sets and their
overlapping area (1 = same distribution, 0 = disjoint); see musicgpt/stats.py for definitions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from musicgpt import stats
from musicgpt.data import load_split
from musicgpt.events import NoteArrays, grammar_errors, ids_to_arrays


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", required=True, help="preprocessed corpus with its split")
    parser.add_argument("--checkpoint", help="model folder (default: the shipped model)")
    parser.add_argument("--samples", type=int, default=30, help="number of samples (30)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per sample (30)")
    parser.add_argument("--batch", type=int, default=10, help="samples per generate call (10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first batch (0)")
    parser.add_argument("--samples-file", help=".npz to save samples to, or reuse if it exists")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--temperature", type=float, help="default: the checkpoint's")
    parser.add_argument("--top-k", type=int, help="default: the checkpoint's")
    parser.add_argument("--top-p", type=float, help="default: the checkpoint's")
    parser.add_argument("--min-p", type=float, help="default: the checkpoint's")
    parser.add_argument("--across-types", action="store_true",
                        help="top-k/top-p/min-p cut across the whole vocabulary, not only "
                             "pitches and velocities (the sampler's default)")
    parser.add_argument("--max-note-seconds", type=float, default=6.0,
                        help="the sampler's note-release guard (default 6; 0 = off)")


def generate_samples(args: argparse.Namespace) -> tuple[list[np.ndarray], dict]:
    """Samples as id arrays (START first), and how they were made."""
    import torch

    from musicgpt.assets import default_model_dir
    from musicgpt.checkpoint import load_model_from_checkpoint
    from musicgpt.sampling import SamplingSettings, generate

    torch.set_num_threads(args.threads)
    path = Path(args.checkpoint) if args.checkpoint else default_model_dir()
    model = load_model_from_checkpoint(path, "cuda" if torch.cuda.is_available() else "cpu")
    config = model.config
    settings = SamplingSettings.from_config(
        config, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        min_p=args.min_p, within_type=not args.across_types,
        max_note_s=args.max_note_seconds or None)
    rows, seeds, start = [], [], time.perf_counter()
    for i in range(0, args.samples, args.batch):
        seed = args.seed + i // args.batch
        n = min(args.batch, args.samples - i)
        rows += generate(model, None, max_new_tokens=int(args.seconds * 100),
                         max_seconds=args.seconds, num_samples=n, settings=settings, seed=seed)
        seeds.append(seed)
        print(f"generated {len(rows)}/{args.samples} samples "
              f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    meta = {"checkpoint": str(path), "seeds": seeds, "batch": args.batch,
            "seconds": args.seconds, "settings": settings.__dict__, "config": config.short()}
    return rows, meta


def samples_for(args: argparse.Namespace) -> tuple[list[np.ndarray], dict]:
    """Reuse `--samples-file` if it exists, else generate (and save there if given)."""
    path = Path(args.samples_file) if args.samples_file else None
    if path is not None and path.is_file():
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            return [data[f"sample_{i:03d}"] for i in range(meta["count"])], meta
    rows, meta = generate_samples(args)
    meta["count"] = len(rows)
    if path is not None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as handle:
            np.savez(handle, meta=json.dumps(meta),
                     **{f"sample_{i:03d}": r for i, r in enumerate(rows)})
        os.replace(tmp, path)
    return rows, meta


def val_excerpts(data_dir: str, seconds: float) -> list[NoteArrays]:
    """The first `seconds` of each validation piece, as notes."""
    return [stats.excerpt(ids_to_arrays(piece), seconds) for piece in load_split(data_dir, "val")]


def long_note_share(pieces: list[NoteArrays], seconds: float) -> float:
    """Share of notes lasting `seconds` or more: in samples made with the note-release guard at
    `seconds`, the notes the guard ended (it releases a note once it has sounded that long)."""
    steps = seconds * stats.STEPS_PER_S - 0.5
    lengths = np.concatenate([n.end_step - n.start_step for n in pieces] or [np.zeros(0)])
    return float((lengths >= steps).mean()) if len(lengths) else 0.0


def fault_counts(pieces: list[NoteArrays]) -> dict[str, int]:
    return {"stuck_notes": sum(stats.stuck_notes(n) for n in pieces),
            "long_silences": sum(stats.long_silences(n) for n in pieces),
            "pieces_with_a_fault": sum(stats.stuck_notes(n) + stats.long_silences(n) > 0
                                       for n in pieces)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sample_arguments(parser)
    parser.add_argument("--json-out", help="write the figures as JSON here")
    args = parser.parse_args(argv)

    rows, meta = samples_for(args)
    whole = [ids_to_arrays(r) for r in rows]  # faults are counted on the whole sample
    samples = [stats.excerpt(n, args.seconds) for n in whole]
    val = val_excerpts(args.data_dir, args.seconds)
    comparison = stats.compare_sets(samples, val)
    faults = {"samples": fault_counts(whole), "val": fault_counts(val)}
    lengths = [float(n.end_step.max()) / stats.STEPS_PER_S if len(n) else 0.0 for n in whole]
    grammar = sum(len(grammar_errors(r)) for r in rows)
    guard_s = args.max_note_seconds or 6.0
    long_notes = {"samples": long_note_share(whole, guard_s),
                  "val": long_note_share([ids_to_arrays(p) for p in load_split(args.data_dir,
                                                                                "val")], guard_s)}
    print(f"{len(rows)} samples (seeds {meta['seeds']}, {meta['config']}), "
          f"{np.mean(lengths):.1f} s on average; {len(val)} val excerpts of {args.seconds:g} s")
    print("\n| feature | samples mean (sd) | val mean (sd) | overlap |\n|---|---|---|---|")
    for name, row in comparison.items():
        if "a_mean" in row:
            print(f"| {name} | {row['a_mean']:.2f} ({row['a_std']:.2f}) | "
                  f"{row['b_mean']:.2f} ({row['b_std']:.2f}) | {row['overlap']:.3f} |")
        else:
            print(f"| {name} (pooled) | | | {row['overlap']:.3f} |")
    print(f"\nstuck notes (>= {stats.STUCK_NOTE_S:g} s) / silences (> {stats.LONG_SILENCE_S:g} s):"
          f" samples {faults['samples']['stuck_notes']} / {faults['samples']['long_silences']}"
          f" in {len(whole)}; val {faults['val']['stuck_notes']} / "
          f"{faults['val']['long_silences']} in {len(val)}; grammar errors in samples: {grammar}")
    print(f"notes lasting {guard_s:g} s or more (with the guard on: the notes it ended): samples "
          f"{100 * long_notes['samples']:.2f}%, whole validation pieces "
          f"{100 * long_notes['val']:.2f}%")
    if args.json_out:
        report = {"samples": meta, "val_pieces": len(val), "sets": {"a": "samples", "b": "val"},
                  "comparison": comparison,
                  "faults": faults, "grammar_errors": grammar, "sample_seconds": lengths,
                  "long_note_share": long_notes, "max_note_seconds": args.max_note_seconds}
        Path(args.json_out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
