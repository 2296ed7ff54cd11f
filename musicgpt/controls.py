"""Steering the sampler: key, density, pitch range and dynamics (`SamplingSettings.key`,
`density`, `pitch_range`, `dynamics`). Pure numpy, no torch: `Controls` turns each step's logits
and allowed-token mask into steered ones, and the best of N (candidates.py) prefers the
candidate nearest the asked key and density.

- pitch range: NOTE_ONs outside it are masked (every new note is inside);
- dynamics: VELOCITYs outside it are masked, and a NOTE_ON waits for a velocity inside when the
  current one is outside (every new note's velocity is inside);
- key: NOTE_ONs outside the asked key's scale get -OUTSIDE_PENALTY log-odds and its tonic triad
  +TRIAD_BONUS (`key_pitch_bias`): the model still chooses, in the asked key;
- density: a row may strike a note only while its bucket holds one (refilled at the asked
  notes per second, up to BURST_S of them or MIN_BURST_NOTES: a chord or a run), and a row that
  runs thin gets up to MAX_DENSITY_BIAS log-odds onto its NOTE_ONs and VELOCITYs,
  DENSITY_GAIN x log(asked / recent rate) over the last DENSITY_WINDOW_S of new music. A bias
  alone could not thin the music: at -3.5 log-odds the model still wrote 7 notes/s for 3 asked,
  each short time shift giving it another chance to strike.

Key, range and dynamics choose which pitch or velocity, not whether a note comes (`_share_out`).
How far each holds, measured over 20 pieces per setting (benchmarks/controls.py), is in the
model card ("Controls").
"""

from __future__ import annotations

import copy
import math
import re

import numpy as np

from .events import NoteArrays
from .stats import estimate_key
from .vocab import (
    N_PITCHES,
    N_VELOCITY_BINS,
    STEPS_PER_S,
    bin_to_velocity,
    is_note_on,
    is_velocity,
    note_on_id,
    seconds_to_steps,
    shift_steps,
    velocity_bin_of,
    velocity_to_bin,
)

