"""Every piece is music: per-piece checks of generate and infill against real validation music.

    python benchmarks/every_piece.py --data-dir /work/cache_ship [--checkpoint DIR]
        [--pieces 40 --primed 10 --spans 30 --seconds 30 --batch 10 --seed 0]
        [--set max_silence_s=None ...] [--json-out every_piece.json]

Generate: `--pieces` pieces of `--seconds` s with no primer (batches of `--batch`, batch i with
seed `--seed` + i) and `--primed` pieces continuing the first 10 s of as many validation pieces
(spread over the split), each judged on its new music by `piece_checks` (sparse, dead air, late
start, wall, notes held to the guard); beside them the same checks of the first `--seconds` s of
every validation piece, and the overlaps of the five music statistics (unprimed samples against
validation excerpts, as benchmarks/music_stats.py). Infill: `--spans` spans of 4-8 s of
validation pieces (piece, start and length drawn from `--seed`), one infill each, checked against
the original music of the span (`span_checks`). Sampling settings are the checkpoint's, with
`--set FIELD=VALUE` overriding any `SamplingSettings` field (the ablations). Prints tables and the
wall time of each part (the sampler's cost).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from musicgpt import piece_checks as pc
from musicgpt import stats
from musicgpt.data import load_split
from musicgpt.events import ids_to_arrays, ids_until_seconds
from musicgpt.vocab import seconds_to_steps, shift_steps

PRIMER_S = 10.0


def parse_value(text: str):
    """'None', 'true'/'false', an int or a float; else the string itself."""
    if text.lower() in ("none", "null"):
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def load(args: argparse.Namespace):
    import torch

    from musicgpt.assets import default_model_dir
    from musicgpt.checkpoint import load_sampling_model
    from musicgpt.sampling import SamplingSettings

    torch.set_num_threads(args.threads)
    path = Path(args.checkpoint) if args.checkpoint else default_model_dir()
    model = load_sampling_model(path, "cpu", args.dtype)
    overrides = dict(parse_value_pair(p) for p in args.set)
    return model, SamplingSettings.from_config(model.config, **overrides)


def parse_value_pair(text: str) -> tuple[str, object]:
    name, _, value = text.partition("=")
    return name.strip().replace("-", "_"), parse_value(value)


def generate_set(model, settings, args, primers: list[np.ndarray] | None):
    """[(notes, window start step, window end step)] of generated pieces, and their ids."""
    from musicgpt.sampling import generate_pieces

    out, rows = [], []
    todo = primers if primers is not None else [None] * args.pieces
    batch = 1 if primers is not None else args.batch
    for i in range(0, len(todo), batch):
        primer = todo[i]
        made = generate_pieces(model, primer, max_seconds=args.seconds, settings=settings,
                               num_samples=min(batch, len(todo) - i), seed=args.seed + i // batch,
                               style=args.style)
        start = 0 if primer is None else int(shift_steps(primer).sum())
        for ids in made.rows:
            rows.append(ids)
            out.append((ids_to_arrays(ids), start, start + seconds_to_steps(args.seconds)))
    return out, rows


def spans_to_fill(val: list[np.ndarray], count: int, seed: int) -> list[tuple[int, float, float]]:
    """(piece index, start s, end s): spans of 4-8 s at least 8 s from either end of a piece."""
    rng = np.random.default_rng(seed)
    out = []
    lengths = [float(shift_steps(p).sum()) / pc.STEPS_PER_S for p in val]
    while len(out) < count:
        i = int(rng.integers(len(val)))
        span = float(rng.uniform(4.0, 8.0))
        room = min(lengths[i], 120.0) - span - 2 * pc.CONTEXT_S
        if room <= 0:
            continue
        start = round(pc.CONTEXT_S + float(rng.uniform(0, room)), 2)
        out.append((i, start, round(start + span, 2)))
    return out


def infill_set(model, settings, args, val) -> list[dict]:
    from musicgpt.infilling import infill

    checks = []
    for k, (i, lo, hi) in enumerate(spans_to_fill(val, args.spans, args.seed)):
        made = infill(model, val[i], lo, hi, settings=settings, seed=args.seed + k,
                      style=args.style)
        a, b = seconds_to_steps(made.start_s), seconds_to_steps(made.end_s)
        check = pc.span_checks(ids_to_arrays(made.pieces[0]), ids_to_arrays(val[i]), a, b)
        checks.append({"piece": i, "start_s": lo, "end_s": hi, **check})
    return checks


def primers_from(val: list[np.ndarray], count: int) -> list[np.ndarray]:
    picks = np.linspace(0, len(val) - 1, count).round().astype(int) if count else []
    return [ids_until_seconds(np.asarray(val[i], np.int64), PRIMER_S) for i in picks]


def real_checks(val: list[np.ndarray], seconds: float, from_first_note: bool) -> list[dict]:
    """The checks of the first `seconds` of each validation piece, from the file's start (MIDI
    lead-ins included) or from its first note (as the music statistics take them)."""
    window = seconds_to_steps(seconds)
    out = []
    for ids in val:
        notes = ids_to_arrays(ids)
        start = int(notes.start_step.min()) if from_first_note and len(notes) else 0
        end = min(int(shift_steps(ids).sum()), start + window)
        out.append(pc.piece_checks(notes, start, end))
    return out


def note_lengths(pieces) -> dict[float, float]:
    """Share of all notes (pooled) lasting at least 1, 2, 3, 4, 5 and 5.9 s."""
    lengths = np.concatenate([n.end_step - n.start_step for n in pieces] or [np.zeros(0)])
    steps = pc.STEPS_PER_S
    return {t: float((lengths >= t * steps - 0.5).mean()) if len(lengths) else 0.0
            for t in (1, 2, 3, 4, 5, pc.HELD_NOTE_S)}


def print_pieces(table: dict[str, dict]) -> None:
    names = list(table)
    print("\n| per piece | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for flag in (*pc.PIECE_FLAGS, "mean_held_share"):
        cells = [f"{100 * table[n][flag]:.1f}%" for n in names]
        print(f"| {flag} | " + " | ".join(cells) + " |")
    print("| pieces | " + " | ".join(str(table[n]["pieces"]) for n in names) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="preprocessed corpus with its split")
    parser.add_argument("--checkpoint", help="model folder (default: the shipped model)")
    parser.add_argument("--pieces", type=int, default=40)
    parser.add_argument("--primed", type=int, default=10)
    parser.add_argument("--spans", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--style", type=int, default=None, help="a style slot for every piece")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a SamplingSettings field (repeatable)")
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)

    model, settings = load(args)
    val = [np.asarray(p, np.int64) for p in load_split(args.data_dir, "val")]
    print(f"settings: {settings}", flush=True)
    report: dict = {"settings": asdict(settings), "args": vars(args), "seconds": {}}
    timer = time.perf_counter()
    free, rows = generate_set(model, settings, args, None)
    report["seconds"]["unprimed"] = time.perf_counter() - timer
    timer = time.perf_counter()
    primed, _ = generate_set(model, settings, args, primers_from(val, args.primed))
    report["seconds"]["primed"] = time.perf_counter() - timer
    table = {"unprimed": pc.summarize_pieces([pc.piece_checks(*p) for p in free]),
             "primed": pc.summarize_pieces([pc.piece_checks(*p) for p in primed]),
             "all": pc.summarize_pieces([pc.piece_checks(*p) for p in free + primed]),
             "real, from the file's start": pc.summarize_pieces(
                 real_checks(val, args.seconds, False)),
             "real, from the first note": pc.summarize_pieces(
                 real_checks(val, args.seconds, True))}
    print_pieces(table)
    excerpts = [stats.excerpt(n, args.seconds) for n, _, _ in free]
    real = [stats.excerpt(ids_to_arrays(p), args.seconds) for p in val]
    comparison = stats.compare_sets(excerpts, real)
    print("\n| statistic | samples | real | overlap |\n|---|---|---|---|")
    for name, row in comparison.items():
        if "a_mean" in row:
            print(f"| {name} | {row['a_mean']:.2f} | {row['b_mean']:.2f} | {row['overlap']:.3f} |")
    lasting = {"samples": note_lengths(n for n, _, _ in free), "real": note_lengths(real)}
    print("\nnotes lasting at least ... s (share of all notes, %):")
    for name, row in lasting.items():
        print(f"  {name}: " + ", ".join(f">= {t:g} s: {100 * v:.2f}" for t, v in row.items()))
    timer = time.perf_counter()
    spans = infill_set(model, settings, args, val) if args.spans else []
    report["seconds"]["infill"] = time.perf_counter() - timer
    spans_summary = pc.summarize_spans(spans)
    print("\n| infill | share |\n|---|---|")
    for name, value in spans_summary.items():
        print(f"| {name} | {value:.3f} |")
    print(f"\nwall s: {json.dumps({k: round(v, 1) for k, v in report['seconds'].items()})}")
    report.update(pieces=table, note_lengths=lasting,
                  overlaps={k: v["overlap"] for k, v in comparison.items()},
                  means={k: v.get("a_mean") for k, v in comparison.items()},
                  infill=spans_summary, spans=spans,
                  unprimed_checks=[pc.piece_checks(*p) for p in free],
                  primed_checks=[pc.piece_checks(*p) for p in primed])
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
