"""The fixed event vocabulary: id layout, names, velocity bins; and that it stays torch-free."""

import subprocess
import sys

import numpy as np
import pytest

from musicgpt import vocab
from musicgpt.vocab import (
    END_ID,
    PAD_ID,
    START_ID,
    TOKEN_NAMES,
    VOCAB_SIZE,
    Event,
    EventType,
    bin_to_velocity,
    event_to_id,
    id_to_event,
    id_to_name,
    name_to_event,
    name_to_id,
    velocity_to_bin,
)


def test_id_event_id_is_the_identity_over_the_whole_vocabulary():
    assert VOCAB_SIZE == 409
    assert vocab.BASE_VOCAB_SIZE == 391  # ids 0..390 kept their meaning when FIM/styles came
    for token_id in range(VOCAB_SIZE):
        assert event_to_id(id_to_event(token_id)) == token_id


@pytest.mark.parametrize(
    ("token_id", "event", "name"),
    [
        (0, Event(EventType.NOTE_ON, 0), "NOTE_ON_C-1"),
        (60, Event(EventType.NOTE_ON, 60), "NOTE_ON_C4"),
        (127, Event(EventType.NOTE_ON, 127), "NOTE_ON_G9"),
        (128, Event(EventType.NOTE_OFF, 0), "NOTE_OFF_C-1"),
        (128 + 69, Event(EventType.NOTE_OFF, 69), "NOTE_OFF_A4"),
        (255, Event(EventType.NOTE_OFF, 127), "NOTE_OFF_G9"),
        (256, Event(EventType.TIME_SHIFT, 1), "TIME_SHIFT_10ms"),
        (256 + 24, Event(EventType.TIME_SHIFT, 25), "TIME_SHIFT_250ms"),
        (355, Event(EventType.TIME_SHIFT, 100), "TIME_SHIFT_1000ms"),
        (356, Event(EventType.VELOCITY, 0), "VELOCITY_4"),
        (356 + 23, Event(EventType.VELOCITY, 23), "VELOCITY_96"),
        (387, Event(EventType.VELOCITY, 31), "VELOCITY_127"),
        (388, Event(EventType.PAD), "PAD"),
        (389, Event(EventType.START), "START"),
        (390, Event(EventType.END), "END"),
        (391, Event(EventType.FILL_SUFFIX), "FILL_SUFFIX"),
        (392, Event(EventType.FILL_MIDDLE), "FILL_MIDDLE"),
        (393, Event(EventType.STYLE, 0), "STYLE_0"),
        (408, Event(EventType.STYLE, 15), "STYLE_15"),
    ],
)
def test_range_edges_have_the_documented_ids_and_names(token_id, event, name):
    assert id_to_event(token_id) == event
    assert event_to_id(event) == token_id
    assert id_to_name(token_id) == name
    assert name_to_id(name) == token_id


def test_specials_have_their_constants():
    assert (PAD_ID, START_ID, END_ID) == (388, 389, 390)


def test_every_name_parses_back_to_its_id():
    assert len(set(TOKEN_NAMES)) == VOCAB_SIZE
    for token_id in range(VOCAB_SIZE):
        assert name_to_id(id_to_name(token_id)) == token_id
        assert TOKEN_NAMES[token_id] == id_to_name(token_id)


@pytest.mark.parametrize(
    "name",
    ["", "NOTE_ON_H4", "NOTE_ON_C10", "NOTE_ON_G#9", "NOTE_ON_C-2", "NOTE_ON_60",
     "NOTE_OFF_", "TIME_SHIFT_0ms", "TIME_SHIFT_15ms", "TIME_SHIFT_1010ms", "TIME_SHIFT_250",
     "VELOCITY_95", "VELOCITY_0", "VELOCITY_128", "pad", "BEGIN", "NOTE_ON_Cb4", "STYLE_16",
     "STYLE_-1", "STYLE_x"],
)
def test_bad_names_raise_value_error(name):
    with pytest.raises(ValueError):
        name_to_id(name)


@pytest.mark.parametrize("token_id", [-1, VOCAB_SIZE, 65535])
def test_ids_outside_the_vocabulary_raise_value_error(token_id):
    with pytest.raises(ValueError):
        id_to_event(token_id)


