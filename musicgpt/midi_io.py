"""`.mid` file <-> notes. The only module that touches MIDI parsers and writers.

Reading uses symusic (a C++ parser, ~200x faster than pretty_midi here) in integer ticks; seconds
are computed through the full tempo map at the end, after notes are paired and pedalled. All
non-drum tracks are merged into one piano. The sustain pedal (CC64 >= 64) is folded into note
lengths per track: a note released while the pedal is down sounds until the pedal lifts, or until
its pitch is struck again (resolved later by the overlap rule). symusic, like pretty_midi, silently
drops notes that are never released; we append note-offs for every pitch at each track's end
before parsing, so such notes end with their track instead (a pedal never lifted is ignored).
A note ends at the next note-on or note-off of its pitch in its track, as a key would.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from .events import NoteArrays, seconds_to_steps
from .files import tmp_path, writing
from .vocab import steps_to_seconds

# Bump when the notes read from a file change, so cached preprocessed pieces are re-encoded.
# 2: key-release note pairing, exact-tick ties, CC64 pedal spans, truncated files rejected.
# 3: type-2 files and tempos outside MIN_US_PER_BEAT refused, trailing bytes after the last
#    track ignored; pieces over pipeline.MAX_PIECE_SECONDS skipped, notes clipped.
CODEC_VERSION = 3
# The fastest tempo read (microseconds per beat; 6,000 bpm): a tempo of 0 or a few microseconds
# collapses a piece into an instant. The slowest is MIDI's own limit, 2**24 - 1 (3.6 bpm).
MIN_US_PER_BEAT = 10_000


class MidiReadError(ValueError):
    """A file that cannot be read as music, with the reason in the message."""


# Appended at each track's end: a note-off for every channel and pitch. The first reuses the
# end-of-track's delta time; the rest, and end-of-track, follow at 0. No pedal-up is added: a
# pedal never lifted is ignored, as symusic and pretty_midi do, because POP909's melody tracks
# carry CC64 values that rise (70, 72, 73, ...) and never fall, which would otherwise hold every
# later melody note to the end of the song.
_ALL_NOTES_OFF = b"".join(
    (b"" if i == 0 else b"\x00") + bytes([0x80 | c, p, 0])
    for i, (c, p) in enumerate((c, p) for c in range(16) for p in range(128))
) + b"\x00"


def close_hanging_notes(data: bytes) -> bytes:
    """Insert a note-off for every channel and pitch just before each track's end-of-track.

    Notes already released are unaffected (the parser ignores unmatched note-offs).
    Only one note-off per pitch is added: if a pitch is struck again and again without any
    note-off, all but the first of those trailing onsets are lost (the parser drops them).
    Raises MidiReadError for data that is not a Standard MIDI File, has 0 ticks per beat, is
    type 2 (independent sequences, which a parser would overlay), or is cut short inside a chunk
    before its last track (the parser would otherwise read the shortened track as whole). Bytes
    after the header's last track that do not form a whole chunk are trailing data, dropped.
    """
    if len(data) < 14 or data[:4] != b"MThd":
        raise MidiReadError("not a Standard MIDI File (no MThd header)")
    header_len, midi_type, n_tracks = struct.unpack(">IHH", data[4:12])
    if data[12:14] == b"\x00\x00":
        raise MidiReadError("bad header: 0 ticks per beat")
    if midi_type == 2:
        raise MidiReadError("MIDI type 2 (independent sequences) is not supported")
    pos, tracks_seen = 8 + header_len, 0
    parts = [data[:pos]]
    while pos + 8 <= len(data):
        kind = data[pos : pos + 4]
        (length,) = struct.unpack(">I", data[pos + 4 : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if len(body) < length and tracks_seen >= n_tracks:
            break  # trailing data after the last track
        if len(body) < length:
            raise MidiReadError(f"truncated file: a {kind!r} chunk declares {length} bytes, "
                                f"{len(body)} remain")
        tracks_seen += kind == b"MTrk"
        if kind == b"MTrk" and body.endswith(b"\xff\x2f\x00"):
            body = body[:-3] + _ALL_NOTES_OFF + b"\xff\x2f\x00"
        parts.append(kind + struct.pack(">I", len(body)) + body)
        pos += 8 + length
    return b"".join(parts)


def _key_release_ends(pitch: np.ndarray, start_tick: np.ndarray,
                      end_tick: np.ndarray) -> np.ndarray:
    """End each note at the next note-on or note-off of its pitch in its track, as a key would.

    The parser pairs a pitch's note-ons and note-offs first-in, first-out, so in
    on(0) on(1) off(2) off(3) the second note would run to 3, and a never-released note struck
    again would run to the track's end while the re-struck one took its note-off. Both ends
    are re-derived here: an onset closes the sounding note, the next note-off closes the new one,
    later note-offs are orphans (pretty_midi's reading too). A note-off at the same tick as
    an onset comes first, unless the parser paired them into a zero-length note. Works in
    integer ticks: ties must be exact, which float seconds are not.
    """
    n = len(pitch)
    times = np.concatenate([start_tick, end_tick])
    kind = np.concatenate([np.ones(n), np.where(end_tick <= start_tick, 2, 0)])  # off, on, 0-off
    order = np.lexsort((kind, times, np.concatenate([pitch, pitch])))
    rank = np.empty(2 * n, dtype=np.int64)
    rank[order] = np.arange(2 * n)
    # Each onset's own note-off sorts after it, so the next event always has the same pitch.
    return times[order[rank[:n] + 1]]


def _fold_pedal(end_tick: np.ndarray, pedals: np.ndarray) -> np.ndarray:
    """Extend each release that falls while the pedal is down to the pedal's lift.

    `pedals` is (n, 2) of (down_tick, up_tick), sorted by down_tick.
    """
    if len(pedals) == 0 or len(end_tick) == 0:
        return end_tick
    idx = np.searchsorted(pedals[:, 0], end_tick, side="right") - 1
    up = pedals[np.maximum(idx, 0), 1]
    return np.where((idx >= 0) & (end_tick < up), up, end_tick)


class TempoMap:
    """Ticks <-> seconds through a file's tempo changes (120 bpm until the first; at one tick the
    last change wins; the last tempo holds past the end). Reading and editing share it, so a
    tick lands on the same 10 ms step both ways."""

    def __init__(self, change_ticks, us_per_beat, ticks_per_beat: int):
        order = np.argsort(np.asarray(change_ticks), kind="stable")
        tick = np.concatenate([[0], np.asarray(change_ticks)[order]]).astype(np.int64)
        us = np.concatenate([[500_000], np.asarray(us_per_beat)[order]]).astype(np.float64)
        last_at_tick = np.append(tick[1:] != tick[:-1], True)
        self.change_tick, us = tick[last_at_tick], us[last_at_tick]
        self.s_per_tick = us / 1e6 / ticks_per_beat
        self.change_s = np.concatenate([[0.0], np.cumsum(np.diff(self.change_tick)
                                                         * self.s_per_tick[:-1])])

    def ticks_to_seconds(self, ticks) -> np.ndarray:
        idx = np.searchsorted(self.change_tick, ticks, side="right") - 1
        return self.change_s[idx] + (ticks - self.change_tick[idx]) * self.s_per_tick[idx]

    def seconds_to_ticks(self, seconds) -> np.ndarray:
        """The nearest whole tick of each time (int64)."""
        seconds = np.asarray(seconds, dtype=np.float64)
        idx = np.maximum(np.searchsorted(self.change_s, seconds, side="right") - 1, 0)
        ticks = self.change_tick[idx] + (seconds - self.change_s[idx]) / self.s_per_tick[idx]
        return np.rint(ticks).astype(np.int64)


def _check_tempos(us_per_beat: np.ndarray) -> None:
    """MidiReadError for a tempo faster than MIN_US_PER_BEAT allows (0 included)."""
    if len(us_per_beat) and us_per_beat.min() < MIN_US_PER_BEAT:
        fastest = int(us_per_beat.min())
        raise MidiReadError(f"bad tempo: {fastest:,} microseconds per beat (valid: "
                            f"{MIN_US_PER_BEAT:,} or more, at most "
                            f"{60e6 / MIN_US_PER_BEAT:,.0f} bpm)")


def _pedal_spans(controls: dict) -> np.ndarray:
    """(n, 2) sustain spans (down_tick, up_tick) from a track's control changes, by time.

    Built from the CC64 events themselves: symusic 0.6's own `pedals` start a track's first
    pedal at tick 0 on every channel but the first. A pedal never lifted gives no span.
    """
    is_pedal = controls["number"] == 64
    order = np.argsort(controls["time"][is_pedal], kind="stable")
    tick = controls["time"][is_pedal][order].astype(np.int64)
    down = controls["value"][is_pedal][order] >= 64
    was_down = np.concatenate([[False], down[:-1]])
    starts, ends = tick[down & ~was_down], tick[~down & was_down]
    return np.stack([starts[: len(ends)], ends], axis=1)


def _track_columns(track) -> tuple[np.ndarray, ...]:
    """(pitch, velocity, start_tick, end_tick) of one track, re-paired and pedal folded."""
    notes = track.notes.numpy()
    start = notes["time"].astype(np.int64)
    end = _key_release_ends(notes["pitch"], start, start + notes["duration"])
    pedals = _pedal_spans(track.controls.numpy())
    return notes["pitch"], notes["velocity"], start, _fold_pedal(end, pedals)


def midi_bytes_to_arrays(data: bytes) -> NoteArrays:
    """Parse MIDI bytes into quantised notes (10 ms steps). Raises MidiReadError with a reason."""
    import symusic

    try:
        score = symusic.Score.from_midi(close_hanging_notes(data), ttype="tick")
    except MidiReadError:
        raise
    except Exception as exc:  # symusic raises RuntimeError/ValueError with its own text
        raise MidiReadError(f"unreadable MIDI: {exc}") from exc
    tracks = [_track_columns(t) for t in score.tracks if not t.is_drum and len(t.notes)]
    if not tracks:
        has_drums = any(track.is_drum and len(track.notes) for track in score.tracks)
        raise MidiReadError("only drum notes" if has_drums else "no notes")
    pitch, velocity, start, end = (np.concatenate(c) for c in zip(*tracks, strict=True))
    audible = velocity > 0
    if not audible.any():
        raise MidiReadError("no notes")
    tempos, tpq = score.tempos.numpy(), score.ticks_per_quarter
    _check_tempos(tempos["mspq"])
    tempo_map = TempoMap(tempos["time"], tempos["mspq"], tpq)
    start_s = tempo_map.ticks_to_seconds(start[audible])
    end_s = tempo_map.ticks_to_seconds(end[audible])
    if not (np.isfinite(start_s).all() and np.isfinite(end_s).all()):
        raise MidiReadError("bad timing: note times are not finite")
    return seconds_to_steps(pitch[audible], velocity[audible], start_s, end_s)


def midi_file_to_arrays(path: str | Path) -> NoteArrays:
    """Read a `.mid` file into quantised notes. Raises MidiReadError with a reason."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise MidiReadError(f"cannot read file: {exc.strerror or exc}") from exc
    if not data:
        raise MidiReadError("empty file (0 bytes)")
    return midi_bytes_to_arrays(data)


