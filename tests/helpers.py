"""Build MIDI files for tests from (pitch, velocity, start_s, end_s) tuples, with mido.

The writer converts seconds to ticks through a tempo map, so tests can ask for any
ticks-per-beat and many tempo changes. Because ticks are integers, the times a file really holds
differ from the requested ones by up to half a tick; `write_midi` returns the exact seconds of
what it wrote, which is the reference a reader must reproduce. `quantise_reference` applies the
codec's documented rules (pedal, 10 ms steps, one-step minimum, re-strike) independently of the
vectorised code under test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mido

NoteTuple = tuple[int, int, float, float | None]  # end_s None: the note is never released


@dataclass(frozen=True)
class Track:
    """One MTrk of notes; `pedals` are (down_s, up_s) sustain spans (up_s None: never lifted)."""

    notes: list[NoteTuple]
    pedals: list[tuple[float, float | None]] = field(default_factory=list)
    channel: int = 0  # 9 is the General MIDI drum channel
    program: int = 0
    note_off_as_velocity_0: bool = False


class TempoMap:
    """Seconds <-> ticks for a list of (time_s, bpm) tempo changes, each placed on a whole tick."""

    def __init__(self, tempos: list[tuple[float, float]], ticks_per_beat: int):
        self.ticks_per_beat = ticks_per_beat
        changes = sorted(tempos) if tempos else [(0.0, 120.0)]
        if changes[0][0] > 0:
            changes.insert(0, (0.0, 120.0))
        # (tick, seconds at that tick, microseconds per beat)
        self.segments: list[tuple[int, float, int]] = []
        for time_s, bpm in changes:
            tempo_us = mido.bpm2tempo(bpm)
            tick = self.seconds_to_tick(time_s) if self.segments else 0
            if self.segments and tick == self.segments[-1][0]:
                self.segments.pop()
            start_s = self.tick_to_seconds(tick) if self.segments else 0.0
            self.segments.append((tick, start_s, tempo_us))

    def _segment_at_tick(self, tick: int) -> tuple[int, float, int]:
        return [seg for seg in self.segments if seg[0] <= tick][-1]

    def tick_to_seconds(self, tick: int) -> float:
        seg_tick, seg_s, tempo_us = self._segment_at_tick(tick)
        return seg_s + (tick - seg_tick) * tempo_us / 1e6 / self.ticks_per_beat

    def seconds_to_tick(self, time_s: float) -> int:
        seg_tick, seg_s, tempo_us = [s for s in self.segments if s[1] <= time_s + 1e-12][-1]
        return seg_tick + round((time_s - seg_s) * 1e6 * self.ticks_per_beat / tempo_us)


def _track_messages(track: Track, tempo_map: TempoMap) -> tuple[list, Track]:
    """(absolute tick, order, message) triples for one track, and the track as really written.

    At one tick, note-offs come first, then pedal changes, then note-ons.
    """
    events, notes, pedals = [], [], []
    ch, to_tick, to_s = track.channel, tempo_map.seconds_to_tick, tempo_map.tick_to_seconds
    events.append((0, 0, mido.Message("program_change", channel=ch, program=track.program)))
    for pitch, velocity, start_s, end_s in track.notes:
        on = to_tick(start_s)
        events.append((on, 3, mido.Message("note_on", channel=ch, note=pitch, velocity=velocity)))
        if end_s is None:
            notes.append((pitch, velocity, to_s(on), None))
            continue
        off = max(to_tick(end_s), on + 1)
        message = (mido.Message("note_on", channel=ch, note=pitch, velocity=0)
                   if track.note_off_as_velocity_0
                   else mido.Message("note_off", channel=ch, note=pitch, velocity=64))
        events.append((off, 1, message))
        notes.append((pitch, velocity, to_s(on), to_s(off)))
    for down_s, up_s in track.pedals:
        events.append((to_tick(down_s), 2,
                       mido.Message("control_change", channel=ch, control=64, value=127)))
        if up_s is not None:
            events.append((to_tick(up_s), 2,
                           mido.Message("control_change", channel=ch, control=64, value=0)))
        pedals.append((to_s(to_tick(down_s)), None if up_s is None else to_s(to_tick(up_s))))
    return events, Track(notes, pedals, ch, track.program, track.note_off_as_velocity_0)


def _to_track(events: list, end_tick: int | None = None) -> tuple[mido.MidiTrack, int]:
    """Sorted delta-time track ending in end-of-track; returns it with its end tick."""
    track, now = mido.MidiTrack(), 0
    for tick, _, message in sorted(events, key=lambda e: (e[0], e[1])):
        track.append(message.copy(time=tick - now))
        now = tick
    last = max(now, end_tick or 0)
    track.append(mido.MetaMessage("end_of_track", time=last - now))
    return track, last


def write_midi(path: str | Path, tracks: list[Track] | list[NoteTuple], *,
               ticks_per_beat: int = 480, tempos: list[tuple[float, float]] | None = None,
               end_s: float | None = None) -> list[Track]:
    """Write a format-1 file: a tempo track, then one MTrk per `Track`.

    A plain list of note tuples means one piano track. `end_s` places every end-of-track there
    (default: at the track's last event). Returns the tracks as really written: every time is
    the exact second of its integer tick, and a never-released note or pedal ends at its
    track's end.
    """
    if tracks and not isinstance(tracks[0], Track):
        tracks = [Track(list(tracks))]
    tempo_map = TempoMap(tempos or [], ticks_per_beat)
    midi = mido.MidiFile(type=1, ticks_per_beat=ticks_per_beat)
    end_tick = tempo_map.seconds_to_tick(end_s) if end_s is not None else None
    midi.tracks.append(_to_track([(tick, 0, mido.MetaMessage("set_tempo", tempo=tempo_us))
                                  for tick, _, tempo_us in tempo_map.segments], end_tick)[0])
    written = []
    for track in tracks:
        events, exact = _track_messages(track, tempo_map)
        mtrk, last_tick = _to_track(events, end_tick)
        midi.tracks.append(mtrk)
        track_end_s = tempo_map.tick_to_seconds(last_tick)
        written.append(Track(
            [(p, v, s, track_end_s if e is None else e) for p, v, s, e in exact.notes],
            [(down, track_end_s if up is None else up) for down, up in exact.pedals],
            exact.channel, exact.program, exact.note_off_as_velocity_0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    midi.save(str(path))
    return written


def reference_notes(tracks: list[Track]) -> list[tuple[int, int, int, int]]:
    """What a reader must produce from tracks as written: drums dropped, pedal, quantised."""
    notes = []
    for track in tracks:
        if track.channel != 9:
            notes.extend(fold_pedal(track.notes, track.pedals))
    return quantise_reference(notes)


def fold_pedal(notes: list[NoteTuple], pedals: list[tuple[float, float]]) -> list[NoteTuple]:
    """A released note whose release falls while the pedal is down ends when the pedal lifts."""
    out = []
    for pitch, velocity, start_s, end_s in notes:
        held = [up_s for down_s, up_s in pedals if down_s <= end_s < up_s]
        out.append((pitch, velocity, start_s, max(held, default=end_s)))
    return out


def quantise_reference(notes: list[NoteTuple]) -> list[tuple[int, int, int, int]]:
    """(pitch, velocity, start_step, end_step) by the codec's rules, with plain Python loops.

    Steps are round(seconds * 100), a note lasts at least one step, and a pitch struck again
    while it sounds ends at the new onset (two onsets in one step: the later-listed wins).
    Sorted by (start_step, pitch).
    """
    quantised = []
    for index, (pitch, velocity, start_s, end_s) in enumerate(notes):
        start = max(0, round(start_s * 100))
        end = max(round(end_s * 100), start + 1)
        quantised.append((pitch, start, index, velocity, end))
    quantised.sort()
    out = []
    for i, (pitch, start, _, velocity, end) in enumerate(quantised):
        if i + 1 < len(quantised) and quantised[i + 1][0] == pitch:
            end = min(end, quantised[i + 1][1])
        if end > start:
            out.append((pitch, min(max(velocity, 1), 127), start, end))
    return sorted(out, key=lambda n: (n[2], n[0]))


def arrays_to_tuples(arrays) -> list[tuple[int, int, int, int]]:
    """NoteArrays -> sorted (pitch, velocity, start_step, end_step) tuples."""
    rows = zip(arrays.pitch.tolist(), arrays.velocity.tolist(), arrays.start_step.tolist(),
               arrays.end_step.tolist(), strict=True)
    return sorted(rows, key=lambda n: (n[2], n[0]))


def assert_close(got, expected, steps: int = 1) -> None:
    """Same notes per pitch, in order, same velocity; onsets and offsets within `steps` steps.

    Rows are (pitch, velocity, start_step, end_step). Times that sit on a half step in one
    reader can round the other way in another (float32 seconds), hence the tolerance.
    """
    by_pitch: dict[int, tuple[list, list]] = {}
    for row in expected:
        by_pitch.setdefault(row[0], ([], []))[0].append(row)
    for row in got:
        by_pitch.setdefault(row[0], ([], []))[1].append(row)
    for pitch, (want, have) in by_pitch.items():
        assert len(want) == len(have), f"pitch {pitch}: {len(want)} notes expected, {len(have)}"
        for (_, v1, s1, e1), (_, v2, s2, e2) in zip(want, have, strict=True):
            assert v1 == v2 and abs(s1 - s2) <= steps and abs(e1 - e2) <= steps, (
                f"pitch {pitch}: expected {(v1, s1, e1)}, got {(v2, s2, e2)}")


def _tick_seconds(midi: mido.MidiFile):
    """A tick -> seconds function from every set_tempo in the file (same tick: the last wins)."""
    import bisect

    changes: dict[int, int] = {0: 500_000}
    for track in midi.tracks:
        tick = 0
        for message in track:
            tick += message.time
            if message.type == "set_tempo":
                changes[tick] = message.tempo
    ticks = sorted(changes)
    seconds = [0.0]
    for before, after in zip(ticks, ticks[1:], strict=False):
        seconds.append(seconds[-1] + (after - before) * changes[before] / 1e6 / midi.ticks_per_beat)

    def to_seconds(tick: int) -> float:
        i = bisect.bisect_right(ticks, tick) - 1
        return seconds[i] + (tick - ticks[i]) * changes[ticks[i]] / 1e6 / midi.ticks_per_beat
    return to_seconds


def _track_reference(track: mido.MidiTrack) -> list[tuple[int, int, int, int, int]]:
    """(channel, pitch, velocity, start_tick, end_tick) by the key rule, pedal folded.

    An onset ends the sounding note of its pitch. A note-off first answers for the note that
    was sounding when its tick began (even if a re-strike at that tick already ended it), and
    otherwise ends a note begun at that tick (a zero-length note). Notes still sounding end
    with the track; a pedal never lifted is ignored.
    """
    sounding: dict[tuple[int, int], tuple[int, int]] = {}  # (channel, pitch) -> (start, velocity)
    owed_off: set[tuple[int, int]] = set()  # keys sounding when the current tick began
    notes, pedals, down, tick, current = [], {}, {}, 0, -1
    for message in track:
        tick += message.time
        if tick != current:
            owed_off, current = set(sounding), tick
        if message.type == "control_change" and message.control == 64:
            if message.value >= 64:
                down.setdefault(message.channel, tick)
            elif message.channel in down:
                pedals.setdefault(message.channel, []).append((down.pop(message.channel), tick))
        if message.type not in ("note_on", "note_off"):
            continue
        key = (message.channel, message.note)
        is_on = message.type == "note_on" and message.velocity > 0
        if key in sounding and (is_on or key not in owed_off or sounding[key][0] < tick):
            start, velocity = sounding.pop(key)
            notes.append((*key, velocity, start, tick))
        if is_on:
            sounding[key] = (tick, message.velocity)
        else:
            owed_off.discard(key)
    notes += [(*key, velocity, start, tick) for key, (start, velocity) in sounding.items()]
    notes.sort(key=lambda n: n[3])  # onset order, as the parser lists notes
    return [(ch, p, v, s, _fold_ticks(e, pedals.get(ch, []))) for ch, p, v, s, e in notes]


def _fold_ticks(end_tick: int, pedals: list[tuple[int, int]]) -> int:
    held = [up for down, up in pedals if down <= end_tick < up]
    return max(held, default=end_tick)


def read_reference(path: str | Path) -> list[tuple[int, int, int, int]]:
    """An independent reading of a `.mid` (mido, plain Python), by the rules the codec documents.

    Returns (pitch, velocity, start_step, end_step) rows like `arrays_to_tuples`, drums dropped.
    """
    midi = mido.MidiFile(str(path))
    to_seconds = _tick_seconds(midi)
    notes = []
    for track in midi.tracks:
        for channel, pitch, velocity, start, end in _track_reference(track):
            if channel != 9:
                notes.append((pitch, velocity, to_seconds(start), to_seconds(end)))
    return quantise_reference(notes)


def huge_gap_midi_bytes() -> bytes:
    """A 58-byte MIDI file of two short notes about 140 years apart (tempo at its slowest,
    one tick per beat, a gap of the largest delta time): a few bytes that would encode to
    billions of time shifts."""
    track = bytes([0x00, 0xFF, 0x51, 0x03, 0xFF, 0xFF, 0xFF,  # tempo: 16.8 s per beat
                   0x00, 0x90, 0x3C, 0x40, 0x01, 0x80, 0x3C, 0x40,  # C4 for one beat
                   0xFF, 0xFF, 0xFF, 0x7F, 0x90, 0x3E, 0x40,  # D4 after 0x0FFFFFFF beats
                   0x01, 0x80, 0x3E, 0x40, 0x00, 0xFF, 0x2F, 0x00])
    header = b"MThd" + (6).to_bytes(4, "big") + bytes([0, 0, 0, 1, 0, 1])
    return header + b"MTrk" + len(track).to_bytes(4, "big") + track
