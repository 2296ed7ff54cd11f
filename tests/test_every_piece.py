"""Every piece is music: the per-piece checks, and the sampler rules that keep pieces from failing
them (restating sounding notes when the window slides, the silence and lead-in guards, infill's
note limit and style guidance)."""

from __future__ import annotations

import numpy as np
import pytest

from musicgpt import piece_checks as pc
from musicgpt.events import NoteArrays, grammar_errors, ids_to_arrays
from musicgpt.infilling import infill, note_limit_around, prefix_tail
from musicgpt.restate import SoundingTracker, restate_segment, restatements
from musicgpt.sampling import SamplingSettings, generate
from musicgpt.vocab import (
    END_ID,
    START_ID,
    TOP_SHIFT_ID,
    VOCAB_SIZE,
    is_note_on,
    is_shift,
    name_to_id,
    note_off_id,
    note_on_id,
    shift_id,
    shift_steps,
)


def _notes(*rows: tuple[int, float, float]) -> NoteArrays:
    """Notes from (pitch, start s, end s)."""
    pitch, start, end = (np.array(col) for col in zip(*rows, strict=True))
    return NoteArrays(pitch.astype(np.int64), np.full(len(pitch), 80),
                      np.round(start * 100).astype(np.int64), np.round(end * 100).astype(np.int64))


def _steady(seconds: float, every: float = 0.25, start: float = 0.0) -> list:
    return [(60 + i % 12, start + i * every, start + i * every + every * 0.9)
            for i in range(int(seconds / every))]


def test_a_steady_piece_passes_every_check():
    checks = pc.piece_checks(_notes(*_steady(30)), 0, 3000)
    assert checks["onsets_per_s"] == pytest.approx(4.0)
    assert not any(checks[flag] for flag in pc.PIECE_FLAGS)


def test_each_failure_is_named():
    late = pc.piece_checks(_notes(*_steady(28, start=2.0)), 0, 3000)
    assert late["late_start"] and not late["fails"]  # a late start alone is reported, not failed
    gap = _steady(10) + _steady(10, start=14.0)
    dead = pc.piece_checks(_notes(*gap), 0, 3000)
    assert dead["dead_air"] and dead["longest_silence_s"] == pytest.approx(6.0, abs=0.05)
    sparse = pc.piece_checks(_notes(*_steady(30, every=1.0)), 0, 3000)
    assert sparse["sparse"] and sparse["fails"]
    wall = pc.piece_checks(_notes(*_steady(30), *[(30 + k, 0.0, 30.0) for k in range(12)]),
                           0, 3000)
    assert wall["wall"] and wall["polyphony"] > 8
    held = [(36 + k, 3.0 * k, 3.0 * k + 6.0) for k in range(8)]
    drone = pc.piece_checks(_notes(*_steady(30), *held), 0, 3000)
    assert drone["drone"] and drone["held_share"] == pytest.approx(8 / 128)
    thin = pc.piece_checks(_notes(*_steady(10, every=2.0), *_steady(20, start=10.0)), 0, 3000)
    assert thin["thin"] and not thin["fails"] and thin["thinnest_onsets_per_s"] == 0.5
    summary = pc.summarize_pieces([late, dead, sparse])
    assert summary["fails"] == pytest.approx(2 / 3)
    assert summary["late_start"] == pytest.approx(1 / 3)


def test_primer_notes_sounding_into_the_window_count_as_music():
    notes = _notes((48, 0.0, 12.0), *_steady(20, start=11.0))
    checks = pc.piece_checks(notes, 1000, 3000)  # new music from 10 s: the primer's note sounds
    assert checks["longest_silence_s"] < 0.1 and checks["first_onset_s"] == pytest.approx(1.0)


