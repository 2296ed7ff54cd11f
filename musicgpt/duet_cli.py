"""`musicgpt duet`: play phrases on a MIDI keyboard (or replay a recorded performance) and hear
the model answer each one (duet.py, duet_live.py). Registered by cli.py; user errors are
cli_checks.UserError, one line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace

from . import cli_checks as checks
from . import outputs
from .cli_checks import UserError

DESCRIPTION = (
    "Play a phrase; when you pause (--pause-seconds) or after --max-phrase-seconds the model "
    "answers for about as long, in the same piece: it hears everything both of you played. "
    "Play again to cut its answer short. Give your keyboard with --in and a synth with --out "
    "(--list-ports names them; ports need python-rtmidi: pip install -e \".[live]\"), or "
    "--replay a .mid that is played in as if live. --save writes the whole duet on exit or "
    "Ctrl-C: your notes on track 'player', the model's on track 'musicgpt' (channel 2).")


def add_duet_command(commands, add_sampling_flags) -> None:
    """Register `duet` on cli's subparsers, with the sampling flags generate and infill share."""
    duet = commands.add_parser("duet", help="play phrases and hear the model answer each one",
                               description=DESCRIPTION)
    duet.add_argument("--in", dest="in_port", help="MIDI input port: your keyboard")
    duet.add_argument("--out", dest="out_port",
                      help="MIDI output port: a synth for the model's notes (with --replay, "
                           "the recorded notes are sent too, on the next channel)")
    duet.add_argument("--list-ports", action="store_true", help="list the MIDI ports and exit")
    duet.add_argument("--channel", type=int, default=1,
                      help="MIDI channel of the model's notes on --out (1-16, default 1)")
    duet.add_argument("--replay", help=".mid file played in as if live, instead of --in")
    duet.add_argument("--virtual-clock", action="store_true",
                      help="with --replay: do not wait in real time (each event keeps its time; "
                           "latency is still the real compute time)")
    duet.add_argument("--save", help="write the whole duet to this .mid on exit or Ctrl-C")
    duet.add_argument("--json", action="store_true",
                      help="print one JSON object per turn (phrase and answer times in s, "
                           "notes, cut, latency_ms)")
    duet.add_argument("--pause-seconds", type=float, default=0.6,
                      help="a phrase ends after this long with no note of yours sounding "
                           "(default 0.6)")
    duet.add_argument("--max-phrase-seconds", type=float, default=8.0,
                      help="... or once it has lasted this long (default 8)")
    duet.add_argument("--answer-ratio", type=float, default=1.0,
                      help="the answer lasts the phrase's length times this (default 1)")
    duet.add_argument("--min-answer-seconds", type=float, default=2.0)
    duet.add_argument("--max-answer-seconds", type=float, default=8.0)
    duet.add_argument("--no-follow-key", action="store_true",
                      help="without --key, do not steer each answer towards the key its phrase "
                           "is heard in")
    add_sampling_flags(duet, "duet")
    duet.set_defaults(run=run_duet)


def run_duet(args: argparse.Namespace) -> int:
    if args.list_ports:
        return _list_ports()
    checks.require((args.in_port is None) != (args.replay is None),
                   "give --in PORT (your keyboard) or --replay FILE.mid (one of them)")
    checks.require(args.num_samples == 1, "--num-samples: a duet has one answer at a time")
    checks.require(1 <= args.channel <= 16, f"--channel wants 1..16, got {args.channel}")
    checks.require(args.save or not args.wav, "--wav writes the audio of --save: give --save")
    save = outputs.out_path("--save", args.save, args.wav)[0] if args.save else None
    performance = _read_performance(args.replay) if args.replay else None
    turns = _turn_settings(args)
    duet, seed = _make_duet(args, turns)
    ports = _open_ports(args)
    on_turn = _json_line if args.json else _turn_line
    try:
        _run(duet, args, performance, ports, on_turn)
    finally:
        if save is not None:
            _save(duet, save, args.wav, seed)
    return 0


def _list_ports() -> int:
    from .midi_ports import PortError, port_names

    try:
        inputs, outputs_ = port_names()
    except PortError as exc:
        raise UserError(str(exc)) from exc
    for title, names in (("inputs", inputs), ("outputs", outputs_)):
        print(f"MIDI {title}:" + ("" if names else " none"))
        for name in names:
            print(f"  {name}")
    return 0


