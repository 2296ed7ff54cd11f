"""Notes <-> token ids without MIDI files: quantisation, shifts, velocity, re-strikes, decoding."""

import numpy as np
import pytest
from helpers import arrays_to_tuples, quantise_reference
from hypothesis import given, settings
from hypothesis import strategies as st

from musicgpt.events import (
    Note,
    NoteGrammar,
    arrays_to_ids,
    grammar_errors,
    ids_to_arrays,
    ids_to_arrays_with_positions,
    ids_to_notes,
    ids_to_seconds,
    ids_until_seconds,
    notes_to_arrays,
    notes_to_ids,
    seconds_to_steps,
    wrap_piece,
)
from musicgpt.vocab import (
    BASE_VOCAB_SIZE,
    END_ID,
    PAD_ID,
    START_ID,
    VOCAB_SIZE,
    bin_to_velocity,
    id_to_name,
    is_note_on,
    name_to_id,
    note_pitch,
    velocity_to_bin,
)

SEEDED = settings(derandomize=True, deadline=None, max_examples=150)


def names(ids) -> list[str]:
    return [id_to_name(int(i)) for i in ids]


def ids_of(*token_names: str) -> np.ndarray:
    return np.array([name_to_id(n) for n in token_names], dtype=np.int64)


def notes_from(tuples) -> list[Note]:
    return [Note(*t) for t in tuples]


def test_a_chord_encodes_in_the_documented_order():
    notes = notes_from([(64, 80, 0.0, 0.5), (60, 80, 0.0, 0.5), (67, 100, 0.25, 0.5)])
    assert names(notes_to_ids(notes)) == [
        "VELOCITY_80", "NOTE_ON_C4", "NOTE_ON_E4",
        "TIME_SHIFT_250ms", "VELOCITY_100", "NOTE_ON_G4",
        "TIME_SHIFT_250ms", "NOTE_OFF_C4", "NOTE_OFF_E4", "NOTE_OFF_G4",
    ]


@pytest.mark.parametrize(
    ("start_s", "end_s", "steps"),
    [
        (0.0, 0.5, (0, 50)),
        (0.004, 0.016, (0, 2)),       # rounds to the nearest 10 ms
        (0.0149, 0.0351, (1, 4)),
        (1.0, 1.001, (100, 101)),     # a note lasts at least one step
        (1.0, 0.9, (100, 101)),       # even one that ends before it starts
        (-0.5, 0.02, (0, 2)),         # nothing before time 0
    ],
)
def test_times_are_quantised_to_10_ms_steps(start_s, end_s, steps):
    arrays = seconds_to_steps([60], [80], [start_s], [end_s])
    assert (int(arrays.start_step[0]), int(arrays.end_step[0])) == steps


@pytest.mark.parametrize(
    ("gap_s", "shifts_ms"),
    [
        (0.01, [10]),
        (0.99, [990]),
        (1.0, [1000]),
        (1.01, [1000, 10]),
        (2.0, [1000, 1000]),
        (3.57, [1000, 1000, 1000, 570]),
    ],
)
def test_a_long_gap_is_full_shifts_plus_a_remainder(gap_s, shifts_ms):
    notes = notes_from([(60, 80, 0.0, 0.1), (62, 80, 0.1 + gap_s, 0.2 + gap_s)])
    token_names = names(notes_to_ids(notes))
    between = token_names[token_names.index("NOTE_OFF_C4") + 1 : token_names.index("NOTE_ON_D4")]
    assert between == [f"TIME_SHIFT_{ms}ms" for ms in shifts_ms]
    assert sum(shifts_ms) == round(gap_s * 1000)


