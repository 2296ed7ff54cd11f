"""Build the golden MIDI fixtures in this folder, each beside its `.tokens.txt`.

    python tests/data/make_fixtures.py              # check: exit 1 if any file would change
    python tests/data/make_fixtures.py --regenerate # rewrite .mid, .tokens.txt and bad files

The `.mid` files are made by code (mido, through tests/helpers.py) so their content is known
exactly; the `.tokens.txt` files hold one token name per line, as the encoder writes them today.
Regenerate only on purpose, and say in the commit why the tokens changed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from helpers import Track, write_midi  # noqa: E402

from musicgpt.pipeline import midi_file_to_ids  # noqa: E402
from musicgpt.vocab import id_to_name  # noqa: E402

# name -> (what it holds, how to write it)
FIXTURES = {
    "scale": (
        "C major scale up, one piano track, 480 ticks per beat at 120 bpm; velocities rise "
        "40, 44, ..., 68 so the velocity bin changes on every note; legato (each note ends "
        "where the next begins).",
        lambda path: write_midi(path, [(60 + step, 40 + 4 * i, 0.25 * i, 0.25 * (i + 1))
                                       for i, step in enumerate((0, 2, 4, 5, 7, 9, 11, 12))]),
    ),
    "chords_pedal": (
        "Two C-major triads at velocity 90 with a sustain pedal: the first chord is released "
        "at 0.4 s under the pedal (down 0.2 s, up 1.5 s), so it sounds until 1.5 s; E4 is "
        "struck again at 1.0 s while pedalled, which ends the first E4 there.",
        lambda path: write_midi(path, [Track(
            [(60, 90, 0.0, 0.4), (64, 90, 0.0, 0.4), (67, 90, 0.0, 0.4), (64, 90, 1.0, 1.2),
             (48, 90, 2.0, 2.5), (55, 90, 2.0, 2.5)],
            pedals=[(0.2, 1.5)])]),
    ),
    "tempo_gap": (
        "96 ticks per beat with tempo changes (60, 150, then 45 bpm); a 2.35 s silence between "
        "two notes becomes TIME_SHIFT 1000, 1000, 350 ms; velocities 30 and 31 share a bin.",
        lambda path: write_midi(path, [(72, 30, 0.0, 0.5), (74, 31, 2.85, 3.5)],
                                ticks_per_beat=96,
                                tempos=[(0.0, 60.0), (1.0, 150.0), (2.0, 45.0)]),
    ),
    "restrike_hanging": (
        "Piano track: G4 struck at 0 and again at 0.3 s with no note-off between (the second "
        "onset ends the first), and A4 never released (ends with the track at 2 s). A drum "
        "track (channel 10) is dropped.",
        lambda path: write_midi(path, [
            Track([(67, 70, 0.0, 0.6), (67, 100, 0.3, 0.5), (69, 64, 1.0, None)]),
            Track([(36, 120, 0.0, 0.1), (42, 80, 0.5, 0.6)], channel=9)], end_s=2.0),
    ),
    "three_tracks": (
        "POP909 style: melody, bridge and piano accompaniment on three tracks and channels, "
        "merged into one stream; notes at one instant are ordered note-offs first, then "
        "note-ons by pitch.",
        lambda path: write_midi(path, [
            Track([(76, 100, 0.0, 0.5), (74, 100, 0.5, 1.0)], channel=0),
            Track([(67, 60, 0.25, 1.0)], channel=1),
            Track([(48, 80, 0.0, 1.0), (52, 80, 0.0, 1.0), (55, 80, 0.5, 1.0)], channel=2)]),
    ),
}
BAD_FILES = {
    "empty.mid": "zero bytes",
    "corrupt.mid": "the first 60 bytes of scale.mid: a track chunk cut short",
}


def token_lines(path: Path) -> str:
    return "".join(id_to_name(int(i)) + "\n" for i in midi_file_to_ids(path))


def build(folder: Path) -> dict[str, bytes]:
    """Every fixture file's name and content, written into `folder`."""
    out: dict[str, bytes] = {}
    for name, (_, write) in FIXTURES.items():
        midi = folder / f"{name}.mid"
        write(midi)
        out[midi.name] = midi.read_bytes()
        out[f"{name}.tokens.txt"] = token_lines(midi).encode()
    out["empty.mid"] = b""
    out["corrupt.mid"] = out["scale.mid"][:60]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regenerate", action="store_true", help="rewrite the fixtures")
    args = parser.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        files = build(Path(scratch))
    stale = [name for name, data in files.items()
             if not (HERE / name).is_file() or (HERE / name).read_bytes() != data]
    if args.regenerate:
        for name in stale:
            (HERE / name).write_bytes(files[name])
        print(f"rewrote {len(stale)} file(s): {', '.join(stale) or 'none'}")
        return 0
    if stale:
        print(f"out of date: {', '.join(stale)} (run with --regenerate)")
        return 1
    print(f"{len(files)} fixture files up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
