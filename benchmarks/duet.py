"""The live duet on real music: latency of the answers and whether they answer musically.

    python benchmarks/duet.py [--midi-dir ../shared/data/midi] [--files 12 --phrases 2]
        [--checkpoint DIR --dtype auto --style NAME --seed 0] [--json-out duet.json]

From the validation split (index.csv's piece groups, as preprocessing splits them) of POP909 and
ASAP, alternately, `--files` pieces are turned into call-and-response performances: `--phrases`
excerpts of 4-6 s each (pedal folded, releases cut at the excerpt's end, at least 2 notes/s),
taken in order from different parts of the piece, each followed by room for the whole answer
(the pause, the answer's length, 1.5 s). Each performance is replayed into a fresh `Duet` on the
virtual clock (duet_live.replay), so the events keep their times and the latency is real compute
time: from the phrase's end being detected to the answer's first note handed out.

Per turn: latency; the key (stats.estimate_key, Krumhansl-Schmuckler) of the phrase and of the
answer, equal or relative; notes/s of each (within 2x); the per-piece checks of the answer
(piece_checks: sparse, dead air, wall, drone). Beside them, as a reference, the same figures for
the real music that followed each phrase in the piece (same length as the answer).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from musicgpt import piece_checks as pc
from musicgpt.events import NoteArrays
from musicgpt.stats import estimate_key, same_or_relative_key

REPO = Path(__file__).resolve().parents[1]
PHRASE_S = (4.0, 6.0)
MIN_NOTES_PER_S = 2.0
MAX_INNER_GAP_S = 0.45  # no silence this long inside an excerpt (the duet's pause is 0.6 s)
ROOM_S = 1.5  # silence after each answer before the next phrase
KEY_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def validation_files(midi_dir: Path, count: int) -> list[Path]:
    """`count` validation files, POP909 and ASAP alternately, spread over each list."""
    from musicgpt.data import split_of

    by_source: dict[str, list[Path]] = {"pop909": [], "asap": []}
    with open(midi_dir / "index.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["source"] in by_source and split_of(row["piece_group"]) == "val":
                by_source[row["source"]].append(midi_dir / row["file"])
    picks = []
    for i in range(count):
        files = by_source[("pop909", "asap")[i % 2]]
        picks.append(files[(i // 2) * len(files) // max((count + 1) // 2, 1)])
    return picks


def window(notes: NoteArrays, lo: int, hi: int, to: int = 0) -> NoteArrays:
    """The notes struck in [lo, hi), releases cut at hi, moved to start at step `to`."""
    keep = (notes.start_step >= lo) & (notes.start_step < hi)
    return NoteArrays(notes.pitch[keep], notes.velocity[keep],
                      notes.start_step[keep] - lo + to,
                      np.minimum(notes.end_step[keep], hi) - lo + to)


def phrases_of(notes: NoteArrays, count: int, rng: np.random.Generator):
    """(start step, length steps) of up to `count` excerpts dense enough, one in each of
    `count` equal parts of the piece, in order; each leaves room for its real continuation."""
    first, end = int(notes.start_step.min()), int(notes.end_step.max())
    out = []
    for k in range(count):
        lo, hi = first + k * (end - first) // count, first + (k + 1) * (end - first) // count
        for _ in range(50):
            length = int(pc.STEPS_PER_S * rng.uniform(*PHRASE_S))
            if hi - 2 * length <= lo:
                break
            last = hi - 2 * length
            onsets = notes.start_step[(notes.start_step >= lo) & (notes.start_step < last)]
            if len(onsets) == 0:
                break
            start = int(rng.choice(onsets))  # a phrase starts with a note
            if _one_phrase(window(notes, start, start + length), length):
                out.append((start, length))
                break
    return out


def _one_phrase(part: NoteArrays, length: int) -> bool:
    """Dense enough, and no silence inside long enough to end the phrase early."""
    if len(part) < MIN_NOTES_PER_S * length / pc.STEPS_PER_S:
        return False
    last = int(part.end_step.max())
    gaps = pc.longest_silence_steps(pc.sounding_profile(part, 0, last))
    return gaps < pc.STEPS_PER_S * MAX_INNER_GAP_S


def performance(notes: NoteArrays, phrases, turns) -> tuple[list, list[tuple[float, float]]]:
    """Key events of the phrases laid out call after call, and each phrase's (start s, end s)."""
    from musicgpt.duet import NOTE_OFF, NOTE_ON, KeyEvent

    events, spans, at = [], [], 0
    for start, length in phrases:
        part = window(notes, start, start + length, to=at)
        for p, v, s, e in zip(part.pitch.tolist(), part.velocity.tolist(),
                              part.start_step.tolist(), part.end_step.tolist(), strict=True):
            events += [(s / 100, 1, KeyEvent(NOTE_ON, p, v)), (e / 100, 0, KeyEvent(NOTE_OFF, p))]
        spans.append((at / 100, (at + length) / 100))
        answer_s = turns.answer_seconds(length / 100)
        at += length + int(100 * (turns.pause_s + answer_s + ROOM_S))
    events.sort(key=lambda e: (e[0], e[1]))
    return [(t, e) for t, _, e in events], spans


