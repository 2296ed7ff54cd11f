"""logits -> next token, and the prefill/decode loop. Never sees MIDI, only token ids.

Grammar-aware by default: before each draw, events that cannot be right are masked out by
`events.NoteGrammar` (NOTE_OFF of a silent pitch, NOTE_ON of a sounding pitch, PAD, START and any
other special mid-piece). Past the model's context
the loop keeps going with a sliding window: the most recent 3/4 of the context is re-prefilled.

Asked lengths: the token budget follows from the asked seconds (`token_budget`, with headroom for
dense music), and `generate_pieces` says per row why it stopped (`Stop`: the asked length, END,
or the token budget). Threads: decoding runs on `sampling_threads` torch threads (one at batch
1: as fast on an idle machine, and far faster when another process keeps a core busy; see
benchmarks/bench_threads.py), and gives the caller's thread count back afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .candidates import choose_pieces
from .config import Config
from .events import NoteGrammar
from .model import GPT
from .restate import SoundingTracker, restatements
from .vocab import (
    END_ID,
    N_PITCHES,
    PAD_ID,
    RANGES,
    START_ID,
    EventType,
    is_note_off,
    is_note_on,
    is_style,
    note_off_id,
    note_on_id,
    note_pitch,
    seconds_to_steps,
    shift_steps,
    steps_to_seconds,
    style_id,
)

# (seconds of new music the slowest unfinished row has, seconds asked or None when none were)
ProgressFn = Callable[[float, float | None], None]

DEFAULT_MAX_NEW_TOKENS = 1024  # the budget when neither tokens nor seconds are asked for
# Token budget per second asked for. Real piano music averages ~35 tokens/s, top-p 0.95 samples
# ~1.5x that, and a dense 60 s piece of the shipped model took 76 tokens/s: 200 leaves room for
# denser music still. The sampler stops at the asked seconds first; the budget only bounds a
# model that stops moving time. It costs no memory (the KV cache is at most the context).
TOKENS_PER_S_BUDGET = 200
MIN_TOKEN_BUDGET = 256
# Rows x weights per decode step from which a second torch thread pays (see sampling_threads).
THREAD_WORK = 32_000_000


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Divide by the temperature: below 1 sharpens the distribution, above 1 flattens it."""
    return logits / max(temperature, 1e-5)


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest logits per row of (B, V) (k <= 0 keeps all; ties at the k-th stay)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k, axis=-1)[:, -k, None]
    return np.where(logits < kth, -np.inf, logits)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep, per row of (B, V), the smallest set of tokens whose probability reaches p."""
    if p >= 1.0:
        return logits
    probs = _softmax(logits)
    order = np.argsort(-probs, axis=-1, kind="stable")
    ranked = np.take_along_axis(probs, order, -1)
    drop_ranked = ranked.cumsum(-1) - ranked >= p  # the mass before this token already reaches p
    drop = np.empty_like(drop_ranked)
    np.put_along_axis(drop, order, drop_ranked, -1)
    return np.where(drop, -np.inf, logits)


def min_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep, per row of (B, V), the tokens at least p times as likely as the likeliest one."""
    if p <= 0.0:
        return logits
    return np.where(logits < logits.max(-1, keepdims=True) + math.log(p), -np.inf, logits)


# Each event type's ids are one run of columns (vocab.RANGES): its first column and, per column,
# the index of its type. Only the types in CUT_TYPES are cut (see `truncate`).
_TYPE_STARTS = np.array([first for _, first, _ in RANGES])
_COLUMN_TYPE = np.repeat(np.arange(len(RANGES)), [count for _, _, count in RANGES])
CUT_TYPES = (EventType.NOTE_ON, EventType.VELOCITY)
_CUT_COLUMNS = np.isin(_COLUMN_TYPE, [i for i, (etype, _, _) in enumerate(RANGES)
                                      if etype in CUT_TYPES])


