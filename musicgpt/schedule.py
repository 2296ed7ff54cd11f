"""The learning-rate schedule, on steps or on a time budget (`--max-minutes`), and the clock that
says when a timed run is out of time. No torch: plain numbers in, plain numbers out."""

from __future__ import annotations

import math
import time

from .config import Config


def learning_rate_at(step: int, config: Config, progress: float | None = None,
                     warmup_steps: int | None = None) -> float:
    """Linear warm-up over `warmup_steps` (default: the config's), then a cosine down to
    `min_learning_rate`.

    The cosine's position is `progress` (0..1) where given: the share of a time budget spent
    since the warm-up ended, so it reaches its end when the minutes do. Without it, the steps
    after the warm-up over the steps left to `max_steps`."""
    warmup = config.warmup_steps if warmup_steps is None else warmup_steps
    if step < warmup:
        return config.learning_rate * (step + 1) / warmup
    if progress is None:
        decay_steps = max(1, config.max_steps - warmup)
        progress = (step - warmup) / decay_steps
    progress = min(1.0, max(0.0, progress))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.min_learning_rate + cosine * (config.learning_rate - config.min_learning_rate)


class TrainClock:
    """Seconds a run has trained (carried across `--resume` in state.json), and with a budget
    (`budget_s` > 0) where the schedule stands and whether another step still fits.

    A step's cost is estimated as the mean wall time per step of this session so far, its
    validations included, so a run stops before a step that would end past the budget; the
    final validation and save come after it. The warm-up of a timed run takes at most
    WARMUP_SHARE of the budget: fewer steps than `warmup_steps` where those would take longer
    (estimated from the first step), so a short run from scratch does not spend itself warming
    up."""

    WARMUP_SHARE = 0.1

    def __init__(self, budget_s: float, spent_s: float = 0.0, warm_s: float | None = None,
                 warmup_steps: int | None = None):
        self.budget_s = budget_s
        self._before = spent_s
        self.warm_s = warm_s  # seconds spent when the warm-up ended (None: not yet)
        self._warmup = warmup_steps  # a timed run's warm-up, once estimated
        self._start = time.perf_counter()
        self._steps = 0

    @property
    def timed(self) -> bool:
        return self.budget_s > 0

    @property
    def spent_s(self) -> float:
        return self._before + time.perf_counter() - self._start

    def warmup_steps(self, config: Config) -> int:
        """The warm-up in steps: the config's, or on a timed run as many as fit in
        WARMUP_SHARE of the budget where that is fewer (fixed after the first step)."""
        if not self.timed:
            return config.warmup_steps
        if self._warmup is None and self._steps:
            mean = (time.perf_counter() - self._start) / self._steps
            fit = int(self.WARMUP_SHARE * self.budget_s / max(mean, 1e-9))
            self._warmup = min(config.warmup_steps, max(1, fit))
        return config.warmup_steps if self._warmup is None else self._warmup

    def progress(self, step: int, config: Config) -> float | None:
        """The cosine's position for `step` on a timed run (None on a run planned on steps)."""
        if not self.timed or step < self.warmup_steps(config):
            return None
        if self.warm_s is None:
            self.warm_s = self.spent_s
        return (self.spent_s - self.warm_s) / max(self.budget_s - self.warm_s, 1e-9)

    def step_done(self) -> None:
        self._steps += 1

    def out_of_time(self) -> bool:
        """Whether one more step, as long as this session's mean step, would pass the budget."""
        if not self.timed:
            return False
        session = time.perf_counter() - self._start
        mean = session / self._steps if self._steps else 0.0
        return self.spent_s + mean > self.budget_s

    def state(self) -> dict:
        """What state.json keeps of the clock, for a resumed run to go on from."""
        return {"train_seconds": round(self.spent_s, 3),
                **({"warm_seconds": round(self.warm_s, 3)} if self.warm_s is not None else {}),
                **({"warmup_steps": self._warmup} if self._warmup is not None else {})}