def figures(phrase: NoteArrays, answer: NoteArrays, lo: int, hi: int, a_lo: int,
            a_hi: int) -> dict:
    """Key and density of a phrase [lo, hi) and of an answer [a_lo, a_hi), and the answer's
    per-piece checks."""
    p_key, a_key = estimate_key(phrase), estimate_key(answer)
    p_rate = len(phrase) / max(hi - lo, 1) * pc.STEPS_PER_S
    a_rate = len(answer) / max(a_hi - a_lo, 1) * pc.STEPS_PER_S
    checks = pc.piece_checks(answer, a_lo, a_hi)
    return {"phrase_key": _key_name(p_key), "answer_key": _key_name(a_key),
            "key_ok": same_or_relative_key(p_key, a_key),
            "key_near": (fifths_apart(p_key, a_key) or 0) <= 1 and a_key is not None,
            "phrase_notes_per_s": round(p_rate, 2), "answer_notes_per_s": round(a_rate, 2),
            "density_ok": pc.within_2x(a_rate, p_rate),
            **{flag: bool(checks[flag]) for flag in ("sparse", "dead_air", "wall", "drone",
                                                     "fails")}}


def fifths_apart(a, b) -> int | None:
    """Steps between two keys' signatures on the circle of fifths (0: the same key or its
    relative; 1: a fifth apart, as a dominant or subdominant answer is)."""
    if a is None or b is None:
        return None
    sharps = [(7 * (tonic if mode == "major" else tonic + 3)) % 12 for tonic, mode in (a, b)]
    d = (sharps[0] - sharps[1]) % 12
    return min(d, 12 - d)


def _key_name(key) -> str | None:
    return None if key is None else f"{KEY_NAMES[key[0]]} {key[1]}"


def run_file(model, settings, turns, path: Path, args, seed: int) -> list[dict]:
    from musicgpt.duet import MODEL, Duet
    from musicgpt.duet_live import VirtualClock, replay
    from musicgpt.midi_io import midi_file_to_arrays

    notes = midi_file_to_arrays(path)
    phrases = phrases_of(notes, args.phrases, np.random.default_rng(seed))
    events, _ = performance(notes, phrases, turns)
    if args.write_performances:
        _write_performance(events, args.write_performances / f"{seed:03d}_{path.stem}.mid")
    style = model.config.style_slot(args.style)
    duet = Duet(model, settings, turns, style=style, seed=seed)
    replay(duet, events, VirtualClock())
    played = duet.notes(MODEL)
    rows = []
    if len(duet.turns) != len(phrases):
        print(f"{path.name}: {len(duet.turns)} turns for {len(phrases)} phrases, skipped",
              file=sys.stderr)
        return []
    for turn, (start, length) in zip(duet.turns, phrases, strict=True):
        lo, hi = round(turn.phrase_start_s * 100), round(turn.phrase_end_s * 100)
        a_lo, a_hi = round(turn.answer_start_s * 100), round(turn.answer_end_s * 100)
        phrase = window(notes, start, start + length)
        answer = window(played, a_lo, a_hi)
        real = window(notes, start + length, start + length + (a_hi - a_lo))
        rows.append({"file": str(path.relative_to(args.midi_dir)),
                     "latency_ms": round(turn.latency_ms, 2), "cut": turn.cut,
                     "phrase_s": round(turn.phrase_end_s - turn.phrase_start_s, 2),
                     "answer_s": round(turn.answer_end_s - turn.answer_start_s, 2),
                     "answer_notes": turn.answer_notes,
                     **figures(phrase, answer, 0, hi - lo, 0, a_hi - a_lo),
                     "real": figures(phrase, real, 0, hi - lo, 0, a_hi - a_lo)})
    return rows


