"""The one place the chain is assembled: MIDI file -> notes -> token ids, and back.

Each stage lives in its own module; this file only composes them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .events import (
    arrays_to_ids,
    ids_to_arrays,
    ids_to_seconds,  # noqa: F401 - re-exported; it lives in events now
    ids_until_seconds,
    wrap_piece,
)
from .midi_io import MidiReadError, arrays_to_midi_file, midi_bytes_to_arrays, midi_file_to_arrays


def midi_file_to_ids(path: str | Path, *, wrap: bool = False) -> np.ndarray:
    """Token ids (uint16) of a `.mid` file; with `wrap`, framed by START and END."""
    ids = arrays_to_ids(midi_file_to_arrays(path))
    return wrap_piece(ids) if wrap else ids


def midi_bytes_to_ids(data: bytes, *, wrap: bool = False) -> np.ndarray:
    ids = arrays_to_ids(midi_bytes_to_arrays(data))
    return wrap_piece(ids) if wrap else ids


class MidiPiece(NamedTuple):
    """A MIDI file read for a corpus: its ids, or the reason it is unusable (never both)."""

    sha1: str  # of the file's bytes; "" when the file could not be read
    ids: np.ndarray | None  # START ... END, uint16
    reason: str | None  # why the file was skipped, for a report


def read_midi_piece(path: str | Path) -> MidiPiece:
    """Read one file of a folder being encoded or scored. Never raises: one bad file (unreadable,
    empty, not MIDI, or one that crashes the parser) must not stop the whole folder."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return MidiPiece("", None, f"cannot read file: {exc.strerror or exc}")
    ids, reason = _piece_or_reason(data)
    return MidiPiece(hashlib.sha1(data).hexdigest(), ids, reason)


def _piece_or_reason(data: bytes) -> tuple[np.ndarray | None, str | None]:
    if not data:
        return None, "empty file (0 bytes)"
    try:
        return midi_bytes_to_ids(data, wrap=True), None
    except MidiReadError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - a bad file must never stop the run
        return None, f"unreadable MIDI: {type(exc).__name__}: {exc}"


def ids_to_midi_file(ids, path: str | Path) -> Path:
    """Decode any id sequence (model output included) and write it as a piano `.mid`."""
    return arrays_to_midi_file(ids_to_arrays(ids), path)


def midi_file_to_primer(path: str | Path, seconds: float | None = None) -> np.ndarray:
    """Primer ids (START + events) from the first `seconds` of a `.mid` file."""
    from .vocab import START_ID

    ids = midi_file_to_ids(path)
    if seconds is not None:
        ids = ids_until_seconds(ids, seconds)
    return np.concatenate([[START_ID], ids]).astype(np.int64)
