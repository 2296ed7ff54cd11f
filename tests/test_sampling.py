"""Sampler: filters on hand-made distributions, seeds, grammar, stops, sliding window, primers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import write_midi

from musicgpt.config import Config
from musicgpt.events import grammar_errors, ids_to_seconds
from musicgpt.model import GPT
from musicgpt.pipeline import (
    ids_to_midi_file,
    midi_file_to_ids,
    midi_file_to_primer,
)
from musicgpt.sampling import (
    TOKENS_PER_S_BUDGET,
    SamplingSettings,
    generate,
    generate_pieces,
    sampling_threads,
    token_budget,
)
from musicgpt.scoring import (
    apply_temperature,
    min_p_filter,
    sample,
    top_k_filter,
    top_p_filter,
    truncate,
)
from musicgpt.vocab import (
    END_ID,
    PAD_ID,
    START_ID,
    TIME_SHIFT_OFFSET,
    VOCAB_SIZE,
    is_note_on,
    kind_of,
    note_on_id,
    shift_id,
    style_id,
)

GREEDY = SamplingSettings(top_k=1, top_p=1.0, grammar=False, within_type=False)


def _pin_end(model: GPT, end_logit: float = -100.0) -> GPT:
    """`model` with END's logit pinned to about `end_logit` (-100: never; 5: often)."""
    with torch.no_grad():  # a constant feature in the final norm, read only by END's row
        model.ln_f.bias[0] = 10.0
        model.wte.weight[END_ID, 0] = end_logit / 10.0
    return model


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- array-in, array-out sampling functions ---------------------------------------------------

def _finite(logits: np.ndarray) -> list:
    return np.isfinite(logits).tolist()


def test_top_k_one_equals_argmax():
    logits = _rng().standard_normal((16, VOCAB_SIZE)).astype(np.float32)
    for seed in range(5):
        drawn = sample(top_k_filter(logits, 1), _rng(seed))
        assert np.array_equal(drawn, logits.argmax(-1))


def test_top_k_keeps_the_k_largest():
    logits = np.array([[0.1, 3.0, -1.0, 2.0, 0.5]])
    assert _finite(top_k_filter(logits, 2)) == [[False, True, False, True, False]]
    assert np.array_equal(top_k_filter(logits, 0), logits)


@pytest.mark.parametrize("p, expected", [
    (0.3, {0}), (0.49, {0}), (0.51, {0, 1}), (0.79, {0, 1}), (0.81, {0, 1, 2}),
    (0.94, {0, 1, 2}), (0.96, {0, 1, 2, 3}), (1.0, {0, 1, 2, 3}),
])
def test_top_p_keeps_the_smallest_set_reaching_p(p, expected):
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    for order in ([0, 1, 2, 3], [3, 1, 0, 2]):  # positions must not matter
        kept = np.isfinite(top_p_filter(np.log(probs[order])[None], p))[0]
        assert {order[i] for i in np.flatnonzero(kept)} == expected


def test_top_p_filters_each_row_on_its_own():
    logits = np.log(np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25]]))
    assert _finite(top_p_filter(logits, 0.7)) == [[True, False, False], [True, True, False]]


def test_min_p_keeps_tokens_at_least_p_times_the_likeliest():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]]))
    assert _finite(min_p_filter(logits, 0.2)) == [[True, True, True, False], [True] * 4]
    assert _finite(min_p_filter(logits, 0.5)) == [[True, True, False, False], [True] * 4]
    assert np.array_equal(min_p_filter(logits, 0.0), logits)


def _spread_shifts_and_one_pitch() -> np.ndarray:
    """Half the mass on 60 time shifts (1/120 each), 0.4 on one pitch, 0.1 on ten more."""
    probs = np.zeros(VOCAB_SIZE)
    probs[shift_id(np.arange(1, 61))] = 0.5 / 60
    probs[note_on_id(60)] = 0.4
    probs[note_on_id(np.arange(61, 71))] = 0.01
    with np.errstate(divide="ignore"):
        return np.log(probs)[None]


def _type_masses(logits: np.ndarray) -> dict[int, float]:
    probs = np.exp(logits[0] - logits[0].max())
    probs /= probs.sum()
    kinds = kind_of(np.arange(VOCAB_SIZE))
    return {int(k): float(probs[kinds == k].sum()) for k in np.unique(kinds)}


