"""`.mid` <-> notes: merging, pedal, tempo maps, re-strikes, hanging notes, bad files, writing.

Fixture files are built in code by `helpers.write_midi`; references come from the exact seconds
of the ticks written, run through `helpers.reference_notes` (plain-Python rules).
"""

import sys
from pathlib import Path

import mido
import numpy as np
import pytest
from helpers import (
    Track,
    arrays_to_tuples,
    assert_close,
    read_reference,
    reference_notes,
    write_midi,
)
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from musicgpt.events import NoteArrays, ids_to_arrays
from musicgpt.midi_io import MidiReadError, arrays_to_midi_file, midi_file_to_arrays
from musicgpt.pipeline import ids_to_midi_file, midi_file_to_ids
from musicgpt.vocab import VOCAB_SIZE, id_to_name, name_to_id


def read(path) -> list[tuple[int, int, int, int]]:
    return arrays_to_tuples(midi_file_to_arrays(path))


def test_drums_are_dropped_and_all_other_tracks_merge(tmp_path):
    path = tmp_path / "band.mid"
    write_midi(path, [
        Track([(72, 90, 0.0, 0.5)], program=0),               # melody
        Track([(60, 70, 0.25, 1.0)], channel=1, program=0),   # bridge
        Track([(48, 60, 0.5, 1.5)], channel=2, program=33),   # bass
        Track([(36, 100, 0.0, 0.1), (38, 100, 0.5, 0.6)], channel=9),
    ])
    assert read(path) == [(72, 90, 0, 50), (60, 70, 25, 100), (48, 60, 50, 150)]


def test_sustain_pedal_extends_a_released_note_until_the_pedal_lifts(tmp_path):
    path = tmp_path / "pedal.mid"
    write_midi(path, [Track(
        [(60, 80, 0.0, 0.5), (64, 80, 0.0, 3.0), (67, 80, 2.0, 2.2)],
        pedals=[(0.3, 1.2), (2.1, 2.6)],
    )])
    # C4 released under the pedal sounds to 1.2 s; E4 outlasts the pedal; G4 rides the second.
    assert read(path) == [(60, 80, 0, 120), (64, 80, 0, 300), (67, 80, 200, 260)]


def test_a_pedalled_note_ends_when_its_pitch_is_struck_again(tmp_path):
    path = tmp_path / "pedal_restrike.mid"
    write_midi(path, [Track([(60, 80, 0.0, 0.2), (60, 90, 0.7, 0.8)], pedals=[(0.1, 2.0)])])
    assert read(path) == [(60, 80, 0, 70), (60, 90, 70, 200)]


@pytest.mark.parametrize("channel", [0, 1, 2, 15])
def test_a_note_released_before_the_pedal_goes_down_is_not_extended(tmp_path, channel):
    # symusic 0.6 starts the first pedal of a track at tick 0 on any channel but the first.
    path = tmp_path / "early.mid"
    write_midi(path, [Track([(60, 80, 0.0, 0.2), (62, 80, 0.0, 0.7)], pedals=[(0.5, 2.0)],
                            channel=channel)])
    assert read(path) == [(60, 80, 0, 20), (62, 80, 0, 200)]


def test_a_pedal_never_lifted_is_ignored(tmp_path):
    # POP909 melody tracks send CC64 values that rise and never fall below 64; holding every
    # later note to the end of the song would be wrong, so an unlifted pedal counts for nothing.
    path = tmp_path / "held.mid"
    write_midi(path, [Track([(60, 80, 0.0, 0.5)], pedals=[(0.2, None)])], end_s=4.0)
    assert read(path) == [(60, 80, 0, 50)]


def test_pedal_applies_only_within_its_own_track(tmp_path):
    path = tmp_path / "two_hands.mid"
    write_midi(path, [Track([(60, 80, 0.0, 0.5)], pedals=[(0.2, 2.0)]),
                      Track([(48, 80, 0.0, 0.5)], channel=1)])
    assert read(path) == [(48, 80, 0, 50), (60, 80, 0, 200)]


def test_a_restrike_in_one_track_closes_the_earlier_note(tmp_path):
    path = tmp_path / "restrike.mid"
    # MIDI order: on 0.0, on 0.5, off 1.0, off 1.5. The key goes down again at 0.5, and the
    # first note-off after that releases it; the later note-off is an orphan.
    write_midi(path, [Track([(60, 80, 0.0, 1.0), (60, 100, 0.5, 1.5)])])
    assert read(path) == [(60, 80, 0, 50), (60, 100, 50, 100)]


