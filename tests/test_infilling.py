"""Infilling: the outside of the span is kept exactly, the middle lasts the span and joins the
suffix with no grammar error; `musicgpt infill` errors are one line."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from musicgpt.cli import main
from musicgpt.events import Note, grammar_errors, ids_to_arrays, notes_to_ids
from musicgpt.fim import cut_at_steps, sounding_at_start
from musicgpt.infilling import InfillError, check_span, infill
from musicgpt.sampling import SamplingSettings
from musicgpt.vocab import BASE_VOCAB_SIZE, START_ID, shift_steps

note_lists = st.lists(
    st.tuples(st.integers(36, 96), st.integers(1, 127), st.integers(0, 800),
              st.integers(1, 300)),
    min_size=2, max_size=30,
).map(lambda rows: [Note(p, v, s / 100, (s + d) / 100) for p, v, s, d in rows])


def _notes(ids) -> list[tuple[int, int, int]]:
    arrays = ids_to_arrays(ids)
    return sorted(zip(arrays.pitch.tolist(), arrays.start_step.tolist(),
                      arrays.velocity.tolist(), strict=True))


def _check_outside_kept(original, result, t1: int, t2: int) -> None:
    before = [n for n in _notes(original) if n[1] < t1]
    assert [n for n in _notes(result) if n[1] < t1] == before
    after, new_after = ({n for n in _notes(ids) if n[1] >= t2} for ids in (original, result))
    assert after <= new_after
    # the only new notes from t2 on: notes the suffix releases, struck right at t2
    must_sound = sounding_at_start(cut_at_steps(original, t1, t2).suffix)
    assert all(n[1] == t2 and n[0] in must_sound for n in new_after - after)


@pytest.fixture(scope="module")
def fim_model(make_tiny_model):
    return make_tiny_model(seed=1, block_size=256)


@settings(derandomize=True, deadline=None, max_examples=25)
@given(note_lists, st.floats(0, 1), st.floats(0.05, 2.0), st.integers(0, 2**16))
def test_infill_keeps_the_outside_and_fills_exactly_the_span(fim_model, notes, where, length,
                                                            seed):
    ids = np.concatenate([[START_ID], notes_to_ids(notes)]).astype(np.int64)
    total_s = shift_steps(ids).sum() / 100
    start_s = round(where * max(total_s - 0.02, 0), 2)
    end_s = round(min(start_s + length, total_s), 2)
    if end_s <= start_s:
        return
    result = infill(fim_model, ids, start_s, end_s, num_samples=2, seed=seed)
    t1, t2 = round(start_s * 100), round(end_s * 100)
    for piece, middle in zip(result.pieces, result.middles, strict=True):
        assert shift_steps(middle).sum() == t2 - t1
        assert grammar_errors(piece) == []
        _check_outside_kept(ids, piece, t1, t2)
    assert result.note is None


def test_a_base_vocabulary_model_falls_back_and_says_so(make_tiny_model):
    model = make_tiny_model(block_size=256, vocab_size=BASE_VOCAB_SIZE)
    notes = [Note(60 + i % 12, 80, i * 0.25, i * 0.25 + 0.6) for i in range(24)]
    ids = np.concatenate([[START_ID], notes_to_ids(notes)]).astype(np.int64)
    result = infill(model, ids, 2.0, 3.5, seed=0, settings=SamplingSettings(top_k=5))
    assert result.note and "no fill-in-the-middle" in result.note
    assert shift_steps(result.middles[0]).sum() == 150
    assert grammar_errors(result.pieces[0]) == []
    _check_outside_kept(ids, result.pieces[0], 200, 350)


@pytest.mark.parametrize(("start", "end", "words"), [
    (3.0, 2.0, "end after it starts"), (-1.0, 2.0, "0 s or later"), (1.0, 99.0, "after the piece"),
    (0.0, float("nan"), "not a pair"),
])
def test_bad_spans_are_refused_with_a_reason(start, end, words):
    ids = np.concatenate([[START_ID], notes_to_ids([Note(60, 80, 0.0, 5.0)])])
    with pytest.raises(InfillError, match=words):
        check_span(ids, start, end, block_size=512)


def test_a_span_longer_than_the_context_allows_is_refused():
    ids = np.concatenate([[START_ID], notes_to_ids([Note(60, 80, 0.0, 60.0)])])
    check_span(ids, 10.0, 15.0, block_size=512)
    with pytest.raises(InfillError, match="longer than this model's context"):
        check_span(ids, 10.0, 40.0, block_size=512)


def _write(path, notes):
    from musicgpt.pipeline import ids_to_midi_file

    ids_to_midi_file(notes_to_ids(notes), path)
    return path


def test_cli_infill_writes_files_that_keep_the_outside(make_tiny_model, tmp_path, capsys):
    from musicgpt.checkpoint import save_checkpoint
    from musicgpt.pipeline import midi_file_to_primer

    ckpt = save_checkpoint(make_tiny_model(block_size=256, styles=("jazz", "pop")),
                           tmp_path / "ckpt")
    notes = [Note(48 + (i * 5) % 24, 70, i * 0.2, i * 0.2 + 0.5) for i in range(30)]
    source = _write(tmp_path / "in.mid", notes)
    code = main(["infill", "--checkpoint", str(ckpt), "--midi", str(source), "--start", "1.5",
                 "--end", "3.0", "--out", str(tmp_path / "out.mid"), "--num-samples", "2",
                 "--seed", "4", "--style", "pop", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    original = midi_file_to_primer(source)
    for name in ("out_1.mid", "out_2.mid"):
        _check_outside_kept(original, midi_file_to_primer(tmp_path / name), 150, 300)


@pytest.mark.parametrize(("flags", "words"), [
    (["--start", "3", "--end", "1"], "end after it starts"),
    (["--start", "1", "--end", "500"], "after the piece"),
    (["--start", "1", "--end", "2", "--style", "baroque"], "known styles: jazz, pop"),
])
def test_cli_infill_errors_are_one_line(make_tiny_model, tmp_path, capsys, flags, words):
    from musicgpt.checkpoint import save_checkpoint

    ckpt = save_checkpoint(make_tiny_model(block_size=256, styles=("jazz", "pop")),
                           tmp_path / "ckpt")
    source = _write(tmp_path / "in.mid", [Note(60, 80, i * 0.5, i * 0.5 + 0.4) for i in range(20)])
    code = main(["infill", "--checkpoint", str(ckpt), "--midi", str(source), "--out",
                 str(tmp_path / "o.mid"), "--no-progress", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "o.mid").exists()
