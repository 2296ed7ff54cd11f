"""Fine-tuning the shipped model on a corpus folder against training from scratch, for the same
minutes: held-out NLL of both (and of the shipped model), and the music statistics of pieces in
the new style against the held-out music.

    python benchmarks/finetune.py --corpus ../shared/data/midi/nottingham [--minutes 10]
        [--files 100 --held-out 40 --pieces 20 --seconds 20 --seed 0] [--work DIR]
        [--json-out finetune_nottingham.json] [--reuse]

The corpus's MIDI files are shuffled with `--seed`: the first `--files` are copied into a flat
folder named after the corpus (so its style label is the corpus's name), the next `--held-out`
are the held-out set (files the runs never see). Then: (a) the shipped model's NLL on the held-out
files; (b) `train.py --init-from default --max-minutes M` on the training folder; (c) the same
minutes from scratch (`--preset default`: the shipped shape; warm-up and validation as the
fine-tuning run's, so the short run leaves warm-up); (d) each run's best checkpoint (best/)
scored on the held-out files; (e) `--pieces` pieces of `--seconds` s from the fine-tuned model
with the corpus's style and from the shipped model (no style), each with its checkpoint's
sampling settings, compared with the first `--seconds` s of each held-out piece on the five
music statistics (musicgpt/stats.py; 1 = same distribution). Prints tables, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def split_corpus(corpus: Path, work: Path, files: int, held_out: int,
                 seed: int) -> tuple[Path, Path]:
    """Copy `files` shuffled MIDI files of `corpus` into work/<corpus name>/ and the next
    `held_out` into work/held_out/; returns both folders."""
    from musicgpt.data import find_midi_files

    found = find_midi_files(corpus)
    if len(found) < files + held_out:
        files = max(1, len(found) - held_out)
    order = np.random.default_rng(seed).permutation(len(found))
    train_dir, held_dir = work / corpus.resolve().name, work / "held_out"
    for folder, picks in ((train_dir, order[:files]), (held_dir, order[files:files + held_out])):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for index in picks:
            path = found[index]
            shutil.copy2(path, folder / path.relative_to(corpus).as_posix().replace("/", "__"))
    return train_dir, held_dir


def train_run(out: Path, flags: list[str], reuse: bool = False) -> dict:
    """train.py in this process (its one-line errors end the benchmark); the run's state.
    `reuse`: a run already in `out` is read, not trained again."""
    from musicgpt.cli import train_main

    started = time.perf_counter()
    if not (reuse and (out / "checkpoint" / "state.json").is_file()):
        code = train_main(["--out", str(out), "--overwrite", "--no-progress", *flags])
        if code != 0:
            raise SystemExit(f"train.py {' '.join(flags)} failed (exit status {code})")
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    best = out / "best" if (out / "best" / "config.json").is_file() else out / "checkpoint"
    return {"steps": state["step"], "train_s": state.get("train_seconds"),
            "wall_s": round(time.perf_counter() - started, 1), "best_val_nll":
            state.get("best_val_nll"), "checkpoint": str(best)}


def held_out_nll(checkpoint: Path, held_dir: Path) -> dict:
    from musicgpt.checkpoint import load_model_from_checkpoint
    from musicgpt.evaluation import evaluate_midi_folder

    result = evaluate_midi_folder(load_model_from_checkpoint(checkpoint), held_dir)
    return {"nll_per_token": round(result.nll_per_token, 4),
            "nll_per_second": round(result.nll_per_second, 3), "files": result.files}


def pieces(checkpoint: Path, style: str | None, count: int, seconds: float, seed: int) -> list:
    """`count` pieces of `seconds` s (batches of 10, batch i with seed `seed` + i), as notes."""
    from musicgpt.checkpoint import load_sampling_model
    from musicgpt.events import ids_to_arrays
    from musicgpt.sampling import SamplingSettings, generate_pieces

    model = load_sampling_model(checkpoint, "cpu")
    settings = SamplingSettings.from_config(model.config)
    config = model.config
    if style is not None and style not in config.styles:  # a label the source already had
        style = config.styles[(config.style_sources or config.styles).index(style)]
    slot = config.style_slot(style)
    rows = []
    for i in range(0, count, 10):
        made = generate_pieces(model, None, max_seconds=seconds, num_samples=min(10, count - i),
                               settings=settings, seed=seed + i // 10, style=slot, threads=1)
        rows += made.rows
    return [ids_to_arrays(row) for row in rows]


def held_out_excerpts(held_dir: Path, seconds: float) -> list:
    from musicgpt import stats
    from musicgpt.evaluation import read_midi_folder
    from musicgpt.events import ids_to_arrays

    _, ids, _ = read_midi_folder(held_dir)
    return [stats.excerpt(ids_to_arrays(piece), seconds) for piece in ids]


def overlaps(samples: list, real: list, seconds: float) -> dict:
    from musicgpt import stats

    return stats.compare_sets([stats.excerpt(n, seconds) for n in samples], real)


def print_tables(report: dict) -> None:
    nll = report["nll"]
    print(f"\n{report['corpus']}: {report['train_files']} training files, "
          f"{nll['shipped']['files']} held-out; {report['minutes']:g} min per run\n")
    print("| model | steps | train s | held-out NLL (nats/token) | nats/s |\n|---|---|---|---|---|")
    for name in ("shipped", "finetuned", "scratch"):
        run = report["runs"].get(name, {})
        print(f"| {name} | {run.get('steps', '')} | {run.get('train_s', '')} | "
              f"{nll[name]['nll_per_token']:.4f} | {nll[name]['nll_per_second']:.2f} |")
    print(f"\noverlap with the held-out music ({report['pieces']} pieces of "
          f"{report['seconds']:g} s; 1 = same distribution)\n")
    print("| statistic | fine-tuned, style " + report["style"] + " | shipped |\n|---|---|---|")
    for name, row in report["stats"]["finetuned"].items():
        print(f"| {name} | {row['overlap']:.3f} | "
              f"{report['stats']['shipped'][name]['overlap']:.3f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="a folder of MIDI files")
    parser.add_argument("--minutes", type=float, default=10.0, help="per training run (10)")
    parser.add_argument("--files", type=int, default=100, help="training files (100)")
    parser.add_argument("--held-out", type=int, default=40, help="held-out files (40)")
    parser.add_argument("--pieces", type=int, default=20, help="pieces per model (20)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per piece (20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init-from", default="default",
                        help="the model fine-tuned and compared (default: the shipped one)")
    parser.add_argument("--scratch-preset", default="default",
                        help="shape of the from-scratch run (default: the shipped shape)")
    parser.add_argument("--work", help="working folder (default runs/finetune_<corpus>)")
    parser.add_argument("--json-out", help="JSON report (default WORK/finetune.json)")
    parser.add_argument("--reuse", action="store_true",
                        help="read the runs already in WORK instead of training them again (the "
                             "same --seed picks the same files)")
    args = parser.parse_args(argv)

    from musicgpt.finetune import source_checkpoint

    corpus = Path(args.corpus)
    style = corpus.resolve().name
    work = Path(args.work or REPO / "runs" / f"finetune_{style}")
    train_dir, held_dir = split_corpus(corpus, work, args.files, args.held_out, args.seed)
    shipped = source_checkpoint(args.init_from)
    common = ["--midi-dir", str(train_dir), "--data-dir", str(work / "data"),
              "--max-minutes", str(args.minutes)]
    runs = {"finetuned": train_run(work / "finetuned", [*common, "--init-from", args.init_from],
                                   args.reuse),
            "scratch": train_run(work / "scratch", [
                *common, "--preset", args.scratch_preset, "--warmup-steps", "10",
                "--eval-interval", "10", "--eval-batches", "4"], args.reuse)}
    nll = {"shipped": held_out_nll(shipped, held_dir),
           **{name: held_out_nll(Path(run["checkpoint"]), held_dir) for name, run in runs.items()}}
    real = held_out_excerpts(held_dir, args.seconds)
    made = {"finetuned": pieces(Path(runs["finetuned"]["checkpoint"]), style, args.pieces,
                                args.seconds, args.seed),
            "shipped": pieces(shipped, None, args.pieces, args.seconds, args.seed)}
    report = {"corpus": str(corpus), "style": style, "minutes": args.minutes,
              "train_files": len(list(train_dir.iterdir())), "pieces": args.pieces,
              "seconds": args.seconds, "seed": args.seed, "runs": runs, "nll": nll,
              "stats": {name: overlaps(notes, real, args.seconds) for name, notes in made.items()}}
    print_tables(report)
    out = Path(args.json_out or work / "finetune.json")
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