def test_a_restrike_across_tracks_closes_the_earlier_note(tmp_path):
    path = tmp_path / "restrike_tracks.mid"
    write_midi(path, [Track([(60, 80, 0.0, 1.0)]), Track([(60, 100, 0.5, 1.5)], channel=1)])
    assert read(path) == [(60, 80, 0, 50), (60, 100, 50, 150)]


def test_a_never_released_note_is_closed_at_the_end_of_its_track(tmp_path):
    path = tmp_path / "hanging.mid"
    written = write_midi(path, [Track([(60, 80, 0.0, None), (64, 80, 0.5, 1.0)])], end_s=3.0)
    assert written[0].notes[0][3] == pytest.approx(3.0)
    assert read(path) == [(60, 80, 0, 300), (64, 80, 50, 100)]


def test_a_never_released_note_struck_again_ends_at_the_restrike(tmp_path):
    path = tmp_path / "hanging_restrike.mid"
    write_midi(path, [Track([(60, 80, 0.0, None), (60, 90, 1.0, 2.0)])], end_s=5.0)
    assert read(path) == [(60, 80, 0, 100), (60, 90, 100, 200)]


def test_note_on_with_velocity_0_is_a_note_off(tmp_path):
    path = tmp_path / "vel0.mid"
    write_midi(path, [Track([(60, 80, 0.0, 0.5), (62, 81, 0.5, 1.0)],
                            note_off_as_velocity_0=True)])
    assert read(path) == [(60, 80, 0, 50), (62, 81, 50, 100)]


@pytest.mark.parametrize("ticks_per_beat", [96, 384, 480, 1024])
def test_many_tempo_changes_and_any_ticks_per_beat(tmp_path, ticks_per_beat):
    # pianomidi style: a tempo change every 50 ms or so, swinging between 40 and 200 bpm.
    tempos = [(i * 0.05, 40 + (i * 37) % 160) for i in range(300)]
    rows = [(40 + i % 48, 20 + i % 100, 0.037 * i, 0.037 * i + 0.2 + (i % 7) * 0.05)
            for i in range(300)]
    path = tmp_path / f"tempo_{ticks_per_beat}.mid"
    written = write_midi(path, rows, ticks_per_beat=ticks_per_beat, tempos=tempos)
    got, expected = read(path), reference_notes(written)
    assert len(got) == len(expected)
    assert_close(got, expected)
    assert got[-1][2] == pytest.approx(round(0.037 * 299 * 100), abs=1)


def spaced(rows):
    """Drop notes whose onset comes within 30 ms of the previous onset of the same pitch, and
    cut each note before its pitch's next onset (overlap rules are tested on their own)."""
    rows = sorted(rows, key=lambda r: (r[0], r[2]))
    kept = []
    for row in rows:
        if kept and kept[-1][0] == row[0]:
            if row[2] - kept[-1][2] < 0.03:
                continue
            last = kept[-1]
            kept[-1] = (last[0], last[1], last[2], min(last[3], row[2] - 0.005))
        kept.append(row)
    return kept


note_rows = st.lists(
    st.tuples(st.integers(21, 108), st.integers(1, 127), st.floats(0, 12),
              st.floats(0.012, 3)),
    min_size=1, max_size=40,
).map(lambda rows: spaced([(p, v, s, s + d) for p, v, s, d in rows]))
pedal_spans = st.lists(st.tuples(st.floats(0, 14), st.floats(0.05, 2)), max_size=4).map(
    lambda spans: [(d, d + length) for d, length in sorted(spans)]).filter(
    lambda spans: all(b[0] - a[1] > 0.05 for a, b in zip(spans, spans[1:], strict=False)))
tempo_maps = st.lists(st.tuples(st.floats(0, 15), st.floats(30, 240)), max_size=30)


@settings(derandomize=True, deadline=None, max_examples=60)
@given(note_rows, pedal_spans, tempo_maps, st.sampled_from([96, 384, 480, 1024]),
       st.sampled_from([0, 1, 8, 15]))
def test_generated_files_read_back_as_the_quantised_reference(scratch_dir, rows, pedals, tempos,
                                                               tpq, channel):
    path = scratch_dir / "generated.mid"
    written = write_midi(path, [Track(rows, pedals=pedals, channel=channel)],
                         ticks_per_beat=tpq, tempos=tempos)
    assert_close(read(path), reference_notes(written))
    assert_close(read(path), read_reference(path))


