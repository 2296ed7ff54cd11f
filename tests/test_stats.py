"""Music statistics on hand-made notes with known answers, overlap measures, and the copy check."""

import math

import numpy as np
import pytest

from musicgpt.events import Note, arrays_to_ids, notes_to_arrays, wrap_piece
from musicgpt.stats import (
    compare_sets,
    copy_stats,
    entropy_bits,
    estimate_key,
    excerpt,
    histogram_overlap,
    ids_to_onset_pitches,
    inter_onset_intervals_s,
    ioi_histogram,
    kde_overlap,
    long_silences,
    mean_polyphony,
    nearest_set_shares,
    note_density_per_s,
    piece_features,
    pitch_class_histogram,
    pitch_range_semitones,
    relative_key,
    same_or_relative_key,
    stuck_notes,
    training_ngram_set,
)


def _notes(*tuples):
    """NoteArrays from (pitch, start_s, end_s) tuples, velocity 80."""
    return notes_to_arrays([Note(p, 80, s, e) for p, s, e in tuples])


MELODY = _notes((60, 0.0, 0.5), (64, 0.5, 1.0), (67, 1.0, 1.5), (72, 1.5, 2.0))
CHORD_THEN_NOTE = _notes((60, 0.0, 1.0), (64, 0.0, 1.0), (67, 0.0, 1.0), (72, 1.0, 2.0))


def test_melody_features():
    assert note_density_per_s(MELODY) == pytest.approx(2.0)
    assert pitch_range_semitones(MELODY) == 12
    assert mean_polyphony(MELODY) == pytest.approx(1.0)
    np.testing.assert_allclose(inter_onset_intervals_s(MELODY), [0.5, 0.5, 0.5])
    # pitch classes C, E, G, C: probabilities 1/2, 1/4, 1/4 -> 1.5 bits
    assert entropy_bits(pitch_class_histogram(MELODY)) == pytest.approx(1.5)


def test_chord_polyphony_and_onsets():
    assert mean_polyphony(CHORD_THEN_NOTE) == pytest.approx((3 + 1) / 2)
    assert mean_polyphony(_notes((60, 0, 1), (64, 0, 1), (67, 0, 1))) == pytest.approx(3.0)
    np.testing.assert_allclose(inter_onset_intervals_s(CHORD_THEN_NOTE), [1.0])
    assert note_density_per_s(CHORD_THEN_NOTE) == pytest.approx(2.0)


def test_pitch_class_entropy_extremes():
    assert entropy_bits(pitch_class_histogram(_notes((60, 0, 1), (72, 1, 2)))) == 0.0
    all_twelve = _notes(*[(60 + i, i * 0.1, i * 0.1 + 0.1) for i in range(12)])
    assert entropy_bits(pitch_class_histogram(all_twelve)) == pytest.approx(math.log2(12))


def test_ioi_histogram_bins():
    notes = _notes((60, 0.0, 0.1), (62, 0.05, 0.1), (64, 1.05, 1.2), (65, 9.0, 9.5))
    hist = ioi_histogram(notes, np.array([0.01, 0.1, 1.0, 4.0]))
    np.testing.assert_array_equal(hist, [1, 0, 2])  # 0.05 s; 1.0 s sits on an edge; 7.95 s clipped


@pytest.mark.parametrize("tuples, silences", [
    ([(60, 0, 1), (62, 6, 7)], 1),  # 5 s of silence
    ([(60, 0, 1), (62, 4, 5)], 0),  # 3 s
    ([(60, 0, 10), (62, 2, 3), (64, 11, 12)], 0),  # the long note covers the gap after 3 s
    ([(60, 0, 1), (62, 5.5, 6), (64, 11, 12)], 2),
])
def test_long_silences(tuples, silences):
    assert long_silences(_notes(*tuples)) == silences


def test_stuck_notes_count_ten_seconds_and_more():
    notes = _notes((60, 0, 12), (62, 0, 10), (64, 0, 9.99), (65, 20, 20.5))
    assert stuck_notes(notes) == 2


def test_excerpt_starts_at_first_onset_and_cuts_releases():
    notes = _notes((60, 2.0, 3.0), (62, 4.0, 9.0), (64, 7.5, 8.0))
    cut = excerpt(notes, 5.0)
    assert cut.start_step.tolist() == [0, 200]
    assert cut.end_step.tolist() == [100, 500]


def test_empty_notes_give_zero_features():
    empty = _notes()
    assert piece_features(empty) == {"note_density_per_s": 0.0, "pitch_range_semitones": 0.0,
                                     "pitch_class_entropy_bits": 0.0, "mean_polyphony": 0.0,
                                     "mean_ioi_s": 0.0}
    assert stuck_notes(empty) == long_silences(empty) == 0


def test_kde_overlap_identical_disjoint_and_known():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 300)
    assert kde_overlap(a, a) == pytest.approx(1.0, abs=1e-3)
    assert kde_overlap(a, a + 100) == pytest.approx(0.0, abs=1e-6)
    assert kde_overlap([3.0, 3.0], [3.0, 3.0]) == 1.0
    assert kde_overlap([3.0, 3.0], [9.0, 9.0]) == pytest.approx(0.0, abs=1e-6)
    # N(0,1) vs N(1,1): true overlap 2 * Phi(-1/2) = 0.617; KDE smoothing widens both a little
    b = rng.normal(1, 1, 2000)
    assert kde_overlap(rng.normal(0, 1, 2000), b) == pytest.approx(0.617, abs=0.05)


