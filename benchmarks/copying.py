"""Copying check: how much of each sample replays the training set, against unseen real music.

    python benchmarks/copying.py --data-dir /work/cache_ship --samples-file samples.npz
        [--checkpoint DIR --samples 30 --seconds 30 ...] [--ngram 8] [--json-out copying.json]

For each sample and for the first `--seconds` s of each validation piece (music the model never
saw): the share of its `--ngram`-note pitch-interval runs found anywhere in the training split, and
the longest stretch of notes covered by consecutive found runs. Notes are ordered by onset, then
pitch; intervals make it transposition invariant (see musicgpt/stats.py). Samples come from
`--samples-file` (as written by benchmarks/music_stats.py), or are generated the same way.
Target: the samples' median share is no higher than the validation files'.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from music_stats import add_sample_arguments, samples_for, val_excerpts

from musicgpt import stats
from musicgpt.data import load_split
from musicgpt.events import ids_to_arrays


def copy_rows(pieces, train_keys: np.ndarray, n: int) -> list[dict]:
    rows = []
    for notes in pieces:
        share, longest = stats.copy_stats(notes.pitch, train_keys, n)
        rows.append({"notes": len(notes), "share": share, "longest_run_notes": longest})
    return rows


def summary(rows: list[dict]) -> dict:
    share = np.array([r["share"] for r in rows], dtype=np.float64)
    share = share[np.isfinite(share)]
    longest = np.array([r["longest_run_notes"] for r in rows])
    return {"pieces": len(rows), "median_share": float(np.median(share)),
            "mean_share": float(share.mean()), "max_share": float(share.max()),
            "median_longest_run": float(np.median(longest)), "max_longest_run": int(longest.max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sample_arguments(parser)
    parser.add_argument("--ngram", type=int, default=stats.COPY_NGRAM_NOTES,
                        help=f"notes per run (default {stats.COPY_NGRAM_NOTES}, at most 8)")
    parser.add_argument("--json-out", help="write per-piece figures and the summary as JSON here")
    args = parser.parse_args(argv)

    rows, meta = samples_for(args)
    start = time.perf_counter()
    train_keys = stats.training_ngram_set(load_split(args.data_dir, "train"), args.ngram)
    print(f"training set: {len(train_keys):,} distinct {args.ngram}-note interval runs "
          f"({time.perf_counter() - start:.1f} s)")
    samples = copy_rows([stats.excerpt(ids_to_arrays(r), args.seconds) for r in rows],
                        train_keys, args.ngram)
    val = copy_rows(val_excerpts(args.data_dir, args.seconds), train_keys, args.ngram)
    result = {"samples": summary(samples), "val": summary(val)}
    print("\n| set | pieces | median share | mean share | max share | median longest run "
          "| max longest run |\n|---|---|---|---|---|---|---|")
    for name, row in result.items():
        print(f"| {name} | {row['pieces']} | {row['median_share']:.3f} | {row['mean_share']:.3f} "
              f"| {row['max_share']:.3f} | {row['median_longest_run']:.0f} "
              f"| {row['max_longest_run']} |")
    verdict = result["samples"]["median_share"] <= result["val"]["median_share"]
    print(f"\nsamples copy {'no more' if verdict else 'MORE'} than unseen real music "
          f"(median share {result['samples']['median_share']:.3f} vs "
          f"{result['val']['median_share']:.3f})")
    if args.json_out:
        report = {**result, "ngram_notes": args.ngram, "seconds": args.seconds,
                  "samples_meta": meta, "per_sample": samples, "per_val_piece": val}
        Path(args.json_out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