whole_ms = st.integers(0, 8000).filter(lambda ms: ms % 10 != 5)


@settings(derandomize=True, deadline=None, max_examples=60)
@given(st.lists(st.tuples(st.integers(21, 108), st.integers(1, 127), whole_ms,
                          st.integers(12, 2000)), min_size=1, max_size=40))
def test_millisecond_exact_files_read_back_exactly(scratch_dir, rows):
    # 125 bpm at 480 ticks per beat: one tick is exactly 1 ms, so nothing is off the grid.
    rows = spaced([(p, v, ms / 1000, (ms + d) / 1000) for p, v, ms, d in rows])
    rows = [(p, v, s, round(e, 3)) for p, v, s, e in rows]
    rows = [r for r in rows if round(r[3] * 1000) % 10 != 5]
    assume(rows)  # a file with no notes is rejected, as another test checks
    path = scratch_dir / "exact.mid"
    written = write_midi(path, rows, tempos=[(0.0, 125.0)])
    assert read(path) == reference_notes(written)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (bytes(range(256)) * 3, "no MThd"),
        (b"RIFF\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0", "no MThd"),
        (b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x00\x00", "0 ticks per beat"),
        (b"MThd\x00\x00\x00\x06\x00\x07\x00\x01\x01\xe0MTrk\x00\x00\x00\x04\x00\xff\x2f\x00",
         "unreadable"),
        (b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0MTrk\x00\x00\x00\x04\x00\xff\x2f\x00",
         "no notes"),
    ],
)
def test_bad_bytes_raise_midi_read_error_with_a_reason(tmp_path, content, reason):
    path = tmp_path / "bad.mid"
    path.write_bytes(content)
    with pytest.raises(MidiReadError, match=reason):
        midi_file_to_arrays(path)


@pytest.mark.parametrize("keep_fraction", [0.3, 0.6, 0.99])
def test_a_truncated_file_raises_midi_read_error(tmp_path, keep_fraction):
    whole = tmp_path / "whole.mid"
    write_midi(whole, [(60 + i % 12, 80, i * 0.1, i * 0.1 + 0.3) for i in range(50)])
    data = whole.read_bytes()
    cut = tmp_path / "cut.mid"
    cut.write_bytes(data[: int(len(data) * keep_fraction)])
    with pytest.raises(MidiReadError, match="truncated"):
        midi_file_to_arrays(cut)


def test_a_drums_only_file_says_so(tmp_path):
    path = tmp_path / "drums.mid"
    write_midi(path, [Track([(36, 100, 0.0, 0.1)], channel=9)])
    with pytest.raises(MidiReadError, match="drum"):
        midi_file_to_arrays(path)


def test_a_missing_file_raises_midi_read_error(tmp_path):
    with pytest.raises(MidiReadError, match="cannot read"):
        midi_file_to_arrays(tmp_path / "nope.mid")


def test_written_notes_read_back_exactly(tmp_path):
    notes = NoteArrays(np.array([60, 64, 60]), np.array([4, 96, 127]), np.array([0, 0, 150]),
                       np.array([150, 12345, 151]))
    path = arrays_to_midi_file(notes, tmp_path / "out" / "piece.mid")
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    midi = mido.MidiFile(str(path))
    assert len(midi.tracks) >= 1 and midi.length == pytest.approx(123.45, abs=0.01)
    assert read(path) == arrays_to_tuples(notes)


def test_midi_to_notes_to_midi_to_notes_is_stable(tmp_path):
    source = tmp_path / "source.mid"
    write_midi(source, [Track([(60, 80, 0.0, 0.5), (64, 70, 0.25, 3.0), (67, 50, 2.0, 2.2)],
                              pedals=[(0.3, 1.2)]), Track([(36, 99, 0.0, 0.5)], channel=9)],
               ticks_per_beat=96, tempos=[(0.0, 90.0), (1.0, 150.0)])
    first = midi_file_to_arrays(source)
    copy = arrays_to_midi_file(first, tmp_path / "copy.mid")
    assert read(copy) == arrays_to_tuples(first)
    assert np.array_equal(midi_file_to_ids(copy), midi_file_to_ids(source))