def test_histogram_overlap():
    assert histogram_overlap([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert histogram_overlap([1, 0], [0, 5]) == 0.0
    assert histogram_overlap([1, 1], [1, 0]) == pytest.approx(0.5)


def test_compare_sets_of_the_same_pieces_overlap_fully():
    rng = np.random.default_rng(1)
    pieces = [_notes(*[(int(rng.integers(40, 90)), t, t + float(rng.uniform(0.1, 2)))
                       for t in np.sort(rng.uniform(0, 20, 60))]) for _ in range(12)]
    result = compare_sets(pieces, pieces)
    for name, row in result.items():
        assert row["overlap"] == pytest.approx(1.0, abs=1e-3), name


def _random_ids(seed: int, n_notes: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    starts = np.cumsum(rng.uniform(0.05, 0.4, n_notes))
    notes = [Note(int(p), 70, float(s), float(s) + 0.3)
             for p, s in zip(rng.integers(30, 100, n_notes), starts, strict=True)]
    return wrap_piece(arrays_to_ids(notes_to_arrays(notes)))


def test_onset_pitches_match_decoded_note_order():
    ids = arrays_to_ids(CHORD_THEN_NOTE)
    assert ids_to_onset_pitches(ids).tolist() == [60, 64, 67, 72]
    piece = _random_ids(3, 200)
    from musicgpt.events import ids_to_arrays

    assert ids_to_onset_pitches(piece).tolist() == ids_to_arrays(piece).pitch.tolist()


def test_a_training_piece_is_fully_copied_and_a_random_one_is_not():
    train = [_random_ids(seed, 300) for seed in range(20)]
    keys = training_ngram_set(train)
    assert np.all(np.diff(keys) > 0)
    pitches = ids_to_onset_pitches(train[7])
    assert copy_stats(pitches, keys) == (1.0, len(pitches))
    assert copy_stats(pitches + 5, keys) == (1.0, len(pitches))  # transposed: still a copy
    share, longest = copy_stats(ids_to_onset_pitches(_random_ids(99, 300)), keys)
    assert share < 0.02 and longest < 10


def test_longest_run_finds_a_pasted_passage():
    train = [_random_ids(seed, 300) for seed in range(5)]
    keys = training_ngram_set(train)
    fresh = ids_to_onset_pitches(_random_ids(50, 100))
    pasted = np.concatenate([fresh[:40], ids_to_onset_pitches(train[2])[100:130], fresh[40:]])
    share, longest = copy_stats(pasted, keys)
    assert 30 <= longest <= 32  # a neighbour interval may match by chance
    assert share == pytest.approx(23 / (len(pasted) - 7), abs=0.03)
    assert copy_stats(fresh[:5], keys)[0] != copy_stats(fresh[:5], keys)[0]  # NaN: too short


def test_nearest_set_shares_tell_dense_from_sparse_music():
    def piece(every_s: float, pitches: range) -> object:  # one note at a time, legato
        return notes_to_arrays([Note(p, 80, i * every_s, (i + 1) * every_s) for i, p in
                                enumerate(list(pitches) * 3)])

    dense = [piece(0.1 + 0.01 * k, range(60, 72)) for k in range(4)]  # ~9 notes/s, an octave
    sparse = [piece(0.5 + 0.05 * k, range(40, 80, 5)) for k in range(4)]  # ~2/s, 3 octaves
    reference = {"dense": dense, "sparse": sparse}
    assert nearest_set_shares(reference, reference) == {"dense": 1.0, "sparse": 1.0}
    assert nearest_set_shares({"dense": sparse[:2] + dense[:2]}, reference) == {"dense": 0.5}


def _scale_notes(tonic: int, steps: tuple[int, ...], weights: tuple[float, ...]):
    """One note per scale degree, degree i sounding weights[i] seconds, one after another."""
    tuples, t = [], 0.0
    for step, length in zip(steps, weights, strict=True):
        tuples.append((60 + tonic + step, t, t + length))
        t += length
    return _notes(*tuples)


_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)
_TONIC_HEAVY = (4.0, 1.0, 2.0, 1.5, 3.0, 1.0, 1.0)  # tonic, third and fifth held longest


@pytest.mark.parametrize("tonic", [0, 2, 7, 10])
def test_estimate_key_finds_major_and_minor_scales(tonic):
    assert estimate_key(_scale_notes(tonic, _MAJOR, _TONIC_HEAVY)) == (tonic, "major")
    assert estimate_key(_scale_notes(tonic, _MINOR, _TONIC_HEAVY)) == (tonic, "minor")


def test_estimate_key_of_nothing_is_none():
    assert estimate_key(_notes()) is None


def test_relative_keys():
    assert relative_key((0, "major")) == (9, "minor")  # C major -> A minor
    assert relative_key((9, "minor")) == (0, "major")
    assert relative_key((7, "minor")) == (10, "major")  # G minor -> B flat major
    assert same_or_relative_key((0, "major"), (9, "minor"))
    assert same_or_relative_key((2, "minor"), (2, "minor"))
    assert not same_or_relative_key((0, "major"), (7, "major"))
    assert not same_or_relative_key(None, (0, "major"))
