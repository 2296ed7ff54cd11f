"""Command-line entry points: `musicgpt preprocess|generate|infill|evaluate|export`, and
train.py's `train_main` (cli_train.py).

Errors a user can cause (missing files, bad MIDI, bad flags) end in one line on stderr and exit
status 2, never a traceback (cli_errors.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path

from . import cli_checks as checks
from . import outputs, settings
from .cli_checks import UserError
from .cli_errors import fail, guarded_stdout
from .cli_train import train_main  # noqa: F401 (train.py and the tests import it from here)
from .files import WriteError
from .locks import FolderBusyError


def _load_model(checkpoint: str | None, device: str, dtype: str = "float32"):
    """The checkpoint's model on `device`; `dtype` other than float32 quantises it once, here."""
    from .assets import default_model_dir
    from .checkpoint import has_weights, load_sampling_model
    from .checkpoint_paths import resolve_checkpoint

    torch_device = checks.device(device)
    if checkpoint:  # a checkpoint folder, or a run folder holding checkpoint/
        path = resolve_checkpoint(checkpoint)
    else:
        path = default_model_dir()
        checks.require(has_weights(path), f"no checkpoint at {path} (the shipped default model "
                                          f"is missing; pass --checkpoint)")
    try:
        return load_sampling_model(path, torch_device, dtype)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"cannot load checkpoint {path}: {exc}") from exc


def _preprocess(args: argparse.Namespace) -> int:
    from .data import preprocess_folder

    workers = checks.workers(args.workers)
    out = checks.out_folder("--out", args.out)
    checks.not_a_checkpoint("--out", out, "give a folder for the token cache")
    checks.not_same_folder("--out", out, "--midi-dir", args.midi_dir)
    manifest = preprocess_folder(args.midi_dir, out, workers=workers,
                                 progress=not args.no_progress)
    pieces = manifest["pieces"]
    n_val = sum(p["split"] == "val" for p in pieces)
    print(f"{len(pieces)} pieces ({len(pieces) - n_val} train, {n_val} val), "
          f"{manifest['tokens']:,} tokens, {manifest['seconds'] / 3600:.2f} hours of music; "
          f"{manifest['reused']} reused from cache")
    for bad in manifest["skipped"]:
        print(f"skipped {bad['path']}: {bad['reason']}")
    for cut in manifest["clipped"]:
        print(f"clipped {cut['path']}: {cut['note']}")
    if manifest["skipped"]:
        print(f"{len(manifest['skipped'])} file(s) skipped; see {Path(args.out) / 'report.json'}")
    if not pieces:
        from .data import no_training_pieces

        raise UserError(no_training_pieces(out))
    return 0


def _output_paths(out: Path, n: int) -> list[Path]:
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i + 1}{out.suffix or '.mid'}") for i in range(n)]


def _generate(args: argparse.Namespace) -> int:
    from .events import ids_to_seconds
    from .pipeline import continuation_to_midi_bytes
    from .sampling import generate_pieces
    from .vocab import is_note_on

    _check_lengths(args)
    checks.require(math.isfinite(args.bpm) and 0 < args.bpm <= 6000,
                   f"--bpm wants a tempo above 0 and at most 6000, got {args.bpm:g}")
    out, wav = outputs.out_path("--out", args.out, args.wav)
    seed = outputs.draw_seed(args.seed)
    primer = _read_primer(args.primer, args.primer_seconds) if args.primer else None
    source = Path(args.primer).read_bytes() if args.primer else None
    model = _load_model(args.checkpoint, args.device, args.dtype)
    settings = _sampling_settings(args, model.config)
    try:
        style = model.config.style_slot(args.style)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    checks.sampling_memory(args.num_samples * settings.candidates, model.config,
                           model.device,
                           guided=style is not None and settings.style_guidance > 0)
    paths = checks.out_midi_files("--out", _output_paths(out, args.num_samples), (args.primer,))
    with _music_bar(args.seconds, args.no_progress) as report:
        made = generate_pieces(model, primer, max_new_tokens=args.max_tokens,
                               max_seconds=args.seconds, num_samples=args.num_samples,
                               settings=settings, seed=seed, progress=report, style=style)
    primer_len = made.primer_len
    for path, row, stop in zip(paths, made.rows, made.stops, strict=True):
        midi = continuation_to_midi_bytes(row, primer_len, source, args.bpm)
        written = outputs.write_piece(midi, path, wav)
        n_new = int(is_note_on(row[primer_len:]).sum())
        print(outputs.wrote_line(written, f"{ids_to_seconds(row):.1f} s, {len(row)} tokens, "
                                          f"{n_new} new notes", seed, n_new,
                                 "new notes" if primer is not None else "notes",
                                 stop.message() if stop.early else ""))
    return 0


