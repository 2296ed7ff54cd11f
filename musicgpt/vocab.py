"""Event <-> token id, the fixed performance-event vocabulary, and readable token names.

Pure: numpy only, no torch, no MIDI. The id layout is one table (`_EVENT_RANGES`) that encoding
and decoding both walk, so the two cannot drift apart; every other module turns ids into numbers
(pitches, 10 ms steps, velocity bins, seconds) through the functions here, never by offsets.

    ids   0..127  NOTE_ON   pitch 0..127
        128..255  NOTE_OFF  pitch 0..127
        256..355  TIME_SHIFT  10 ms .. 1000 ms (value = steps - 1)
        356..387  VELOCITY  32 bins of 4 MIDI velocities
        388 PAD, 389 START, 390 END
        391 FILL_SUFFIX, 392 FILL_MIDDLE      fill-in-the-middle sentinels (see fim.py)
        393..408  STYLE   16 style slots; a checkpoint's config names the ones it uses

Ids 0..390 are the base vocabulary (`BASE_VOCAB_SIZE`); a checkpoint trained before the sentinels
and styles existed has only those, and the samplers fall back accordingly.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import numpy as np

VOCAB_VERSION = 1
STEP_MS = 10
STEPS_PER_S = 1000 // STEP_MS  # time steps in one second
MAX_SHIFT_STEPS = 100
N_VELOCITY_BINS = 32
N_PITCHES = 128


class EventType(enum.Enum):
    NOTE_ON = "NOTE_ON"
    NOTE_OFF = "NOTE_OFF"
    TIME_SHIFT = "TIME_SHIFT"
    VELOCITY = "VELOCITY"
    PAD = "PAD"
    START = "START"
    END = "END"
    FILL_SUFFIX = "FILL_SUFFIX"  # the suffix of a fill-in-the-middle sequence follows
    FILL_MIDDLE = "FILL_MIDDLE"  # the middle follows
    STYLE = "STYLE"


N_STYLES = 16

# The one table of the id layout: (type, number of values), in id order. First ids, offsets and
# the vocabulary size are derived from it; encoding and decoding both walk it.
_EVENT_RANGES: tuple[tuple[EventType, int], ...] = (
    (EventType.NOTE_ON, N_PITCHES),
    (EventType.NOTE_OFF, N_PITCHES),
    (EventType.TIME_SHIFT, MAX_SHIFT_STEPS),
    (EventType.VELOCITY, N_VELOCITY_BINS),
    (EventType.PAD, 1),
    (EventType.START, 1),
    (EventType.END, 1),
    (EventType.FILL_SUFFIX, 1),
    (EventType.FILL_MIDDLE, 1),
    (EventType.STYLE, N_STYLES),
)


def _with_first_ids(ranges) -> tuple[tuple[EventType, int, int], ...]:
    firsts = np.cumsum([0] + [count for _, count in ranges])[:-1]
    return tuple((etype, int(first), count)
                 for (etype, count), first in zip(ranges, firsts, strict=True))


# (type, first id, number of values), in id order.
RANGES: tuple[tuple[EventType, int, int], ...] = _with_first_ids(_EVENT_RANGES)
_OFFSET = {etype: (first, count) for etype, first, count in RANGES}
VOCAB_SIZE = RANGES[-1][1] + RANGES[-1][2]

NOTE_ON_OFFSET = _OFFSET[EventType.NOTE_ON][0]
NOTE_OFF_OFFSET = _OFFSET[EventType.NOTE_OFF][0]
TIME_SHIFT_OFFSET = _OFFSET[EventType.TIME_SHIFT][0]
VELOCITY_OFFSET = _OFFSET[EventType.VELOCITY][0]
PAD_ID = _OFFSET[EventType.PAD][0]
START_ID = _OFFSET[EventType.START][0]
END_ID = _OFFSET[EventType.END][0]
FILL_SUFFIX_ID = _OFFSET[EventType.FILL_SUFFIX][0]
FILL_MIDDLE_ID = _OFFSET[EventType.FILL_MIDDLE][0]
STYLE_OFFSET = _OFFSET[EventType.STYLE][0]
BASE_VOCAB_SIZE = END_ID + 1  # the vocabulary before the sentinels and styles
TOP_SHIFT_ID = TIME_SHIFT_OFFSET + MAX_SHIFT_STEPS - 1  # the longest shift, 1000 ms


# --- kinds: one small int per event type, for per-id lookup tables and dispatch -------------

KIND: dict[EventType, int] = {etype: code for code, etype in enumerate(EventType)}
NO_KIND = -1  # the kind of an id outside the vocabulary
_ID_KINDS = np.repeat([KIND[etype] for etype, _, _ in RANGES], [count for _, _, count in RANGES])


def kind_of(ids) -> np.ndarray:
    """The KIND code of each id's event type; NO_KIND for ids outside the vocabulary."""
    ids = np.asarray(ids, dtype=np.int64)
    inside = (ids >= 0) & (ids < VOCAB_SIZE)
    return np.where(inside, _ID_KINDS[np.where(inside, ids, 0)], NO_KIND)


