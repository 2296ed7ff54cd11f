"""Write new notes into the user's own MIDI file, keeping every event they do not replace.

`midi_io` reads a file into the model's notes (tracks merged, pedal folded into lengths, 10 ms
steps); this module goes back the other way for infill and continuation, so a DAW finds the same
tracks and names, tempo map, time and key signatures, controllers (pedal included), velocities,
program changes and ticks per beat as before, each event at its own tick.

- Infill (`infill_midi_bytes`): a note belongs to the part it is struck in. The notes struck in
  the span (onset in [start, end) after the codec's rounding to 10 ms) are removed, each with its
  note-off, even one after the span; a note struck before the span is kept whole, even where it
  sounds into or across the span. Every other event stays as it was, pedal inside the span too
  (it acts on the kept notes, as before).
- Continuation (`continue_midi_bytes`): the primer's events up to its end are kept; a note
  struck in it keeps its own note-off, and a pedal down at its end its own lift, even later.
  Everything else after the primer's end goes, and the new music follows it.

The new notes go on one new track named `NEW_TRACK_NAME` (in a type-0 file, into its one track),
on a MIDI channel the file does not use, with the program of its piano track (the one with the
most notes); a file that already has that track (an earlier edit's) gets them there. The
sustain pedal acts per channel, so the file's own pedal cannot hold them: they sound as long as
the model wrote them, and nothing sounds past the span that did not before.
Seconds become ticks through the file's tempo map (its last tempo holds past its end). Drum notes
(channel 10) are never removed. Reads and writes with mido; `midi_io` stays the reader of notes.
"""

from __future__ import annotations

import io

import numpy as np

from .events import NoteArrays
from .midi_io import MidiReadError, TempoMap
from .vocab import quantise_seconds, steps_to_seconds

NEW_TRACK_NAME = "musicgpt"
DRUM_CHANNEL = 9

Events = list  # [(absolute tick, mido message)] of one track, in file order


def infill_midi_bytes(data: bytes, new_notes: NoteArrays, start_step: int,
                      end_step: int) -> bytes:
    """The file `data` with the notes struck in [start_step, end_step) replaced by `new_notes`
    (10 ms steps from the file's start)."""
    midi, tracks = _read(data)
    tempo = _tempo_map(tracks, midi.ticks_per_beat)
    kept = []
    for events in tracks:
        drop: set[int] = set()
        for on, off, _ in note_pairs(events):
            step = _steps(tempo, [events[on][0]])[0]
            if events[on][1].channel != DRUM_CHANNEL and start_step <= step < end_step:
                drop.update(i for i in (on, off) if i is not None)
        kept.append([e for i, e in enumerate(events) if i not in drop])
    return _with_new_notes(midi, kept, new_notes, tempo)


def continue_midi_bytes(data: bytes, new_notes: NoteArrays, primer_end_step: int) -> bytes:
    """The first `primer_end_step` steps of the file `data` (as `primer_part` keeps them), then
    `new_notes`, timed by the primer's tempo map."""
    midi, tracks = _read(data)
    tempo = _tempo_map(tracks, midi.ticks_per_beat)
    kept = [primer_part(events, _steps(tempo, [t for t, _ in events]), primer_end_step)
            for events in tracks]
    return _with_new_notes(midi, kept, new_notes, _tempo_map(kept, midi.ticks_per_beat))


def primer_part(events: Events, steps: np.ndarray, end_step: int) -> Events:
    """The events of one track at steps up to `end_step`, the note-offs of the notes struck
    there (a note-off is added where a note had none: at its re-strike or the track's end) and
    the lift of a pedal down at the end."""
    import mido

    keep = steps <= end_step
    extra = []
    for on, off, end_tick in note_pairs(events):
        if keep[on] and off is not None:
            keep[off] = True
        elif keep[on]:
            msg = events[on][1]
            extra.append((end_tick, mido.Message("note_off", channel=msg.channel, note=msg.note)))
    for channel in _pedals_down(events, keep):
        lift = next((i for i, (_, m) in enumerate(events) if not keep[i] and _is_pedal(m)
                     and m.channel == channel and m.value < 64 and steps[i] > end_step), None)
        if lift is not None:
            keep[lift] = True
    kept = [e for e, k in zip(events, keep, strict=True) if k and e[1].type != "end_of_track"]
    return sorted(kept + extra, key=lambda e: e[0])


def note_pairs(events: Events) -> list[tuple[int, int | None, int]]:
    """(onset index, note-off index or None, end tick) of each note of a track, paired as a key
    is (midi_io's rule): a note ends at the next note-on or note-off of its channel and pitch.
    A note closed by a re-strike, or never, has no note-off of its own (None) and ends at the
    re-strike or the track's last tick."""
    sounding: dict[tuple[int, int], int] = {}
    pairs = []
    for i, (tick, msg) in enumerate(events):
        if msg.type not in ("note_on", "note_off"):
            continue
        key = (msg.channel, msg.note)
        if key in sounding:
            pairs.append((sounding.pop(key), None if _is_onset(msg) else i, tick))
        if _is_onset(msg):
            sounding[key] = i
    last_tick = events[-1][0] if events else 0
    pairs += [(on, None, last_tick) for on in sounding.values()]
    return sorted(pairs)


def _is_onset(msg) -> bool:
    return msg.type == "note_on" and msg.velocity > 0