def _write_performance(events, path: Path) -> None:
    """The call-and-response performance as a .mid, for `musicgpt duet --replay`."""
    from musicgpt.events import seconds_to_steps as notes_to_steps
    from musicgpt.midi_io import arrays_to_midi_file

    opened, rows = {}, []
    for t, event in events:
        if event.kind == "note_on":
            opened[event.pitch] = (t, event.value)
        elif event.pitch in opened:
            start, velocity = opened.pop(event.pitch)
            rows.append((event.pitch, velocity, start, t))
    cols = [np.array([r[i] for r in rows]) for i in range(4)]
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays_to_midi_file(notes_to_steps(*cols), path)


def summary(rows: list[dict]) -> dict:
    lat = np.array([r["latency_ms"] for r in rows])

    def share(key: str, of=lambda r: r) -> float:
        return round(float(np.mean([bool(of(r)[key]) for r in rows])), 3)
    return {"turns": len(rows),
            "latency_ms": {"median": round(float(np.median(lat)), 2),
                           "p95": round(float(np.percentile(lat, 95)), 2),
                           "max": round(float(lat.max()), 2),
                           "mean": round(float(lat.mean()), 2)},
            "answers": {"key_same_or_relative": share("key_ok"),
                        "key_within_a_fifth": share("key_near"),
                        "density_within_2x": share("density_ok"),
                        **{flag: share(flag) for flag in ("sparse", "dead_air", "wall", "drone",
                                                          "fails")}},
            "real_continuation": {
                "key_same_or_relative": share("key_ok", lambda r: r["real"]),
                "key_within_a_fifth": share("key_near", lambda r: r["real"]),
                "density_within_2x": share("density_ok", lambda r: r["real"]),
                "fails": share("fails", lambda r: r["real"])},
            "cut": share("cut")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--midi-dir", type=Path, default=REPO.parent / "shared/data/midi")
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--phrases", type=int, default=2, help="phrases per file")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--dtype", default="auto", help="as musicgpt duet's --dtype")
    parser.add_argument("--style", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-follow-key", action="store_true",
                        help="answers not steered towards their phrase's key")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--write-performances", type=Path, default=None,
                        help="also write each call-and-response performance here as a .mid "
                             "(replay one with musicgpt duet --replay)")
    args = parser.parse_args()

    import torch

    from musicgpt.assets import default_model_dir
    from musicgpt.checkpoint import load_sampling_model
    from musicgpt.duet import TurnSettings
    from musicgpt.sampling import SamplingSettings

    torch.set_num_threads(1)
    model = load_sampling_model(args.checkpoint or default_model_dir(), "cpu", args.dtype)
    settings = SamplingSettings.from_config(model.config, candidates=1)
    turns = TurnSettings(follow_key=not args.no_follow_key)
    rows, started = [], time.perf_counter()
    for i, path in enumerate(validation_files(args.midi_dir, args.files)):
        rows += run_file(model, settings, turns, path, args, args.seed + i)
    wall = time.perf_counter() - started
    out = {"cpu": cpu_name(), "threads": 1, "dtype": args.dtype, "style": args.style,
           "settings": {k: getattr(settings, k) for k in ("temperature", "top_p", "min_p")},
           "wall_s": round(wall, 1), "summary": summary(rows), "turns": rows}
    print_tables(out)
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=1))
    return 0


def print_tables(out: dict) -> None:
    s = out["summary"]
    lat = s["latency_ms"]
    print(f"CPU: {out['cpu']}, 1 thread, dtype {out['dtype']}; {s['turns']} turns "
          f"({out['wall_s']} s wall)")
    print("\n| latency, phrase end detected -> first answered note | ms |\n|---|---:|")
    for key in ("median", "p95", "max", "mean"):
        print(f"| {key} | {lat[key]:.1f} |")
    a, r = s["answers"], s["real_continuation"]
    print("\n| share of turns | answers | real continuation |\n|---|---:|---:|")
    print(f"| key equal or relative to the phrase's | {a['key_same_or_relative']:.0%} | "
          f"{r['key_same_or_relative']:.0%} |")
    print(f"| key within a fifth (same, relative, dominant or subdominant signature) | "
          f"{a['key_within_a_fifth']:.0%} | {r['key_within_a_fifth']:.0%} |")
    print(f"| notes/s within 2x of the phrase's | {a['density_within_2x']:.0%} | "
          f"{r['density_within_2x']:.0%} |")
    print(f"| fails the per-piece checks | {a['fails']:.0%} | {r['fails']:.0%} |")
    for flag in ("sparse", "dead_air", "wall", "drone"):
        print(f"|   {flag} | {a[flag]:.0%} | |")
    print(f"| answers cut short | {s['cut']:.0%} | |")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