def truncate(logits: np.ndarray, settings: SamplingSettings) -> np.ndarray:
    """(B, V) logits with settings' top-k, top-p and min-p applied.

    With `settings.within_type` (the default) they cut only the pitch of a NOTE_ON and the
    value of a VELOCITY (CUT_TYPES), each measured on that type's own distribution, and a token
    must pass all three; the probability of each event type, and the time shifts and releases,
    stay as the model gives them. A stray pitch or a rare velocity is dropped, but the timing is
    not touched: cutting across the whole vocabulary drops the long time shifts first (their
    mass is spread over 100 ids), and even cutting within the time shifts drops the rare long
    ones; both made the music denser than the model meant (benchmarks/music_stats.py, see the
    model card). Without `within_type`: top-k, then top-p, then min-p, over all ids.
    """
    s = settings
    if not s.truncates:
        return logits
    if not s.within_type:
        return _cut(logits, s)
    starts = _TYPE_STARTS[_TYPE_STARTS < logits.shape[-1]]
    column_type = _COLUMN_TYPE[: logits.shape[-1]]
    cut = _CUT_COLUMNS[: logits.shape[-1]]
    top = np.maximum.reduceat(logits, starts, axis=-1)  # (B, types); -inf: the type is masked
    top = np.where(np.isfinite(top), top, 0.0)[:, column_type]
    weight = np.exp(logits - top)  # 1 for each type's likeliest value, 0 where masked
    mass = np.add.reduceat(weight, starts, axis=-1)
    keep = weight >= np.where(cut, s.min_p, 0.0)
    keep &= weight > 0
    if s.top_k > 0 or s.top_p < 1:
        probs = weight / np.maximum(mass, 1e-30)[:, column_type]  # within the type
        order = np.argsort(column_type - probs, axis=-1, kind="stable")  # by type, likeliest first
        ranked = np.take_along_axis(probs, order, -1)
        before = ranked.cumsum(-1) - ranked  # types keep their columns in this order
        before -= before[:, starts][:, column_type]
        rank = np.arange(len(column_type)) - starts[column_type]
        drop = (before >= s.top_p) | ((rank >= s.top_k) if s.top_k > 0 else False)
        keep &= ~(_unsort(drop, order) & cut)
    kept = np.add.reduceat(np.where(keep, weight, 0.0), starts, axis=-1)
    with np.errstate(divide="ignore"):
        scale = np.log(mass) - np.log(np.where(kept > 0, kept, 1.0))
    return np.where(keep, logits + scale[:, column_type], -np.inf)


def _unsort(ranked: np.ndarray, order: np.ndarray) -> np.ndarray:
    out = np.empty_like(ranked)
    np.put_along_axis(out, order, ranked, -1)
    return out


def _cut(logits: np.ndarray, s: SamplingSettings) -> np.ndarray:
    return min_p_filter(top_p_filter(top_k_filter(logits, s.top_k), s.top_p), s.min_p)