def _is_pedal(msg) -> bool:
    return msg.type == "control_change" and msg.control == 64


def _pedals_down(events: Events, keep: np.ndarray) -> list[int]:
    """Channels whose sustain pedal is down after the kept events."""
    down: dict[int, bool] = {}
    for (_, msg), k in zip(events, keep, strict=True):
        if k and _is_pedal(msg):
            down[msg.channel] = msg.value >= 64
    return [channel for channel, is_down in down.items() if is_down]


def _read(data: bytes):
    """(mido.MidiFile, each track as absolute-tick events), or MidiReadError."""
    import mido

    try:
        midi = mido.MidiFile(file=io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - mido raises several kinds on bad data
        raise MidiReadError(f"cannot edit this file: {exc}") from exc
    tracks = []
    for track in midi.tracks:
        ticks = np.cumsum([msg.time for msg in track], dtype=np.int64)
        tracks.append([(int(t), msg) for t, msg in zip(ticks, track, strict=True)])
    return midi, tracks


def _tempo_map(tracks: list[Events], ticks_per_beat: int) -> TempoMap:
    changes = [(t, m.tempo) for events in tracks for t, m in events if m.type == "set_tempo"]
    ticks, tempos = zip(*changes, strict=True) if changes else ((), ())
    return TempoMap(np.array(ticks, dtype=np.int64), np.array(tempos, dtype=np.int64),
                    ticks_per_beat)


def _steps(tempo: TempoMap, ticks) -> np.ndarray:
    """The codec's 10 ms step of each tick."""
    return quantise_seconds(tempo.ticks_to_seconds(np.asarray(ticks, dtype=np.int64)))


def _new_voice(tracks: list[Events]) -> tuple[int, int]:
    """(channel, program) for the new notes: the lowest channel the file does not use (else the
    piano track's), and the piano track's program."""
    used = {m.channel for events in tracks for _, m in events if hasattr(m, "channel")}
    onsets = [[m for _, m in events if _is_onset(m) and m.channel != DRUM_CHANNEL]
              for events in tracks]
    piano = max(range(len(tracks)), key=lambda i: len(onsets[i]))
    channel = onsets[piano][0].channel if onsets[piano] else 0
    programs = [m.program for _, m in tracks[piano]
                if m.type == "program_change" and m.channel == channel]
    free = [c for c in range(16) if c not in used and c != DRUM_CHANNEL]
    return (free[0] if free else channel), (programs[0] if programs else 0)


def _own_track(tracks: list[Events]) -> int | None:
    """The index of the track an earlier edit added (named NEW_TRACK_NAME, with a channel)."""
    for i, events in enumerate(tracks):
        names = [m.name for _, m in events if m.type == "track_name"]
        if names[:1] == [NEW_TRACK_NAME] and any(hasattr(m, "channel") for _, m in events):
            return i
    return None


def _note_events(notes: NoteArrays, channel: int, tempo: TempoMap) -> Events:
    """The notes as note-on/note-off events at the file's ticks (offs first at a tick)."""
    import mido

    on = tempo.seconds_to_ticks(steps_to_seconds(notes.start_step))
    off = np.maximum(tempo.seconds_to_ticks(steps_to_seconds(notes.end_step)), on + 1)
    events = []
    for p, v, a, b in zip(notes.pitch.tolist(), notes.velocity.tolist(), on.tolist(),
                          off.tolist(), strict=True):
        events.append((a, 1, mido.Message("note_on", channel=channel, note=p, velocity=v)))
        events.append((b, 0, mido.Message("note_off", channel=channel, note=p)))
    return [(tick, msg) for tick, _, msg in sorted(events, key=lambda e: (e[0], e[1]))]


def _with_new_notes(midi, tracks: list[Events], notes: NoteArrays, tempo: TempoMap) -> bytes:
    """The file's header and `tracks`, plus `notes` on their own channel: a new track, or
    merged into a type-0 file's one track."""
    import mido

    tracks = list(tracks)
    own = _own_track(tracks)
    if own is not None:  # edited before: the new notes join the earlier ones, on their channel
        channel = next(m.channel for _, m in tracks[own] if hasattr(m, "channel"))
        tracks[own] = sorted(tracks[own] + _note_events(notes, channel, tempo), key=lambda e: e[0])
    else:
        channel, program = _new_voice(tracks)
        new = [(0, mido.Message("program_change", channel=channel, program=program)),
               *_note_events(notes, channel, tempo)]
        if midi.type == 0:
            tracks[0] = sorted(tracks[0] + new, key=lambda e: e[0])  # stable: the file's first
        else:
            tracks.append([(0, mido.MetaMessage("track_name", name=NEW_TRACK_NAME)), *new])
    out = mido.MidiFile(type=midi.type, ticks_per_beat=midi.ticks_per_beat,
                        charset=midi.charset)
    out.tracks = [_relative(events) for events in tracks]
    raw = io.BytesIO()
    out.save(file=raw)
    return raw.getvalue()


def _relative(events: Events):
    """A mido track of delta times, ending in one end-of-track at or after its last event."""
    import mido

    track, now = mido.MidiTrack(), 0
    ends = [t for t, m in events if m.type == "end_of_track"]
    for tick, msg in events:
        if msg.type != "end_of_track":
            track.append(msg.copy(time=tick - now))
            now = tick
    track.append(mido.MetaMessage("end_of_track", time=max([now, *ends]) - now))
    return track
