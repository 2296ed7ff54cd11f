"""midi_edit: infill and continuation keep the user's own file, event by event, outside what they
replace; the new notes land on their own track and channel at the file's own ticks.

Fixtures are written by code (helpers.write_midi: tempo changes, pedal, several tracks), and the
same checks run on real files of the corpus when it is present: POP909 (type 1, 4 tracks, 2/4,
pedal), ASAP (type 0, pedal on one channel, notes on two), piano-midi.de (type 1, 8 tracks, a
dense tempo map) and Nottingham (type 1, melody and chords).
"""

from __future__ import annotations

import io
from pathlib import Path

import mido
import numpy as np
import pytest
from conftest import CORPUS_DIR
from helpers import Track, write_midi

from musicgpt.events import NoteArrays
from musicgpt.midi_edit import NEW_TRACK_NAME, continue_midi_bytes, infill_midi_bytes
from musicgpt.midi_io import TempoMap, midi_bytes_to_arrays

REAL_FILES = ["pop909/001.mid", "pop909/002.mid", "asap/Bach/Fugue/bwv_880/Sun02.mid",
              "pianomidi/Albeniz/alb_esp3.mid", "nottingham/ashover1.mid"]


def _new_notes(start_step: int, end_step: int) -> NoteArrays:
    """A few notes inside [start_step, end_step), one held past the end."""
    starts = np.array([start_step, start_step + 10, end_step - 5])
    return NoteArrays(np.array([60, 67, 72]), np.array([50, 90, 127]), starts,
                      np.array([start_step + 40, end_step - 1, end_step + 30]))


def _tracks(data: bytes) -> tuple[mido.MidiFile, list[list[tuple[int, mido.Message]]]]:
    midi = mido.MidiFile(file=io.BytesIO(data))
    out = []
    for track in midi.tracks:
        ticks = np.cumsum([m.time for m in track])
        out.append([(int(t), m.copy(time=0)) for t, m in zip(ticks, track, strict=True)
                    if m.type != "end_of_track"])
    return midi, out


def _steps(midi: mido.MidiFile, tracks) -> TempoMap:
    changes = [(t, m.tempo) for events in tracks for t, m in events if m.type == "set_tempo"]
    tempo = TempoMap([t for t, _ in changes], [u for _, u in changes], midi.ticks_per_beat)
    return lambda tick: int(np.rint(tempo.ticks_to_seconds(np.array(tick)) * 100))


def _is_note(m) -> bool:
    return m.type in ("note_on", "note_off")


def _is_off(m) -> bool:
    return m.type == "note_off" or (m.type == "note_on" and m.velocity == 0)


def assert_edit_keeps_outside(original: bytes, edited: bytes, start_step: int,
                              end_step: int) -> int:
    """Every event of `original` is in `edited` at its tick, in its order, except the note-ons
    struck in [start_step, end_step) and note-offs at or after start_step (which may belong to
    them); returns the number of note-ons removed."""
    a_midi, a = _tracks(original)
    b_midi, b = _tracks(edited)
    assert (b_midi.type, b_midi.ticks_per_beat) == (a_midi.type, a_midi.ticks_per_beat)
    assert len(b) == len(a) + (a_midi.type == 1)
    new_channel = _new_channel(a, b)
    step = _steps(a_midi, a)
    removed = 0
    for old, new in zip(a, b, strict=False):
        new = [(t, m) for t, m in new if getattr(m, "channel", None) != new_channel]
        assert [e for e in old if not _is_note(e[1])] == [e for e in new if not _is_note(e[1])]
        assert [e for e in old if step(e[0]) < start_step] == \
               [e for e in new if step(e[0]) < start_step]
        old_on = [e for e in old if _is_note(e[1]) and not _is_off(e[1])]
        new_on = [e for e in new if _is_note(e[1]) and not _is_off(e[1])]
        gone = [e for e in old_on if e not in new_on]
        assert [e for e in old_on if e not in gone] == new_on
        assert all(start_step <= step(t) < end_step for t, _ in gone)
        assert all(not start_step <= step(t) < end_step or m.channel == 9 for t, m in new_on)
        old_off = [e for e in old if _is_off(e[1])]
        new_off = [e for e in new if _is_off(e[1])]
        assert all(e in old_off for e in new_off)
        assert all(step(t) >= start_step for t, _ in old_off if (t, _) not in new_off)
        assert len(old_off) - len(new_off) <= len(gone)
        removed += len(gone)
    return removed


