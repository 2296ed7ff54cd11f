"""Piano rolls of unselected samples and infills, for README and MODEL_CARD.

    python benchmarks/piano_rolls.py [--checkpoint DIR] [--out docs/]

Writes `piano_rolls_samples.png`: the pieces `musicgpt generate --seconds 30 --seed N` makes
for seeds 1-4 (shipped settings, no primer, none picked or left out), with each piece's per-piece
checks in its title; and `piano_rolls_infills.png`: two spans of the shipped POP909 primers
(data/primers) rewritten with seeds 1 and 2, the original above the infill, the span shaded.
Needs matplotlib (the dev extra).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from musicgpt import piece_checks as pc
from musicgpt.events import NoteArrays, ids_to_arrays

INFILLS = (("pop909_019_opening.mid", 3.0, 8.0), ("pop909_055_opening.mid", 4.0, 9.0))


def draw_roll(ax, notes: NoteArrays, title: str, span: tuple[float, float] | None = None,
              seconds: float | None = None, span_colour: str = "#e8871e") -> None:
    """Notes as bars (darker: louder), those struck inside `span` in `span_colour`."""
    start, end = notes.start_step / 100, notes.end_step / 100
    alpha = 0.35 + 0.65 * np.asarray(notes.velocity) / 127
    for s, e, p, a in zip(start, end, notes.pitch, alpha, strict=True):
        inside = span is not None and s < span[1] and e > span[0] and s >= span[0] - 1e-9
        ax.broken_barh([(s, e - s)], (p - 0.4, 0.8), color=span_colour if inside else "#4c72b0",
                       alpha=float(a), linewidth=0)
    if span is not None:
        ax.axvspan(*span, color="#1f77b4", alpha=0.08)
    ax.set_xlim(0, seconds or (float(end.max()) if len(end) else 1.0))
    low, high = (int(notes.pitch.min()), int(notes.pitch.max())) if len(notes) else (48, 72)
    ax.set_ylim(low - 2, high + 2)
    ax.set_title(title, fontsize=9, loc="left")
    ax.set_ylabel("pitch", fontsize=8)
    ax.tick_params(labelsize=7)


def check_line(checks: dict) -> str:
    flags = [f for f in ("sparse", "dead_air", "late_start", "wall", "drone", "thin")
             if checks[f]]
    return (f"{checks['onsets_per_s']:.1f} onsets/s, first note {checks['first_onset_s']:.2f} s, "
            f"longest silence {checks['longest_silence_s']:.1f} s, polyphony "
            f"{checks['polyphony']:.1f}, held to the guard {100 * checks['held_share']:.1f}%"
            f" -> {', '.join(flags) if flags else 'passes'}")


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from musicgpt.assets import default_model_dir, primers_dir
    from musicgpt.checkpoint import load_sampling_model
    from musicgpt.infilling import infill
    from musicgpt.pipeline import midi_file_to_primer
    from musicgpt.sampling import SamplingSettings, generate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="model folder (default: the shipped model)")
    parser.add_argument("--out", default="docs", help="folder for the PNGs (docs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = load_sampling_model(Path(args.checkpoint) if args.checkpoint else default_model_dir())
    settings = SamplingSettings.from_config(model.config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    fig, axes = plt.subplots(4, 1, figsize=(11, 10), sharex=True)
    for ax, seed in zip(axes, range(1, 5), strict=True):
        (ids,) = generate(model, None, max_seconds=30, settings=settings, seed=seed)
        notes = ids_to_arrays(ids)
        draw_roll(ax, notes, f"seed {seed}: {check_line(pc.piece_checks(notes, 0, 3000))}",
                  seconds=30)
    axes[-1].set_xlabel("seconds")
    fig.suptitle("musicgpt generate --seconds 30 --seed 1..4 (shipped model and settings)")
    fig.tight_layout()
    fig.savefig(out / "piano_rolls_samples.png", dpi=90)

    fig, axes = plt.subplots(4, 1, figsize=(11, 10))
    for k, (name, lo, hi) in enumerate(INFILLS):
        ids = midi_file_to_primer(primers_dir() / name)
        made = infill(model, ids, lo, hi, settings=settings, seed=k + 1)
        a, b = round(made.start_s * 100), round(made.end_s * 100)
        original, new = ids_to_arrays(ids), ids_to_arrays(made.pieces[0])
        check = pc.span_checks(new, original, a, b)
        draw_roll(axes[2 * k], original, f"{name}: original, span {lo:g}-{hi:g} s shaded",
                  (lo, hi), span_colour="#8c8c8c")
        draw_roll(axes[2 * k + 1], new, f"infill, seed {k + 1}: "
                  f"{check['new']['onsets_per_s']:.1f} onsets/s (original "
                  f"{check['original']['onsets_per_s']:.1f}), polyphony "
                  f"{check['new']['polyphony']:.1f} ({check['original']['polyphony']:.1f}), "
                  f"longest note {100 * check['new']['longest_note_share']:.0f}% of the span",
                  (lo, hi))
    axes[-1].set_xlabel("seconds")
    fig.suptitle("musicgpt infill (shipped model and settings): the original's notes in the span "
                 "in grey, the new ones in orange")
    fig.tight_layout()
    fig.savefig(out / "piano_rolls_infills.png", dpi=90)
    print(f"wrote {out / 'piano_rolls_samples.png'} and {out / 'piano_rolls_infills.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