def midi_file_to_performance(path: str | Path) -> list[tuple[float, str, int, int]]:
    """A `.mid` as the key events a player made, to replay it as if live: (time_s, kind, pitch,
    value) by time, kind "note_on" (value: velocity 1-127), "note_off" or "pedal" (value: the
    sustain controller, CC64); every channel but drums (10) merged, the tempo map applied.
    Nothing is folded or paired: the pedal is left to the listener. MidiReadError with a
    reason for a file that cannot be read or holds no notes."""
    import mido

    try:
        midi = mido.MidiFile(str(path))
    except OSError as exc:
        raise MidiReadError(f"cannot read file: {exc.strerror or exc}") from exc
    except (ValueError, EOFError, KeyError, IndexError) as exc:
        raise MidiReadError(f"unreadable MIDI: {exc}") from exc
    now, out = 0.0, []
    for message in midi:  # all tracks merged, delta times in seconds
        now += message.time
        if message.is_meta or getattr(message, "channel", 9) == 9:
            continue
        if message.type == "note_on" and message.velocity > 0:
            out.append((now, "note_on", message.note, message.velocity))
        elif message.type in ("note_on", "note_off"):
            out.append((now, "note_off", message.note, 0))
        elif message.type == "control_change" and message.control == 64:
            out.append((now, "pedal", 0, message.value))
    if not any(kind == "note_on" for _, kind, _, _ in out):
        raise MidiReadError("no notes")
    return out


