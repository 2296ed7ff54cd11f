"""The one place the chain is assembled: MIDI file -> notes -> token ids, and back.

Each stage lives in its own module; this file only composes them.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .events import (
    NoteArrays,
    arrays_to_ids,
    ids_to_arrays,
    ids_to_arrays_with_positions,
    ids_until_seconds,
    wrap_piece,
)
from .midi_io import (
    MidiReadError,
    arrays_to_midi_bytes,
    arrays_to_midi_file,
    midi_bytes_to_arrays,
)
from .vocab import (
    START_ID,
    quantise_seconds,
    seconds_to_steps,
    shift_steps,
    steps_to_seconds,
)

# Limits of a corpus (preprocess, evaluate), so that one absurd file cannot swamp it: a longer
# piece is skipped, a longer note cut to this length, each with its reason in the report. The
# real corpus's longest piece is 30 minutes and its longest note 5.8 minutes.
MAX_PIECE_SECONDS = 3 * 3600.0
MAX_NOTE_SECONDS = 600.0
# The largest MIDI file read (the real corpus's largest is 0.3 MB): a bigger one is refused
# before it is read, as a device or FIFO is (`/dev/zero` never ends).
MAX_MIDI_BYTES = 16 * 2**20


def read_midi_bytes(path: str | Path) -> bytes:
    """The bytes of a MIDI file, refused (MidiReadError) before reading when it is not a regular
    file or is over MAX_MIDI_BYTES; OSError where it cannot be read."""
    path = Path(path)
    if not stat.S_ISREG(os.stat(path).st_mode):  # before opening: a FIFO's open would wait
        raise MidiReadError("not a regular file (a device, FIFO or socket)")
    with path.open("rb") as handle:
        info = os.fstat(handle.fileno())
        if info.st_size > MAX_MIDI_BYTES:
            raise MidiReadError(f"too large: {info.st_size / 2**20:,.1f} MB (the limit is "
                                f"{MAX_MIDI_BYTES // 2**20} MB)")
        data = handle.read(MAX_MIDI_BYTES + 1)
    if len(data) > MAX_MIDI_BYTES:  # it grew while being read
        raise MidiReadError(f"too large: over {MAX_MIDI_BYTES // 2**20} MB")
    if not data:
        raise MidiReadError("empty file (0 bytes)")
    return data


def midi_file_to_ids(path: str | Path, *, wrap: bool = False) -> np.ndarray:
    """Token ids (uint16) of a `.mid` file; with `wrap`, framed by START and END. A piece over
    MAX_PIECE_SECONDS is refused before it is encoded (MidiReadError)."""
    ids = arrays_to_ids(_not_too_long(_file_to_arrays(path)))
    return wrap_piece(ids) if wrap else ids


def _file_to_arrays(path: str | Path) -> NoteArrays:
    try:
        return midi_bytes_to_arrays(read_midi_bytes(path))
    except OSError as exc:
        raise MidiReadError(f"cannot read file: {exc.strerror or exc}") from exc


def _not_too_long(notes: NoteArrays) -> NoteArrays:
    seconds = float(steps_to_seconds(notes.end_step.max())) if len(notes) else 0.0
    if seconds > MAX_PIECE_SECONDS:
        raise MidiReadError(f"too long: {_duration(seconds)} of music (the limit is "
                            f"{_duration(MAX_PIECE_SECONDS)})")
    return notes


def notes_until_seconds(notes: NoteArrays, seconds: float) -> NoteArrays:
    """The notes that `ids_until_seconds(ids, seconds)` keeps of their ids, with ends past the
    cut brought just past it (those NOTE_OFFs are cut anyway): what encoding a primer needs,
    however long the rest of the file lasts."""
    cut = int(quantise_seconds(seconds))
    keep = notes.start_step <= cut
    return NoteArrays(notes.pitch[keep], notes.velocity[keep], notes.start_step[keep],
                      np.minimum(notes.end_step[keep], cut + 1))


def midi_bytes_to_ids(data: bytes, *, wrap: bool = False) -> np.ndarray:
    ids = arrays_to_ids(midi_bytes_to_arrays(data))
    return wrap_piece(ids) if wrap else ids


class MidiPiece(NamedTuple):
    """A MIDI file read for a corpus: its ids, or the reason it is unusable (never both)."""

    sha1: str  # of the file's bytes; "" when the file could not be read
    ids: np.ndarray | None  # START ... END, uint16
    reason: str | None  # why the file was skipped, for a report
    note: str | None = None  # what the limits changed in a piece that was read, for a report


def read_midi_piece(path: str | Path) -> MidiPiece:
    """Read one file of a folder being encoded or scored. Never raises: one bad file (unreadable,
    empty, not MIDI, or one that crashes the parser) must not stop the whole folder. The corpus
    limits apply (`within_limits`)."""
    try:
        data = read_midi_bytes(path)
    except OSError as exc:
        return MidiPiece("", None, f"cannot read file: {exc.strerror or exc}")
    except MidiReadError as exc:
        return MidiPiece("", None, str(exc))
    return MidiPiece(hashlib.sha1(data).hexdigest(), *_piece_or_reason(data))


def _piece_or_reason(data: bytes) -> tuple[np.ndarray | None, str | None, str | None]:
    """(ids, None, note) or (None, reason, None)."""
    if not data:
        return None, "empty file (0 bytes)", None
    try:
        notes, note = within_limits(midi_bytes_to_arrays(data))
        return wrap_piece(arrays_to_ids(notes)), None, note
    except MidiReadError as exc:
        return None, str(exc), None
    except Exception as exc:  # noqa: BLE001 - a bad file must never stop the run
        return None, f"unreadable MIDI: {type(exc).__name__}: {exc}", None


def within_limits(notes: NoteArrays) -> tuple[NoteArrays, str | None]:
    """Notes cut at MAX_NOTE_SECONDS, with a note saying how many were (None if none), or
    MidiReadError for a piece longer than MAX_PIECE_SECONDS."""
    most = int(quantise_seconds(MAX_NOTE_SECONDS))
    lengths = notes.end_step - notes.start_step
    note = None
    if len(notes) and lengths.max() > most:
        note = (f"{int((lengths > most).sum())} note(s) longer than "
                f"{_duration(MAX_NOTE_SECONDS)} cut to that length (the longest was "
                f"{_duration(steps_to_seconds(lengths.max()))})")
        notes = NoteArrays(notes.pitch, notes.velocity, notes.start_step,
                           np.minimum(notes.end_step, notes.start_step + most))
    return _not_too_long(notes), note


def _duration(seconds: float) -> str:
    """'45 s', '10 min', '77.7 h'."""
    if seconds >= 3600:
        return f"{seconds / 3600:,.1f} h".replace(".0 h", " h")
    if seconds >= 60:
        return f"{seconds / 60:.1f} min".replace(".0 min", " min")
    return f"{seconds:.2f} s"


def ids_to_midi_file(ids, path: str | Path, bpm: float = 120.0) -> Path:
    """Decode any id sequence (model output included) and write it as a piano `.mid`."""
    return arrays_to_midi_file(ids_to_arrays(ids), path, bpm=bpm)


def ids_to_midi_bytes(ids, bpm: float = 120.0) -> bytes:
    """The piano `.mid` any id sequence decodes to, as bytes."""
    return arrays_to_midi_bytes(ids_to_arrays(ids), bpm=bpm)


def _notes_between(ids, first: int, stop: int) -> NoteArrays:
    """The notes of `ids` whose NOTE_ON is at a position in [first, stop)."""
    notes, positions = ids_to_arrays_with_positions(ids)
    keep = (positions >= first) & (positions < stop)
    return NoteArrays(notes.pitch[keep], notes.velocity[keep], notes.start_step[keep],
                      notes.end_step[keep])


def continuation_to_midi_bytes(row, primer_len: int, source: bytes | None = None,
                               bpm: float = 120.0) -> bytes:
    """A generated `row` as a `.mid`: with the `source` file of its primer, that file's own
    events up to the primer's end (its tempo map, meter, tracks) and the new notes after them
    (`midi_edit.continue_midi_bytes`); without one, a piano track at `bpm`."""
    from .midi_edit import continue_midi_bytes

    if source is None:
        return ids_to_midi_bytes(row, bpm)
    row = np.asarray(row, dtype=np.int64)
    new = _notes_between(row, primer_len, len(row))
    return continue_midi_bytes(source, new, int(shift_steps(row[:primer_len]).sum()))


def infill_to_midi_bytes(source: bytes, ids, middle, start_s: float, end_s: float) -> bytes:
    """The `source` file with the notes struck in [start_s, end_s) replaced by those `middle`
    strikes (`infilling.infill` of `ids`, the file's ids); every other event kept
    (`midi_edit.infill_midi_bytes`)."""
    from .fim import cut_at_steps
    from .midi_edit import infill_midi_bytes

    t1, t2 = seconds_to_steps(start_s), seconds_to_steps(end_s)
    cut = cut_at_steps(ids, t1, t2)
    head = len(cut.header) + len(cut.prefix)
    new = _notes_between(np.concatenate([cut.header, cut.prefix, middle, cut.suffix]), head,
                         head + len(middle))
    return infill_midi_bytes(source, new, t1, t2)


def midi_file_to_primer(path: str | Path, seconds: float | None = None) -> np.ndarray:
    """Primer ids (START + events) from the first `seconds` of a `.mid` file."""
    notes = _file_to_arrays(path)
    if seconds is None:
        ids = arrays_to_ids(_not_too_long(notes))
    else:
        ids = ids_until_seconds(arrays_to_ids(notes_until_seconds(notes, seconds)), seconds)
    return np.concatenate([[START_ID], ids]).astype(np.int64)