MODES = ("major", "minor")
_TONICS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_NAMES = {"major": ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"),
          "minor": ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")}
KEY_NAMES = tuple(f"{_NAMES[mode][tonic]} {mode}" for mode in MODES for tonic in range(12))
LOWEST_PITCH, HIGHEST_PITCH = 0, N_PITCHES - 1
DEFAULT_VELOCITY = 64  # what a NOTE_ON before any VELOCITY sounds at (events.py)

OUTSIDE_PENALTY = 2.0  # log-odds off a pitch outside the asked key's scale
TRIAD_BONUS = 0.5  # log-odds onto its tonic triad
TONIC_BONUS = 0.5  # and more onto the tonic itself
DENSITY_GAIN = 4.0
DENSITY_WINDOW_S = 3.0
MAX_DENSITY_BIAS = 8.0  # log-odds onto the notes of a row that runs thin
BURST_S = 1.0  # a row may strike up to this long of the asked density at once ...
MIN_BURST_NOTES = 4.0  # ... and at least this many notes (a chord)


# -- parsing ------------------------------------------------------------------------------------

def parse_key(text: str) -> str:
    """'E minor', 'Em', 'e min', 'F#', 'Bb major' -> the key's name in KEY_NAMES ('E minor')."""
    match = re.fullmatch(r"\s*([A-Ga-g])\s*([#b♯♭]?)\s*(major|minor|maj|min|m|M)?\s*",
                         str(text))
    if not match:
        raise ValueError(f"unknown key {text!r}: want a tonic and major or minor, "
                         f"e.g. 'E minor', 'Bb major', 'F#m'")
    letter, accidental, mode = match.groups()
    tonic = (_TONICS[letter.upper()] + {"#": 1, "♯": 1, "b": -1, "♭": -1}.get(accidental, 0)) % 12
    mode = "minor" if mode in ("minor", "min", "m") else "major"
    return f"{_NAMES[mode][tonic]} {mode}"


def key_parts(name: str) -> tuple[int, str]:
    """A key's name (any spelling `parse_key` takes) -> (tonic pitch class 0-11, mode)."""
    return KEY_NAMES.index(parse_key(name)) % 12, parse_key(name).split()[1]


def key_name(tonic: int, mode: str) -> str:
    return KEY_NAMES[MODES.index(mode) * 12 + tonic % 12]


def relative_key_name(name: str) -> str:
    """'A minor' -> 'C major' and back: the key with the same scale."""
    tonic, mode = key_parts(name)
    return key_name(tonic + 3, "major") if mode == "minor" else key_name(tonic - 3, "minor")


_NOTE = r"[A-Ga-g][#b♯♭]?-?\d+|\d+"


def parse_pitch(text: str) -> int:
    """'C4' (60), 'A0' (21), 'Bb3', 'C-1' (0) or a MIDI number -> 0..127."""
    text = str(text).strip()
    if re.fullmatch(r"\d+", text):
        pitch = int(text)
    else:
        match = re.fullmatch(r"([A-Ga-g])([#b♯♭]?)(-?\d+)", text)
        if not match:
            raise ValueError(f"unknown pitch {text!r}: want a MIDI number or a name like C4 "
                             f"(middle C = 60), F#3, Bb5")
        letter, accidental, octave = match.groups()
        shift = {"#": 1, "♯": 1, "b": -1, "♭": -1}.get(accidental, 0)
        pitch = 12 * (int(octave) + 1) + _TONICS[letter.upper()] + shift
    if not LOWEST_PITCH <= pitch <= HIGHEST_PITCH:
        raise ValueError(f"pitch {text!r} is outside MIDI's 0..127")
    return pitch


def pitch_name(pitch: int) -> str:
    return f"{_NAMES['minor'][pitch % 12]}{pitch // 12 - 1}"


def parse_range(text: str, parse=int, what: str = "range") -> tuple[int, int]:
    """'LOW-HIGH' (also 'LOW..HIGH', 'LOW:HIGH', 'LOW to HIGH') -> (low, high), low <= high."""
    match = re.fullmatch(rf"\s*({_NOTE})\s*(?:-|–|\.\.|:|to)\s*({_NOTE})\s*", str(text))
    if not match:
        raise ValueError(f"bad {what} {text!r}: want LOW-HIGH, e.g. 48-84 or C3-C6")
    low, high = parse(match.group(1)), parse(match.group(2))
    if low > high:
        raise ValueError(f"bad {what} {text!r}: its low end is above its high end")
    return low, high


def parse_pitch_range(text: str) -> tuple[int, int]:
    return parse_range(text, parse_pitch, "pitch range")


def parse_velocity_range(text: str) -> tuple[int, int]:
    def velocity(value: str) -> int:
        if not re.fullmatch(r"\d+", value) or not 1 <= int(value) <= 127:
            raise ValueError(f"bad velocity {value!r}: want 1..127")
        return int(value)
    return parse_range(text, velocity, "dynamics")


# -- measuring ----------------------------------------------------------------------------------

def key_of(notes: NoteArrays) -> str | None:
    """The key of `notes` by name (stats.estimate_key, Krumhansl-Schmuckler); None for none."""
    key = estimate_key(notes)
    return None if key is None else key_name(*key)


# -- steering -----------------------------------------------------------------------------------

# The asked key's scale (minor: natural minor plus the leading tone, as in harmonic minor, which
# also tells it from its relative major) and its tonic triad, as pitch classes above the tonic.
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10, 11)}
TRIADS = {"major": (0, 4, 7), "minor": (0, 3, 7)}