# --- id arithmetic, vectorised: the only place ids are turned into numbers and back ---------

def _kind(ids, etype: EventType) -> np.ndarray:
    first, count = _OFFSET[etype]
    ids = np.asarray(ids)
    return (ids >= first) & (ids < first + count)


def is_note_on(ids) -> np.ndarray:
    return _kind(ids, EventType.NOTE_ON)


def is_note_off(ids) -> np.ndarray:
    return _kind(ids, EventType.NOTE_OFF)


def is_note(ids) -> np.ndarray:
    """NOTE_ON or NOTE_OFF."""
    return is_note_on(ids) | is_note_off(ids)


def is_shift(ids) -> np.ndarray:
    return _kind(ids, EventType.TIME_SHIFT)


def is_velocity(ids) -> np.ndarray:
    return _kind(ids, EventType.VELOCITY)


def note_pitch(ids) -> np.ndarray:
    """Pitch of NOTE_ON/NOTE_OFF ids (other ids give values outside 0..127)."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.where(is_note_off(ids), ids - NOTE_OFF_OFFSET, ids - NOTE_ON_OFFSET)


def note_on_id(pitch):
    return NOTE_ON_OFFSET + np.asarray(pitch, dtype=np.int64)


def note_off_id(pitch):
    return NOTE_OFF_OFFSET + np.asarray(pitch, dtype=np.int64)


def shift_steps(ids) -> np.ndarray:
    """10 ms steps each id advances time by: 1..100 for TIME_SHIFT ids, 0 for every other id."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.where(is_shift(ids), ids - TIME_SHIFT_OFFSET + 1, 0)


def shift_id(steps):
    """The TIME_SHIFT id of a shift of `steps` (1..MAX_SHIFT_STEPS)."""
    return TIME_SHIFT_OFFSET + np.asarray(steps, dtype=np.int64) - 1


def split_gap(gap_steps) -> tuple[np.ndarray, np.ndarray]:
    """A gap in steps -> (full 1000 ms shifts, remainder steps): the shifts that write it."""
    return np.divmod(np.asarray(gap_steps, dtype=np.int64), MAX_SHIFT_STEPS)


def gap_to_shift_ids(gap_steps: int) -> np.ndarray:
    """The TIME_SHIFT ids that write one gap: full 1000 ms shifts, then the remainder (if any)."""
    full, rest = (int(v) for v in split_gap(max(int(gap_steps), 0)))
    return np.array([TOP_SHIFT_ID] * full + ([int(shift_id(rest))] if rest else []),
                    dtype=np.int64)


def interleave_shifts(gaps, tokens) -> np.ndarray:
    """`tokens`, each after the TIME_SHIFT ids that write its gap (steps since the token before):
    `gap_to_shift_ids` of every gap, each followed by its token, in one vectorised pass."""
    gaps, tokens = np.asarray(gaps, dtype=np.int64), np.asarray(tokens, dtype=np.int64)
    full, rest = split_gap(np.maximum(gaps, 0))
    has_rest = rest > 0
    token_pos = np.cumsum(full + has_rest + 1) - 1
    out = np.full(int(token_pos[-1]) + 1 if len(token_pos) else 0, TOP_SHIFT_ID, dtype=np.int64)
    out[token_pos] = tokens
    out[(token_pos - 1)[has_rest]] = shift_id(rest[has_rest])
    return out


def style_id(slot: int) -> int:
    """The STYLE token of style slot 0..N_STYLES-1."""
    if not 0 <= slot < N_STYLES:
        raise ValueError(f"style slot {slot} outside 0..{N_STYLES - 1}")
    return STYLE_OFFSET + slot


def is_style(ids) -> np.ndarray:
    return _kind(ids, EventType.STYLE)


def is_event(ids) -> np.ndarray:
    """Ids that are music (note, shift, velocity), as opposed to specials and sentinels."""
    return is_note(ids) | is_shift(ids) | is_velocity(ids)


def velocity_bin_of(ids) -> np.ndarray:
    """Velocity bin (0..31) of VELOCITY ids."""
    return np.asarray(ids, dtype=np.int64) - VELOCITY_OFFSET


def velocity_id(velocity_bin):
    return VELOCITY_OFFSET + np.asarray(velocity_bin, dtype=np.int64)


def steps_to_seconds(steps):
    """10 ms steps -> seconds (float or array); whole steps give the nearest float to the decimal
    (7 -> 0.07, not 7 * 0.01 = 0.07000000000000001)."""
    return np.asarray(steps) * STEP_MS / 1000.0


def seconds_to_steps(seconds: float) -> int:
    """Seconds -> the nearest whole number of 10 ms steps."""
    return int(round(float(seconds) * 1000.0 / STEP_MS))


def quantise_seconds(seconds) -> np.ndarray:
    """`seconds_to_steps` over an array (halves round to even), as int64 steps."""
    return np.rint(np.asarray(seconds, dtype=np.float64) * (1000.0 / STEP_MS)).astype(np.int64)


