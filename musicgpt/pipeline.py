"""The one place the chain is assembled: MIDI file -> notes -> token ids, and back.

Each stage lives in its own module; this file only composes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .events import arrays_to_ids, ids_to_arrays, wrap_piece
from .midi_io import arrays_to_midi_file, midi_bytes_to_arrays, midi_file_to_arrays


def midi_file_to_ids(path: str | Path, *, wrap: bool = False) -> np.ndarray:
    """Token ids (uint16) of a `.mid` file; with `wrap`, framed by START and END."""
    ids = arrays_to_ids(midi_file_to_arrays(path))
    return wrap_piece(ids) if wrap else ids


def midi_bytes_to_ids(data: bytes, *, wrap: bool = False) -> np.ndarray:
    ids = arrays_to_ids(midi_bytes_to_arrays(data))
    return wrap_piece(ids) if wrap else ids


def ids_to_midi_file(ids, path: str | Path) -> Path:
    """Decode any id sequence (model output included) and write it as a piano `.mid`."""
    return arrays_to_midi_file(ids_to_arrays(ids), path)


def ids_to_seconds(ids) -> float:
    """Length of the music the ids describe: the sum of their time shifts, in seconds."""
    from .vocab import STEP_MS, TIME_SHIFT_OFFSET, VELOCITY_OFFSET

    ids = np.asarray(ids, dtype=np.int64)
    shifts = ids[(ids >= TIME_SHIFT_OFFSET) & (ids < VELOCITY_OFFSET)] - TIME_SHIFT_OFFSET + 1
    return float(shifts.sum()) * STEP_MS / 1000.0


def ids_until_seconds(ids, seconds: float) -> np.ndarray:
    """The prefix of `ids` covering the first `seconds` of music (sounding notes stay open)."""
    from .vocab import STEP_MS, TIME_SHIFT_OFFSET, VELOCITY_OFFSET

    ids = np.asarray(ids, dtype=np.int64)
    is_shift = (ids >= TIME_SHIFT_OFFSET) & (ids < VELOCITY_OFFSET)
    elapsed = np.cumsum(np.where(is_shift, ids - TIME_SHIFT_OFFSET + 1, 0)) * STEP_MS / 1000.0
    over = np.flatnonzero(elapsed > seconds + 1e-9)
    return ids[: over[0]] if len(over) else ids


def midi_file_to_primer(path: str | Path, seconds: float | None = None) -> np.ndarray:
    """Primer ids (START + events) from the first `seconds` of a `.mid` file."""
    from .vocab import START_ID

    ids = midi_file_to_ids(path)
    if seconds is not None:
        ids = ids_until_seconds(ids, seconds)
    return np.concatenate([[START_ID], ids]).astype(np.int64)