def test_velocity_is_written_only_when_its_bin_changes():
    # 81 and 84 share a bin (81..84); 85 starts the next one.
    notes = notes_from([(60, 81, 0.0, 0.1), (62, 84, 0.1, 0.2), (64, 85, 0.2, 0.3),
                        (65, 85, 0.3, 0.4), (67, 20, 0.4, 0.5), (69, 84, 0.5, 0.6)])
    velocity_names = [n for n in names(notes_to_ids(notes)) if n.startswith("VELOCITY")]
    assert velocity_names == ["VELOCITY_84", "VELOCITY_88", "VELOCITY_20", "VELOCITY_84"]


def test_a_restrike_closes_the_sounding_note_first():
    notes = notes_from([(60, 80, 0.0, 1.0), (60, 90, 0.5, 0.8)])
    assert names(notes_to_ids(notes)) == [
        "VELOCITY_80", "NOTE_ON_C4", "TIME_SHIFT_500ms", "NOTE_OFF_C4",
        "VELOCITY_92", "NOTE_ON_C4", "TIME_SHIFT_300ms", "NOTE_OFF_C4",
    ]


def test_two_onsets_of_one_pitch_in_one_step_keep_the_later_listed():
    arrays = seconds_to_steps([60, 60], [40, 100], [0.0, 0.001], [0.5, 0.2])
    assert arrays_to_tuples(arrays) == [(60, 100, 0, 20)]


def test_a_note_ending_where_the_same_pitch_starts_is_released_first():
    notes = notes_from([(60, 80, 0.0, 0.5), (60, 80, 0.5, 1.0)])
    assert names(notes_to_ids(notes))[1:5] == [
        "NOTE_ON_C4", "TIME_SHIFT_500ms", "NOTE_OFF_C4", "NOTE_ON_C4"]


def test_no_notes_encode_to_no_ids_and_decode_to_no_notes():
    assert len(notes_to_ids([])) == 0
    assert len(ids_to_arrays([])) == 0
    assert ids_to_notes(wrap_piece(np.zeros(0, dtype=np.uint16))) == []


def test_ids_are_uint16():
    assert notes_to_ids(notes_from([(60, 80, 0.0, 0.1)])).dtype == np.uint16


note_tuples = st.lists(
    st.tuples(st.integers(0, 127), st.integers(1, 127),
              st.floats(0, 30, allow_nan=False), st.floats(0.001, 4, allow_nan=False)),
    max_size=60,
).map(lambda rows: [(p, v, s, s + d) for p, v, s, d in rows])


@SEEDED
@given(note_tuples)
def test_notes_to_ids_to_notes_equals_the_quantised_reference(rows):
    expected = [(p, bin_to_velocity(velocity_to_bin(v)), s, e)
                for p, v, s, e in quantise_reference(rows)]
    decoded = ids_to_arrays(notes_to_ids(notes_from(rows)))
    assert arrays_to_tuples(decoded) == expected


@SEEDED
@given(note_tuples)
def test_encode_of_decode_is_the_identity_on_encoded_ids(rows):
    ids = notes_to_ids(notes_from(rows))
    assert np.array_equal(arrays_to_ids(ids_to_arrays(ids)), ids)
    assert grammar_errors(wrap_piece(ids)) == []


@SEEDED
@given(st.lists(st.integers(-5, VOCAB_SIZE + 20), max_size=400))
def test_decoding_any_ids_never_raises_and_gives_valid_notes(ids):
    arrays = ids_to_arrays(ids)
    assert ((arrays.pitch >= 0) & (arrays.pitch < 128)).all()
    assert ((arrays.velocity >= 1) & (arrays.velocity <= 127)).all()
    assert (arrays.end_step > arrays.start_step).all()
    # the decoder's output is valid encoder input, and survives another round trip
    assert arrays_to_tuples(ids_to_arrays(arrays_to_ids(arrays))) == arrays_to_tuples(arrays)