def sample(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(B, V) logits -> (B,) ids drawn from the softmax (inverse CDF, one uniform per row)."""
    cdf = _softmax(logits).cumsum(-1, dtype=np.float64)
    target = rng.random(len(cdf)) * cdf[:, -1]
    return (cdf > target[:, None]).argmax(-1)


_PITCHES = np.arange(N_PITCHES)
_OFF_IDS = note_off_id(_PITCHES)
STEPS_PER_S = seconds_to_steps(1.0)
MAX_CANDIDATES = 16
RELEASE_RAMP_PER_S = 2.0  # log-odds added to a long note's NOTE_OFF per second past the ramp


def release_mass_kept(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """(B, V) logits whose masked note mass is moved to the releases the grammar allows.

    The probability of a NOTE_OFF of a silent pitch goes to the NOTE_OFFs of the sounding
    pitches, in proportion (the model meant a release and missed the pitch); that of a NOTE_ON of
    a sounding pitch goes to its NOTE_OFF. Rows with nothing sounding are left as they are.
    """
    probs = _softmax(logits)
    on_ids, off_ids = note_on_id(_PITCHES), note_off_id(_PITCHES)
    on, off = probs[:, on_ids], probs[:, off_ids]
    sounding = allowed[:, off_ids]
    off = off + np.where(sounding & ~allowed[:, on_ids], on, 0.0)
    lost = np.where(sounding, 0.0, off).sum(1, keepdims=True)
    kept = np.where(sounding, off, 0.0)
    total = kept.sum(1, keepdims=True)
    scale = np.where(total > 0, 1.0 + lost / np.maximum(total, 1e-30), 1.0)
    probs[:, off_ids] = np.where(sounding, kept * scale, off)
    with np.errstate(divide="ignore"):
        return np.log(probs)


def draw_scores(logits: np.ndarray, allowed: np.ndarray | None,
                settings: SamplingSettings) -> np.ndarray:
    """(B, V) logits -> the scores to draw from: temperature, the grammar mask `allowed` (None:
    no mask) with the release mass kept, then top-k/top-p/min-p (`truncate`)."""
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        scores = apply_temperature(logits, settings.temperature)
        if allowed is not None:
            if settings.keep_release_mass:
                scores = release_mass_kept(scores, allowed)
            scores = np.where(allowed, scores, -np.inf)
        scores = truncate(scores, settings)
    return _finite_or_greedy(scores, logits, allowed)


def _finite_or_greedy(scores: np.ndarray, logits: np.ndarray,
                      allowed: np.ndarray | None) -> np.ndarray:
    """`scores`, except rows a tiny temperature left without a usable score (every allowed one
    underflowed to -inf, or NaN or +inf appeared): those take the limit of temperature -> 0,
    the likeliest allowed token, so a draw never leaves the grammar or reads NaN."""
    bad = np.isnan(scores).any(-1) | np.isposinf(scores).any(-1) | ~np.isfinite(scores).any(-1)
    if not bad.any():
        return scores
    masked = logits if allowed is None else np.where(allowed, logits, -np.inf)
    masked = np.where(np.isnan(masked), -np.inf, masked)
    best = np.zeros_like(masked, dtype=bool)
    best[np.arange(len(masked)), masked.argmax(-1)] = True
    return np.where(bad[:, None], np.where(best, 0.0, -np.inf), scores)


def _softmax(logits: np.ndarray) -> np.ndarray:
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off; see Config.top_p
    min_p: float = 0.0  # 0 = off: drop tokens less than min_p times as likely as the likeliest
    within_type: bool = True  # top-k/top-p/min-p cut only pitches and velocities (`truncate`)
    # With a style: logits = unstyled + (1 + style_guidance) * (styled - unstyled), the
    # unstyled ones from the same model without the style token (classifier-free guidance; the
    # model learnt both, style_drop in training). 0 = off; it costs a second decode per step.
    style_guidance: float = 0.0
    grammar: bool = True  # mask events that cannot be right
    # Release a note that has sounded this long (None = never). The default model forgets to end
    # notes (12% of its notes reach 6 s, even before the window first slides), and past the
    # context it cannot see old NOTE_ONs at all: without this guard it left ~13 notes per 30 s
    # sample sounding for 10 s. Real piano music holds 0.36% of its notes this long (ASAP +
    # POP909 validation split).
    max_note_s: float | None = 6.0
    # Time shifts that would leave nothing sounding for longer than this, once the music has
    # started, are masked (None = never): the model then strikes a note (or ends the piece).
    # Samples had 3 s or more of dead air in 5% of pieces; real music has none that long.
    max_silence_s: float | None = 2.0
    # The same before the first new note: at most this long before the music starts (None =
    # never). A third of the training files open with a lead-in (MIDI files' count-in
    # silence), and the model learnt to open with up to 20 s of nothing.
    max_lead_in_s: float | None = 0.5
    # A note that has sounded this long gets RELEASE_RAMP_PER_S more log-odds of its NOTE_OFF
    # per second held past it (None = never), so a long note ends on its own before the
    # max_note_s guard has to end it: the mean share of a piece's notes held to the guard went
    # from 1.8% to 1.0% (real music: 0.6%; 1% of its notes last 3 s or more).
    release_ramp_s: float | None = 3.0
    # Write this many candidates per piece (in one batch) and keep the best (candidates.py): a
    # piece that fails the per-piece checks is kept only when every candidate does. Costs up to
    # candidates x the work per step (less on a CPU, where a step is mostly overhead).
    candidates: int = 1
    # With the grammar mask, keep the mass the model gives to a release: a NOTE_OFF of a silent
    # pitch counts for the sounding pitches' NOTE_OFFs (in proportion), a NOTE_ON of a sounding
    # pitch for that pitch's NOTE_OFF (a re-strike starts with the release). Plain masking hands
    # that mass (~5% per step for the default model) to every other event, so samples under-
    # release and pile up notes.
    keep_release_mass: bool = True
    # When the window slides past the context (or an infill keeps only the prefix's tail),
    # restate the notes still sounding at its new start (restate.py), so the model sees every
    # note it may have to release. Off: measured, it did not help (generate: notes held to the
    # guard 1.9% vs 2.0% of a piece's notes; infill: drones 37% vs 13% of spans).
    restate_sounding: bool = False

    def __post_init__(self) -> None:
        for name in ("max_note_s", "max_silence_s", "max_lead_in_s", "release_ramp_s"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be > 0 or None, got {value}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"min_p must be in [0, 1) (0 = off), got {self.min_p}")
        if not 1 <= self.candidates <= MAX_CANDIDATES:
            raise ValueError(f"candidates must be in 1..{MAX_CANDIDATES}, got {self.candidates}")
        if not 0 <= self.style_guidance <= 10:
            raise ValueError(f"style_guidance must be in [0, 10] (0 = off), "
                             f"got {self.style_guidance}")

    @classmethod
    def from_config(cls, config: Config, **overrides) -> SamplingSettings:
        """The checkpoint's own temperature, top-k, top-p, min-p, style guidance and candidates,
        and any other field, from `overrides`; one of those six given as None keeps the
        checkpoint's."""
        own = {name: getattr(config, name, getattr(cls, name))
               for name in ("temperature", "top_k", "top_p", "min_p", "style_guidance",
                            "candidates")}
        given = {k: v for k, v in overrides.items() if v is not None or k not in own}
        return cls(**{**own, **given})

    @property
    def truncates(self) -> bool:
        """Whether top-k, top-p or min-p is on."""
        return self.top_k > 0 or self.top_p < 1 or self.min_p > 0


class SamplerState:
    """The state of a batch being sampled, in numpy: the grammar (`events.NoteGrammar`), the music
    each row has written, the rows that are done, and each sounding note's onset (for the
    `max_note_s` guard).

    A batch-1 CPU decode step of the default model takes 1-2 ms; drawing the next token with a
    few dozen small torch ops cost another 0.5 ms, so the draw works on a numpy copy of the
    logits instead (tens of microseconds).
    """

    def __init__(self, history: np.ndarray, settings: SamplingSettings, vocab_size: int,
                 max_seconds: float | None, seed: int | None):
        B = history.shape[0]
        self.settings, self.rng = settings, np.random.default_rng(seed)
        # its mask applies when settings.grammar is on; a style is asked for, never drawn
        self.grammar = NoteGrammar(B, vocab_size, styles=False)
        ids = np.arange(vocab_size)
        self._steps = shift_steps(ids).tolist()  # 10 ms steps each id moves on
        self._struck = np.where(is_note_on(ids), note_pitch(ids), -1).tolist()  # NOTE_ON pitch
        self.onset_step = np.zeros((B, N_PITCHES), dtype=np.int64)  # primer notes count from 0
        self.max_note_steps = (None if settings.max_note_s is None or not settings.grammar
                               else seconds_to_steps(settings.max_note_s))
        self.done = np.zeros(B, dtype=bool)
        self.ended = np.zeros(B, dtype=bool)  # rows that drew END
        self.n_new = np.zeros(B, dtype=np.int64)  # tokens each row keeps
        self.new_steps = np.zeros(B, dtype=np.int64)
        self.max_steps = None if max_seconds is None else seconds_to_steps(max_seconds)
        self.ramp_steps = (None if settings.release_ramp_s is None
                           else seconds_to_steps(settings.release_ramp_s))
        self.silence = _SilenceGuard(B, settings, vocab_size)
        for column in history.T:
            self._observe(column)
        self.silence.new_music(self.new_steps)
        self.new_steps[:] = 0
        self.onset_step[:] = 0

    def draw(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, V) logits -> (B,) next ids on the logits' device; finished rows get PAD."""
        token = self._release_overdue(self._sample(logits.detach().float().cpu().numpy()))
        token[self.done] = PAD_ID
        self.n_new += ~self.done
        self._observe(token)
        self.ended |= token == END_ID
        self.done |= self.ended
        if self.max_steps is not None:
            self.done |= self.new_steps >= self.max_steps
        return torch.from_numpy(token).to(logits.device)

    def stops(self, asked: float | None) -> list[Stop]:
        """Why each row stopped (rows still running ran out of tokens)."""
        reasons = np.where(self.ended, "end", np.where(self.done, "length", "tokens"))
        return [Stop(str(reason), float(steps_to_seconds(steps)), int(n), asked)
                for reason, steps, n in zip(reasons, self.new_steps, self.n_new, strict=True)]

    def _sample(self, logits: np.ndarray) -> np.ndarray:
        allowed = None
        if self.settings.grammar:
            allowed = self.grammar.allowed
            allowed = self.silence.limit(allowed, self.grammar.sounding, self.new_steps)
            if self.grammar.n_ended:  # nothing may follow END: leave such rows unmasked
                allowed = allowed | self.grammar.ended[:, None]
            logits = self._release_ramp(logits)
        return sample(draw_scores(logits, allowed, self.settings), self.rng)

    def _release_ramp(self, logits: np.ndarray) -> np.ndarray:
        """`logits` with the NOTE_OFF of each note held past `release_ramp_s` raised."""
        if self.ramp_steps is None:
            return logits
        held = self.new_steps[:, None] - self.onset_step - self.ramp_steps
        late = self.grammar.sounding & (held > 0)
        if not late.any():
            return logits
        logits = logits.copy()
        logits[:, _OFF_IDS] += np.where(late, held * (RELEASE_RAMP_PER_S / STEPS_PER_S), 0.0)
        return logits

    def _observe(self, tokens: np.ndarray) -> None:
        """Advance each row by one token: grammar, onsets, music length."""
        tokens = tokens.tolist()
        self.grammar.observe(tokens)
        for row, token in enumerate(tokens):  # plain ints: a few numpy calls would cost more
            if self._steps[token]:
                self.new_steps[row] += self._steps[token]
            elif self._struck[token] >= 0:
                self.onset_step[row, self._struck[token]] = self.new_steps[row]
        self.silence.observe(self.grammar.sounding, self.new_steps, tokens)

    def _release_overdue(self, token: np.ndarray) -> np.ndarray:
        """Replace a row's draw by the NOTE_OFF of its longest-held note once that is overdue."""
        if self.max_note_steps is None:
            return token
        held = np.where(self.grammar.sounding, self.new_steps[:, None] - self.onset_step, -1)
        oldest = held.argmax(1)
        overdue = held[np.arange(len(token)), oldest] >= self.max_note_steps
        return np.where(overdue, note_off_id(oldest), token)


class _SilenceGuard:
    """Masks the time shifts that would make a silence longer than allowed: `max_lead_in_s`
    before the first new note, `max_silence_s` with nothing sounding after it (primer notes
    count as music)."""

    def __init__(self, batch: int, settings: SamplingSettings, vocab_size: int):
        def steps(seconds: float | None) -> int | None:
            return None if seconds is None or not settings.grammar else seconds_to_steps(seconds)

        self.lead_in, self.gap = steps(settings.max_lead_in_s), steps(settings.max_silence_s)
        self.active = self.lead_in is not None or self.gap is not None
        ids = np.arange(vocab_size)
        self._shift = shift_steps(ids)
        self._is_shift = self._shift > 0
        self._on, self._off = is_note_on(ids), is_note_off(ids)
        self.started = np.zeros(batch, dtype=bool)  # a new note has been struck
        self.heard = np.zeros(batch, dtype=np.int64)  # the last step anything sounded
        self.music = np.zeros(batch, dtype=bool)  # anything has sounded (primer included)

    def new_music(self, primer_steps: np.ndarray) -> None:
        """The primer is read (`primer_steps` long): from here on, notes and steps are new."""
        self.started[:] = False
        self.heard -= primer_steps

    def observe(self, sounding: np.ndarray, new_steps: np.ndarray, tokens: list[int]) -> None:
        if not self.active:
            return
        now, tokens = sounding.any(1), np.asarray(tokens)
        self.started |= self._on[tokens]
        self.music |= now
        # sounding now, or a release just ended the last note: music up to this step
        self.heard = np.where(now | self._off[tokens], new_steps, self.heard)

    def limit(self, allowed: np.ndarray, sounding: np.ndarray,
              new_steps: np.ndarray) -> np.ndarray:
        """`allowed` without the shifts too long for each row's silence so far."""
        if not self.active:
            return allowed
        room = np.full(len(allowed), np.iinfo(np.int64).max)
        if self.lead_in is not None:
            room = np.where(self.started, room, self.lead_in - new_steps)
        if self.gap is not None:
            silent = self.music & ~sounding.any(1)
            room = np.where(silent & self.started | silent & (self.lead_in is None),
                            np.minimum(room, self.gap - (new_steps - self.heard)), room)
        limited = room < self._shift.max()
        if not limited.any():
            return allowed
        too_long = self._is_shift[None] & (self._shift[None] > room[:, None]) & limited[:, None]
        return allowed & ~too_long


def token_budget(seconds: float | None) -> int:
    """New tokens allowed for `seconds` of music (DEFAULT_MAX_NEW_TOKENS when None)."""
    if seconds is None:
        return DEFAULT_MAX_NEW_TOKENS
    return max(MIN_TOKEN_BUDGET, math.ceil(seconds * TOKENS_PER_S_BUDGET))


def sampling_threads(batch_size: int, model: GPT | Config) -> int:
    """Torch threads for decoding `batch_size` rows of `model`: 1 unless a step holds enough
    work, and never more than the caller's current count.

    A decode step is a few dozen small ops; with two OpenMP threads each op waits for both, so
    when another process keeps one core busy every op waits for the thread that shares it
    (issue 11: a 30 s piece took 5.7 s with 2 threads and 2.7 s with 1 under one busy core;
    2.6 s and 2.7 s on an idle machine). More threads only pay when a step multiplies many rows
    by many weights: one thread per THREAD_WORK rows x weights.
    """
    config = getattr(model, "config", model)
    if batch_size <= 1:
        return 1
    weights = 12 * config.n_layer * config.n_embd ** 2 + config.vocab_size * config.n_embd
    return max(1, min(torch.get_num_threads(), batch_size * weights // THREAD_WORK))


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block on `threads` torch threads, then give the caller's count back."""
    old = torch.get_num_threads()
    if threads != old:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


@dataclass(frozen=True)
class Stop:
    """Why one generated row ended: "length" (the asked seconds reached), "end" (the model drew
    END) or "tokens" (the token budget ran out), with the new music and tokens it holds."""

    reason: str
    seconds: float  # new music (its time shifts), seconds
    tokens: int  # new tokens
    asked: float | None  # the seconds asked for, if any

    @property
    def early(self) -> bool:
        """Shorter than asked: END, or the token budget before the asked seconds."""
        return self.reason == "end" or (self.reason == "tokens" and self.asked is not None)

    def message(self) -> str:
        """'stopped at END after 12.8 s of 30' for an early stop, else ''."""
        if not self.early:
            return ""
        of = "" if self.asked is None else f" of {self.asked:g}"
        where = ("END" if self.reason == "end"
                 else f"the token budget ({self.tokens:,} new tokens)")
        return f"stopped at {where} after {self.seconds:.1f} s{of}"


@dataclass(frozen=True)
class Generation:
    """What `generate_pieces` made: per row, its ids (primer + new) and why it stopped."""

    rows: list[np.ndarray]
    stops: list[Stop]


def generate(model: GPT, primer: list[int] | np.ndarray | None = None,
             **options) -> list[np.ndarray]:
    """Continue `primer` into `num_samples` pieces: `generate_pieces(...).rows` (same options).

    Each row stops at END, once its new music reaches `max_seconds`, or at the token budget
    (`max_new_tokens`, by default `token_budget(max_seconds)`). Returns, per row, the primer plus
    the new ids (END kept if drawn), as int64 arrays; `generate_pieces` also says why each
    stopped.
    """
    return generate_pieces(model, primer, **options).rows


@torch.inference_mode()
def generate_pieces(model: GPT, primer: list[int] | np.ndarray | None = None, *,
                    max_new_tokens: int | None = None, max_seconds: float | None = None,
                    num_samples: int = 1, settings: SamplingSettings = SamplingSettings(),
                    seed: int | None = None, progress: ProgressFn | None = None,
                    static_shapes: bool | None = None, style: int | None = None,
                    threads: int | None = None) -> Generation:
    """Continue `primer` (ids, START prepended if missing) into `num_samples` pieces at once.

    `style` (a STYLE slot of the model's config, see `Config.style_slot`) puts that style token
    right after START, as in training, and keeps it in front when the window slides.

    Each row stops at END, once its new music reaches `max_seconds`, or after `max_new_tokens`
    (default: `token_budget(max_seconds)`, room for music far denser than real piano music).
    `progress(seconds, asked)` follows the slowest unfinished row's music.
    `static_shapes` (default: on for CUDA) attends over the whole cache each step so shapes never
    change; off, a CPU step reads only the filled part of the cache, which is faster in eager mode.
    `threads` torch threads decode (default: `sampling_threads`); the caller's count is restored.
    Samples from `model` as given: for int8 weights (1.3-2x faster on CPU, NLL within 0.01%; see
    quantize.py and BENCHMARKS.md) load it once with `checkpoint.load_sampling_model`.
    """
    budget = token_budget(max_seconds) if max_new_tokens is None else max_new_tokens
    n_rows = num_samples * settings.candidates
    with torch_threads(threads or sampling_threads(n_rows, model)):
        history, n_front = _start(model, primer, n_rows, style)
        rows = SamplerState(history.cpu().numpy(), settings, model.config.vocab_size,
                            max_seconds, seed)
        static = history.device.type == "cuda" if static_shapes is None else static_shapes
        draw, unstyled = rows.draw, None
        if n_front and settings.style_guidance > 0:
            plain = torch.cat([history[:, :1], history[:, 1 + n_front :]], 1)
            draw, unstyled = guided(model, plain, budget, rows.draw, settings, static)
        steps = decode_steps(model, history, budget, draw, static,
                             keep_front=history[:, 1 : 1 + n_front],
                             restate=settings.restate_sounding)
        try:
            generated = _run(steps, rows, history,
                             _progress_seconds(progress, rows, max_seconds))
        finally:
            if unstyled is not None:
                unstyled.close()
    start = history[0].cpu().numpy()
    pieces = [np.concatenate([start, row[:n]])
              for row, n in zip(generated, rows.n_new.tolist(), strict=True)]
    stops = rows.stops(max_seconds)
    if settings.candidates > 1:
        chosen = choose_pieces(pieces, settings.candidates, int(shift_steps(start).sum()),
                               max_seconds)
        pieces, stops = [pieces[i] for i in chosen], [stops[i] for i in chosen]
    return Generation(pieces, stops)


def guided(model: GPT, plain: torch.Tensor, budget: int, draw,
           settings: SamplingSettings, static: bool = False):
    """(a draw for the styled decode that mixes in the unstyled logits, the unstyled decode):
    logits = unstyled + (1 + settings.style_guidance) * (styled - unstyled).

    The unstyled decode runs over `plain` (the styled history without its style token) on a copy
    of the model (its own KV cache), in lockstep: each styled draw first advances it one step
    for its logits, draws the token from both, and writes that token into the buffer the
    unstyled decode just yielded, which that decode feeds back at its next step. Past the
    context each decode slides its own window.
    """
    twin = copy.deepcopy(model)
    mailbox: dict[str, torch.Tensor] = {}
    weight = 1.0 + settings.style_guidance

    def hold(logits: torch.Tensor) -> torch.Tensor:
        mailbox["logits"] = logits
        mailbox["token"] = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return mailbox["token"]

    unstyled = decode_steps(twin, plain, budget, hold, static, restate=settings.restate_sounding)

    def guided_draw(logits: torch.Tensor) -> torch.Tensor:
        next(unstyled)
        base = mailbox["logits"].float()
        token = draw(base + weight * (logits.float() - base))
        mailbox["token"].copy_(token)
        return token

    return guided_draw, unstyled


def _start(model: GPT, primer, num_samples: int, style: int | None) -> tuple[torch.Tensor, int]:
    """(the batch's history (B, T): START, the style token if any, the primer), style tokens."""
    primer_ids = [int(t) for t in (primer if primer is not None else [])]
    if primer_ids and primer_ids[0] == START_ID:
        primer_ids = primer_ids[1:]
    if style is None and primer_ids and is_style(primer_ids[0]):  # [START, STYLE, ...] primer
        style, primer_ids = primer_ids[0] - style_id(0), primer_ids[1:]
    front = [] if style is None else [style_token(model.config, style)]
    primer_ids = [START_ID, *front, *(t for t in primer_ids if not is_style(t) or not front)]
    history = torch.tensor(primer_ids, device=model.wte.weight.device).repeat(num_samples, 1)
    return history, len(front)


def _run(steps: Iterator[torch.Tensor], rows: SamplerState, history: torch.Tensor,
         progress: Callable[[], None] | None) -> np.ndarray:
    """Draw from `steps` until every row is done; the new tokens (B, n) in numpy."""
    new_tokens: list[torch.Tensor] = []
    for token in steps:
        new_tokens.append(token)
        if progress is not None:
            progress()
        if rows.done.all():
            steps.close()  # frees the cache now rather than at garbage collection
            break
    return (torch.stack(new_tokens, 1) if new_tokens else history[:, :0]).cpu().numpy()


def _progress_seconds(progress: ProgressFn | None, rows: SamplerState,
                      asked: float | None) -> Callable[[], None] | None:
    """A per-step call reporting (seconds of the slowest unfinished row, asked) to `progress`."""
    if progress is None:
        return None

    def report() -> None:
        running = rows.new_steps[~rows.done]
        steps = running.min() if len(running) else rows.new_steps.max()
        seconds = float(steps_to_seconds(steps))
        progress(seconds if asked is None else min(seconds, asked), asked)
    return report


def decode_steps(model: GPT, history: torch.Tensor, max_new_tokens: int,
                 draw: Callable[[torch.Tensor], torch.Tensor],
                 static_shapes: bool = False,
                 keep_front: torch.Tensor | None = None,
                 restate: bool = True) -> Iterator[torch.Tensor]:
    """Prefill `history` (B, T), then yield up to `max_new_tokens` (B,) tokens from `draw`.

    `draw` turns (B, V) logits into (B,) ids. Past the context the most recent 3/4 of it is
    re-prefilled from position 0 (a sliding window), so any number of tokens can be made;
    `keep_front` (B, k) tokens, a style token say, go in front of every re-prefilled window, as
    training windows that start mid-piece carry them. With `restate`, the notes still sounding
    where the kept tokens start are restated after the front (restate.py), so the model sees
    every note it may have to release. The cache lives for the iteration only.
    """
    block_size = model.config.block_size
    front = history[:, :0] if keep_front is None else keep_front
    keep = max(1, block_size * 3 // 4 - front.size(1))
    window = torch.cat([front, history[:, -keep:]], 1) if history.size(1) > block_size else history
    # a cache no longer than the piece can get: short pieces never hold a full-context buffer
    capacity = min(block_size, window.size(1) + max_new_tokens)
    positions = torch.arange(capacity, device=history.device)
    sequence = _Sequence(history, model.config.vocab_size, restate)
    model.setup_cache(history.size(0), capacity)
    try:
        if window.size(1) < history.size(1):
            window = sequence.window(front, keep, block_size)
        logits, pos = _prefill(model, window), window.size(1)
        for i in range(max_new_tokens):
            if i > 0 and pos < capacity:  # one step at position pos
                attend = None if static_shapes else pos + 1
                logits = model(sequence.last[:, None], positions[pos : pos + 1], attend)[:, -1]
                pos += 1
            elif i > 0:  # the context is full: slide
                window = sequence.window(front, keep, block_size)
                logits, pos = _prefill(model, window), window.size(1)
            token = draw(logits)
            sequence.append(token)
            yield token
    finally:
        model.clear_cache()


class _Sequence:
    """The tokens of a decode so far (history, then each drawn column), and the window to
    re-prefill when the context is full: front, the restated sounding notes, the recent tokens."""

    def __init__(self, history: torch.Tensor, vocab_size: int, restate: bool):
        self.columns = list(history.unbind(1))  # (B,) tensors; a drawn one may be filled later
        self.tracker = SoundingTracker(history.size(0), vocab_size) if restate else None
        self.scanned = 0
        self.last = history[:, -1]

    def append(self, token: torch.Tensor) -> None:
        self.columns.append(token)
        self.last = token

    def window(self, front: torch.Tensor, keep: int, block_size: int) -> torch.Tensor:
        cut = len(self.columns) - keep
        recent = torch.stack(self.columns[cut:], 1)
        if self.tracker is None:
            return torch.cat([front, recent], 1)
        if cut > self.scanned:
            self.tracker.advance(torch.stack(self.columns[self.scanned : cut], 1).cpu().numpy())
            self.scanned = cut
        said = restatements(self.tracker)
        if said.shape[1] > block_size - keep - front.size(1):  # no room: leave it out
            said = said[:, :0]
        return torch.cat([front, torch.from_numpy(said).to(recent.device), recent], 1)


def style_token(config, slot: int) -> int:
    """The STYLE id of `slot`, refusing slots the checkpoint did not train."""
    if not 0 <= slot < len(config.styles):
        known = ", ".join(config.styles) or "none"
        raise ValueError(f"style slot {slot} is not one of this checkpoint's styles ({known})")
    return style_id(slot)


def _prefill(model: GPT, window: torch.Tensor) -> torch.Tensor:
    """Fill the cache with `window` (B, T) from position 0; logits (B, V) for what follows."""
    positions = torch.arange(window.size(1), device=window.device)
    return model(window, positions, attend_len=window.size(1))[:, -1]