MAX_DELTA_TICKS = 0x0FFFFFFF  # the largest delta time a MIDI file can hold (4-byte quantity)


def arrays_to_midi_bytes(notes: NoteArrays, program: int = 0, bpm: float = 120.0) -> bytes:
    """Notes as the bytes of a one-track piano `.mid` at `bpm` (480 ticks per beat; 4/4, so a
    DAW's bar grid follows the tempo).

    Any length is valid MIDI: a gap longer than the largest delta time (~77.7 hours at 120 bpm)
    is written as several events (empty markers between).
    """
    return tracks_to_midi_bytes([("Piano", notes)], program, bpm)


def tracks_to_midi_bytes(tracks: list[tuple[str, NoteArrays]], program: int = 0,
                         bpm: float = 120.0) -> bytes:
    """Named tracks of notes as the bytes of a `.mid` at `bpm`, as `arrays_to_midi_bytes`
    writes one; each track on its own MIDI channel, 0, 1, ... in order (9, drums, skipped)."""
    import io

    import pretty_midi

    midi = pretty_midi.PrettyMIDI(initial_tempo=float(bpm), resolution=480)
    midi.time_signature_changes.append(pretty_midi.TimeSignature(4, 4, 0.0))
    last_s = 0.0
    for name, notes in tracks:
        track = pretty_midi.Instrument(program=program, name=name)
        starts = steps_to_seconds(notes.start_step).tolist()
        ends = steps_to_seconds(notes.end_step).tolist()
        for p, v, s, e in zip(notes.pitch.tolist(), notes.velocity.tolist(), starts, ends,
                              strict=True):
            track.notes.append(pretty_midi.Note(velocity=int(v), pitch=int(p), start=s, end=e))
        midi.instruments.append(track)
        last_s = max(last_s, max(ends, default=0.0))
    if midi.time_to_tick(last_s) >= MAX_DELTA_TICKS:
        return _split_long_deltas(midi)
    raw = io.BytesIO()
    midi.write(raw)  # no delta can be too long
    return raw.getvalue()


