"""Event <-> token id, the fixed performance-event vocabulary, and readable token names.

Pure: no torch, no MIDI. The id layout is one table of ranges (`RANGES`) that encoding and
decoding both walk, so the two cannot drift apart.

    ids   0..127  NOTE_ON   pitch 0..127
        128..255  NOTE_OFF  pitch 0..127
        256..355  TIME_SHIFT  10 ms .. 1000 ms (value = steps - 1)
        356..387  VELOCITY  32 bins of 4 MIDI velocities
        388 PAD, 389 START, 390 END
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

VOCAB_VERSION = 1
STEP_MS = 10
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


# (type, first id, number of values), in id order.
RANGES: tuple[tuple[EventType, int, int], ...] = (
    (EventType.NOTE_ON, 0, N_PITCHES),
    (EventType.NOTE_OFF, 128, N_PITCHES),
    (EventType.TIME_SHIFT, 256, MAX_SHIFT_STEPS),
    (EventType.VELOCITY, 356, N_VELOCITY_BINS),
    (EventType.PAD, 388, 1),
    (EventType.START, 389, 1),
    (EventType.END, 390, 1),
)
_OFFSET = {etype: (first, count) for etype, first, count in RANGES}
VOCAB_SIZE = 391

NOTE_ON_OFFSET = 0
NOTE_OFF_OFFSET = 128
TIME_SHIFT_OFFSET = 256
VELOCITY_OFFSET = 356
PAD_ID = 388
START_ID = 389
END_ID = 390


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
    if name in ("PAD", "START", "END"):
        return Event(EventType(name))
    raise ValueError(f"unknown token name {name!r}")


def id_to_name(token_id: int) -> str:
    return event_to_name(id_to_event(token_id))


def name_to_id(name: str) -> int:
    return event_to_id(name_to_event(name))


TOKEN_NAMES: tuple[str, ...] = tuple(id_to_name(i) for i in range(VOCAB_SIZE))