def test_span_checks_find_a_drone_and_an_empty_span():
    around = _steady(8) + _steady(8, start=14.0)
    original = _notes(*around, *_steady(6, start=8.0))
    droned = _notes(*around, (40, 8.0, 14.0), (64, 9.0, 9.5))
    empty = _notes(*around)
    a, b = 800, 1400
    drone = pc.span_checks(droned, original, a, b)
    assert drone["drone"] and not drone["density_ok"] and not drone["empty"]
    assert pc.span_checks(empty, original, a, b)["empty"]
    same = pc.span_checks(original, original, a, b)
    assert same["density_ok"] and same["polyphony_ok"] and not same["drone"]
    assert same["pc_delta"] == 0.0
    assert same["new"]["context_onsets_per_s"] == pytest.approx(4.0, rel=0.01)  # 4/s around
    summary = pc.summarize_spans([drone, same])
    assert summary["drone"] == 0.5 and summary["density_within_2x"] == 0.5


def _ids(*names: str) -> np.ndarray:
    return np.array([name_to_id(n) for n in names], dtype=np.int64)


def test_restatement_names_what_sounds_with_its_velocity():
    before = _ids("VELOCITY_80", "NOTE_ON_C4", "VELOCITY_40", "NOTE_ON_E4", "NOTE_ON_G4",
                  "TIME_SHIFT_500ms", "NOTE_OFF_E4", "VELOCITY_100")
    tracker = SoundingTracker(1, VOCAB_SIZE)
    tracker.advance(before[None])
    said = [int(t) for t in tracker.restatement(0)]
    assert said == _ids("VELOCITY_80", "NOTE_ON_C4", "VELOCITY_40", "NOTE_ON_G4",
                        "VELOCITY_100").tolist()
    after = _ids("TIME_SHIFT_100ms", "NOTE_OFF_C4", "NOTE_OFF_G4", "NOTE_ON_D4")
    window = restate_segment(before, after)
    assert not grammar_errors(window)  # every release in the window has its onset
    assert ids_to_arrays(window).velocity[-1] == ids_to_arrays(np.r_[before, after]).velocity[-1]


def test_restatements_of_a_batch_share_one_width():
    tracker = SoundingTracker(2, VOCAB_SIZE)
    tracker.advance(np.array([_ids("VELOCITY_80", "NOTE_ON_C4", "NOTE_ON_E4"),
                              _ids("VELOCITY_40", "NOTE_ON_C4", "NOTE_OFF_C4")]))
    said = restatements(tracker)
    assert said.shape == (2, 3)
    assert said[1].tolist() == [name_to_id("VELOCITY_40")] * 3  # nothing sounds: velocity pads


def _prefilled_windows(model, primer, settings) -> list[list[int]]:
    """Every window `generate` prefills (the first, then each slide), row 0; END never drawn."""
    seen: list = []
    real_forward = model.forward

    def spy(idx, input_pos=None, attend_len=None, cache=None, **options):
        if idx.size(1) > 1:
            seen.append(idx[0].tolist())
        logits = real_forward(idx, input_pos, attend_len, cache, **options)
        logits[..., END_ID] = -float("inf")
        return logits

    model.forward = spy
    generate(model, primer, max_new_tokens=120, seed=0, settings=settings)
    model.forward = real_forward
    return seen


def _unseen_releases(window: list[int]) -> int:
    errors = grammar_errors([START_ID, *window])
    return sum(why == "NOTE_OFF of a silent pitch" for _, why in errors)


def test_a_slid_window_restates_the_notes_still_sounding(make_tiny_model):
    model = make_tiny_model()  # block_size 64: the window slides every 16 tokens
    held = [START_ID, name_to_id("VELOCITY_80"), note_on_id(30)] + [shift_id(1)] * 70
    off = dict(max_note_s=None, max_silence_s=None, max_lead_in_s=None)
    restated = _prefilled_windows(model, held, SamplingSettings(**off, restate_sounding=True))
    plain = _prefilled_windows(model, held, SamplingSettings(**off, restate_sounding=False))
    assert len(restated) >= 5
    assert restated[0][:2] == [name_to_id("VELOCITY_80"), note_on_id(30)]  # onset out of sight
    assert note_on_id(30) not in plain[0]
    # every release the model reads in a window has its onset in that window
    assert sum(map(_unseen_releases, restated)) == 0
    assert sum(map(_unseen_releases, plain)) > 0


