"""The draw draws what it drew before it was made faster (issue 19): `SamplerState.draw` fed
synthetic logits (numpy's seeded stream, no model, so no kernel's rounding comes in) must give the
token sequences recorded in tests/data/draw_tokens.npz, for each setting and seed.

Regenerate the recording only when a change to what is drawn is meant:
    PYTHONPATH=. python tests/test_draw_recorded.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from musicgpt.sampling import SamplerState, SamplingSettings
from musicgpt.scoring import truncate, truncate_reference
from musicgpt.vocab import (
    END_ID,
    START_ID,
    TIME_SHIFT_OFFSET,
    VELOCITY_OFFSET,
    VOCAB_SIZE,
    note_off_id,
    note_on_id,
)

RECORDING = Path(__file__).parent / "data" / "draw_tokens.npz"
BATCHES, STEPS, SEEDS = (1, 3), 300, (1, 2)

# name -> settings (the shipped model's own: top-p 0.9 within types; then one change each)
CASES = {
    "default": dict(top_p=0.9),
    "no_truncation": dict(),
    "no_grammar": dict(top_p=0.9, grammar=False),
    "top_k": dict(top_k=12),
    "min_p": dict(min_p=0.1, top_p=0.95),
    "across_types": dict(within_type=False, top_k=40, top_p=0.95, min_p=0.01),
    "temperature": dict(temperature=0.6, top_p=0.8),
    "tiny_temperature": dict(temperature=1e-4),
    "no_release_mass": dict(top_p=0.9, keep_release_mass=False),
    "no_rules": dict(top_p=0.9, max_note_s=None, max_silence_s=None, max_lead_in_s=None,
                     release_ramp_s=None),
    "key": dict(top_p=0.9, key="E minor"),
    "density": dict(top_p=0.9, density=3.0),
    "pitch_range": dict(top_p=0.9, pitch_range=(48, 72)),
    "dynamics": dict(top_p=0.9, dynamics=(40, 70)),
    "controls": dict(top_p=0.9, key="Bb major", density=12.0, pitch_range=(30, 100),
                     dynamics=(60, 120)),
}


def _bias(seed: int) -> np.ndarray:
    """A fixed (V,) log-odds table so the synthetic music has notes, rests and releases: odd
    seeds hold notes long (the release ramp and the longest-note guard fire), even ones release
    them soon and may end (silences, rows past END)."""
    bias = np.full(VOCAB_SIZE, -6.0)
    bias[note_on_id(np.arange(40, 90))] = 0.5
    bias[note_off_id(np.arange(128))] = -3.0 if seed % 2 else 1.5
    bias[TIME_SHIFT_OFFSET : TIME_SHIFT_OFFSET + 100] = np.linspace(1.5, -2.0, 100)
    bias[VELOCITY_OFFSET : VELOCITY_OFFSET + 32] = -0.5
    bias[END_ID] = -8.0 if seed % 2 else -0.5
    return bias


def draw_tokens(settings: dict, batch: int, seed: int) -> np.ndarray:
    """(batch, STEPS) tokens `SamplerState` draws from seeded synthetic logits."""
    state = SamplerState(np.full((batch, 1), START_ID), SamplingSettings(**settings),
                         VOCAB_SIZE, None, seed)
    noise = np.random.default_rng(1000 + seed)
    bias = _bias(seed).astype(np.float32)
    tokens = []
    for _ in range(STEPS):
        logits = bias + noise.normal(0.0, 2.0, (batch, VOCAB_SIZE)).astype(np.float32)
        tokens.append(state.draw(torch.from_numpy(logits)).numpy())
    return np.stack(tokens, 1)


def _key(name: str, batch: int, seed: int) -> str:
    return f"{name}-b{batch}-s{seed}"


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("name", sorted(CASES))
def test_draw_gives_the_recorded_tokens(name, compiled, monkeypatch):
    """Both ways to draw: the compiled one (`scoring._draw_rows`) and numpy's steps."""
    from musicgpt import scoring

    if compiled and scoring._draw_rows is None:
        pytest.skip("numba is not installed")
    if not compiled:
        monkeypatch.setattr(scoring, "_draw_rows", None)
    recorded = np.load(RECORDING)
    for batch in BATCHES:
        for seed in SEEDS:
            want = recorded[_key(name, batch, seed)]
            got = draw_tokens(CASES[name], batch, seed)
            diff = np.argwhere(got != want)
            assert not len(diff), f"{name} batch {batch} seed {seed}: first change at {diff[0]}"


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("settings", [dict(top_p=0.9), dict(top_k=12), dict(top_p=0.3),
                                      dict(min_p=0.1, top_p=0.95),
                                      dict(top_k=30, top_p=0.999, min_p=0.02)])
def test_truncate_matches_its_reference_bit_for_bit(settings, compiled, monkeypatch):
    """The fast within-type cut (ranking 160 of 409 columns; compiled by numba, or in numpy where
    numba is missing) gives the reference's floats, on masked rows, whole types masked, tied
    logits and spread-out ones."""
    from musicgpt import scoring

    if compiled and scoring._rank_drops is None:
        pytest.skip("numba is not installed")
    if not compiled:
        monkeypatch.setattr(scoring, "_rank_drops", None)
    rng, s = np.random.default_rng(7), SamplingSettings(**settings)
    for trial in range(300):
        batch = 1 + trial % 3
        logits = rng.normal(0.0, rng.uniform(0.5, 8.0), (batch, VOCAB_SIZE)).astype(np.float32)
        if trial % 5 == 0:
            logits[:, :128] = np.round(logits[:, :128])  # ties among pitches
        masked = rng.random((batch, VOCAB_SIZE)) < rng.uniform(0.0, 0.6)
        if trial % 7 == 0:
            masked[:, VELOCITY_OFFSET : VELOCITY_OFFSET + 32] = True
        logits[masked] = -np.inf
        with np.errstate(all="ignore"):
            assert np.array_equal(truncate(logits, s), truncate_reference(logits, s))