def test_decoder_ignores_orphans_and_specials_and_stops_at_end():
    ids = ids_of("START", "NOTE_OFF_C4", "PAD", "VELOCITY_100", "NOTE_ON_D4", "TIME_SHIFT_100ms",
                 "NOTE_OFF_D4", "NOTE_OFF_D4", "END", "NOTE_ON_E4", "TIME_SHIFT_100ms",
                 "NOTE_OFF_E4")
    assert arrays_to_tuples(ids_to_arrays(np.append(ids, [9999, -3]))) == [(62, 100, 0, 10)]


def test_decoder_closes_a_restruck_note_at_the_new_onset():
    ids = ids_of("VELOCITY_40", "NOTE_ON_C4", "TIME_SHIFT_200ms", "VELOCITY_80", "NOTE_ON_C4",
                 "TIME_SHIFT_100ms", "NOTE_OFF_C4")
    assert arrays_to_tuples(ids_to_arrays(ids)) == [(60, 40, 0, 20), (60, 80, 20, 30)]


def test_decoder_ends_dangling_notes_with_the_sequence_capped_at_10_s():
    ids = ids_of("NOTE_ON_C4", "TIME_SHIFT_500ms", "NOTE_ON_D4", "TIME_SHIFT_1000ms")
    ids = np.concatenate([ids, ids_of("TIME_SHIFT_1000ms").repeat(20)])
    decoded = arrays_to_tuples(ids_to_arrays(ids))
    assert [(p, s, e) for p, _, s, e in decoded] == [(60, 0, 1000), (62, 50, 1050)]
    short = ids_of("NOTE_ON_C4", "TIME_SHIFT_300ms")
    assert [(s, e) for _, _, s, e in arrays_to_tuples(ids_to_arrays(short))] == [(0, 30)]


def test_decoder_drops_zero_length_notes():
    ids = ids_of("NOTE_ON_C4", "NOTE_OFF_C4", "NOTE_ON_D4", "NOTE_ON_E4")
    assert len(ids_to_arrays(ids)) == 0


def test_default_velocity_before_any_velocity_event_is_a_bin_edge():
    (row,) = arrays_to_tuples(ids_to_arrays(ids_of("NOTE_ON_C4", "TIME_SHIFT_10ms")))
    assert row[1] == bin_to_velocity(velocity_to_bin(row[1]))


def test_wrap_piece_frames_with_start_and_end():
    ids = notes_to_ids(notes_from([(60, 80, 0.0, 0.1)]))
    wrapped = wrap_piece(ids)
    assert wrapped.dtype == np.uint16
    assert (wrapped[0], wrapped[-1]) == (START_ID, END_ID)
    assert np.array_equal(wrapped[1:-1], ids)


def test_grammar_errors_name_each_bad_event():
    ids = ids_of("START", "NOTE_OFF_C4", "NOTE_ON_D4", "NOTE_ON_D4", "PAD", "START", "END",
                 "NOTE_ON_E4")
    assert grammar_errors(ids) == [
        (1, "NOTE_OFF of a silent pitch"), (3, "NOTE_ON of a sounding pitch"),
        (4, "PAD inside a piece"), (5, "START inside a piece"), (7, "event after END"),
    ]
    assert PAD_ID == ids[4]


def test_notes_to_arrays_matches_seconds_to_steps():
    rows = [(60, 80, 0.123, 0.456), (72, 1, 2.0, 2.004)]
    assert arrays_to_tuples(notes_to_arrays(notes_from(rows))) == quantise_reference(rows)


def test_the_decoder_gives_each_notes_note_on_position():
    ids = ids_of("START", "VELOCITY_64", "NOTE_ON_G4", "NOTE_ON_C4", "NOTE_ON_C4",
                 "TIME_SHIFT_100ms", "NOTE_OFF_G4", "NOTE_ON_E4", "NOTE_OFF_E4", "TIME_SHIFT_10ms",
                 "END", "NOTE_ON_D4")
    notes, positions = ids_to_arrays_with_positions(ids)
    assert arrays_to_tuples(notes) == arrays_to_tuples(ids_to_arrays(ids))
    # C4 struck twice in one step keeps the later onset; E4 has zero length; after END nothing
    assert notes.pitch.tolist() == [60, 67] and positions.tolist() == [4, 2]
    assert ids_to_arrays_with_positions([])[1].tolist() == []