@contextlib.contextmanager
def _music_bar(seconds: float, disabled: bool):
    """A progress bar over the seconds of music asked for; yields generate's progress call."""
    from tqdm import tqdm

    bar = tqdm(total=seconds, disable=disabled, bar_format="{l_bar}{bar}| {n:.1f}/{total:g} s "
               "of music [{elapsed}<{remaining}]")

    def report(done_s: float, total_s: float | None) -> None:
        bar.update(done_s - bar.n)
    try:
        yield report
    finally:
        bar.close()


def _infill(args: argparse.Namespace) -> int:
    from .events import ids_to_seconds
    from .infilling import InfillError, infill
    from .pipeline import infill_to_midi_bytes
    from .vocab import is_note_on

    checks.at_least("--num-samples", args.num_samples)
    checks.seed(args.seed)
    for flag, value in (("--start", args.start), ("--end", args.end)):
        checks.require(math.isfinite(value), f"{flag} wants a number of seconds, got {value:g}")
    out, wav = outputs.out_path("--out", args.out, args.wav)
    seed = outputs.draw_seed(args.seed)
    ids = _read_primer(args.midi, None, what="MIDI file")
    source = Path(args.midi).read_bytes()
    model = _load_model(args.checkpoint, args.device, args.dtype)
    settings = _sampling_settings(args, model.config)
    checks.sampling_memory(args.num_samples * settings.candidates, model.config,
                           model.device,
                           guided=args.style is not None and settings.style_guidance > 0)
    paths = checks.out_midi_files("--out", _output_paths(out, args.num_samples), (args.midi,))
    try:
        slot = model.config.style_slot(args.style)
        with _music_bar(max(args.end - args.start, 0.0), args.no_progress) as report:
            result = infill(model, ids, args.start, args.end, num_samples=args.num_samples,
                            settings=settings, seed=seed, style=slot, progress=report)
    except (InfillError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    if result.note:
        print(f"note: {result.note}", file=sys.stderr)
    for path, piece, middle in zip(paths, result.pieces, result.middles, strict=True):
        midi = infill_to_midi_bytes(source, ids, middle, result.start_s, result.end_s)
        n_new = int(is_note_on(middle).sum())
        details = (f"{result.start_s:.2f}-{result.end_s:.2f} s rewritten, {n_new} new notes; "
                   f"{ids_to_seconds(piece):.1f} s in all")
        print(outputs.wrote_line(outputs.write_piece(midi, path, wav), details, seed, n_new,
                                 "new notes in the span"))
    return 0


def _check_lengths(args: argparse.Namespace) -> None:
    checks.at_least("--max-tokens", args.max_tokens)
    checks.at_least("--num-samples", args.num_samples)
    checks.seconds("--seconds", args.seconds)
    checks.seconds("--primer-seconds", args.primer_seconds)
    checks.seed(args.seed)


def _sampling_settings(args: argparse.Namespace, config):
    """The settings the flags ask for, else the checkpoint's own (settings.from_flags)."""
    try:
        return settings.from_flags(args, config)
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def _read_primer(path: str, seconds: float | None, what: str = "primer"):
    from .midi_io import MidiReadError
    from .pipeline import midi_file_to_primer

    try:
        return midi_file_to_primer(path, seconds)
    except (MidiReadError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise UserError(f"bad {what} {path}: {reason}") from exc


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_midi_folder, reference_line

    if not Path(args.midi_dir).is_dir():
        raise UserError(f"MIDI folder not found: {args.midi_dir}")
    checks.at_least("--batch-size", args.batch_size)
    checks.at_least("--stride", args.stride)
    model = _load_model(args.checkpoint, args.device)
    checks.forward_memory("--batch-size", args.batch_size, model.config, model.device)
    from tqdm import tqdm

    bar = tqdm(unit="window", disable=args.no_progress or args.json)
    def report(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
    try:
        result = evaluate_midi_folder(model, args.midi_dir, batch_size=args.batch_size,
                                      stride=args.stride, progress=report)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    finally:
        bar.close()
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
        return 0
    for bad in result.skipped:
        print(f"skipped {bad['path']}: {bad['reason']}")
    for cut in result.clipped:
        print(f"clipped {cut['path']}: {cut['note']}")
    print(f"{result.files} file(s), {result.tokens:,} tokens, {result.seconds:.1f} s of music"
          f" ({len(result.skipped)} skipped)")
    print(f"NLL {result.nll_per_token:.4f} nats/token, {result.nll_per_second:.3f} nats/second")
    print(reference_line())
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.onnx is not None:
        return _export_onnx(args)
    if args.hf is None:
        raise UserError("give --hf DIR (a Hugging Face GPT-2 folder) or --onnx DIR")
    from .hf_export import NotGPT2Error, export_hf

    out = checks.out_folder("--hf", args.hf)
    checks.not_a_checkpoint("--hf", out, "give a new folder for the Hugging Face copy")
    model = _load_model(args.checkpoint, "cpu")
    try:
        export_hf(model, out)
    except NotGPT2Error as exc:
        name = args.checkpoint or "the shipped model"
        raise UserError(f"cannot export {name}: {exc}") from exc
    print(f"wrote {out / 'config.json'} and {out / 'model.safetensors'} (GPT2LMHeadModel, "
          f"{model.config.short()}); load with transformers.GPT2LMHeadModel.from_pretrained"
          f"({str(out)!r})")
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    from .onnx_export import OPSET, export_onnx

    out = checks.out_folder("--onnx", args.onnx)
    checks.not_a_checkpoint("--onnx", out, "give a new folder for the ONNX copy")
    model = _load_model(args.checkpoint, "cpu")
    path = export_onnx(model, out)
    print(f"wrote {path}, {out / 'config.json'} and {out / 'vocab.json'} (ONNX opset {OPSET}, "
          f"Optimum decoder layout, {model.config.short()})")
    return 0


def _add_sampling_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """Flags shared by generate and infill: checkpoint, style, device, and the sampling settings
    (settings.py) that `command` has."""
    parser.add_argument("--checkpoint",
                        help="checkpoint or run folder (default: the shipped model)")
    parser.add_argument("--style", default=None,
                        help="style token to condition on (names in the checkpoint's config.json; "
                             "default: none)")
    settings.add_flags(parser.add_argument_group("sampling settings and controls"), command)
    parser.add_argument("--seed", type=int, default=None,
                        help="default: drawn at random, and printed on each 'wrote' line")
    parser.add_argument("--wav", action="store_true",
                        help="also write the audio (OUT with .wav), rendered as the app does; "
                             "an --out ending in .wav writes the audio only")
    parser.add_argument("--num-samples", type=int, default=1, help="pieces made in one batch")
    parser.add_argument("--dtype", default="auto",
                        choices=["auto", "float32", "bfloat16", "int8"],
                        help="weights used for sampling: int8 is 1.3-2x faster on CPU with the "
                             "same NLL within 0.01%% (see BENCHMARKS.md), float32 is exact; "
                             "auto (default) = int8 on CPU, float32 on GPU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musicgpt", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    pre = commands.add_parser("preprocess", help="encode a MIDI folder to token streams")
    pre.add_argument("--midi-dir", required=True, help="folder of .mid/.midi files (recursive)")
    pre.add_argument("--out", required=True, help="output folder (tokens.bin, manifest.json)")
    pre.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    pre.add_argument("--no-progress", action="store_true")
    pre.set_defaults(run=_preprocess)

    gen = commands.add_parser("generate", help="write new music to a .mid file")
    gen.add_argument("--out", default="musicgpt.mid", help="output .mid (default musicgpt.mid)")
    gen.add_argument("--primer", help=".mid file to continue: the output keeps its first "
                                      "--primer-seconds as they are in the file (tracks, tempo "
                                      "map, meter), and the new music follows on a new track")
    gen.add_argument("--bpm", type=float, default=120.0,
                     help="tempo written to the file without --primer (default 120)")
    gen.add_argument("--primer-seconds", type=float, default=10.0,
                     help="use the primer's first N seconds (default 10)")
    gen.add_argument("--seconds", type=float, default=30.0, help="seconds of new music (30)")
    gen.add_argument("--max-tokens", type=int, default=None,
                     help="token budget per sample (default: 200 per second asked, room for "
                          "music far denser than real piano music)")
    _add_sampling_flags(gen, "generate")
    gen.set_defaults(run=_generate)

    fill = commands.add_parser(
        "infill", help="rewrite a span of a .mid file, keeping the rest",
        description="Regenerate the music between --start and --end seconds of a MIDI file. "
                    "The output is the file itself, edited: the notes struck in the span are "
                    "replaced by new ones on a new track; every other event (tracks, tempo map, "
                    "meter, pedal, velocities) stays as it was. The new middle lasts exactly "
                    "the span and joins what follows.")
    fill.add_argument("--midi", required=True, help=".mid file to rewrite")
    fill.add_argument("--start", type=float, required=True, help="span start, seconds")
    fill.add_argument("--end", type=float, required=True, help="span end, seconds")
    fill.add_argument("--out", default="infilled.mid", help="output .mid (default infilled.mid)")
    _add_sampling_flags(fill, "infill")
    fill.set_defaults(run=_infill)

    ev = commands.add_parser(
        "evaluate", help="NLL of a model over a MIDI folder",
        description="Negative log-likelihood of a model over every MIDI file in a folder, in nats "
                    "per token and nats per second of music. Scored: every token of START + piece "
                    "+ END after START. Pieces longer than the context use a sliding window; each "
                    "token is scored once. Unreadable files are skipped with their reason.")
    ev.add_argument("--checkpoint",
                    help="checkpoint folder, or a run folder holding checkpoint/ (default: the "
                         "shipped model)")
    ev.add_argument("--midi-dir", required=True, help="folder of .mid/.midi files (recursive)")
    ev.add_argument("--json", action="store_true",
                    help="print JSON (keys nll_per_token, nll_per_second, files, tokens, "
                         "seconds, skipped)")
    ev.add_argument("--batch-size", type=int, default=16, help="windows per forward (16)")
    ev.add_argument("--stride", type=int, default=None,
                    help="sliding-window step in tokens (default: half the context)")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(run=_evaluate)

    export = commands.add_parser(
        "export", help="write a checkpoint as a Hugging Face GPT-2 folder or an ONNX decoder",
        description="Write an absolute-attention checkpoint as a transformers GPT2LMHeadModel "
                    "folder (config.json + model.safetensors): the same model, logits equal. "
                    "Relative-attention checkpoints are not expressible as GPT-2.")
    export.add_argument("--hf", help="output folder for a Hugging Face GPT-2 copy")
    export.add_argument("--onnx", help="output folder for an ONNX decoder (model.onnx in "
                                       "Optimum's layout, config.json, vocab.json); absolute "
                                       "or relative attention")
    export.add_argument("--checkpoint",
                        help="checkpoint folder, or a run folder holding checkpoint/ (default: the "
                             "shipped model)")
    export.set_defaults(run=_export)

    from .duet_cli import add_duet_command

    add_duet_command(commands, _add_sampling_flags)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with guarded_stdout():
        try:
            code = args.run(args)
            sys.stdout.flush()
        except (UserError, FileNotFoundError, WriteError, FolderBusyError) as exc:
            return fail(str(exc))
    return code


if __name__ == "__main__":  # python -m musicgpt.cli, as the console script does
    sys.exit(main())