def _silence_lover(model, bias: float = 12.0):
    """The tiny model, pushed (by `bias` on the logit) to move time by a full second."""
    real_forward = model.forward

    def forward(idx, input_pos=None, attend_len=None, cache=None, **options):
        logits = real_forward(idx, input_pos, attend_len, cache, **options)
        logits[..., TOP_SHIFT_ID] += bias
        return logits

    model.forward = forward
    return model


def test_the_silence_guards_bound_lead_in_and_dead_air(make_tiny_model):
    model = _silence_lover(make_tiny_model(1))
    kwargs = dict(max_seconds=20, num_samples=3, seed=2)
    free = generate(model, None, settings=SamplingSettings(max_silence_s=None,
                                                           max_lead_in_s=None), **kwargs)
    guarded = generate(model, None, settings=SamplingSettings(max_silence_s=1.5,
                                                              max_lead_in_s=0.5), **kwargs)
    free_checks = [pc.piece_checks(ids_to_arrays(r), 0, 2000) for r in free]
    assert all(c["first_onset_s"] >= 5 for c in free_checks)  # the model would wait
    for row in guarded:
        notes = ids_to_arrays(row)
        checks = pc.piece_checks(notes, 0, 2000)
        assert checks["first_onset_s"] <= 0.5
        assert checks["longest_silence_s"] <= 1.5
        assert not grammar_errors(row)
        assert int(shift_steps(row).sum()) >= 2000  # the asked length is kept


def test_infill_restates_the_prefix_tail_and_releases_long_notes(make_tiny_model):
    prefix = np.r_[_ids("VELOCITY_80", "NOTE_ON_C2"),
                   np.tile([note_on_id(72), shift_id(25), note_off_id(72)], 30)]
    tail = prefix_tail(prefix, 20)
    assert len(tail) <= 20 and tail[1] == note_on_id(36) and not grammar_errors(tail)
    short = np.r_[START_ID, np.tile(_ids("VELOCITY_80", "NOTE_ON_C4", "TIME_SHIFT_200ms",
                                         "NOTE_OFF_C4", "TIME_SHIFT_50ms"), 80)]
    limit = note_limit_around(short, 1000, 1400, SamplingSettings())
    assert limit == 100  # the notes around last 0.2 s: 1.25x that, floored at 1 s
    assert note_limit_around(short, 1000, 1400, SamplingSettings(max_note_s=None)) is None
    model = make_tiny_model(3, block_size=512)  # an untrained model holds notes at random
    made = infill(model, short, 10.0, 14.0, num_samples=4, seed=1)
    for piece in made.pieces:
        notes = ids_to_arrays(piece)
        inside = (notes.end_step > 1000) & (notes.start_step < 1400)
        # released at the first draw past the limit: at most one time shift (<= 1 s) later
        assert ((notes.end_step - notes.start_step)[inside] <= 100 + 100).all()
        assert not grammar_errors(piece)


def test_infill_follows_style_guidance(make_tiny_model):
    model = make_tiny_model(2, styles=("a", "b"), block_size=256)
    piece = np.r_[START_ID, np.tile(_ids("VELOCITY_80", "NOTE_ON_C4", "TIME_SHIFT_200ms",
                                         "NOTE_OFF_C4"), 40)]
    kwargs = dict(num_samples=2, seed=4, style=1)
    plain = infill(model, piece, 2.0, 4.0, settings=SamplingSettings(style_guidance=0), **kwargs)
    pushed = infill(model, piece, 2.0, 4.0, settings=SamplingSettings(style_guidance=3),
                    **kwargs)
    again = infill(model, piece, 2.0, 4.0, settings=SamplingSettings(style_guidance=3), **kwargs)
    assert [m.tolist() for m in pushed.middles] == [m.tolist() for m in again.middles]
    assert [m.tolist() for m in plain.middles] != [m.tolist() for m in pushed.middles]
    assert all(not grammar_errors(p) for p in pushed.pieces)
    assert all(is_shift(m).any() or is_note_on(m).any() for m in pushed.middles)


