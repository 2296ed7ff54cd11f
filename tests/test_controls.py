"""The controls (key, density, pitch range, dynamics) and the one owner of the sampling settings:
parsing, what each control does to a step's logits, that the sampler keeps every new note inside
the asked range and velocities, and that the CLI's flags and the app's widgets come from
settings.py."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from musicgpt import controls, settings
from musicgpt.config import Config
from musicgpt.events import ids_to_arrays
from musicgpt.sampling import SamplingSettings, generate_pieces
from musicgpt.vocab import (
    VOCAB_SIZE,
    bin_to_velocity,
    is_note_on,
    note_on_id,
    shift_id,
    velocity_id,
    velocity_to_bin,
)


@pytest.mark.parametrize("text, name", [
    ("E minor", "E minor"), ("Em", "E minor"), ("e min", "E minor"), ("F#", "F# major"),
    ("Bb major", "Bb major"), ("A#m", "Bb minor"), ("Gb", "F# major"), ("c", "C major"),
    ("Db minor", "C# minor")])
def test_parse_key_takes_the_usual_spellings(text, name):
    assert controls.parse_key(text) == name
    assert name in controls.KEY_NAMES


def test_keys_and_relatives():
    assert len(set(controls.KEY_NAMES)) == 24
    assert controls.relative_key_name("A minor") == "C major"
    assert controls.relative_key_name("Bb major") == "G minor"
    assert controls.key_parts("F# minor") == (6, "minor")


@pytest.mark.parametrize("text, pitch", [("C4", 60), ("A0", 21), ("C-1", 0), ("Bb3", 58),
                                         ("G9", 127), ("64", 64), ("f#5", 78)])
def test_parse_pitch_takes_names_and_numbers(text, pitch):
    assert controls.parse_pitch(text) == pitch


@pytest.mark.parametrize("bad", ["H4", "C10", "128", "middle C", ""])
def test_parse_pitch_refuses_what_is_no_pitch(bad):
    with pytest.raises(ValueError, match="pitch"):
        controls.parse_pitch(bad)


def test_parse_ranges():
    assert controls.parse_pitch_range("C3-C6") == (48, 84)
    assert controls.parse_pitch_range("C-1-C4") == (0, 60)
    assert controls.parse_pitch_range("48..72") == (48, 72)
    assert controls.parse_velocity_range("30-70") == (30, 70)
    with pytest.raises(ValueError, match="low end is above"):
        controls.parse_pitch_range("C6-C3")
    with pytest.raises(ValueError, match="velocity"):
        controls.parse_velocity_range("0-200")


def _logits(seed: int = 0, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, VOCAB_SIZE))


def _note_on_mass(logits: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
    scores = logits if allowed is None else np.where(allowed, logits, -np.inf)
    probs = np.exp(scores - scores.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    return probs[:, note_on_id(np.arange(128))].sum(1)


def test_key_favours_the_scale_and_triad_but_keeps_how_likely_a_note_is():
    steer = controls.Controls(SamplingSettings(key="E minor"), 2, VOCAB_SIZE)
    logits = _logits()
    steered, allowed = steer.steer(logits, None)
    lift = steered - logits
    e, f_sharp, f = (note_on_id(p) for p in (64, 66, 65))  # tonic, in the scale, outside
    assert lift[0, e] > lift[0, f_sharp] > lift[0, f]
    assert lift[0, note_on_id(63)] == lift[0, f_sharp]  # D#: minor's leading tone is in
    np.testing.assert_allclose(_note_on_mass(steered, allowed), _note_on_mass(logits, None))
    assert np.all(lift[:, shift_id(10)] == 0)


def test_pitch_range_masks_notes_outside_and_keeps_the_note_mass():
    grammar = np.ones((2, VOCAB_SIZE), dtype=bool)
    grammar[:, note_on_id(70)] = False  # a sounding pitch the grammar already masks
    steer = controls.Controls(SamplingSettings(pitch_range=(60, 72)), 2, VOCAB_SIZE)
    logits = _logits(1)
    steered, allowed = steer.steer(logits, grammar)
    on = allowed[:, note_on_id(np.arange(128))]
    assert on[:, 60:73].sum(1).tolist() == [12, 12] and not on[:, :60].any()
    assert not on[:, 73:].any()
    np.testing.assert_allclose(_note_on_mass(steered, allowed), _note_on_mass(logits, grammar))


def test_dynamics_waits_for_a_velocity_inside_before_a_note():
    steer = controls.Controls(SamplingSettings(dynamics=(90, 127)), 1, VOCAB_SIZE)
    _, allowed = steer.steer(_logits(2, 1), None)  # the default velocity 64 is outside
    assert not allowed[0, is_note_on(np.arange(VOCAB_SIZE))].any()
    inside = [b for b in range(32) if allowed[0, velocity_id(b)]]
    assert inside and all(90 <= bin_to_velocity(b) <= 127 for b in inside)
    assert not allowed[0, velocity_id(velocity_to_bin(60))]
    steer.observe(np.array([velocity_id(velocity_to_bin(100))]))
    _, allowed = steer.steer(_logits(2, 1), None)
    assert allowed[0, note_on_id(60)]


def test_density_holds_a_dense_row_back_and_pushes_a_thin_one():
    steer = controls.Controls(SamplingSettings(density=4.0), 2, VOCAB_SIZE)
    notes = np.arange(128)
    for pitch in (60, 64, 67, 72):  # row 0: a four-note chord; row 1: 40 ms of silence
        steer.observe(np.array([note_on_id(pitch), shift_id(1)]))
    logits = _logits(3)
    steered, allowed = steer.steer(logits, None)
    assert not allowed[0, note_on_id(notes)].any() and not allowed[0, velocity_id(10)]
    assert allowed[1, note_on_id(notes)].all()
    steer.observe(np.array([shift_id(25), shift_id(25)]))  # 0.25 s: one note's worth again
    allowed = steer.steer(logits, None)[1]  # None: nothing masked
    assert allowed is None or allowed[0, note_on_id(notes)].all()
    for _ in range(30):  # row 1 stays silent for 3 s more: pushed to strike
        steer.observe(np.array([shift_id(10), shift_id(10)]))
    lift = steer.steer(logits, None)[0] - logits
    assert lift[1, note_on_id(60)] > 1 and lift[1, velocity_id(10)] == lift[1, note_on_id(60)]
    assert np.all(lift[:, shift_id(5)] == 0)


@pytest.mark.parametrize("asked", [3.0, 10.0])
def test_density_is_kept_by_the_shipped_model(asked):
    from musicgpt.assets import default_model_dir
    from musicgpt.checkpoint import load_sampling_model

    model = load_sampling_model(default_model_dir(), "cpu", "auto")
    made = generate_pieces(model, None, max_seconds=10, num_samples=3, seed=0,
                           settings=SamplingSettings.from_config(model.config, density=asked,
                                                                 candidates=1))
    rates = np.array([len(ids_to_arrays(row[made.primer_len:])) / 10 for row in made.rows])
    assert np.all(np.abs(rates / asked - 1) <= 0.5), rates


def test_no_control_leaves_the_step_alone():
    steer = controls.Controls(SamplingSettings(), 2, VOCAB_SIZE)
    logits = _logits(4)
    assert not steer.active
    out, allowed = steer.steer(logits, None)
    assert out is logits and allowed is None


@pytest.mark.parametrize("candidates", [1, 2])
def test_generated_notes_keep_to_the_range_and_dynamics(tiny_model, candidates):
    asked = SamplingSettings(pitch_range=(55, 67), dynamics=(40, 60), candidates=candidates)
    made = generate_pieces(tiny_model, None, max_new_tokens=200, num_samples=2, settings=asked,
                           seed=3)
    notes = [ids_to_arrays(row) for row in made.rows]
    assert sum(len(n) for n in notes) > 5
    for n in notes:
        assert np.all((n.pitch >= 55) & (n.pitch <= 67))
        assert np.all((n.velocity >= 40) & (n.velocity <= 60))


def test_shipped_model_writes_in_the_asked_key():
    from musicgpt.assets import default_model_dir
    from musicgpt.checkpoint import load_sampling_model

    model = load_sampling_model(default_model_dir(), "cpu", "float32")
    keys = ("E minor", "Ab major", "D major", "F minor")
    found = []
    for key in keys:  # best of 3 as shipped: a candidate in another key is passed over
        made = generate_pieces(model, None, max_seconds=8, settings=SamplingSettings.from_config(
            model.config, key=key), seed=0)
        found.append(controls.key_of(ids_to_arrays(made.rows[0])))
    assert all(f in (k, controls.relative_key_name(k)) for f, k in zip(found, keys, strict=True))
    assert sum(f == k for f, k in zip(found, keys, strict=True)) >= 3


# --- one owner -----------------------------------------------------------------------------------

def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    settings.add_flags(parser, command)
    return parser


def test_every_flagged_setting_is_a_flag_and_parses_to_its_field():
    args = _parser("generate").parse_args(
        ["--key", "Em", "--density", "6", "--pitch-range", "C3-C6", "--dynamics", "30-70",
         "--max-silence-seconds", "0", "--no-grammar", "--top-p", "0.8", "--rolling-cache"])
    got = settings.from_flags(args, Config(top_p=0.9, candidates=3))
    assert got.rolling_cache is True
    assert settings.from_flags(_parser("generate").parse_args([]), Config()).rolling_cache is False
    assert (got.key, got.density, got.pitch_range, got.dynamics) == ("E minor", 6.0, (48, 84),
                                                                      (30, 70))
    assert got.max_silence_s is None and got.grammar is False and got.top_p == 0.8
    assert got.candidates == 3  # the checkpoint's own, not given
    flagged = {f.name for f in settings.OPTIONS.values() if f.option.flag}
    assert flagged <= set(vars(_parser("generate").parse_args([])))


@pytest.mark.parametrize("flags, message", [
    (["--key", "H major"], "--key H major: unknown key"),
    (["--pitch-range", "C6-C3"], "--pitch-range C6-C3: bad pitch range"),
    (["--density", "-2"], "--density -2: density must be in (0, 40]"),
    (["--temperature", "warm"], "--temperature warm: want a finite number > 0"),
])
def test_a_bad_flag_names_itself(flags, message):
    with pytest.raises(ValueError) as caught:
        settings.from_flags(_parser("infill").parse_args(flags), Config())
    assert str(caught.value).startswith(message)


def test_flags_follow_the_command():
    generate, duet = vars(_parser("generate").parse_args([])), vars(_parser("duet").parse_args([]))
    assert "grammar" in generate and "grammar" not in duet
    assert "candidates" not in duet and "key" in duet


def test_config_checks_its_sampling_fields_by_the_settings_rules():
    with pytest.raises(ValueError, match="top_p = 0 .want in .0, 1."):
        Config(top_p=0)
    assert settings.CHECKPOINT_FIELDS == ("temperature", "top_k", "top_p", "min_p",
                                          "style_guidance", "candidates")