@pytest.mark.parametrize("cut", [dict(top_p=0.75), dict(min_p=0.1), dict(top_k=1)])
def test_cutting_pitches_keeps_each_types_probability_and_all_time_shifts(cut):
    logits = _spread_shifts_and_one_pitch()
    shift = int(kind_of(shift_id(1)))
    before = _type_masses(logits)
    across = truncate(logits, SamplingSettings(**cut, within_type=False))
    assert _type_masses(across)[shift] < 0.7 * before[shift]  # time moves less often
    within = truncate(logits, SamplingSettings(**cut))
    assert _type_masses(within) == pytest.approx(before, abs=1e-9)
    ons = np.isfinite(within[0]) & is_note_on(np.arange(VOCAB_SIZE))
    assert np.flatnonzero(ons).tolist() == [note_on_id(60)]  # the stray pitches are cut
    shifts = shift_id(np.arange(1, 61))
    assert np.allclose(within[0, shifts], logits[0, shifts])  # timing as the model gave it


def test_truncate_leaves_a_fully_masked_row_masked():
    logits = _spread_shifts_and_one_pitch().repeat(2, 0)
    logits[1] = -np.inf
    out = truncate(logits, SamplingSettings(top_p=0.9))
    assert not np.isfinite(out[1]).any() and not np.isnan(out).any()
    assert np.isfinite(out[0]).any()


def test_draws_follow_the_tempered_softmax():
    logits = np.array([2.0, 1.0, 0.0, -1.0])
    assert np.array_equal(apply_temperature(logits, 0.5), logits * 2)
    for temperature in (0.5, 1.0, 2.0):
        tempered = np.broadcast_to(apply_temperature(logits, temperature), (20000, 4))
        freq = np.bincount(sample(tempered, _rng(1)), minlength=4) / 20000
        expected = np.exp(logits / temperature) / np.exp(logits / temperature).sum()
        assert np.abs(freq - expected).max() < 0.015, (temperature, freq, expected)


def test_a_token_with_no_probability_is_never_drawn():
    logits = np.array([[-np.inf, 0.0, -np.inf, 0.0, -np.inf]] * 5000)
    assert set(sample(logits, _rng(2)).tolist()) == {1, 3}


# --- generate ---------------------------------------------------------------------------------

def _greedy_reference(model: GPT, primer: list[int], n: int) -> list[int]:
    """Full forward at every step over a sliding window, as generate promises to compute."""
    block, keep = model.config.block_size, model.config.block_size * 3 // 4
    seq = list(primer)
    start = max(0, len(seq) - keep) if len(seq) > block else 0
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq[start:]]))[0, -1]
            seq.append(int(logits.argmax()))
            if seq[-1] == END_ID:
                break
            if len(seq) - start > block:
                start = len(seq) - keep
    return seq


@pytest.mark.parametrize("new_tokens", [30, 150], ids=["within_context", "sliding_window"])
def test_greedy_generation_matches_full_recompute(tiny_model, new_tokens):
    model = tiny_model
    primer = [START_ID, 60, TIME_SHIFT_OFFSET + 20, 188]
    (row,) = generate(model, primer, max_new_tokens=new_tokens, settings=GREEDY, seed=0)
    assert row.tolist() == _greedy_reference(model, primer, new_tokens)


def test_static_shapes_give_the_same_tokens(tiny_model):
    model = tiny_model
    rows = [generate(model, [START_ID], max_new_tokens=80, settings=GREEDY, num_samples=2,
                     static_shapes=static)[0] for static in (False, True)]
    assert np.array_equal(*rows)


def test_a_fixed_seed_repeats_and_another_seed_differs(tiny_model):
    model = _pin_end(tiny_model)
    runs = [generate(model, None, max_new_tokens=40, num_samples=2, seed=s) for s in (5, 5, 6)]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(runs[0], runs[2], strict=True))


def test_grammar_mask_leaves_no_impossible_event(tiny_model):
    model = _pin_end(tiny_model)
    for seed in range(3):
        rows = generate(model, [START_ID], max_new_tokens=200, num_samples=4, seed=seed)
        assert all(grammar_errors(row) == [] for row in rows)
    unmasked = generate(model, [START_ID], max_new_tokens=200, num_samples=4, seed=0,
                        settings=SamplingSettings(grammar=False))
    assert any(grammar_errors(row) for row in unmasked)  # so the check above means something


def test_num_samples_makes_that_many_continuations_in_one_batch(tiny_model):
    model = _pin_end(tiny_model)
    primer = [START_ID, 60, TIME_SHIFT_OFFSET + 49, 188]
    rows = generate(model, primer, max_new_tokens=30, num_samples=4, seed=0)
    assert len(rows) == 4
    assert all(row[:4].tolist() == primer and len(row) == 34 for row in rows)
    assert len({row.tobytes() for row in rows}) == 4