def test_best_of_n_keeps_the_candidate_the_checks_like_best(make_tiny_model):
    from musicgpt.candidates import piece_score

    model = _silence_lover(make_tiny_model(4), 6.0)  # its pieces often fail the checks
    settings = SamplingSettings(max_silence_s=None, max_lead_in_s=None)
    kwargs = dict(max_seconds=12, seed=3)
    every = generate(model, None, num_samples=4, settings=settings, **kwargs)
    scores = [piece_score(r, 0, 12) for r in every]
    assert len(set(scores)) > 1  # the candidates differ by the checks
    (best,) = generate(model, None, num_samples=1, settings=SamplingSettings(
        max_silence_s=None, max_lead_in_s=None, candidates=4), **kwargs)
    assert best.tolist() == every[min(range(4), key=scores.__getitem__)].tolist()


def test_best_of_n_infill_keeps_the_likeliest_join_in_the_key_around(make_tiny_model):
    from musicgpt.candidates import join_nll
    from musicgpt.fim import cut_at_steps

    model = make_tiny_model(5, block_size=256)
    piece = np.r_[START_ID, np.tile(_ids("VELOCITY_80", "NOTE_ON_C4", "TIME_SHIFT_200ms",
                                         "NOTE_OFF_C4", "NOTE_ON_E4", "TIME_SHIFT_200ms",
                                         "NOTE_OFF_E4"), 30)]
    every = infill(model, piece, 4.0, 6.0, num_samples=3, seed=2)
    (best,) = infill(model, piece, 4.0, 6.0, num_samples=1, seed=2,
                     settings=SamplingSettings(candidates=3)).middles
    cut = cut_at_steps(piece, 400, 600)
    nll = [join_nll(model, cut.header, cut.prefix, m, cut.suffix) for m in every.middles]
    assert all(np.isfinite(nll)) and len(set(nll)) == 3
    checks = [pc.span_checks(ids_to_arrays(p), ids_to_arrays(piece), 400, 600)
              for p in every.pieces]
    scores = [(c["drone"], not pc.within_2x(c["new"]["onsets_per_s"],
                                            c["new"]["context_onsets_per_s"]),
               n - c["new"]["pc_agreement"]) for c, n in zip(checks, nll, strict=True)]
    assert best.tolist() == every.middles[min(range(3), key=scores.__getitem__)].tolist()


def test_cli_candidates_come_from_the_checkpoint_and_a_flag(make_tiny_model, tmp_path, capsys):
    from musicgpt.checkpoint import save_checkpoint
    from musicgpt.cli import main
    from musicgpt.midi_io import midi_file_to_arrays

    ckpt = save_checkpoint(make_tiny_model(candidates=3), tmp_path / "ckpt")
    common = ["generate", "--checkpoint", str(ckpt), "--seconds", "3", "--seed", "4",
              "--no-progress"]

    def pitches(name: str, *flags: str) -> list:
        assert main([*common, "--out", str(tmp_path / name), *flags]) == 0
        return midi_file_to_arrays(tmp_path / name).pitch.tolist()

    assert pitches("own.mid") == pitches("three.mid", "--candidates", "3")
    assert pitches("own.mid") != pitches("one.mid", "--candidates", "1")
    assert main([*common, "--out", str(tmp_path / "x.mid"), "--candidates", "0"]) == 2
    assert "candidates" in capsys.readouterr().err


def test_scoring_and_the_checks_need_no_torch():
    import subprocess
    import sys

    code = ("import sys, musicgpt.scoring, musicgpt.piece_checks, musicgpt.restate; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