@dataclass(frozen=True)
class Event:
    """One performance event; `value` is a pitch, a shift in steps (1..100), a velocity bin or 0."""

    type: EventType
    value: int = 0

    def __post_init__(self) -> None:
        low, high = _value_range(self.type)
        if not low <= self.value <= high:
            raise ValueError(f"{self.type.value} value {self.value} outside {low}..{high}")


def _value_range(etype: EventType) -> tuple[int, int]:
    _, count = _OFFSET[etype]
    if etype is EventType.TIME_SHIFT:
        return 1, count
    return 0, count - 1


def event_to_id(event: Event) -> int:
    first, _ = _OFFSET[event.type]
    if event.type is EventType.TIME_SHIFT:
        return first + event.value - 1
    return first + event.value


def id_to_event(token_id: int) -> Event:
    for etype, first, count in RANGES:
        if first <= token_id < first + count:
            value = token_id - first
            return Event(etype, value + 1 if etype is EventType.TIME_SHIFT else value)
    raise ValueError(f"token id {token_id} outside 0..{VOCAB_SIZE - 1}")


def velocity_to_bin(velocity: int) -> int:
    """MIDI velocity 1..127 -> bin 0..31 (bins of 4: 1-4, 5-8, ..., 125-127)."""
    return min(N_VELOCITY_BINS - 1, max(0, (int(velocity) - 1) // 4))


def velocities_to_bins(velocity) -> np.ndarray:
    """`velocity_to_bin` over an array."""
    return ((np.asarray(velocity, dtype=np.int64) - 1) // 4).clip(0, N_VELOCITY_BINS - 1)


def bin_to_velocity(velocity_bin: int) -> int:
    """Bin -> the velocity at its top edge (4, 8, ..., 124, 127); velocity_to_bin inverts it."""
    return min(127, (int(velocity_bin) + 1) * 4)


_PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def pitch_to_name(pitch: int) -> str:
    """MIDI pitch -> scientific name, 60 -> 'C4', 0 -> 'C-1'."""
    return f"{_PITCH_CLASSES[pitch % 12]}{pitch // 12 - 1}"


def name_to_pitch(name: str) -> int:
    match = re.fullmatch(r"([A-G]#?)(-?\d+)", name)
    if not match or match.group(1) not in _PITCH_CLASSES:
        raise ValueError(f"not a pitch name: {name!r}")
    pitch = _PITCH_CLASSES.index(match.group(1)) + 12 * (int(match.group(2)) + 1)
    if not 0 <= pitch < N_PITCHES:
        raise ValueError(f"pitch {name!r} outside MIDI range")
    return pitch


def event_to_name(event: Event) -> str:
    """Stable readable name: NOTE_ON_C4, NOTE_OFF_A#2, TIME_SHIFT_250ms, VELOCITY_96, START."""
    etype = event.type
    if etype in (EventType.NOTE_ON, EventType.NOTE_OFF):
        return f"{etype.value}_{pitch_to_name(event.value)}"
    if etype is EventType.TIME_SHIFT:
        return f"TIME_SHIFT_{event.value * STEP_MS}ms"
    if etype is EventType.VELOCITY:
        return f"VELOCITY_{bin_to_velocity(event.value)}"
    if etype is EventType.STYLE:
        return f"STYLE_{event.value}"
    return etype.value


def name_to_event(name: str) -> Event:
    for prefix, etype in (("NOTE_ON_", EventType.NOTE_ON), ("NOTE_OFF_", EventType.NOTE_OFF)):
        if name.startswith(prefix):
            return Event(etype, name_to_pitch(name[len(prefix):]))
    if match := re.fullmatch(r"TIME_SHIFT_(\d+)ms", name):
        ms = int(match.group(1))
        if ms % STEP_MS:
            raise ValueError(f"time shift {name!r} is not a multiple of {STEP_MS} ms")
        return Event(EventType.TIME_SHIFT, ms // STEP_MS)
    if match := re.fullmatch(r"VELOCITY_(\d+)", name):
        velocity_bin = velocity_to_bin(int(match.group(1)))
        if event_to_name(Event(EventType.VELOCITY, velocity_bin)) != name:
            raise ValueError(f"velocity {name!r} is not a bin edge")
        return Event(EventType.VELOCITY, velocity_bin)
    if match := re.fullmatch(r"STYLE_(\d+)", name):
        return Event(EventType.STYLE, int(match.group(1)))
    if name in ("PAD", "START", "END", "FILL_SUFFIX", "FILL_MIDDLE"):
        return Event(EventType(name))
    raise ValueError(f"unknown token name {name!r}")


def id_to_name(token_id: int) -> str:
    return event_to_name(id_to_event(token_id))


def name_to_id(name: str) -> int:
    return event_to_id(name_to_event(name))


TOKEN_NAMES: tuple[str, ...] = tuple(id_to_name(i) for i in range(VOCAB_SIZE))