def test_primer_from_a_midi_file_and_from_a_token_list(tiny_model, tmp_path):
    write_midi(tmp_path / "primer.mid", [(60, 80, 0.0, 0.5), (64, 80, 0.5, 1.0),
                                         (67, 90, 1.0, 3.0)])
    primer = midi_file_to_primer(tmp_path / "primer.mid", seconds=2.0)
    model = _pin_end(tiny_model)
    (row,) = generate(model, primer, max_new_tokens=20, seed=0)
    assert row[: len(primer)].tolist() == primer.tolist()
    assert grammar_errors(row) == []  # the grammar mask knows which primer notes still sound
    (listed,) = generate(model, [60, TIME_SHIFT_OFFSET + 9], max_new_tokens=5, seed=0)
    assert listed[:3].tolist() == [START_ID, 60, TIME_SHIFT_OFFSET + 9]  # START prepended


def test_rows_stop_at_end_one_by_one(tiny_model):
    model = _pin_end(tiny_model, 5.0)  # END has ~30% of the mass at every step
    rows = generate(model, [START_ID], max_new_tokens=200, num_samples=6, seed=0)
    assert all(row[-1] == END_ID and END_ID not in row[:-1] and PAD_ID not in row
               for row in rows)
    assert len({len(row) for row in rows}) > 1


def test_generation_stops_at_the_token_budget(tiny_model):
    rows = generate(_pin_end(tiny_model), [START_ID], max_new_tokens=37, num_samples=2, seed=0)
    assert [len(row) for row in rows] == [38, 38]


def test_generation_stops_once_the_music_reaches_max_seconds(tiny_model):
    rows = generate(_pin_end(tiny_model), [START_ID], max_new_tokens=2000, max_seconds=4.0,
                    num_samples=3, seed=0)
    for row in rows:
        assert ids_to_seconds(row) >= 4.0 > ids_to_seconds(row[:-1])


def test_sliding_window_makes_long_pieces_that_decode_to_midi(tiny_model, tmp_path):
    model = _pin_end(tiny_model)
    assert model.config.block_size == 64
    (row,) = generate(model, [START_ID], max_new_tokens=300, seed=0)
    assert len(row) == 301 and grammar_errors(row) == []
    path = ids_to_midi_file(row, tmp_path / "long.mid")
    assert len(midi_file_to_ids(path)) > 0


def test_progress_counts_seconds_of_music(tiny_model):
    calls = []
    rows = generate(_pin_end(tiny_model), None, max_seconds=5.0, num_samples=2, seed=0,
                    progress=lambda d, t: calls.append((d, t)))
    assert len(calls) == max(len(row) for row in rows) - 1  # one call per step
    assert {t for _, t in calls} == {5.0}
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == 5.0 and done[0] < 1.0


def test_each_row_says_why_it_stopped(tiny_model):
    made = generate_pieces(_pin_end(tiny_model, 5.0), None, max_seconds=30.0, num_samples=6,
                           seed=0)
    ended = [stop for stop in made.stops if stop.reason == "end"]
    assert ended and all(stop.early for stop in ended)
    assert ended[0].message() == f"stopped at END after {ended[0].seconds:.1f} s of 30"
    capped = generate_pieces(_pin_end(tiny_model), None, max_new_tokens=20, max_seconds=60.0,
                             seed=0).stops[0]
    assert capped.reason == "tokens" and capped.tokens == 20 and capped.seconds < 60
    assert capped.message().startswith("stopped at the token budget (20 new tokens) after ")
    whole = generate_pieces(_pin_end(tiny_model), None, max_seconds=3.0, seed=0).stops[0]
    assert (whole.reason, whole.early, whole.message()) == ("length", False, "")
    assert whole.seconds >= 3.0


def test_the_token_budget_follows_the_asked_seconds(tiny_model):
    assert token_budget(None) == 1024
    assert token_budget(60) == 60 * TOKENS_PER_S_BUDGET
    assert token_budget(0.1) == 256  # short pieces still get room
    # dense music (no time shift over 200 ms) still reaches the asked 10 s
    model = _pin_end(tiny_model)
    with torch.no_grad():
        model.wte.weight[TIME_SHIFT_OFFSET + 20 : TIME_SHIFT_OFFSET + 100, 0] = -10.0
    (stop,) = generate_pieces(model, None, max_seconds=10.0, seed=0).stops
    assert stop.reason == "length" and stop.tokens > 10 * 40, stop


