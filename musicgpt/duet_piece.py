"""What a duet plays, as plain values: the key events and cues that cross `Duet`'s API (who
plays: PLAYER or MODEL), per-id lookup tables of the vocabulary, and `PlayedPiece`, what the
played tokens say (the time, each sounding note's owner, every note played). No model, no
sampling: duet.py draws the tokens and hands them in.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .vocab import (
    VOCAB_SIZE,
    bin_to_velocity,
    is_note_off,
    is_note_on,
    is_shift,
    is_velocity,
    note_pitch,
    shift_steps,
    velocity_bin_of,
    velocity_to_bin,
)

NOTE_ON, NOTE_OFF, PEDAL = "note_on", "note_off", "pedal"
PLAYER, MODEL = "player", "model"

_IDS = np.arange(VOCAB_SIZE)
ID_SHIFT_STEPS = shift_steps(_IDS).tolist()
ID_PITCH = np.where(is_note_on(_IDS) | is_note_off(_IDS), note_pitch(_IDS), -1).tolist()
ID_IS_NOTE_ON = is_note_on(_IDS).tolist()
_ID_VELOCITY_BIN = np.where(is_velocity(_IDS), velocity_bin_of(_IDS), -1).tolist()
SHIFT_IDS = np.flatnonzero(is_shift(_IDS))
_DEFAULT_VELOCITY = bin_to_velocity(velocity_to_bin(64))  # the decoder's, before any VELOCITY


class KeyEvent(NamedTuple):
    """What a player does, or what the model sends: `kind` NOTE_ON (value: velocity 1-127),
    NOTE_OFF or PEDAL (sustain, value >= 64: down)."""

    kind: str
    pitch: int = 0
    value: int = 0


class Cue(NamedTuple):
    """A model event and its time (seconds on the caller's clock)."""

    time_s: float
    event: KeyEvent


class PlayedPiece:
    """What the played tokens say: the time (context steps), the last velocity stated, the
    owner, onset (wall steps) and velocity of each sounding pitch, and every note played."""

    def __init__(self):
        self.step = 0
        self.velocity_bin = -1
        self.sounding: dict[int, tuple[str, int, int]] = {}
        self.notes: dict[str, list[tuple[int, int, int, int]]] = {PLAYER: [], MODEL: []}

    def pitches(self, owner: str) -> list[int]:
        return [p for p, (who, _, _) in self.sounding.items() if who == owner]

    def close(self, pitch: int, opened: tuple[str, int, int], end: int) -> None:
        """A note ends at wall step `end` (one of no length is dropped, as the decoder does)."""
        who, start, velocity = opened
        if end > start:
            self.notes[who].append((pitch, velocity, start, end))

    def apply(self, token: int, owner: str, offset: int, velocity: int | None) -> KeyEvent | None:
        """Advance by one played token; the key event it plays, if any."""
        if ID_SHIFT_STEPS[token]:
            self.step += ID_SHIFT_STEPS[token]
            return None
        if _ID_VELOCITY_BIN[token] >= 0:
            self.velocity_bin = _ID_VELOCITY_BIN[token]
            return None
        pitch = ID_PITCH[token]
        if pitch < 0:
            return None
        now = self.step + offset
        opened = self.sounding.pop(pitch, None)
        if opened is not None:
            self.close(pitch, opened, now)
        if not ID_IS_NOTE_ON[token]:
            return None if opened is None else KeyEvent(NOTE_OFF, pitch)
        if velocity is None:
            velocity = (bin_to_velocity(self.velocity_bin) if self.velocity_bin >= 0
                        else _DEFAULT_VELOCITY)
        self.sounding[pitch] = (owner, now, velocity)
        return KeyEvent(NOTE_ON, pitch, velocity)