def arrays_to_midi_file(notes: NoteArrays, path: str | Path, program: int = 0,
                        bpm: float = 120.0) -> Path:
    """Write notes as a one-track piano `.mid` (`arrays_to_midi_bytes`). All or nothing: a failed
    write leaves no `.tmp` and raises files.WriteError naming the path."""
    return bytes_to_file(arrays_to_midi_bytes(notes, program, bpm), path)


def bytes_to_file(data: bytes, path: str | Path) -> Path:
    """Write `data` (a `.mid`, a `.wav`) to `path` all or nothing (files.writing)."""
    path = Path(path)
    tmp = tmp_path(path)
    with writing(path, tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path


def _split_long_deltas(midi) -> bytes:
    """The bytes of a PrettyMIDI with every delta time above MAX_DELTA_TICKS split by empty
    markers, which readers ignore (pretty_midi writes such deltas as they come)."""
    import io

    import mido

    raw = io.BytesIO()
    midi.write(raw)
    parsed = mido.MidiFile(file=io.BytesIO(raw.getvalue()))
    for track in parsed.tracks:
        messages = list(track)
        track.clear()
        for message in messages:
            delta = message.time
            while delta > MAX_DELTA_TICKS:
                track.append(mido.MetaMessage("marker", text="", time=MAX_DELTA_TICKS))
                delta -= MAX_DELTA_TICKS
            track.append(message.copy(time=delta))
    out = io.BytesIO()
    parsed.save(file=out)
    return out.getvalue()