def test_sampling_uses_one_thread_at_batch_1_and_restores_the_callers_count(tiny_model):
    from musicgpt.config import preset

    big = preset("default", n_layer=12, n_embd=768)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert sampling_threads(1, big) == 1
        assert sampling_threads(4, tiny_model) == 1
        assert sampling_threads(64, big) == 2  # capped by the caller's count
        seen = []
        model = _pin_end(tiny_model)
        real_forward = model.forward

        def spy(*args, **kwargs):
            seen.append(torch.get_num_threads())
            return real_forward(*args, **kwargs)

        model.forward = spy
        generate(model, None, max_new_tokens=5, seed=0)
        generate(model, None, max_new_tokens=5, seed=0, threads=2)
        assert seen[:5] == [1] * 5 and seen[5:] == [2] * 5
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_reduced_precision_sampling_stays_close_and_leaves_the_model_alone(tiny_model, dtype):
    from musicgpt.quantize import sampling_copy

    model = _pin_end(tiny_model)
    low = sampling_copy(model, dtype)
    ids = torch.randint(0, 380, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact, approx = model(ids).softmax(-1), low(ids).float().softmax(-1)
    assert (exact - approx).abs().max() < 2e-3
    assert model.wte.weight.dtype == torch.float32
    rows = generate(low, [START_ID], max_new_tokens=100, num_samples=2, seed=0)
    assert all(len(row) == 101 and grammar_errors(row) == [] for row in rows)
    with pytest.raises(ValueError, match="sampling dtype"):
        sampling_copy(model, "float8")


def test_generation_leaves_no_state_on_the_model(tiny_model):
    model = _pin_end(tiny_model)
    before = {name for name, _ in model.named_buffers()} | set(vars(model))
    generate(model, None, max_new_tokens=3, seed=0)
    assert {name for name, _ in model.named_buffers()} | set(vars(model)) == before
    with torch.no_grad():  # an uncached forward works again
        assert math.isfinite(float(model(torch.tensor([[START_ID]])).sum()))


def test_rows_keep_every_token_drawn_even_pad_when_the_mask_is_off(tiny_model):
    model = _pin_end(tiny_model)
    with torch.no_grad():
        model.wte.weight[PAD_ID, 0] = 0.5  # PAD gets a logit of about 5
    (row,) = generate(model, [START_ID], max_new_tokens=30, seed=0,
                      settings=SamplingSettings(grammar=False))
    assert len(row) == 31 and PAD_ID in row.tolist()


def _longest_note_s(rows) -> float:
    from musicgpt.events import ids_to_arrays

    lengths = [ids_to_arrays(r).end_step - ids_to_arrays(r).start_step for r in rows]
    return max(float(x.max()) for x in lengths if len(x)) / 100.0


def test_notes_held_past_max_note_s_are_released(make_tiny_model):
    model = make_tiny_model(3)
    kwargs = dict(max_new_tokens=600, max_seconds=60, num_samples=3, seed=5)
    unguarded = generate(model, **kwargs, settings=SamplingSettings(top_p=1.0, max_note_s=None))
    guarded = generate(model, **kwargs, settings=SamplingSettings(top_p=1.0, max_note_s=0.5))
    assert _longest_note_s(unguarded) > 1.5  # an untrained model forgets its notes
    # released at the first draw after 0.5 s: at most one time shift (<= 1 s) later
    assert _longest_note_s(guarded) <= 1.5
    assert all(not grammar_errors(r) for r in guarded)


def test_a_style_token_follows_start_and_stays_in_front_when_the_window_slides(make_tiny_model):
    from musicgpt.vocab import style_id

    model = _pin_end(make_tiny_model(styles=("a", "b")))  # block_size 64: 200 tokens slide
    seen: list = []
    real_forward = model.forward

    def spy(idx, input_pos=None, attend_len=None, cache=None, **options):
        if idx.size(1) > 1:
            seen.append(idx[0, :2].tolist())
        return real_forward(idx, input_pos, attend_len, cache, **options)

    model.forward = spy
    rows = generate(model, [START_ID, 60], max_new_tokens=200, seed=0, style=1)
    assert rows[0][:3].tolist() == [START_ID, style_id(1), 60]
    assert len(seen) >= 3 and all(front[0] in (START_ID, style_id(1)) for front in seen)
    assert all(front[0] == style_id(1) for front in seen[1:])  # re-prefills start with it
    with pytest.raises(ValueError, match="not one of this checkpoint's styles"):
        generate(model, None, max_new_tokens=4, style=2)


def test_masked_release_mass_goes_to_the_releases_the_grammar_allows():
    from musicgpt.scoring import release_mass_kept
    from musicgpt.vocab import note_off_id, note_on_id

    probs = np.full((1, VOCAB_SIZE), 1e-6)
    probs[0, note_off_id(60)] = 0.3  # a release of a silent pitch: the model missed the pitch
    probs[0, note_off_id(64)] = 0.1  # E4 sounds
    probs[0, note_off_id(67)] = 0.1  # G4 sounds
    probs[0, note_on_id(64)] = 0.2  # strike E4 again: starts with its release
    probs[0, note_on_id(72)] = 0.3
    probs /= probs.sum()
    allowed = np.ones((1, VOCAB_SIZE), dtype=bool)
    allowed[0, note_off_id(np.arange(128))] = False
    allowed[0, note_off_id([64, 67])] = True
    allowed[0, note_on_id([64, 67])] = False
    kept = np.exp(release_mass_kept(np.log(probs), allowed))
    masked = np.where(allowed, kept, 0.0)
    masked /= masked.sum()
    releases = masked[0, note_off_id([64, 67])]
    assert releases.sum() == pytest.approx(0.7, abs=1e-3)  # 0.3 + 0.1 + 0.1 + 0.2 kept
    assert releases[0] > releases[1]  # E4 also got its re-strike's mass
    assert masked[0, note_on_id(72)] == pytest.approx(0.3, abs=1e-3)
    nothing_sounds = np.ones((1, VOCAB_SIZE), dtype=bool)
    nothing_sounds[0, note_off_id(np.arange(128))] = False
    same = release_mass_kept(np.log(probs), nothing_sounds)
    assert np.allclose(np.exp(same), probs)  # no release possible: left as it was


def test_settings_from_config_take_the_checkpoints_values_unless_given():
    config = Config(temperature=0.9, top_k=7, top_p=0.95, min_p=0.02)
    own = SamplingSettings.from_config(config)
    assert (own.temperature, own.top_k, own.top_p, own.min_p) == (0.9, 7, 0.95, 0.02)
    given = SamplingSettings.from_config(config, top_p=None, min_p=0.1, max_note_s=None)
    assert (given.top_p, given.min_p, given.max_note_s) == (0.95, 0.1, None)  # None: guard off


def _guided_reference(model: GPT, style: int, n: int, guidance: float) -> list[int]:
    """Greedy tokens from unstyled + (1 + guidance) * (styled - unstyled), full forwards."""
    new: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            styled = model(torch.tensor([[START_ID, style, *new]]))[0, -1]
            plain = model(torch.tensor([[START_ID, *new]]))[0, -1]
            new.append(int((plain + (1 + guidance) * (styled - plain)).argmax()))
    return [START_ID, style, *new]


def test_style_guidance_mixes_styled_and_unstyled_logits(make_tiny_model):
    model = make_tiny_model(styles=["a", "b"])
    style = style_id(1)
    settings = SamplingSettings(top_k=1, grammar=False, within_type=False, style_guidance=2.0)
    (row,) = generate(model, None, max_new_tokens=30, settings=settings, style=1, seed=0)
    assert row.tolist() == _guided_reference(model, style, 30, 2.0)
    (plain,) = generate(model, None, max_new_tokens=30, settings=GREEDY, style=1, seed=0)
    assert plain.tolist() != row.tolist()  # guidance changes what is drawn


def test_style_guidance_slides_past_the_context(make_tiny_model):
    model = make_tiny_model(styles=["a", "b"])
    settings = SamplingSettings(style_guidance=1.0)
    (row,) = generate(model, None, max_new_tokens=200, settings=settings, style=0, seed=3)
    assert row[:2].tolist() == [START_ID, style_id(0)] and len(row) > model.config.block_size
    assert not grammar_errors(row)


def test_a_style_token_in_the_primer_acts_as_the_style(make_tiny_model):
    model = make_tiny_model(styles=["a", "b"])
    settings = SamplingSettings(style_guidance=1.0)
    given = generate(model, None, max_new_tokens=150, settings=settings, style=1, seed=4)
    in_primer = generate(model, [START_ID, style_id(1)], max_new_tokens=150, settings=settings,
                         seed=4)  # kept in front past the context, and guided, as style=1
    assert np.array_equal(given[0], in_primer[0])


def test_a_generation_says_how_long_its_primer_is(make_tiny_model):
    model = make_tiny_model(styles=["a", "b"])
    primer = [START_ID, 60, 300, 188]
    for given, style, expected in [(primer, None, 4), (primer, 1, 5), (None, 0, 2),
                                   ([START_ID, style_id(1), 60], None, 3)]:
        made = generate_pieces(model, given, max_new_tokens=3, seed=0, style=style)
        assert made.primer_len == expected
        assert all(row[:expected].tolist()[0] == START_ID for row in made.rows)