def _channels(tracks) -> set[int]:
    return {m.channel for events in tracks for _, m in events if hasattr(m, "channel")}


def _new_channel(original, edited) -> int:
    """The one channel the edit added."""
    (channel,) = _channels(edited) - _channels(original)
    return channel


def _new_track_notes(edited: bytes, original: bytes) -> list[tuple[int, int, float]]:
    """(pitch, velocity, start_s) of the notes on the channel the edit added."""
    midi = mido.MidiFile(file=io.BytesIO(edited))
    channel = _new_channel(_tracks(original)[1], _tracks(edited)[1])
    notes, now = [], 0.0
    for m in midi:
        now += m.time
        if m.type == "note_on" and m.velocity > 0 and m.channel == channel:
            notes.append((m.note, m.velocity, round(now, 2)))
    return notes


@pytest.fixture(scope="module")
def pedal_file(tmp_path_factory) -> bytes:
    """Two tracks at 90 then 140 bpm, 384 ticks per beat, a pedal down across the span's start
    and another across its end, a note struck before the span and held across it, one struck in
    it and held past it; plus a 3/4 meter and a key signature on the tempo track."""
    right = Track([(72, 64, 0.5, 1.0), (74, 70, 1.5, 6.0), (76, 80, 2.5, 4.2), (77, 81, 4.5, 5.0)],
                  pedals=[(1.8, 2.6), (3.8, 4.6)])
    left = Track([(48, 50, 0.5, 2.4), (50, 51, 3.0, 3.4)], channel=1, program=1)
    path = tmp_path_factory.mktemp("edit") / "in.mid"
    write_midi(path, [right, left], ticks_per_beat=384, tempos=[(0.0, 90.0), (3.1, 140.0)])
    midi = mido.MidiFile(path)
    midi.tracks[0].insert(0, mido.MetaMessage("time_signature", numerator=3, denominator=4))
    midi.tracks[0].insert(0, mido.MetaMessage("key_signature", key="Eb"))
    midi.save(path)
    return path.read_bytes()


def test_infill_keeps_every_event_outside_the_span(pedal_file):
    edited = infill_midi_bytes(pedal_file, _new_notes(200, 400), 200, 400)
    removed = assert_edit_keeps_outside(pedal_file, edited, 200, 400)
    assert removed == 2  # 76 at 2.5 s (held past the span) and 50 at 3.0 s
    midi = mido.MidiFile(file=io.BytesIO(edited))
    assert midi.tracks[-1].name == NEW_TRACK_NAME
    notes = _new_track_notes(edited, pedal_file)
    assert [(p, v) for p, v, _ in notes] == [(60, 50), (67, 90), (72, 127)]
    assert [s for _, _, s in notes] == [2.0, 2.1, 3.95]  # across the 90 -> 140 bpm change


def test_new_notes_sound_as_written_not_held_by_the_file_pedal(pedal_file):
    new = _new_notes(200, 400)
    edited = infill_midi_bytes(pedal_file, new, 200, 400)
    notes = midi_bytes_to_arrays(edited)
    for pitch, start, end in zip(new.pitch, new.start_step, new.end_step, strict=True):
        at = np.flatnonzero((notes.pitch == pitch) & (notes.start_step == start))
        assert len(at) == 1 and abs(notes.end_step[at[0]] - end) <= 1


