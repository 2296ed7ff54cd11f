"""Fill-in-the-middle encoding: cut at two times, rearrange, restore; style tokens in windows."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from musicgpt.data import TokenWindows, with_style
from musicgpt.events import Note, grammar_errors, ids_to_arrays, notes_to_ids, wrap_piece
from musicgpt.fim import arrange, canonical, cut_at_steps, restore, sounding_at_start
from musicgpt.vocab import (
    FILL_MIDDLE_ID,
    FILL_SUFFIX_ID,
    START_ID,
    name_to_id,
    shift_steps,
    style_id,
)

SEEDED = settings(derandomize=True, deadline=None, max_examples=120)

note_lists = st.lists(
    st.tuples(st.integers(21, 108), st.integers(1, 127), st.integers(0, 1500),
              st.integers(1, 400)),
    min_size=1, max_size=40,
).map(lambda rows: [Note(p, v, s / 100, (s + d) / 100) for p, v, s, d in rows])


@SEEDED
@given(note_lists, st.tuples(st.floats(0, 1), st.floats(0, 1)))
def test_cut_arrange_restore_gives_the_piece_back(notes, fractions):
    ids = wrap_piece(notes_to_ids(notes)).astype(np.int64)
    total = int(shift_steps(ids).sum())
    t1 = int(fractions[0] * (total - 1))
    t2 = max(t1 + 1, int(fractions[1] * total))
    cut = cut_at_steps(ids, t1, t2)
    assert shift_steps(cut.prefix).sum() == t1  # the prefix ends exactly at the first cut
    assert shift_steps(cut.middle).sum() == t2 - t1  # the middle lasts exactly the gap
    arranged = arrange(cut)
    assert (restore(arranged) == cut.join()).all()
    assert (canonical(cut.join()) == ids).all()  # same tokens once shifts are re-merged
    assert not grammar_errors(cut.join())


def test_the_gap_sits_between_two_sentinels_and_the_prefix_right_before_the_middle():
    notes = [Note(60, 80, 0.0, 3.0), Note(64, 100, 1.0, 1.5), Note(67, 80, 2.5, 4.0)]
    ids = wrap_piece(notes_to_ids(notes)).astype(np.int64)
    cut = cut_at_steps(ids, 80, 230)  # 0.8 s .. 2.3 s
    arranged = arrange(cut)
    s0, s1 = np.flatnonzero(arranged == FILL_SUFFIX_ID)
    m0, m1 = np.flatnonzero(arranged == FILL_MIDDLE_ID)
    assert arranged[0] == START_ID and s0 == 1
    assert shift_steps(arranged[s0 + 1 : s1]).sum() == 150
    assert (arranged[s1 + 1 : m0] == cut.suffix).all()
    assert (arranged[m0 + 1 : m1] == cut.prefix).all()
    assert (arranged[m1 + 1 :] == cut.middle).all()
    # C4 sounds through the whole gap: its release is in the suffix, so the middle must keep it
    assert sounding_at_start(cut.suffix) == {60}
    # E4 lies inside the gap; G4 starts after it and restates its velocity
    middle_notes = ids_to_arrays(np.concatenate([[name_to_id("NOTE_ON_C4")], cut.middle]))
    assert 64 in middle_notes.pitch.tolist()
    assert name_to_id("VELOCITY_80") in cut.suffix.tolist()


def test_cuts_outside_the_piece_are_refused():
    ids = wrap_piece(notes_to_ids([Note(60, 80, 0.0, 1.0)])).astype(np.int64)
    with pytest.raises(ValueError):
        cut_at_steps(ids, 50, 150)
    with pytest.raises(ValueError):
        cut_at_steps(ids, 60, 60)


def test_style_goes_after_start_or_in_front():
    body = notes_to_ids([Note(60, 80, 0.0, 1.0)]).astype(np.int64)
    assert with_style(wrap_piece(body), 3)[:2].tolist() == [START_ID, style_id(3)]
    assert with_style(body, 1)[0] == style_id(1)


def test_windows_carry_styles_and_fim_at_their_rates():
    rng = np.random.default_rng(0)
    pieces = [wrap_piece(notes_to_ids([Note(int(p), 80, i * 0.1, i * 0.1 + 0.3)
                                       for i, p in enumerate(rng.integers(40, 80, 300))]))
              for _ in range(3)]
    windows = TokenWindows(pieces, 128, augment=True, styles=[0, 1, -1], style_drop=0.25,
                           fim_rate=0.5, seed=3)
    batch = np.concatenate([windows.batch(step, 16) for step in range(20)])
    fim = (batch == FILL_MIDDLE_ID).any(1)
    assert 0.4 < fim.mean() < 0.6
    styled = np.isin(batch[:, :2], [style_id(0), style_id(1)]).any(1)
    assert 0.35 < styled.mean() < 0.65  # 2 of 3 pieces have a style, a quarter dropped
    assert not np.isin(batch, [style_id(2)]).any()
    plain = TokenWindows(pieces, 128, styles=[0, 1, -1], seed=3)
    assert not (plain.batch(0, 16) == FILL_MIDDLE_ID).any()  # fim_rate 0: left-to-right only
