"""train.py's command line: check the run folder, the config, the device and the training
data, then train (training.train). Errors a user can cause end in one line on stderr and exit
status 2, never a traceback (cli_errors.py). musicgpt.cli re-exports `train_main`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import cli_checks as checks
from .cli_checks import UserError
from .cli_errors import fail, guarded_stdout
from .config import PRESETS, add_config_arguments, config_from_arguments
from .files import WriteError


def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train.py", description="Train musicgpt on MIDI files.")
    parser.add_argument("--midi-dir", help="folder of .mid/.midi files (searched recursively)")
    parser.add_argument("--data-dir", help="preprocessed tokens (default OUT/data)")
    parser.add_argument("--out", default="runs/musicgpt", help="run folder (default runs/musicgpt)")
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS),
                        help="model shape and training settings of a new run (default: default, "
                             "the shipped model's shape and sampling)")
    parser.add_argument("--init-from", metavar="default|FOLDER",
                        help="fine-tune: start from the shipped model (default) or a checkpoint "
                             "or run folder; its architecture, styles and sampling settings are "
                             "kept, the folder's style labels are added, and training uses "
                             "fine-tuning settings (lower learning rate, validation every 10 "
                             "steps; flags override them)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run even though OUT/checkpoint holds one (replaced at "
                             "the first save)")
    parser.add_argument("--style-names", default="",
                        help="readable names for the style labels (index.csv's style column or "
                             "top-level folders), e.g. asap=classical,pop909=pop")
    parser.add_argument("--no-progress", action="store_true")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    with guarded_stdout():
        try:
            result = _train(args)
            print(json.dumps(result))
            sys.stdout.flush()
            if result.get("interrupted_by"):  # saved, but not finished: say so to the caller
                return 128 + result["interrupted_by"]
        except (UserError, FileNotFoundError, ValueError, WriteError) as exc:
            return fail(str(exc))
        except KeyboardInterrupt:  # before the loop (preprocessing); the loop saves and returns
            print("interrupted before training started; nothing to save", file=sys.stderr)
            return 130
    return 0


def _train(args: argparse.Namespace) -> dict:
    """Check the run folder, config, device and data, then train."""
    from .checkpoint import check_weights_file, checkpoint_dir, has_weights, load_config
    from .finetune import finetune_config
    from .training import check_run_folder, train

    out = _run_folder(args.out)
    source = _init_source(args)
    check_run_folder(out, args.resume, args.overwrite)
    resuming = args.resume and has_weights(out / "checkpoint")
    if source is not None:
        config = finetune_config(load_config(source), _flags_given(args), args.init_from)
    else:
        base = load_config(out / "checkpoint") if resuming else None
        config = config_from_arguments(args, base)
        if args.max_minutes and args.max_steps is None and not resuming:
            config = config.replace(max_steps=10**9)  # the time budget ends the run
    weights = source if source is not None else out / "checkpoint" if resuming else None
    if weights is not None:  # bad weights are refused before the data is read
        check_weights_file(checkpoint_dir(weights) / "model.safetensors", config)
    checks.training_memory(config, checks.device(config.device))
    _check_training_data(args, out)
    return train(config, out, midi_dir=args.midi_dir, data_dir=args.data_dir,
                 resume=args.resume, progress=not args.no_progress,
                 style_names=_style_names(args.style_names), overwrite=args.overwrite,
                 init_from=source)


def _init_source(args: argparse.Namespace):
    """The checkpoint folder --init-from names (None without it), refusing what conflicts."""
    from .finetune import source_checkpoint

    if args.init_from is None:
        return None
    checks.require(not args.resume, "--init-from starts a new run from another model's weights "
                                    "and --resume continues this run's own: give one of them")
    checks.require(args.preset is None, f"--preset {args.preset} sets a model's shape, and "
                                        f"--init-from takes its source's: give one of them")
    return source_checkpoint(args.init_from)


def _flags_given(args: argparse.Namespace) -> dict:
    """Config field -> value of each config flag given on the command line."""
    from dataclasses import fields

    from .config import Config

    return {f.name: getattr(args, f.name) for f in fields(Config)
            if getattr(args, f.name, None) is not None}


def _run_folder(value: str) -> Path:
    out = checks.out_folder("--out", value)
    checks.not_a_checkpoint("--out", out, f"give the run folder that holds it ({out.parent})")
    return out


def _check_training_data(args: argparse.Namespace, out: Path) -> None:
    """Where the tokens come from: --midi-dir (preprocessed into --data-dir or OUT/data), or a
    token cache already in --data-dir or OUT/data."""
    from .data import has_token_cache

    if args.midi_dir:
        checks.require(Path(args.midi_dir).is_dir(), f"MIDI folder not found: {args.midi_dir}")
        checks.not_same_folder("--out", out, "--midi-dir", args.midi_dir)
        if args.data_dir:
            checks.out_folder("--data-dir", args.data_dir)
            checks.not_same_folder("--data-dir", Path(args.data_dir), "--midi-dir", args.midi_dir)
        return
    if args.data_dir:
        checks.require(has_token_cache(args.data_dir),
                       f"no token cache in {args.data_dir} (no manifest.json): run musicgpt "
                       f"preprocess --out {args.data_dir}, or give --midi-dir")
        return
    checks.require(has_token_cache(out / "data"),
                   "give --midi-dir (a folder of MIDI files) or --data-dir")


def _style_names(text: str) -> dict[str, str]:
    """'asap=classical,pop909=pop' -> {'asap': 'classical', 'pop909': 'pop'}."""
    names = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        label, sep, name = item.partition("=")
        if not sep or not label.strip() or not name.strip():
            raise UserError(f"--style-names wants label=name pairs, got {item!r}")
        names[label.strip()] = name.strip()
    return names
