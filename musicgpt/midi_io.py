"""`.mid` file <-> notes. The only module that touches MIDI parsers and writers.

Reading uses symusic (a C++ parser, ~200x faster than pretty_midi here), with seconds computed
through the full tempo map. All non-drum tracks are merged into one piano; the sustain pedal
(CC64 >= 64) is folded into note lengths per track: a note released while the pedal is down sounds
until the pedal lifts, or until its pitch is struck again (resolved later by the overlap rule).
symusic, like pretty_midi, silently drops notes that are never released; we append note-offs for
every pitch at each track's end before parsing, so such notes end with their track instead.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .events import NoteArrays, seconds_to_steps
from .vocab import STEP_MS


class MidiReadError(ValueError):
    """A file that cannot be read as music, with the reason in the message."""


_ALL_NOTES_OFF = b"".join(
    (b"" if i == 0 else b"\x00") + bytes([0x80 | channel, pitch, 0])
    for i, (channel, pitch) in enumerate((c, p) for c in range(16) for p in range(128))
) + b"\x00"


def close_hanging_notes(data: bytes) -> bytes:
    """Insert a note-off for every channel and pitch just before each track's end-of-track.

    Notes already released are unaffected (an unmatched note-off is ignored by the parser).
    Raises MidiReadError for data that is not a Standard MIDI File.
    """
    if len(data) < 14 or data[:4] != b"MThd":
        raise MidiReadError("not a Standard MIDI File (no MThd header)")
    (header_len,) = struct.unpack(">I", data[4:8])
    pos = 8 + header_len
    parts = [data[:pos]]
    while pos + 8 <= len(data):
        kind = data[pos : pos + 4]
        (length,) = struct.unpack(">I", data[pos + 4 : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"MTrk" and len(body) == length and body.endswith(b"\xff\x2f\x00"):
            body = body[:-3] + _ALL_NOTES_OFF + b"\xff\x2f\x00"
        parts.append(kind + struct.pack(">I", len(body)) + body)
        pos += 8 + length
    return b"".join(parts)


def _fold_pedal(end_s: np.ndarray, pedals: np.ndarray) -> np.ndarray:
    """Extend each release that falls while the pedal is down to the pedal's lift.

    `pedals` is (n, 2) of (down_s, up_s), sorted by down_s.
    """
    if len(pedals) == 0 or len(end_s) == 0:
        return end_s
    idx = np.searchsorted(pedals[:, 0], end_s, side="right") - 1
    held = idx >= 0
    up = np.where(held, pedals[np.maximum(idx, 0), 1], -np.inf)
    return np.where(held & (end_s < up), up, end_s)


def midi_bytes_to_arrays(data: bytes) -> NoteArrays:
    """Parse MIDI bytes into quantised notes (10 ms steps). Raises MidiReadError with a reason."""
    import symusic

    try:
        score = symusic.Score.from_midi(close_hanging_notes(data), ttype="second")
    except MidiReadError:
        raise
    except Exception as exc:  # symusic raises RuntimeError/ValueError with its own text
        raise MidiReadError(f"unreadable MIDI: {exc}") from exc
    columns: list[list[np.ndarray]] = [[], [], [], []]
    for track in score.tracks:
        if track.is_drum:
            continue
        notes = track.notes.numpy()
        if len(notes["pitch"]) == 0:
            continue
        start = notes["time"].astype(np.float64)
        end = start + notes["duration"].astype(np.float64)
        pedal = track.pedals.numpy()
        pedals = np.stack([pedal["time"], pedal["time"] + pedal["duration"]], axis=1)
        pedals = pedals[np.argsort(pedals[:, 0], kind="stable")].astype(np.float64)
        for column, values in zip(columns, (notes["pitch"], notes["velocity"], start,
                                            _fold_pedal(end, pedals))):
            column.append(values)
    if not columns[0]:
        has_drums = any(track.is_drum and len(track.notes) for track in score.tracks)
        raise MidiReadError("only drum notes" if has_drums else "no notes")
    pitch, velocity, start, end = (np.concatenate(c) for c in columns)
    audible = velocity > 0
    if not audible.any():
        raise MidiReadError("no notes")
    return seconds_to_steps(pitch[audible], velocity[audible], start[audible], end[audible])


def midi_file_to_arrays(path: str | Path) -> NoteArrays:
    """Read a `.mid` file into quantised notes. Raises MidiReadError with a reason."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise MidiReadError(f"cannot read file: {exc.strerror or exc}") from exc
    if not data:
        raise MidiReadError("empty file (0 bytes)")
    return midi_bytes_to_arrays(data)


def arrays_to_midi_file(notes: NoteArrays, path: str | Path, program: int = 0) -> Path:
    """Write notes as a one-track piano `.mid` (120 bpm, 480 ticks per beat, so 1 tick ~ 1 ms)."""
    import pretty_midi

    midi = pretty_midi.PrettyMIDI(initial_tempo=120.0, resolution=480)
    piano = pretty_midi.Instrument(program=program, name="Piano")
    scale = STEP_MS / 1000.0
    for p, v, s, e in zip(notes.pitch.tolist(), notes.velocity.tolist(),
                          notes.start_step.tolist(), notes.end_step.tolist()):
        piano.notes.append(pretty_midi.Note(velocity=int(v), pitch=int(p), start=s * scale,
                                            end=e * scale))
    midi.instruments.append(piano)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    midi.write(str(tmp))
    tmp.replace(path)
    return path
