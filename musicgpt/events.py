"""Notes <-> performance-event token ids: quantisation, the overlap rule, and a total decoder.

Pure: numpy only, no torch, no MIDI files. Times are in steps of `vocab.STEP_MS` (10 ms).

Encoding order at one time step: NOTE_OFFs (by pitch), then for each NOTE_ON (by pitch) a VELOCITY
event when its bin differs from the previous onset's, then the NOTE_ON. A gap longer than 1 s is
written as full 1000 ms shifts plus a remainder. A note struck again while it still sounds ends at
the new onset (one rule, applied both when quantising and when decoding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .vocab import (
    END_ID,
    MAX_SHIFT_STEPS,
    NOTE_OFF_OFFSET,
    NOTE_ON_OFFSET,
    PAD_ID,
    START_ID,
    STEP_MS,
    TIME_SHIFT_OFFSET,
    VELOCITY_OFFSET,
    bin_to_velocity,
    velocity_to_bin,
)

MAX_DANGLING_NOTE_S = 10.0  # a note the decoder never sees released is cut at this length


@dataclass(frozen=True)
class Note:
    """One piano note; pedal already folded into `end_s`."""

    pitch: int
    velocity: int
    start_s: float
    end_s: float


@dataclass(frozen=True)
class NoteArrays:
    """Column form of a note list, in 10 ms steps, as the encoder wants it."""

    pitch: np.ndarray  # int, 0..127
    velocity: np.ndarray  # int, 1..127
    start_step: np.ndarray  # int
    end_step: np.ndarray  # int, > start_step

    def __len__(self) -> int:
        return len(self.pitch)


def notes_to_arrays(notes: list[Note]) -> NoteArrays:
    return seconds_to_steps(
        np.array([n.pitch for n in notes], dtype=np.int64),
        np.array([n.velocity for n in notes], dtype=np.int64),
        np.array([n.start_s for n in notes], dtype=np.float64),
        np.array([n.end_s for n in notes], dtype=np.float64),
    )


def arrays_to_notes(arrays: NoteArrays) -> list[Note]:
    scale = STEP_MS / 1000.0
    return [
        Note(int(p), int(v), round(int(s) * scale, 6), round(int(e) * scale, 6))
        for p, v, s, e in zip(arrays.pitch, arrays.velocity, arrays.start_step, arrays.end_step,
                              strict=True)
    ]


def seconds_to_steps(pitch, velocity, start_s, end_s) -> NoteArrays:
    """Quantise to 10 ms steps, give every note at least one step, and resolve overlaps.

    A same-pitch note that still sounds when the pitch is struck again ends at the new onset;
    of two onsets of one pitch in the same step only the later-listed survives.
    """
    steps_per_s = 1000.0 / STEP_MS
    start = np.rint(np.asarray(start_s, dtype=np.float64) * steps_per_s).astype(np.int64)
    end = np.rint(np.asarray(end_s, dtype=np.float64) * steps_per_s).astype(np.int64)
    start = np.maximum(start, 0)
    end = np.maximum(end, start + 1)
    pitch = np.asarray(pitch, dtype=np.int64)
    velocity = np.clip(np.asarray(velocity, dtype=np.int64), 1, 127)
    return resolve_overlaps(NoteArrays(pitch, velocity, start, end))


def resolve_overlaps(notes: NoteArrays) -> NoteArrays:
    """Apply the re-strike rule to quantised notes; returns notes sorted by (start, pitch)."""
    if len(notes) == 0:
        return notes
    order = np.lexsort((np.arange(len(notes)), notes.start_step, notes.pitch))
    pitch, start = notes.pitch[order], notes.start_step[order]
    end = notes.end_step[order].copy()
    same_pitch_next = np.append(pitch[1:] == pitch[:-1], False)
    next_start = np.append(start[1:], np.iinfo(np.int64).max)
    end = np.where(same_pitch_next, np.minimum(end, next_start), end)
    keep = end > start
    order = order[keep]
    pitch, start, end = pitch[keep], start[keep], end[keep]
    by_time = np.lexsort((pitch, start))
    return NoteArrays(pitch[by_time], notes.velocity[order][by_time], start[by_time], end[by_time])


def arrays_to_ids(notes: NoteArrays) -> np.ndarray:
    """Encode quantised, overlap-free notes as token ids (uint16), without START/END."""
    n = len(notes)
    if n == 0:
        return np.zeros(0, dtype=np.uint16)
    times = np.concatenate([notes.end_step, notes.start_step])
    is_on = np.concatenate([np.zeros(n, bool), np.ones(n, bool)])
    pitches = np.concatenate([notes.pitch, notes.pitch])
    bins = np.concatenate([np.full(n, -1), (notes.velocity - 1) // 4]).clip(-1, 31)
    order = np.lexsort((pitches, is_on, times))
    times, is_on, pitches, bins = times[order], is_on[order], pitches[order], bins[order]

    on_bins = bins[is_on]
    bin_changed = np.ones(len(on_bins), bool)
    bin_changed[1:] = on_bins[1:] != on_bins[:-1]
    needs_velocity = np.zeros(len(times), bool)
    needs_velocity[is_on] = bin_changed

    gap = np.diff(times, prepend=0)
    full_shifts, remainder = np.divmod(gap, MAX_SHIFT_STEPS)
    n_shifts = full_shifts + (remainder > 0)
    length = n_shifts + needs_velocity + 1
    event_pos = np.cumsum(length) - 1

    ids = np.full(int(event_pos[-1]) + 1, TIME_SHIFT_OFFSET + MAX_SHIFT_STEPS - 1, dtype=np.int64)
    has_rem = remainder > 0
    ids[(event_pos - needs_velocity - 1)[has_rem]] = TIME_SHIFT_OFFSET + remainder[has_rem] - 1
    ids[(event_pos - 1)[needs_velocity]] = VELOCITY_OFFSET + bins[needs_velocity]
    ids[event_pos] = np.where(is_on, NOTE_ON_OFFSET, NOTE_OFF_OFFSET) + pitches
    return ids.astype(np.uint16)


def notes_to_ids(notes: list[Note]) -> np.ndarray:
    return arrays_to_ids(notes_to_arrays(notes))


def ids_to_arrays(ids, max_dangling_steps: int | None = None) -> NoteArrays:
    """Decode any id sequence to notes; never raises on model output.

    Ignored: NOTE_OFF with no sounding note, PAD, START, ids outside the vocabulary; decoding stops
    at END. A re-struck pitch closes the sounding note at the new onset. Notes never released end
    with the sequence, cut at `MAX_DANGLING_NOTE_S`. Zero-length notes are dropped.
    """
    if max_dangling_steps is None:
        max_dangling_steps = int(MAX_DANGLING_NOTE_S * 1000 / STEP_MS)
    velocity = bin_to_velocity(velocity_to_bin(64))
    sounding: dict[int, tuple[int, int]] = {}  # pitch -> (start step, velocity)
    out: list[tuple[int, int, int, int]] = []
    step = 0
    for token in np.asarray(ids, dtype=np.int64).tolist():
        if token < NOTE_OFF_OFFSET:
            if token < 0:
                continue
            if token in sounding:
                _close(out, token, sounding.pop(token), step)
            sounding[token] = (step, velocity)
        elif token < TIME_SHIFT_OFFSET:
            pitch = token - NOTE_OFF_OFFSET
            if pitch in sounding:
                _close(out, pitch, sounding.pop(pitch), step)
        elif token < VELOCITY_OFFSET:
            step += token - TIME_SHIFT_OFFSET + 1
        elif token < PAD_ID:
            velocity = bin_to_velocity(token - VELOCITY_OFFSET)
        elif token == END_ID:
            break
    for pitch, (start, vel) in sounding.items():
        _close(out, pitch, (start, vel), min(step, start + max_dangling_steps))
    if not out:
        empty = np.zeros(0, dtype=np.int64)
        return NoteArrays(empty, empty, empty, empty)
    pitch, vel, start, end = (np.array(col, dtype=np.int64) for col in zip(*out, strict=True))
    order = np.lexsort((pitch, start))
    return NoteArrays(pitch[order], vel[order], start[order], end[order])


def _close(out: list, pitch: int, opened: tuple[int, int], end_step: int) -> None:
    start, velocity = opened
    if end_step > start:
        out.append((pitch, velocity, start, end_step))


def ids_to_notes(ids) -> list[Note]:
    return arrays_to_notes(ids_to_arrays(ids))


def wrap_piece(ids: np.ndarray) -> np.ndarray:
    """START + ids + END, the form a whole piece takes in training data."""
    return np.concatenate([[START_ID], np.asarray(ids, dtype=np.int64), [END_ID]]).astype(np.uint16)


def grammar_errors(ids) -> list[tuple[int, str]]:
    """(position, reason) for each event that cannot be right in a piece.

    Checked: NOTE_OFF of a pitch not sounding, NOTE_ON of a pitch already sounding, START or PAD
    after the first position, anything after END.
    """
    errors: list[tuple[int, str]] = []
    sounding: set[int] = set()
    ended = False
    for pos, token in enumerate(np.asarray(ids, dtype=np.int64).tolist()):
        if ended:
            errors.append((pos, "event after END"))
        elif token < NOTE_OFF_OFFSET:
            if token in sounding:
                errors.append((pos, "NOTE_ON of a sounding pitch"))
            sounding.add(token)
        elif token < TIME_SHIFT_OFFSET:
            if token - NOTE_OFF_OFFSET not in sounding:
                errors.append((pos, "NOTE_OFF of a silent pitch"))
            sounding.discard(token - NOTE_OFF_OFFSET)
        elif token == PAD_ID:
            errors.append((pos, "PAD inside a piece"))
        elif token == START_ID and pos > 0:
            errors.append((pos, "START inside a piece"))
        elif token == END_ID:
            ended = True
    return errors