def test_type_0_file_gets_the_new_notes_in_its_one_track(pedal_file):
    one = mido.merge_tracks(mido.MidiFile(file=io.BytesIO(pedal_file)).tracks)
    midi = mido.MidiFile(type=0, ticks_per_beat=384)
    midi.tracks.append(one)
    raw = io.BytesIO()
    midi.save(file=raw)
    edited = infill_midi_bytes(raw.getvalue(), _new_notes(150, 300), 150, 300)
    assert assert_edit_keeps_outside(raw.getvalue(), edited, 150, 300) >= 1
    out = mido.MidiFile(file=io.BytesIO(edited))
    assert out.type == 0 and len(out.tracks) == 1
    assert {m.channel for m in out.tracks[0] if m.type == "program_change"} == {0, 1, 2}


def test_continuation_keeps_the_primer_clock_and_its_events(pedal_file):
    new = NoteArrays(np.array([60, 62]), np.array([80, 80]), np.array([400, 450]),
                     np.array([440, 480]))
    edited = continue_midi_bytes(pedal_file, new, 400)
    a_midi, a = _tracks(pedal_file)
    b_midi, b = _tracks(edited)
    step = _steps(a_midi, a)
    assert b_midi.ticks_per_beat == 384 and len(b) == len(a) + 1
    for old, new_events in zip(a, b, strict=False):
        assert [e for e in old if step(e[0]) <= 400] == \
               [e for e in new_events if step(e[0]) <= 400]
    tempos = [m.tempo for _, m in b[0] if m.type == "set_tempo"]
    assert tempos == [mido.bpm2tempo(90), mido.bpm2tempo(140)]
    # 74 (struck at 1.5 s, held to 6 s) keeps its note-off, the pedal down at 3.8 s its lift
    # (4.6 s); 77, struck at 4.5 s, is gone
    assert [m.note for _, m in b[1] if m.type == "note_off"] == [72, 76, 74]
    assert not any(m.type == "note_on" and m.note == 77 for _, m in b[1])
    assert [m.value for _, m in b[1] if m.type == "control_change"] == [127, 0, 127, 0]
    assert [s for _, _, s in _new_track_notes(edited, pedal_file)] == [4.0, 4.5]


@pytest.mark.skipif(not CORPUS_DIR.is_dir(), reason=f"corpus folder {CORPUS_DIR} is absent")
@pytest.mark.parametrize("name", REAL_FILES)
def test_real_files_keep_every_event_outside_the_span(name):
    data = (Path(CORPUS_DIR) / name).read_bytes()
    first = int(midi_bytes_to_arrays(data).start_step.min())
    start, end = first + 1000, first + 1600
    edited = infill_midi_bytes(data, _new_notes(start, end), start, end)
    assert assert_edit_keeps_outside(data, edited, start, end) > 0
    assert [p for p, _, _ in _new_track_notes(edited, data)] == [60, 67, 72]
    primer = continue_midi_bytes(data, _new_notes(start, end), start)
    assert len(midi_bytes_to_arrays(primer)) > 3


def test_a_second_edit_writes_into_the_first_ones_track(pedal_file):
    once = continue_midi_bytes(pedal_file, _new_notes(400, 600), 400)
    twice = infill_midi_bytes(once, _new_notes(450, 500), 450, 500)
    names = [t.name for t in mido.MidiFile(file=io.BytesIO(twice)).tracks]
    assert names == [t.name for t in mido.MidiFile(file=io.BytesIO(once)).tracks]
    assert names.count(NEW_TRACK_NAME) == 1
    assert _channels(_tracks(twice)[1]) == _channels(_tracks(once)[1])
    new = [(p, round(s, 2)) for p, _, s in _new_track_notes(twice, pedal_file)]
    # the first edit's notes were struck before the second's span: all kept
    assert new == [(60, 4.0), (67, 4.1), (60, 4.5), (67, 4.6), (72, 4.95), (72, 5.95)]
    third = infill_midi_bytes(twice, _new_notes(590, 600), 590, 600)
    # a third span over the first edit's 72 (5.95 s) replaces it
    assert [(p, s) for p, _, s in _new_track_notes(third, pedal_file) if s >= 5.9] == \
           [(60, 5.9), (72, 5.95), (67, 6.0)]
