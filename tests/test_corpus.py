"""Round trips on every file of the real corpus (../shared/data/midi beside the repository).

Skipped with a reason where that folder is absent. Every file is checked in memory (read,
encode, decode, re-encode) in a pool of two processes; a sample also goes through a written
`.mid` file, and another sample is compared with an independent plain-Python reading (mido,
`helpers.read_reference`) of the rules the codec documents.
"""

import functools
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import pytest
from conftest import CORPUS_DIR
from helpers import arrays_to_tuples, assert_close, read_reference

from musicgpt.data import find_midi_files
from musicgpt.events import arrays_to_ids, ids_to_arrays
from musicgpt.midi_io import MidiReadError, midi_bytes_to_arrays
from musicgpt.pipeline import ids_to_midi_file, midi_file_to_ids
from musicgpt.vocab import bin_to_velocity, velocity_to_bin

pytestmark = pytest.mark.skipif(not CORPUS_DIR.is_dir(),
                                reason=f"corpus folder {CORPUS_DIR} is absent")
WRITE_EVERY = 30  # every 30th file also goes through a .mid file (writing is the slow part)
REFERENCE_EVERY = 100  # every 100th file is also read by the plain-Python mido reader


@functools.cache
def corpus_files() -> list[Path]:
    return find_midi_files(CORPUS_DIR)


def _round_trip(job: tuple[str, bool]) -> tuple[str, str | None]:
    """Worker: (path, None) when the file round-trips, else (path, what went wrong)."""
    path, through_file = job
    try:
        notes = midi_bytes_to_arrays(Path(path).read_bytes())
    except MidiReadError as exc:
        return path, f"unreadable: {exc}"
    ids = arrays_to_ids(notes)
    decoded = ids_to_arrays(ids)
    binned = np.array([bin_to_velocity(velocity_to_bin(v)) for v in notes.velocity.tolist()])
    if not (np.array_equal(decoded.pitch, notes.pitch)
            and np.array_equal(decoded.start_step, notes.start_step)
            and np.array_equal(decoded.end_step, notes.end_step)
            and np.array_equal(decoded.velocity, binned)):
        return path, "decoded notes differ from the notes read"
    if not np.array_equal(arrays_to_ids(decoded), ids):
        return path, "encode(decode(ids)) != ids"
    if through_file:
        with TemporaryDirectory() as scratch:
            written = ids_to_midi_file(ids, Path(scratch) / "copy.mid")
            if not np.array_equal(midi_file_to_ids(written), ids):
                return path, "ids -> .mid -> ids changed the ids"
    return path, None


def test_every_corpus_file_round_trips():
    files = corpus_files()
    assert files, f"no MIDI files in {CORPUS_DIR}"
    jobs = [(str(path), i % WRITE_EVERY == 0) for i, path in enumerate(files)]
    with ProcessPoolExecutor(2) as pool:
        results = list(pool.map(_round_trip, jobs, chunksize=64))
    unreadable = [(p, why) for p, why in results if why and why.startswith("unreadable")]
    failures = [(p, why) for p, why in results if why and not why.startswith("unreadable")]
    assert failures == []
    assert len(unreadable) <= len(files) // 100, unreadable[:10]


@pytest.mark.parametrize("index", range(0, 3005, REFERENCE_EVERY))
def test_sampled_corpus_files_match_an_independent_reading(index):
    files = corpus_files()
    if index >= len(files):
        pytest.skip("corpus has fewer files")
    path = files[index]
    decoded = arrays_to_tuples(ids_to_arrays(midi_file_to_ids(path)))
    expected = [(p, bin_to_velocity(velocity_to_bin(v)), s, e) for p, v, s, e in
                read_reference(path)]
    assert_close(decoded, expected)