def key_pitch_bias(name: str, strength: float = 1.0) -> np.ndarray:
    """(128,) log-odds per pitch for the key `name`: -OUTSIDE_PENALTY outside its scale,
    +TRIAD_BONUS on its tonic triad, 0 on the rest of the scale; all times `strength`."""
    tonic, mode = key_parts(name)
    degree = (np.arange(N_PITCHES) - tonic) % 12
    bias = np.where(np.isin(degree, SCALES[mode]), 0.0, -OUTSIDE_PENALTY)
    bias += np.where(np.isin(degree, TRIADS[mode]), TRIAD_BONUS, 0.0)
    return strength * (bias + np.where(degree == 0, TONIC_BONUS, 0.0))


class Controls:
    """A batch's controls (`settings.key`, `density`, `pitch_range`, `dynamics`): `steer` the
    logits and mask of each step, `observe` each drawn token. `active` is False when none is set
    (then `steer` returns its inputs).

    Key, pitch range and dynamics choose which pitch or velocity, not whether a note comes: the
    probability of a NOTE_ON (of a VELOCITY) stays what the model gives it, shared out among the
    pitches (velocities) the control leaves and favours. Density alone moves how often notes
    come."""

    def __init__(self, settings, batch: int, vocab_size: int, history: np.ndarray | None = None):
        ids = np.arange(vocab_size)
        self._on_ids = note_on_id(np.arange(N_PITCHES))
        self._velocity_ids = ids[is_velocity(ids)]
        self._steps = shift_steps(ids)
        self._is_on, self._is_velocity = is_note_on(ids), is_velocity(ids)
        self._on_or_velocity = self._is_on | self._is_velocity
        # (128,) log-odds per pitch, -inf outside the range; (32,) per velocity bin
        self.pitch_range = settings.pitch_range
        self.pitch_bias = _pitch_bias(settings.key, settings.pitch_range)
        self.velocity_bias = self.density = None
        if settings.dynamics is not None:
            low, high = settings.dynamics
            velocity = np.array([bin_to_velocity(b) for b in range(N_VELOCITY_BINS)])
            inside = (velocity >= low) & (velocity <= high)
            if not inside.any():  # a range narrower than a bin: the bin holding its middle
                inside[velocity_to_bin((low + high) // 2)] = True
            self.velocity_bias = np.where(inside, 0.0, -np.inf)
            self._inside_bins = inside
            # whether each row's current velocity is inside (before any VELOCITY: events.py's 64)
            self.velocity_ok = np.full(batch, low <= DEFAULT_VELOCITY <= high)
        if settings.density is not None:
            self.density = float(settings.density)
            self.window = seconds_to_steps(DENSITY_WINDOW_S)
            self.now = np.zeros(batch, dtype=np.int64)
            self.onsets: list[list[int]] = [[] for _ in range(batch)]
            # notes each row may still strike now: refilled at the asked rate, up to BURST_S of
            # it (a chord or a run), one spent per NOTE_ON
            self.burst = max(MIN_BURST_NOTES, self.density * BURST_S)
            self.bucket = np.full(batch, self.burst)
        self.active = any(x is not None for x in (self.pitch_bias, self.velocity_bias,
                                                  self.density))
        if self.velocity_bias is not None and history is not None:
            for column in np.asarray(history).T:  # the primer's last velocity carries on
                self._observe_velocity(column)

    def steer(self, logits: np.ndarray, allowed: np.ndarray | None,
              rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(B, V) logits and mask (None: all allowed) -> steered ones. `rows` (B,) bool: the rows
        to steer (default all), e.g. not the ones an infill is closing."""
        if not self.active:
            return logits, allowed
        steered = logits.copy()
        mask = np.ones(logits.shape, dtype=bool) if allowed is None else allowed.copy()
        if self.pitch_bias is not None:
            _share_out(steered, mask, self._on_ids, self.pitch_bias)
        if self.velocity_bias is not None:
            _share_out(steered, mask, self._velocity_ids, self.velocity_bias)
            mask[~self.velocity_ok] &= ~self._is_on  # a velocity inside before the next note
        if self.density is not None:  # a VELOCITY comes before its note: it counts as one too
            steered[:, self._on_or_velocity] += self._density_bias()[:, None]
            mask[self.bucket < 1] &= ~self._on_or_velocity
        if rows is not None:
            steered = np.where(rows[:, None], steered, logits)
            mask = np.where(rows[:, None], mask, True if allowed is None else allowed)
        # never leave a row nothing to draw: the control gives way where it would
        stuck = ~mask.any(1)
        if stuck.any():
            steered[stuck] = logits[stuck]
            mask[stuck] = True if allowed is None else allowed[stuck]
        return steered, mask if allowed is not None or not mask.all() else None

    def with_key(self, key: str, strength: float = 1.0) -> Controls:
        """A copy steering towards `key` (`key_pitch_bias` times `strength`) instead of the key
        asked (a duet's answer follows the key its phrase was heard in)."""
        twin = copy.deepcopy(self)
        twin.pitch_bias, twin.active = _pitch_bias(key, self.pitch_range, strength), True
        return twin

    def new_music(self) -> None:
        """What was observed so far is the primer: density counts from here."""
        if self.density is not None:
            self.now[:] = 0
            self.bucket[:] = self.burst
            for onsets in self.onsets:
                onsets.clear()

    def observe(self, tokens) -> None:
        if not self.active:
            return
        tokens = np.asarray(tokens)
        if self.velocity_bias is not None:
            self._observe_velocity(tokens)
        if self.density is not None:
            steps = self._steps[tokens]
            self.now += steps
            self.bucket = np.minimum(self.burst,
                                     self.bucket + self.density * steps / STEPS_PER_S)
            self.bucket -= self._is_on[tokens]
            for row in np.flatnonzero(self._is_on[tokens]):
                self.onsets[row].append(int(self.now[row]))

    def _observe_velocity(self, tokens: np.ndarray) -> None:
        marks = self._is_velocity[tokens]
        if marks.any():
            self.velocity_ok[marks] = self._inside_bins[velocity_bin_of(tokens[marks])]

    def _density_bias(self) -> np.ndarray:
        """(B,) log-odds for each row's NOTE_ONs: DENSITY_GAIN x log(asked / recent rate) where
        that is above 0 (the bucket holds a dense row back)."""
        bias = np.empty(len(self.now))
        for row, (now, onsets) in enumerate(zip(self.now.tolist(), self.onsets, strict=True)):
            while onsets and onsets[0] <= now - self.window:
                onsets.pop(0)
            # one second at the asked rate starts the count
            seconds = min(now, self.window) / STEPS_PER_S + 1.0
            rate = (len(onsets) + self.density) / seconds
            bias[row] = DENSITY_GAIN * math.log(self.density / max(rate, 1e-3))
        return np.clip(bias, 0.0, MAX_DENSITY_BIAS)


def _pitch_bias(key: str | None, pitch_range: tuple[int, int] | None,
                strength: float = 1.0) -> np.ndarray | None:
    """(128,) log-odds per NOTE_ON pitch for `key` and `pitch_range` (-inf outside); None for
    neither."""
    bias = None if key is None else key_pitch_bias(key, strength)
    if pitch_range is not None:
        pitches = np.arange(N_PITCHES)
        inside = np.where((pitches >= pitch_range[0]) & (pitches <= pitch_range[1]), 0.0, -np.inf)
        bias = inside if bias is None else bias + inside
    return bias


def _share_out(logits: np.ndarray, mask: np.ndarray, columns: np.ndarray,
               bias: np.ndarray) -> None:
    """Add `bias` (-inf: masked) to `logits[:, columns]` in place, then shift those columns so
    that together they keep the probability they had among the allowed tokens: the control
    decides which of them, not how likely one of them is."""
    part = np.where(mask[:, columns], logits[:, columns], -np.inf)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        before = np.logaddexp.reduce(part, axis=1)
        after = np.logaddexp.reduce(part + bias, axis=1)
        shift = np.where(np.isfinite(before) & np.isfinite(after), before - after, 0.0)
    logits[:, columns] = logits[:, columns] + bias + shift[:, None]
    mask[:, columns] &= np.isfinite(bias)