@pytest.mark.parametrize("settings", [
    dict(top_p=0.9), dict(), dict(top_k=12), dict(min_p=0.1, top_p=0.95),
    dict(temperature=0.6, top_p=0.8), dict(temperature=1e-4),
    dict(top_p=0.9, keep_release_mass=False)])
def test_compiled_draw_agrees_with_numpys_steps(settings):
    """`scoring.draw` compiled and `sample(draw_scores(...))` draw the same ids from the same
    uniforms (their floats may differ in the last bits, so a uniform on a boundary may not),
    on masked rows, rows with only a few ids allowed, whole types masked and no mask at all."""
    from musicgpt import scoring

    if scoring._draw_rows is None:
        pytest.skip("numba is not installed")
    rng, s = np.random.default_rng(11), SamplingSettings(**settings)
    same = total = 0
    for trial in range(400):
        batch = 1 + trial % 3
        logits = rng.normal(0.0, rng.uniform(0.5, 8.0), (batch, VOCAB_SIZE)).astype(np.float32)
        allowed = rng.random((batch, VOCAB_SIZE)) > rng.choice([0.0, 0.3, 0.97])
        if trial % 7 == 0:
            allowed[:, VELOCITY_OFFSET : VELOCITY_OFFSET + 32] = False
        mask = None if trial % 11 == 0 else allowed
        got = scoring.draw(logits, mask, s, np.random.default_rng(trial))
        with np.errstate(all="ignore"):
            want = scoring.sample(scoring.draw_scores(logits, mask, s),
                                  np.random.default_rng(trial))
        if mask is not None:
            assert mask[np.arange(batch), got].all() or not mask.any(1).all()
        same, total = same + int((got == want).sum()), total + batch
    assert same >= 0.995 * total, f"{total - same} of {total} draws differ"


@pytest.mark.parametrize("settings", [dict(top_p=0.9), dict(top_p=0.9, max_silence_s=0.3),
                                      dict(top_k=12, release_ramp_s=0.2, max_note_s=0.5)])
def test_compiled_state_advances_as_numpys(settings, monkeypatch):
    """`SamplerState.draw` compiled whole (`scoring.draw_and_advance`) leaves every part of the
    state as numpy's steps do: tokens, the grammar, onsets, the silence guard, finished rows
    (2 s asked, END likely) and why each stopped; from a primer with notes still sounding."""
    from musicgpt import scoring

    if scoring.draw_and_advance is None:
        pytest.skip("numba is not installed")
    primer = [START_ID, int(note_on_id(60)), int(note_on_id(64)), TIME_SHIFT_OFFSET + 9]

    def run(compiled: bool):
        if not compiled:
            monkeypatch.setattr(scoring, "draw_and_advance", None)
        state = SamplerState(np.array([primer] * 3), SamplingSettings(**settings), VOCAB_SIZE,
                             2.0, 5)
        noise, bias = np.random.default_rng(9), _bias(2).astype(np.float32)
        tokens = [state.draw(torch.from_numpy(
            bias + noise.normal(0.0, 2.0, (3, VOCAB_SIZE)).astype(np.float32))).numpy()
            for _ in range(200)]
        monkeypatch.undo()
        return np.stack(tokens, 1), state

    (fast_tokens, fast), (slow_tokens, slow) = run(True), run(False)
    assert np.array_equal(fast_tokens, slow_tokens)
    for a, b in [(fast, slow), (fast.grammar, slow.grammar), (fast.silence, slow.silence)]:
        for name, value in vars(b).items():
            if isinstance(value, np.ndarray | int) and not name.startswith("_"):
                assert np.array_equal(getattr(a, name), value), name
    assert fast.stops(2.0) == slow.stops(2.0) and fast.done.any()


def test_compiled_draw_leaves_nan_and_inf_to_numpy():
    """Logits holding NaN or +inf take numpy's steps: a draw inside the mask, never NaN's id."""
    from musicgpt import scoring

    s = SamplingSettings(top_p=0.9)
    logits = np.zeros((2, VOCAB_SIZE), np.float32)
    logits[0, 5], logits[1, 7] = np.nan, np.inf
    allowed = np.zeros((2, VOCAB_SIZE), bool)
    allowed[:, [7, 300]] = True
    with np.errstate(all="ignore"):
        want = scoring.sample(scoring.draw_scores(logits, allowed, s), np.random.default_rng(3))
    got = scoring.draw(logits, allowed, s, np.random.default_rng(3))
    assert got.tolist() == want.tolist() and set(got.tolist()) <= {7, 300}


if __name__ == "__main__":
    np.savez_compressed(RECORDING, **{
        _key(name, batch, seed): draw_tokens(settings, batch, seed).astype(np.uint16)
        for name, settings in CASES.items() for batch in BATCHES for seed in SEEDS})
    print("wrote", RECORDING, RECORDING.stat().st_size, "bytes")
