"""Issue 23, the second reliability pass: results are never NaN passed off as music, memory is
bounded before work, writers do not clash. (Bad command lines are in test_bad_inputs.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from musicgpt.events import NoteGrammar, grammar_errors
from musicgpt.sampling import SamplingSettings, draw_scores, generate
from musicgpt.vocab import PAD_ID, START_ID, VOCAB_SIZE, note_on_id


@pytest.mark.parametrize("temperature", [1e-3, 1e-6, 1e-30, 1e30])
def test_any_temperature_keeps_the_grammar(tiny_model, temperature):
    settings = SamplingSettings(temperature=temperature)
    rows = generate(tiny_model, None, max_new_tokens=120, num_samples=2, settings=settings,
                    seed=1)
    assert [grammar_errors(row) for row in rows] == [[], []]


def test_a_tiny_temperature_draws_the_likeliest_allowed_token():
    grammar = NoteGrammar(1, VOCAB_SIZE, styles=False)
    grammar.observe(np.array([START_ID]))
    logits = np.full((1, VOCAB_SIZE), -5.0, dtype=np.float32)
    logits[0, PAD_ID] = 30.0  # the model wants an event the grammar never allows
    logits[0, note_on_id(64)] = 1.0  # the likeliest allowed one
    scores = draw_scores(logits, grammar.allowed, SamplingSettings(temperature=1e-5))
    assert not np.isnan(scores).any() and np.isfinite(scores).any()
    assert int(scores.argmax()) == note_on_id(64) and np.isfinite(scores).sum() == 1


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 0.0, -1.0])
def test_a_temperature_that_is_not_a_finite_positive_number_is_refused(value):
    with pytest.raises(ValueError, match="temperature"):
        SamplingSettings(temperature=value)
