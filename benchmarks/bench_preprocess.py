"""Preprocessing speed: musicgpt vs MidiTok's MIDILike, same files, one process, one run.

    python benchmarks/bench_preprocess.py                     # ../shared/data/midi, every file
    python benchmarks/bench_preprocess.py --limit 300         # 300 files spread over the folder
    python benchmarks/bench_preprocess.py --midi-dir DIR --repeats 3

Both sides read each file from disk and encode it to tokens, in this process, one file after
another (musicgpt: `midi_file_to_ids`; MidiTok: `symusic.Score(path)` then `encode`). Passes
alternate (musicgpt, MidiTok, musicgpt, ...) so background load hits both alike; the median pass
counts. Speed is MIDI-seconds per wall-second, where the MIDI-seconds of a file are the length
musicgpt encodes (sum of its time shifts), the same amount for both sides. Then musicgpt's
`preprocess_folder` runs with all cores into a temporary folder (pool start-up, writing
tokens.bin and manifest.json included), and once more to time the cached second run.

MidiTok settings: MIDILike with `use_velocities=True` (32 bins, as ours) and
`use_sustain_pedals=True`. MidiTok 3.1 raises KeyError 'Pedal_<program>' on a pedal in a track
whose program is not 0 when `use_programs=False`, so we use `use_programs=True` with
`one_token_stream_for_programs=True`: one merged stream with Program tokens, the closest match
to our single piano stream, and it encodes every file of the corpus. Drums are kept by MidiTok
(we drop them); the corpus is piano music, so that costs it little.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from musicgpt.data import find_midi_files, preprocess_folder
from musicgpt.events import ids_to_seconds
from musicgpt.midi_io import MidiReadError
from musicgpt.pipeline import midi_file_to_ids

DEFAULT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "midi"


def pick_files(midi_dir: Path, limit: int | None) -> list[Path]:
    """All files, or `limit` of them evenly spread (so every sub-corpus is represented)."""
    files = find_midi_files(midi_dir)
    if limit is None or limit >= len(files):
        return files
    return [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]


def musicgpt_pass(files: list[Path]) -> tuple[float, int, float, int]:
    """(wall seconds, tokens, MIDI seconds, failures) for one in-process pass."""
    tokens, seconds, failures = 0, 0.0, 0
    start = time.perf_counter()
    for path in files:
        try:
            ids = midi_file_to_ids(path)
        except MidiReadError:
            failures += 1
            continue
        tokens += len(ids)
        seconds += ids_to_seconds(ids)
    return time.perf_counter() - start, tokens, seconds, failures


def miditok_tokenizer():
    from miditok import MIDILike, TokenizerConfig

    config = TokenizerConfig(use_velocities=True, num_velocities=32, use_sustain_pedals=True,
                             use_programs=True, one_token_stream_for_programs=True)
    return MIDILike(config)


def miditok_pass(tokenizer, files: list[Path]) -> tuple[float, int, int]:
    """(wall seconds, tokens, failures) for one in-process pass."""
    import symusic

    tokens, failures = 0, 0
    start = time.perf_counter()
    for path in files:
        try:
            encoded = tokenizer.encode(symusic.Score(path))
        except Exception:  # noqa: BLE001 - a peer's failure is counted, not fatal
            failures += 1
            continue
        sequences = encoded if isinstance(encoded, list) else [encoded]
        tokens += sum(len(seq.ids) for seq in sequences)
    return time.perf_counter() - start, tokens, failures


def all_cores(files: list[Path], midi_dir: Path) -> tuple[float, float, int]:
    """(first run seconds, cached second run seconds, pieces) of preprocess_folder, all cores."""
    with tempfile.TemporaryDirectory() as scratch:
        subset = Path(scratch) / "midi"
        for path in files:  # links keep the subset's relative paths without copying data
            link = subset / path.relative_to(midi_dir)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path.resolve())
        out = Path(scratch) / "out"
        start = time.perf_counter()
        manifest = preprocess_folder(subset, out, workers=os.cpu_count(), progress=False)
        first = time.perf_counter() - start
        start = time.perf_counter()
        preprocess_folder(subset, out, workers=os.cpu_count(), progress=False)
        return first, time.perf_counter() - start, len(manifest["pieces"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--midi-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--limit", type=int, default=None, help="use N files spread evenly")
    parser.add_argument("--repeats", type=int, default=3, help="passes per side (median)")
    args = parser.parse_args(argv)
    if not args.midi_dir.is_dir():
        print(f"bench_preprocess: error: no MIDI folder at {args.midi_dir}", file=sys.stderr)
        return 2
    files = pick_files(args.midi_dir, args.limit)
    tokenizer = miditok_tokenizer()
    load_before = os.getloadavg()
    ours, theirs = [], []
    for _ in range(args.repeats):
        ours.append(musicgpt_pass(files))
        theirs.append(miditok_pass(tokenizer, files))
    load_after = os.getloadavg()
    _, our_tokens, midi_s, our_failures = ours[0]
    our_wall = statistics.median(r[0] for r in ours)
    their_wall = statistics.median(r[0] for r in theirs)
    _, their_tokens, their_failures = theirs[0]

    print(f"{len(files)} files from {args.midi_dir}, {midi_s / 3600:.2f} h of music, "
          f"{os.cpu_count()} cores, load average {load_before[0]:.1f} -> {load_after[0]:.1f}")
    print(f"  (median of {args.repeats} alternating passes per side)")
    print(f"musicgpt  1 process: {our_wall:7.2f} s  {midi_s / our_wall:9.0f} MIDI-s/s  "
          f"{our_tokens / midi_s:5.1f} tokens per MIDI-s  {our_failures} failed")
    print(f"MidiTok   1 process: {their_wall:7.2f} s  {midi_s / their_wall:9.0f} MIDI-s/s  "
          f"{their_tokens / midi_s:5.1f} tokens per MIDI-s  {their_failures} failed")
    print(f"ratio musicgpt / MidiTok, single process: {their_wall / our_wall:.1f}x")
    first, cached, pieces = all_cores(files, args.midi_dir)
    print(f"musicgpt  {os.cpu_count()} processes (preprocess_folder, {pieces} pieces): "
          f"{first:7.2f} s  {midi_s / first:9.0f} MIDI-s/s; cached second run {cached:.2f} s "
          f"({first / cached:.0f}x faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
