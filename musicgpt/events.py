"""Notes <-> performance-event token ids: quantisation, the overlap rule, a total decoder, the
grammar (which token may come next) and the music length of ids.

Pure: numpy only, no torch, no MIDI files. Times are in steps of `vocab.STEP_MS` (10 ms). Ids are
read only through `vocab` (kinds, pitches, steps, velocities), never by their offsets, so a new
special token is handled by its kind: the decoder ignores it and the grammar forbids it mid-piece.

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
    KIND,
    N_PITCHES,
    NO_KIND,
    START_ID,
    VOCAB_SIZE,
    EventType,
    bin_to_velocity,
    id_to_name,
    interleave_shifts,
    is_event,
    is_note,
    is_note_off,
    is_shift,
    is_style,
    is_velocity,
    kind_of,
    note_off_id,
    note_on_id,
    note_pitch,
    quantise_seconds,
    shift_steps,
    steps_to_seconds,
    velocities_to_bins,
    velocity_bin_of,
    velocity_id,
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
    starts = steps_to_seconds(arrays.start_step).tolist()
    ends = steps_to_seconds(arrays.end_step).tolist()
    return [
        Note(int(p), int(v), round(s, 6), round(e, 6))
        for p, v, s, e in zip(arrays.pitch.tolist(), arrays.velocity.tolist(), starts, ends,
                              strict=True)
    ]


def seconds_to_steps(pitch, velocity, start_s, end_s) -> NoteArrays:
    """Quantise to 10 ms steps, give every note at least one step, and resolve overlaps.

    A same-pitch note that still sounds when the pitch is struck again ends at the new onset;
    of two onsets of one pitch in the same step only the later-listed survives.
    """
    start = np.maximum(quantise_seconds(start_s), 0)
    end = np.maximum(quantise_seconds(end_s), start + 1)
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
    bins = np.concatenate([np.full(n, -1), velocities_to_bins(notes.velocity)])
    order = np.lexsort((pitches, is_on, times))
    times, is_on, pitches, bins = times[order], is_on[order], pitches[order], bins[order]

    on_bins = bins[is_on]
    bin_changed = np.ones(len(on_bins), bool)
    bin_changed[1:] = on_bins[1:] != on_bins[:-1]
    at = np.flatnonzero(is_on)[bin_changed]  # the onsets that state their velocity first

    tokens = np.where(is_on, note_on_id(pitches), note_off_id(pitches))
    tokens = np.insert(tokens, at, velocity_id(bins[at]))
    gaps = np.diff(times, prepend=0)
    gaps = np.insert(gaps, at, gaps[at])  # the VELOCITY takes its note's gap,
    gaps[at + np.arange(len(at)) + 1] = 0  # and the note follows it at once
    return interleave_shifts(gaps, tokens).astype(np.uint16)


def notes_to_ids(notes: list[Note]) -> np.ndarray:
    return arrays_to_ids(notes_to_arrays(notes))


# --- decoding ---------------------------------------------------------------------------------

_ON, _OFF, _SHIFT, _VELOCITY, _START, _END = (KIND[etype] for etype in (
    EventType.NOTE_ON, EventType.NOTE_OFF, EventType.TIME_SHIFT, EventType.VELOCITY,
    EventType.START, EventType.END))
_DEFAULT_VELOCITY = bin_to_velocity(velocity_to_bin(64))


def _decode_table() -> list[tuple[int, int]]:
    """(kind, value) of every id, then one (NO_KIND, 0) row for all ids outside the vocabulary;
    value: a note's pitch, a shift's steps, a VELOCITY's velocity, else 0."""
    ids = np.arange(VOCAB_SIZE)
    velocity = np.zeros(VOCAB_SIZE, dtype=np.int64)
    marks = is_velocity(ids)
    velocity[marks] = [bin_to_velocity(b) for b in velocity_bin_of(ids[marks]).tolist()]
    value = np.select([is_note(ids), is_shift(ids)], [note_pitch(ids), shift_steps(ids)], velocity)
    return [*zip(kind_of(ids).tolist(), value.tolist(), strict=True), (NO_KIND, 0)]


_DECODE = _decode_table()


