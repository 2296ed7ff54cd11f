"""What a window cut from the middle of a piece must restate: the notes still sounding at its cut.

A model reads a bounded window of tokens. Where the window starts mid-piece (the sampler's window
sliding past the context, or the prefix an infill prompt keeps), a note struck before the cut
still sounds but its NOTE_ON is out of sight: the model cannot know to release it, and such notes
droned until the 6 s guard ended them. Restating them as [VELOCITY, NOTE_ON ...] at the window's
start (then the velocity in effect at the cut, so later onsets read it as before) lets the model
see, and end, what sounds. The restatement is for the model's eyes only: the music written out is
unchanged. Pure: numpy only, no torch.
"""

from __future__ import annotations

import numpy as np

from .vocab import (
    N_PITCHES,
    VOCAB_SIZE,
    is_note_off,
    is_note_on,
    is_velocity,
    note_on_id,
    note_pitch,
    velocity_id,
    velocity_to_bin,
)

NO_VELOCITY = -1  # no VELOCITY token seen yet
DEFAULT_VELOCITY_ID = int(velocity_id(velocity_to_bin(64)))


class SoundingTracker:
    """Per row of a batch: the pitches sounding after the tokens seen so far, each with the
    VELOCITY id in effect when it was struck, and the VELOCITY id now in effect."""

    def __init__(self, batch: int, vocab_size: int):
        ids = np.arange(vocab_size)
        self._on = np.where(is_note_on(ids), note_pitch(ids), -1).tolist()
        self._off = np.where(is_note_off(ids), note_pitch(ids), -1).tolist()
        self._velocity = is_velocity(ids).tolist()
        self.sounding = np.zeros((batch, N_PITCHES), dtype=bool)
        self.struck_velocity = np.full((batch, N_PITCHES), NO_VELOCITY, dtype=np.int64)
        self.velocity = np.full(batch, NO_VELOCITY, dtype=np.int64)

    def advance(self, tokens: np.ndarray) -> None:
        """Read `tokens` (B, n), one row per piece, in order (ids outside the vocabulary and
        specials change nothing)."""
        n_ids = len(self._on)
        for row, line in enumerate(np.asarray(tokens).tolist()):
            velocity = int(self.velocity[row])
            sounding, struck = self.sounding[row], self.struck_velocity[row]
            for token in line:
                if not 0 <= token < n_ids:
                    continue
                if self._on[token] >= 0:
                    sounding[self._on[token]] = True
                    struck[self._on[token]] = velocity
                elif self._off[token] >= 0:
                    sounding[self._off[token]] = False
                elif self._velocity[token]:
                    velocity = token
            self.velocity[row] = velocity

    def restatement(self, row: int) -> list[int]:
        """The tokens that restate row `row`'s sounding notes: [VELOCITY, NOTE_ON ...] per
        velocity, lowest pitch first, then the velocity in effect ([] when nothing sounds)."""
        out: list[int] = []
        current = NO_VELOCITY
        for pitch in np.flatnonzero(self.sounding[row]).tolist():
            velocity = int(self.struck_velocity[row, pitch])
            if velocity != current and velocity != NO_VELOCITY:
                out.append(velocity)
                current = velocity
            out.append(int(note_on_id(pitch)))
        now = int(self.velocity[row])
        if out and now not in (current, NO_VELOCITY):
            out.append(now)
        return out


def restatements(tracker: SoundingTracker) -> np.ndarray:
    """(B, k) the restatement of every row, padded in front to one length with a VELOCITY token
    (the first one the row restates, else the one in effect: a velocity said again before
    another changes nothing); (B, 0) when nothing sounds in any row."""
    rows = [tracker.restatement(r) for r in range(len(tracker.velocity))]
    width = max(map(len, rows), default=0)
    out = np.zeros((len(rows), width), dtype=np.int64)
    for r, tokens in enumerate(rows):
        now = int(tracker.velocity[r])
        pad = tokens[0] if tokens and is_velocity(tokens[0]) else (
            now if now != NO_VELOCITY else DEFAULT_VELOCITY_ID)
        out[r] = [pad] * (width - len(tokens)) + tokens
    return out


def restate_segment(before, segment, vocab_size: int = VOCAB_SIZE) -> np.ndarray:
    """`segment` (ids that follow `before`) with the notes sounding at its start restated in
    front, for one piece (the infill prompt's prefix tail)."""
    tracker = SoundingTracker(1, vocab_size)
    tracker.advance(np.asarray(before, dtype=np.int64)[None])
    return np.concatenate([tracker.restatement(0), np.asarray(segment, np.int64)]).astype(np.int64)
