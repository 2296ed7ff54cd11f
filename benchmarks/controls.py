"""How well the controls hold: key, density, pitch range and dynamics, each over N pieces.

    python benchmarks/controls.py --data-dir /work/cache_ship [--pieces 20 --seconds 20]
        [--only key,density] [--keys all] [--json-out controls.json]

For each setting (none; four keys, or `--keys all` the 24; density 3 and 10; pitch range
C4-C6; dynamics 30-60 and 90-120) it writes `--pieces` pieces of `--seconds` s from nothing
with the shipped sampler plus that control, and prints per setting:
- key: the share of pieces whose Krumhansl-Kessler key (stats.estimate_key over the new
  notes, weighted by duration) is the asked one, and the asked one or its relative;
- density: the mean notes/s and the share of pieces within 50% of the asked rate;
- pitch range and dynamics: the share of new notes inside, and the mean velocity;
- every setting: the share of pieces failing the per-piece checks (piece_checks.py) and the
  overlaps of the five music statistics with real validation music (as every_piece.py), to see
  what a control costs the rest of the music.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from musicgpt import controls, stats
from musicgpt import piece_checks as pc
from musicgpt.data import load_split
from musicgpt.events import ids_to_arrays
from musicgpt.vocab import seconds_to_steps

KEYS = ("C major", "E minor", "F# major", "Bb minor")
SETTINGS: dict[str, dict] = {
    "none": {},
    "density 3": {"density": 3.0},
    "density 10": {"density": 10.0},
    "pitch range C4-C6": {"pitch_range": (60, 84)},
    "dynamics 30-60": {"dynamics": (30, 60)},
    "dynamics 90-120": {"dynamics": (90, 120)},
}
STAT_NAMES = ("notes_per_s", "pitch_range", "pitch_class_entropy", "polyphony", "ioi")


def measure(rows: list[np.ndarray], primer_len: int, seconds: float, asked: dict) -> dict:
    """Per-piece figures of the new music of `rows`, and how each control held."""
    end = seconds_to_steps(seconds)
    notes = [ids_to_arrays(row) for row in rows]
    checks = [pc.piece_checks(n, 0, end) for n in notes]
    out = {"fails": float(np.mean([c["fails"] for c in checks])),
           "notes_per_s": [len(n) / seconds for n in notes]}
    if "key" in asked:
        found = [controls.key_of(n) for n in notes]
        relative = controls.relative_key_name(asked["key"])
        out["keys_found"] = found
        out["key_exact"] = float(np.mean([k == asked["key"] for k in found]))
        out["key_or_relative"] = float(np.mean([k in (asked["key"], relative) for k in found]))
    if "density" in asked:
        rates = np.array(out["notes_per_s"])
        out["density_mean"] = float(rates.mean())
        out["density_mean_error"] = float(rates.mean() / asked["density"] - 1)
        out["density_within_50"] = float(np.mean(np.abs(rates / asked["density"] - 1) <= 0.5))
    pitches = np.concatenate([n.pitch for n in notes])
    velocities = np.concatenate([n.velocity for n in notes])
    if "pitch_range" in asked:
        low, high = asked["pitch_range"]
        out["pitch_inside"] = float(np.mean((pitches >= low) & (pitches <= high)))
    out["velocity_mean"] = float(velocities.mean()) if len(velocities) else 0.0
    if "dynamics" in asked:
        low, high = asked["dynamics"]
        out["velocity_inside"] = float(np.mean((velocities >= low) & (velocities <= high)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="preprocessed corpus with its split")
    parser.add_argument("--checkpoint", help="model folder (default: the shipped model)")
    parser.add_argument("--pieces", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="", help="comma-separated setting names (prefixes)")
    parser.add_argument("--keys", default=",".join(KEYS),
                        help="the keys measured, comma-separated, or 'all' (the 24)")
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)

    import torch

    from musicgpt.assets import default_model_dir
    from musicgpt.checkpoint import load_sampling_model
    from musicgpt.sampling import SamplingSettings, generate_pieces

    torch.set_num_threads(1)
    model = load_sampling_model(Path(args.checkpoint) if args.checkpoint else default_model_dir(),
                                "cpu", "auto")
    val = [np.asarray(p, np.int64) for p in load_split(args.data_dir, "val")]
    real = [stats.excerpt(ids_to_arrays(p), args.seconds) for p in val]
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    keys = controls.KEY_NAMES if args.keys == "all" else [k.strip() for k in args.keys.split(",")]
    table = {name: asked for name, asked in SETTINGS.items() if not name.startswith("key ")}
    table = {"none": {}, **{f"key {k}": {"key": controls.parse_key(k)} for k in keys}, **table}
    report = {}
    for name, asked in table.items():
        if wanted and not any(name.startswith(w) for w in wanted):
            continue
        settings = SamplingSettings.from_config(model.config, **asked)
        timer, rows = time.perf_counter(), []
        for i in range(0, args.pieces, args.batch):
            made = generate_pieces(model, None, max_seconds=args.seconds, settings=settings,
                                   num_samples=min(args.batch, args.pieces - i),
                                   seed=args.seed + i // args.batch)
            rows += [row[made.primer_len:] for row in made.rows]
        result = measure(rows, 0, args.seconds, asked)
        comparison = stats.compare_sets([stats.excerpt(ids_to_arrays(r), args.seconds)
                                         for r in rows], real)
        result["overlaps"] = {k: round(v["overlap"], 3) for k, v in comparison.items()
                              if "overlap" in v}
        result["wall_s"] = time.perf_counter() - timer
        report[name] = result
        shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()
                 if k not in ("notes_per_s", "keys_found", "overlaps")}
        print(f"{name}: {shown}\n  overlaps {result['overlaps']}", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