def ids_to_arrays(ids, max_dangling_steps: int | None = None) -> NoteArrays:
    """Decode any id sequence to notes; never raises on model output.

    Ignored: NOTE_OFF with no sounding note, PAD, START, every other special and ids outside the
    vocabulary; decoding stops at END. A re-struck pitch closes the sounding note at the new
    onset. Notes never released end with the sequence, cut at `MAX_DANGLING_NOTE_S`. Zero-length
    notes are dropped.
    """
    return ids_to_arrays_with_positions(ids, max_dangling_steps)[0]


def ids_to_arrays_with_positions(ids, max_dangling_steps: int | None = None,
                                 ) -> tuple[NoteArrays, np.ndarray]:
    """`ids_to_arrays`, and the position in `ids` of each decoded note's NOTE_ON token."""
    if max_dangling_steps is None:
        max_dangling_steps = int(quantise_seconds(MAX_DANGLING_NOTE_S))
    ids = one_piece(ids)
    rows = np.where((ids >= 0) & (ids < VOCAB_SIZE), ids, VOCAB_SIZE)  # _DECODE's rows
    out = _decode(rows.tolist(), max_dangling_steps)
    if not out:
        empty = np.zeros(0, dtype=np.int64)
        return NoteArrays(empty, empty, empty, empty), empty
    pitch, vel, start, end, pos = (np.array(col, dtype=np.int64) for col in zip(*out, strict=True))
    order = np.lexsort((pitch, start))
    return NoteArrays(pitch[order], vel[order], start[order], end[order]), pos[order]


def one_piece(ids) -> np.ndarray:
    """`ids` as a 1-D int64 array: a column or row of one piece, (N, 1) or (1, N), is taken as
    the piece; ValueError for several pieces at once, (B, N), which have to be decoded one by
    one."""
    ids = np.asarray(ids)
    if ids.ndim != 1 and ids.size > max(ids.shape, default=1):
        raise ValueError(f"ids of shape {ids.shape} hold several pieces; decode one row at a time")
    return ids.reshape(-1).astype(np.int64)


def _decode(rows: list[int], max_dangling_steps: int) -> list[tuple[int, int, int, int, int]]:
    """(pitch, velocity, start, end, NOTE_ON position) of each note; a plain loop over `_DECODE`
    rows, as model output is decoded often."""
    table, on, off, shift, vel, end = _DECODE, _ON, _OFF, _SHIFT, _VELOCITY, _END
    velocity, step = _DEFAULT_VELOCITY, 0
    sounding: dict[int, tuple[int, int, int]] = {}  # pitch -> (start step, velocity, position)
    out: list[tuple[int, int, int, int, int]] = []
    for pos, row in enumerate(rows):
        kind, value = table[row]
        if kind == on or kind == off:
            opened = sounding.pop(value, None)
            if opened is not None:
                _close(out, value, opened, step)
            if kind == on:
                sounding[value] = (step, velocity, pos)
        elif kind == shift:
            step += value
        elif kind == vel:
            velocity = value
        elif kind == end:
            break
    for pitch, opened in sounding.items():
        _close(out, pitch, opened, min(step, opened[0] + max_dangling_steps))
    return out


def _close(out: list, pitch: int, opened: tuple[int, int, int], end_step: int) -> None:
    start, velocity, pos = opened
    if end_step > start:
        out.append((pitch, velocity, start, end_step, pos))


def ids_to_notes(ids) -> list[Note]:
    return arrays_to_notes(ids_to_arrays(ids))


def wrap_piece(ids: np.ndarray) -> np.ndarray:
    """START + ids + END, the form a whole piece takes in training data."""
    return np.concatenate([[START_ID], np.asarray(ids, dtype=np.int64), [END_ID]]).astype(np.uint16)


# --- music length -----------------------------------------------------------------------------

def ids_to_seconds(ids) -> float:
    """Length of the music the ids describe: the sum of their time shifts, in seconds."""
    return float(steps_to_seconds(shift_steps(ids).sum()))


def ids_until_seconds(ids, seconds: float) -> np.ndarray:
    """The prefix of `ids` covering the first `seconds` of music (sounding notes stay open)."""
    ids = np.asarray(ids, dtype=np.int64)
    elapsed = steps_to_seconds(np.cumsum(shift_steps(ids)))
    over = np.flatnonzero(elapsed > seconds + 1e-9)
    return ids[: over[0]] if len(over) else ids