def _read_performance(path: str):
    from .duet_live import performance_events
    from .midi_io import MidiReadError

    try:
        return performance_events(path)
    except MidiReadError as exc:
        raise UserError(f"bad --replay {path}: {exc}") from exc


def _turn_settings(args: argparse.Namespace):
    from .duet import TurnSettings

    try:
        return TurnSettings(pause_s=args.pause_seconds, max_phrase_s=args.max_phrase_seconds,
                            answer_ratio=args.answer_ratio, min_answer_s=args.min_answer_seconds,
                            max_answer_s=args.max_answer_seconds,
                            follow_key=not args.no_follow_key)
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def _make_duet(args: argparse.Namespace, turns):
    from .cli import _load_model, _sampling_settings
    from .duet import Duet

    checks.seed(args.seed)
    model = _load_model(args.checkpoint, args.device, args.dtype)
    # a duet streams one answer: no best of N (settings.py offers it no --candidates flag)
    settings = replace(_sampling_settings(args, model.config), candidates=1)
    seed = outputs.draw_seed(args.seed)
    try:
        style = model.config.style_slot(args.style)
        return Duet(model, settings, turns, style=style, seed=seed), seed
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def _open_ports(args: argparse.Namespace):
    if args.in_port is None and args.out_port is None:
        return None, None
    from .midi_ports import PortError, open_ports

    try:
        return open_ports(args.in_port, args.out_port)
    except PortError as exc:
        raise UserError(str(exc)) from exc


def _run(duet, args: argparse.Namespace, performance, ports, on_turn) -> None:
    from .duet_live import RealClock, VirtualClock, play_ports, replay
    from .midi_ports import key_to_message
    from .sampling import torch_threads

    inport, outport = ports
    channel = args.channel - 1
    with torch_threads(1):  # a decode step is overhead-bound: one thread answers soonest
        if performance is None:
            print("playing: your phrases on the keyboard, Ctrl-C to stop", file=sys.stderr)
            play_ports(duet, inport, outport, RealClock(), on_turn, channel)
            return

        def send(cue, owner) -> None:
            if outport is not None:
                own = channel if owner == "model" else (channel + 1) % 16
                outport.send(key_to_message(*cue.event, channel=own))
        clock = VirtualClock() if args.virtual_clock else RealClock()
        try:
            replay(duet, performance, clock, send, on_turn)
        except KeyboardInterrupt:
            pass


def _json_line(turn) -> None:
    print(json.dumps(turn_record(turn)), flush=True)


def turn_record(turn) -> dict:
    """One turn as --json prints it."""
    out = {"phrase_start_s": turn.phrase_start_s, "phrase_end_s": turn.phrase_end_s,
           "ended_by": turn.ended_by, "phrase_notes": turn.phrase_notes,
           "answer_start_s": turn.answer_start_s, "answer_end_s": turn.answer_end_s,
           "notes": turn.answer_notes, "cut": turn.cut, "latency_ms": turn.latency_ms}
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


def _turn_line(turn) -> None:
    latency = "" if turn.latency_ms is None else f", first note after {turn.latency_ms:.0f} ms"
    cut = " (cut short)" if turn.cut else ""
    print(f"phrase {turn.phrase_start_s:.2f}-{turn.phrase_end_s:.2f} s ({turn.phrase_notes} "
          f"notes) -> answer {turn.answer_start_s:.2f}-{turn.answer_end_s:.2f} s "
          f"({turn.answer_notes} notes{cut}{latency})", flush=True)


def _save(duet, path, wav: bool, seed: int) -> None:
    from .duet import MODEL, PLAYER
    from .duet_live import duet_to_midi_bytes

    written = outputs.write_piece(duet_to_midi_bytes(duet), path, wav)
    latencies = [t.latency_ms for t in duet.turns if t.latency_ms is not None]
    median = f", median latency {statistics.median(latencies):.0f} ms" if latencies else ""
    n_player, n_model = len(duet.notes(PLAYER)), len(duet.notes(MODEL))
    print(outputs.wrote_line(written, f"{len(duet.turns)} turns, {n_player} notes played, "
                                      f"{n_model} answered{median}", seed, n_player + n_model),
          file=sys.stderr)