@SEEDED
@given(st.lists(st.integers(-5, VOCAB_SIZE + 20), max_size=200))
def test_every_decoded_note_starts_at_a_note_on_of_its_pitch(ids):
    notes, positions = ids_to_arrays_with_positions(ids)
    assert len(positions) == len(notes)
    struck = np.asarray(ids, dtype=np.int64)[positions]
    assert is_note_on(struck).all() and np.array_equal(note_pitch(struck), notes.pitch)


def test_music_length_and_the_prefix_of_the_first_seconds():
    ids = ids_of("NOTE_ON_C4", "TIME_SHIFT_70ms", "NOTE_OFF_C4", "TIME_SHIFT_1000ms", "NOTE_ON_D4")
    assert ids_to_seconds(ids) == 1.07  # exactly the decimal, not 107 * 0.01
    assert ids_until_seconds(ids, 0.07).tolist() == ids[:3].tolist()
    assert ids_until_seconds(ids, 5.0).tolist() == ids.tolist()


def test_grammar_forbids_every_special_but_end_mid_piece_and_ids_it_does_not_know():
    grammar = NoteGrammar(2, VOCAB_SIZE + 7)  # a model may have more outputs than the vocabulary
    assert grammar.allowed[:, START_ID].all() and not grammar.allowed[:, PAD_ID].any()
    grammar.observe([START_ID, START_ID])
    assert grammar.allowed[:, name_to_id("STYLE_0")].all()  # the header: START, then a style
    grammar.observe([name_to_id("STYLE_0"), name_to_id("VELOCITY_80")])
    specials = [name_to_id(n) for n in ("PAD", "START", "FILL_SUFFIX", "FILL_MIDDLE", "STYLE_0",
                                        "STYLE_15")]
    assert not grammar.allowed[:, specials + list(range(VOCAB_SIZE, VOCAB_SIZE + 7))].any()
    assert grammar.allowed[:, END_ID].all()
    assert grammar.why_not(0, name_to_id("FILL_MIDDLE")) == "FILL_MIDDLE inside a piece"
    assert grammar.why_not(0, VOCAB_SIZE + 3) == f"id {VOCAB_SIZE + 3} outside the vocabulary"
    grammar.observe(np.array([name_to_id("NOTE_ON_C4"), END_ID]))
    assert grammar.sounding[0, 60] and not grammar.sounding[1].any()
    assert grammar.allowed[0, name_to_id("NOTE_OFF_C4")] and not grammar.allowed[1].any()
    assert grammar.ended.tolist() == [False, True]
    assert NoteGrammar(1, BASE_VOCAB_SIZE).allowed.shape == (1, BASE_VOCAB_SIZE)


@SEEDED
@given(st.lists(st.integers(0, VOCAB_SIZE - 1), max_size=60))
def test_grammar_mask_and_reasons_say_the_same(ids):
    grammar = NoteGrammar(1)
    for token in [*ids, START_ID]:
        reasons = [grammar.why_not(0, t) for t in range(VOCAB_SIZE)]
        assert grammar.allowed[0].tolist() == [r is None for r in reasons]
        grammar.observe([token])


def test_a_style_token_may_follow_start_and_nowhere_else():
    from musicgpt.vocab import style_id

    body = notes_to_ids([Note(60, 80, 0.0, 0.5)]).tolist()
    assert grammar_errors([START_ID, style_id(2), *body, END_ID]) == []
    late = grammar_errors([START_ID, *body[:2], style_id(2), *body[2:]])
    assert late == [(3, "STYLE_2 inside a piece")]
    assert grammar_errors([style_id(0), START_ID, *body])[0][0] == 0