# --- the grammar --------------------------------------------------------------------------------

class NoteGrammar:
    """Which token may come next in each of `batch` pieces, advanced one token per row at a time.

    The rule: NOTE_ON only for a silent pitch, NOTE_OFF only for a sounding one, START only first,
    a STYLE token only right after START (with `styles`; a sampler leaves them out: a style is
    asked for, not drawn), nothing after END, and no other special ever (PAD, and any id that is
    neither a music event nor END, which covers specials added later). `allowed` (batch,
    vocab_size) is the rule as a mask, `sounding` (batch, 128) the pitches that sound, `ended`
    (batch,) the rows past END; `why_not` names the broken rule. `vocab_size` is the model's:
    ids the vocabulary does not know are never allowed.
    """

    def __init__(self, batch: int, vocab_size: int = VOCAB_SIZE, styles: bool = True):
        ids = np.arange(vocab_size)
        kinds = kind_of(ids)
        self._style_ids = np.flatnonzero(is_style(ids)) if styles else np.zeros(0, np.int64)
        self._kinds, self._pitch = kinds.tolist(), note_pitch(ids).tolist()
        pitches = np.arange(N_PITCHES)
        self._on_id, self._off_id = note_on_id(pitches).tolist(), note_off_id(pitches).tolist()
        self._start_ids = np.flatnonzero(kinds == _START)
        first = (is_event(ids) & ~is_note_off(ids)) | (kinds == _END) | (kinds == _START)
        self.allowed = np.repeat(first[None], batch, axis=0)
        self.sounding = np.zeros((batch, N_PITCHES), dtype=bool)
        self.ended = np.zeros(batch, dtype=bool)
        self.n_ended = 0  # rows past END (a plain int: cheaper to test than ended.any())
        self.position = 0  # tokens observed per row

    def observe(self, tokens) -> None:
        """Advance each row by its token (any id: one the rule forbids leaves the row as it was,
        END ends it)."""
        tokens = tokens.tolist() if isinstance(tokens, np.ndarray) else list(tokens)
        if self.position == 0:
            self.allowed[:, self._start_ids] = False
            started = [row for row, token in enumerate(tokens) if token in self._start_ids]
            self.allowed[np.ix_(started, self._style_ids)] = True  # the header: START, STYLE
        elif self.position == 1:
            self.allowed[:, self._style_ids] = False
        self.position += 1
        for row, token in enumerate(tokens):
            if self.n_ended and self.ended[row]:
                continue
            kind = self._kinds[token] if 0 <= token < len(self._kinds) else NO_KIND
            if kind == _ON or kind == _OFF:
                self._sound(row, self._pitch[token], kind == _ON)
            elif kind == _END:
                self.ended[row], self.allowed[row] = True, False
                self.n_ended += 1

    def _sound(self, row: int, pitch: int, on: bool) -> None:
        self.sounding[row, pitch] = on
        self.allowed[row, self._on_id[pitch]] = not on
        self.allowed[row, self._off_id[pitch]] = on

    def why_not(self, row: int, token: int) -> str | None:
        """Why `token` may not come next in `row` (None if it may)."""
        if self.ended[row]:
            return "event after END"
        kind = self._kinds[token] if 0 <= token < len(self._kinds) else NO_KIND
        if kind == NO_KIND:
            return f"id {token} outside the vocabulary"
        if self.allowed[row, token]:
            return None
        if kind == _ON:
            return "NOTE_ON of a sounding pitch"
        if kind == _OFF:
            return "NOTE_OFF of a silent pitch"
        return f"{id_to_name(token)} inside a piece"


def grammar_errors(ids) -> list[tuple[int, str]]:
    """(position, reason) for each event that cannot be right in a piece, by `NoteGrammar`:
    NOTE_OFF of a pitch not sounding, NOTE_ON of a pitch already sounding, START after the first
    position, PAD or another special anywhere, anything after END."""
    grammar = NoteGrammar(1)
    errors: list[tuple[int, str]] = []
    for pos, token in enumerate(np.asarray(ids, dtype=np.int64).tolist()):
        reason = grammar.why_not(0, token)
        if reason is not None:
            errors.append((pos, reason))
        grammar.observe((token,))
    return errors