@settings(derandomize=True, deadline=None, max_examples=40)
@given(st.lists(st.integers(0, VOCAB_SIZE - 1), max_size=300))
def test_random_ids_decode_to_a_midi_file_that_reads_back(scratch_dir, ids):
    path = ids_to_midi_file(ids, scratch_dir / "random_ids.mid")
    decoded = arrays_to_tuples(ids_to_arrays(ids))
    mido.MidiFile(str(path))  # a valid Standard MIDI File
    if decoded:
        assert read(path) == decoded
    else:
        with pytest.raises(MidiReadError, match="no notes"):
            midi_file_to_arrays(path)


# --- golden files (tests/data, made by tests/data/make_fixtures.py) --------------------------

FIXTURE_DIR = Path(__file__).resolve().parent / "data"
GOLDEN = ["scale", "chords_pedal", "tempo_gap", "restrike_hanging", "three_tracks"]


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_fixture_encodes_to_its_tokens(name):
    expected = (FIXTURE_DIR / f"{name}.tokens.txt").read_text().splitlines()
    assert [id_to_name(int(i)) for i in midi_file_to_ids(FIXTURE_DIR / f"{name}.mid")] == expected
    assert np.array_equal(midi_file_to_ids(FIXTURE_DIR / f"{name}.mid"),
                          [name_to_id(n) for n in expected])
    assert read(FIXTURE_DIR / f"{name}.mid") == read_reference(FIXTURE_DIR / f"{name}.mid")


def test_golden_fixtures_are_what_the_generator_makes(tmp_path):
    sys.path.insert(0, str(FIXTURE_DIR))
    try:
        import make_fixtures
    finally:
        sys.path.remove(str(FIXTURE_DIR))
    built = make_fixtures.build(tmp_path)
    assert set(built) == {f"{n}.mid" for n in GOLDEN} | {f"{n}.tokens.txt" for n in GOLDEN} | {
        "empty.mid", "corrupt.mid"}
    for name, data in built.items():
        assert (FIXTURE_DIR / name).read_bytes() == data, f"{name} is stale: --regenerate"


@pytest.mark.parametrize(("name", "reason"), [("empty.mid", "empty"),
                                              ("corrupt.mid", "truncated")])
def test_bad_fixtures_raise_midi_read_error(name, reason):
    with pytest.raises(MidiReadError, match=reason):
        midi_file_to_arrays(FIXTURE_DIR / name)


# --- reader limits and validity; decoding valid for any length (issue 12) --------------------

def _raw_midi(path: Path, events: list[tuple[int, mido.Message]], midi_type: int = 0,
              ticks_per_beat: int = 480, tempo: int | None = None) -> Path:
    """A one-track file from (delta ticks, message) pairs, written by mido as given."""
    track = mido.MidiTrack()
    if tempo is not None:
        track.append(mido.MetaMessage("set_tempo", tempo=0, time=0))
        track[-1].tempo = tempo  # mido's own setter refuses 0; the file format does not
    for delta, message in events:
        track.append(message.copy(time=delta))
    midi = mido.MidiFile(type=midi_type, ticks_per_beat=ticks_per_beat)
    midi.tracks.append(track)
    if midi_type == 2:
        midi.tracks.append(mido.MidiTrack(track))
    midi.save(str(path))
    return path


def _on(pitch: int) -> mido.Message:
    return mido.Message("note_on", note=pitch, velocity=80)


def _off(pitch: int) -> mido.Message:
    return mido.Message("note_off", note=pitch, velocity=0)


def _scale_events(n: int = 8) -> list[tuple[int, mido.Message]]:
    return [e for i in range(n) for e in ((0 if i == 0 else 240, _on(60 + i)), (240, _off(60 + i)))]


def test_a_tempo_of_zero_or_absurdly_fast_is_refused(tmp_path):
    for tempo in (0, 1, 9_999):
        path = _raw_midi(tmp_path / "fast.mid", _scale_events(), tempo=tempo)
        with pytest.raises(MidiReadError, match="bad tempo"):
            midi_file_to_arrays(path)
    assert len(midi_file_to_arrays(_raw_midi(tmp_path / "ok.mid", _scale_events(),
                                             tempo=10_000))) == 8


def test_type_2_files_are_refused(tmp_path):
    with pytest.raises(MidiReadError, match="type 2"):
        midi_file_to_arrays(_raw_midi(tmp_path / "t2.mid", _scale_events(), midi_type=2))


@pytest.mark.parametrize("tail", [b"garbage!" * 4, b"\x00" * 11, b"MTrk\x00\x00\x10\x00ab"],
                         ids=["text", "zeros", "cut_chunk"])
