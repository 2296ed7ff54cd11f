"""When a duet's turns end and what each turn was: `TurnSettings` (the pause that ends a phrase,
the answer's length, how far ahead it is drawn, idle time kept, key following) and `Turn`, the
record of one phrase and its answer. Plain values: duet.py keeps the turns.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

FOLLOW_KEY_STRENGTH = 2.5  # see TurnSettings.follow_key


@dataclass(frozen=True)
class TurnSettings:
    pause_s: float = 0.6  # a phrase ends after this long with nothing of the player's sounding
    max_phrase_s: float = 8.0  # ... or once it has lasted this long
    answer_ratio: float = 1.0  # the answer lasts the phrase's length times this,
    min_answer_s: float = 2.0  # but at least this long
    max_answer_s: float = 8.0  # and at most this long
    lookahead_s: float = 0.5  # the answer is drawn this far ahead of the clock
    max_idle_s: float = 1.0  # silence between turns is at most this long in the context
    # Without a key asked (`SamplingSettings.key`), steer each answer towards the key its phrase
    # is heard in (controls.key_of), FOLLOW_KEY_STRENGTH times as hard as the key control: an
    # answer of a few seconds has little time to settle in a key. The answer's key was the
    # phrase's or its relative (benchmarks/duet.py, 60 turns) in 33% of turns without it, 67% at
    # the key control's strength, 73% at 2x; at 2.5x, 85% and 76% of 80 turns (seeds 0 and 1).
    follow_key: bool = True

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool):
                continue
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a number > 0, got {value}")
        if self.min_answer_s > self.max_answer_s:
            raise ValueError(f"min_answer_s {self.min_answer_s} exceeds max_answer_s "
                             f"{self.max_answer_s}")

    def answer_seconds(self, phrase_s: float) -> float:
        return min(max(phrase_s * self.answer_ratio, self.min_answer_s), self.max_answer_s)


@dataclass
class Turn:
    """One phrase and its answer (times in seconds on the caller's clock). `latency_ms`: compute
    time from the phrase's end being detected to the answer's first note handed out."""

    phrase_start_s: float
    phrase_end_s: float
    ended_by: str  # "pause" or "max_length"
    phrase_notes: int
    answer_start_s: float
    answer_asked_s: float
    answer_end_s: float | None = None  # None while the answer plays
    answer_notes: int = 0
    cut: bool = False  # the player cut the answer short
    latency_ms: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)
