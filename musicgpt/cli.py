"""Command-line entry points: `musicgpt preprocess|generate|evaluate` and `train.py`.

Errors a user can cause (missing files, bad MIDI, bad flags) end in one line on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import PRESETS, add_config_arguments, config_from_arguments


class UserError(Exception):
    """A problem with the user's input, reported as one line."""


def _fail(message: str) -> int:
    print(f"musicgpt: error: {message}", file=sys.stderr)
    return 2


def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train.py", description="Train musicgpt on MIDI files.")
    parser.add_argument("--midi-dir", help="folder of .mid/.midi files (searched recursively)")
    parser.add_argument("--data-dir", help="preprocessed tokens (default OUT/data)")
    parser.add_argument("--out", default="runs/musicgpt", help="run folder (default runs/musicgpt)")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    parser.add_argument("--no-progress", action="store_true")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    from .training import train

    out = Path(args.out)
    base = None
    if args.resume and (out / "checkpoint" / "config.json").is_file():
        from .checkpoint import load_config

        base = load_config(out / "checkpoint")
    try:
        config = config_from_arguments(args, base)
        if not args.midi_dir and not args.data_dir and not (out / "data" / "manifest.json").exists():
            raise UserError("give --midi-dir (a folder of MIDI files) or --data-dir")
        result = train(config, out, midi_dir=args.midi_dir, data_dir=args.data_dir,
                       resume=args.resume, progress=not args.no_progress)
    except (UserError, FileNotFoundError, ValueError) as exc:
        return _fail(str(exc))
    print(json.dumps(result))
    return 0