def test_trailing_bytes_after_the_last_track_are_ignored(tmp_path, tail):
    clean = _raw_midi(tmp_path / "clean.mid", _scale_events())
    padded = tmp_path / "padded.mid"
    padded.write_bytes(clean.read_bytes() + tail)
    assert read(padded) == read(clean)


def test_corpus_limits_skip_a_giant_piece_and_cut_a_giant_note(tmp_path):
    from musicgpt.data import preprocess_folder
    from musicgpt.evaluation import read_midi_folder
    from musicgpt.pipeline import MAX_NOTE_SECONDS, read_midi_piece

    folder = tmp_path / "midi"
    folder.mkdir()
    _raw_midi(folder / "normal.mid", _scale_events())
    # 61 bytes of MIDI: two notes 2 x 0x0FFFFFFF ticks apart, 155 hours at 120 bpm
    _raw_midi(folder / "giant.mid", [(0, _on(60)), (0x0FFFFFFF, _off(60)),
                                     (0x0FFFFFFF, _on(62)), (10, _off(62))])
    held = [(0, _on(48)), *_scale_events(), (960 * 1200 - 15 * 240, _off(48))]  # 20 minutes
    _raw_midi(folder / "held.mid", held)
    assert "too long" in read_midi_piece(folder / "giant.mid").reason
    manifest = preprocess_folder(folder, tmp_path / "out", workers=1, progress=False)
    assert [p["path"] for p in manifest["pieces"]] == ["held.mid", "normal.mid"]
    assert [s["path"] for s in manifest["skipped"]] == ["giant.mid"]
    assert [c["path"] for c in manifest["clipped"]] == ["held.mid"]
    report = (tmp_path / "out" / "report.json").read_text()
    assert "too long" in report and "cut to that length" in report
    held_piece = next(p for p in manifest["pieces"] if p["path"] == "held.mid")
    assert held_piece["seconds"] == pytest.approx(MAX_NOTE_SECONDS, abs=0.1)
    clipped: list[dict] = []
    names, _, skipped = read_midi_folder(folder, clipped)
    assert names == ["held.mid", "normal.mid"] and [s["path"] for s in skipped] == ["giant.mid"]
    assert [c["path"] for c in clipped] == ["held.mid"]


def _long_gap_ids(gap_steps: int) -> np.ndarray:
    from musicgpt.vocab import gap_to_shift_ids, note_off_id, note_on_id

    return np.concatenate([[note_on_id(60)], gap_to_shift_ids(30), [note_off_id(60)],
                           gap_to_shift_ids(gap_steps), [note_on_id(62)], gap_to_shift_ids(50),
                           [note_off_id(62)]])


def _largest_delta(path: Path) -> int:
    return max(message.time for track in mido.MidiFile(str(path)).tracks for message in track)


def test_a_gap_longer_than_the_largest_delta_time_is_written_as_several_events(tmp_path):
    from musicgpt.midi_io import MAX_DELTA_TICKS

    ids = _long_gap_ids(int(80 * 3600 * 100))  # 80 hours: more than 0x0FFFFFFF ticks
    path = ids_to_midi_file(ids, tmp_path / "long.mid")
    assert _largest_delta(path) <= MAX_DELTA_TICKS
    assert read(path) == arrays_to_tuples(ids_to_arrays(ids))


def test_split_deltas_read_back_with_our_reader_mido_and_pretty_midi(tmp_path, monkeypatch):
    import pretty_midi

    from musicgpt import midi_io

    monkeypatch.setattr(midi_io, "MAX_DELTA_TICKS", 1000)  # split at ~1 s instead of 77.7 h
    ids = _long_gap_ids(1234)
    path = ids_to_midi_file(ids, tmp_path / "split.mid")
    assert _largest_delta(path) <= 1000
    expected = arrays_to_tuples(ids_to_arrays(ids))
    assert read(path) == expected
    notes = pretty_midi.PrettyMIDI(str(path)).instruments[0].notes
    assert [(n.pitch, round(n.start * 100), round(n.end * 100)) for n in notes] == [
        (p, s, e) for p, _, s, e in expected]


def test_a_column_of_ids_is_one_piece_and_a_batch_is_refused(tmp_path):
    ids = _long_gap_ids(120)
    column = ids_to_midi_file(ids[:, None], tmp_path / "column.mid")
    assert read(column) == read(ids_to_midi_file(ids, tmp_path / "flat.mid"))
    with pytest.raises(ValueError, match="several pieces"):
        ids_to_midi_file(np.stack([ids, ids]), tmp_path / "batch.mid")
