"""Unigram and Kneser-Ney baselines: proper distributions, hand-checked counts, and learning."""

import math

import numpy as np
import pytest

from musicgpt.baselines import (
    fit_kneser_ney,
    fit_unigram,
    gram_probabilities,
    kneser_ney_nll,
    unigram_nll,
)
from musicgpt.vocab import BASE_VOCAB_SIZE as VOCAB_SIZE  # n-grams model music ids
from musicgpt.vocab import END_ID, PAD_ID, START_ID


def _wrap(ids) -> np.ndarray:
    return np.array([START_ID, *ids, END_ID], dtype=np.uint16)


def _corpus(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [_wrap(rng.integers(0, 60, int(rng.integers(5, 80)))) for _ in range(30)]


def _distribution(model, context) -> np.ndarray:
    grams = np.column_stack([np.tile(np.asarray(context, np.int64), (VOCAB_SIZE, 1)),
                             np.arange(VOCAB_SIZE)])
    return gram_probabilities(model, grams)


def test_unigram_is_add_one():
    log_probs = fit_unigram([_wrap([5, 5, 7])])  # targets: 5, 5, 7, END
    assert math.exp(log_probs[5]) == pytest.approx(3 / (4 + VOCAB_SIZE))
    assert math.exp(log_probs[9]) == pytest.approx(1 / (4 + VOCAB_SIZE))
    assert np.exp(log_probs).sum() == pytest.approx(1.0)
    nll, tokens = unigram_nll(log_probs, [_wrap([7])])
    assert tokens == 2
    assert nll == pytest.approx(-log_probs[7] - log_probs[END_ID])


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_kneser_ney_sums_to_one_in_every_context(order):
    model = fit_kneser_ney(_corpus(), order)
    rng = np.random.default_rng(1)
    contexts = [[PAD_ID] * (order - 2) + [START_ID], [1, 2, 3, 4][: order - 1],
                list(rng.integers(0, VOCAB_SIZE, order - 1))]
    seen = _corpus()[0][1:order].tolist()  # a context that occurs in training
    for context in contexts + [seen]:
        probs = _distribution(model, context[: order - 1] if order > 1 else [])
        assert probs.min() > 0
        assert probs.sum() == pytest.approx(1.0, abs=1e-9)


def test_kneser_ney_bigram_matches_hand_computation():
    # pieces "S a b E" and "S a c E": every bigram seen once, so all have count 1
    model = fit_kneser_ney([_wrap([10, 11]), _wrap([10, 12])], order=2)
    d1 = model.tables[1].discounts[1]
    assert 0 < d1 <= 1
    # context "a" (10): counts b=1, c=1, total 2, gamma = 2 * d1 / 2
    unigram = _distribution_lower(model)
    p_b = (1 - d1 + 2 * d1 * unigram[11]) / 2
    assert _distribution(model, [10])[11] == pytest.approx(p_b)


def _distribution_lower(model) -> np.ndarray:
    """The order-1 continuation distribution, computed by hand from the order-1 table."""
    table = model.tables[0]
    counts = np.zeros(VOCAB_SIZE)
    counts[table.gram_keys] = table.gram_counts
    d = table.discounts[np.minimum(counts.astype(int), 3)]
    held = d[counts > 0].sum()
    return (np.maximum(counts - d, 0) + held / VOCAB_SIZE) / counts.sum()


def test_kneser_ney_beats_unigram_on_repetitive_music():
    rng = np.random.default_rng(0)
    pattern = [60, 188, 256 + 9, 64, 192, 256 + 9, 67, 195, 256 + 19]  # C E G, repeating
    train = [_wrap(pattern * int(rng.integers(3, 10))) for _ in range(20)]
    test = [_wrap(pattern * 6)]
    uni_nll, uni_tokens = unigram_nll(fit_unigram(train), test)
    kn_nll, kn_tokens = kneser_ney_nll(fit_kneser_ney(train, 4), test)
    assert kn_tokens == uni_tokens == len(pattern) * 6 + 1
    assert kn_nll / kn_tokens < 0.2 < uni_nll / uni_tokens


def test_higher_order_helps_on_held_out_markov_data():
    """A second-order Markov source: the trigram should beat the bigram on fresh pieces."""
    rng = np.random.default_rng(3)
    table = rng.integers(0, 40, size=(40, 40, 2))

    def piece(n: int) -> np.ndarray:
        ids = [int(rng.integers(40)), int(rng.integers(40))]
        for _ in range(n):
            ids.append(int(table[ids[-2], ids[-1], rng.integers(2)]))
        return _wrap(ids)

    train, test = [piece(300) for _ in range(60)], [piece(300) for _ in range(10)]
    nll = {order: kneser_ney_nll(fit_kneser_ney(train, order), test) for order in (1, 2, 3)}
    per_token = {order: total / tokens for order, (total, tokens) in nll.items()}
    assert per_token[3] < per_token[2] < per_token[1]
    assert per_token[3] < math.log(2) + 0.3  # two equally likely successors per context


def test_chunked_scoring_equals_one_pass():
    model = fit_kneser_ney(_corpus(), 3)
    test = _corpus(seed=5)
    whole = kneser_ney_nll(model, test)
    chunked = kneser_ney_nll(model, test, chunk_tokens=50)
    assert chunked[1] == whole[1] == sum(len(p) - 1 for p in test)
    assert chunked[0] == pytest.approx(whole[0])


def test_bad_order_is_rejected():
    with pytest.raises(ValueError, match="order"):
        fit_kneser_ney(_corpus(), 8)