@pytest.mark.parametrize(
    "event_args",
    [(EventType.NOTE_ON, 128), (EventType.NOTE_OFF, -1), (EventType.TIME_SHIFT, 0),
     (EventType.TIME_SHIFT, 101), (EventType.VELOCITY, 32), (EventType.PAD, 1),
     (EventType.STYLE, 16), (EventType.FILL_MIDDLE, 1)],
)
def test_events_reject_values_outside_their_range(event_args):
    with pytest.raises(ValueError):
        Event(*event_args)


def test_velocity_bins_invert_and_cover_every_velocity():
    for velocity_bin in range(vocab.N_VELOCITY_BINS):
        assert velocity_to_bin(bin_to_velocity(velocity_bin)) == velocity_bin
    bins = [velocity_to_bin(v) for v in range(1, 128)]
    assert bins == sorted(bins)
    assert set(bins) == set(range(32))
    for velocity in range(1, 128):
        assert abs(bin_to_velocity(velocity_to_bin(velocity)) - velocity) <= 3
    assert (velocity_to_bin(1), velocity_to_bin(4), velocity_to_bin(5)) == (0, 0, 1)
    assert (velocity_to_bin(124), velocity_to_bin(125), velocity_to_bin(127)) == (30, 31, 31)


def test_id_functions_agree_with_the_event_table():
    ids = np.arange(VOCAB_SIZE)
    events = [id_to_event(int(i)) for i in ids]
    shifts = [e.value if e.type is EventType.TIME_SHIFT else 0 for e in events]
    assert vocab.shift_steps(ids).tolist() == shifts
    notes = [e.type in (EventType.NOTE_ON, EventType.NOTE_OFF) for e in events]
    assert vocab.is_note(ids).tolist() == notes
    assert vocab.note_pitch(ids)[vocab.is_note(ids)].tolist() == [
        e.value for e in events if e.type in (EventType.NOTE_ON, EventType.NOTE_OFF)]
    assert vocab.is_style(ids).sum() == vocab.N_STYLES
    assert vocab.style_id(3) == name_to_id("STYLE_3")


def test_a_gap_is_full_shifts_plus_a_remainder_that_sum_back():
    for gap in (0, 1, 99, 100, 101, 250, 1000, 12345):
        ids = vocab.gap_to_shift_ids(gap)
        assert vocab.shift_steps(ids).sum() == gap
        assert (vocab.shift_steps(ids)[:-1] == vocab.MAX_SHIFT_STEPS).all()


def test_velocity_names_parse_through_the_bin_edge():
    assert name_to_event("VELOCITY_96") == Event(EventType.VELOCITY, velocity_to_bin(96))
    assert id_to_name(name_to_id("VELOCITY_96")) == "VELOCITY_96"


def test_importing_vocab_and_events_leaves_torch_out():
    code = ("import sys; import musicgpt.vocab, musicgpt.events; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr or "torch was imported"


def test_kinds_follow_the_event_table_and_mark_ids_outside_it():
    ids = np.arange(-2, VOCAB_SIZE + 3)
    expected = [vocab.KIND[id_to_event(int(i)).type] if 0 <= i < VOCAB_SIZE else vocab.NO_KIND
                for i in ids]
    assert vocab.kind_of(ids).tolist() == expected


def test_interleaved_shifts_write_each_gap_before_its_token():
    gaps, tokens = [0, 5, 100, 250, 1000, 0], [60, 61, 62, 63, 64, END_ID]
    expected = np.concatenate([np.append(vocab.gap_to_shift_ids(g), t)
                               for g, t in zip(gaps, tokens, strict=True)])
    assert vocab.interleave_shifts(gaps, tokens).tolist() == expected.tolist()
    assert vocab.interleave_shifts([], []).tolist() == []


def test_seconds_and_steps_convert_both_ways():
    assert vocab.steps_to_seconds(7) == 0.07 and vocab.steps_to_seconds(107) == 1.07
    seconds = np.array([0.0, 0.004, 0.016, 1.2345, 61.0])
    assert vocab.quantise_seconds(seconds).tolist() == [vocab.seconds_to_steps(s) for s in seconds]
