"""The generate sampler: settings, per-row state and rules, and `generate`. Never sees MIDI, only
token ids. The draw itself is scoring.py (numpy; where numba is installed, the draw and this
state's advance are one compiled call there), the decode loop decode.py, best of N
candidates.py.

Grammar-aware by default: before each draw, events that cannot be right are masked out by
`events.NoteGrammar` (NOTE_OFF of a silent pitch, NOTE_ON of a sounding pitch, PAD, START and any
other special mid-piece). Past the model's context the loop keeps going (decode.py): the most
recent 5/8 of the context is re-prefilled (or, with `rolling_cache`, the cache rolls).
Rules that keep each piece music (see the README's "Every piece is music"): no silence past
`max_silence_s` nor a lead-in past `max_lead_in_s`, long notes pushed to end (`release_ramp_s`)
and ended at `max_note_s`, and the best of `candidates` pieces kept.

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

from . import scoring
from .candidates import choose_pieces
from .config import Config
from .controls import Controls
from .decode import decode_steps, guided
from .events import NoteGrammar
from .model import GPT
from .scoring import draw
from .settings import SamplingSettings
from .vocab import (
    END_ID,
    N_PITCHES,
    PAD_ID,
    START_ID,
    STEPS_PER_S,
    VOCAB_SIZE,
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
_OFF_IDS = note_off_id(np.arange(N_PITCHES))
RELEASE_RAMP_PER_S = 2.0  # log-odds added to a long note's NOTE_OFF per second past the ramp


class SamplerState:
    """The state of a batch being sampled, in numpy: the grammar (`events.NoteGrammar`), the music
    each row has written, the rows that are done, each sounding note's onset (for the release
    ramp and the `max_note_s` guard) and the silence guard.

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
        # for `scoring.draw_and_advance`: each id's steps, NOTE_ON, NOTE_OFF, pitch; END and PAD
        self._tables = (shift_steps(ids).astype(np.int64), is_note_on(ids), is_note_off(ids),
                        note_pitch(ids).astype(np.int64), END_ID, PAD_ID)
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
        self.controls = Controls(settings, B, vocab_size, history)
        self._count_from_here()

    def _count_from_here(self) -> None:
        """The music so far is the primer: new music, the lead-in and onsets count from here."""
        self.silence.new_music(self.new_steps)
        self.controls.new_music()
        self.new_steps[:] = 0
        self.onset_step[:] = 0

    def observe(self, tokens) -> None:
        """Advance each row by a token (B,) that was not drawn here (a duet's player)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        self._observe(tokens)
        self.controls.observe(tokens)

    def fork(self) -> SamplerState:
        """A copy to draw a continuation with, leaving this state as it was: the music so far is
        its primer, and it draws from this state's random stream (the duet's answers)."""
        twin = _with_own_arrays(self)
        twin.grammar, twin.silence = _with_own_arrays(self.grammar), _with_own_arrays(self.silence)
        twin.controls = copy.deepcopy(self.controls)
        twin._count_from_here()
        return twin

    def draw(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, V) logits -> (B,) next ids on the logits' device; finished rows get PAD.

        Where numba is installed, with the grammar on and no control steering, the whole draw
        and the state's advance run in one compiled call (`scoring.draw_and_advance`);
        otherwise (and as its reference) the numpy steps below. The recorded draws are the same
        either way."""
        x = logits.detach().float().cpu().numpy()
        if self._compiled_draw_ok(x):
            return torch.from_numpy(self._draw_compiled(x)).to(logits.device)
        held = self._held()  # how long each sounding note has sounded, for the ramp and guard
        token = self._release_overdue(self._sample(x, held), held)
        token[self.done] = PAD_ID
        self.n_new += ~self.done
        self._observe(token)
        self.controls.observe(token)
        self.ended |= token == END_ID
        self.done |= self.ended
        if self.max_steps is not None:
            self.done |= self.new_steps >= self.max_steps
        return torch.from_numpy(token).to(logits.device)

    def _compiled_draw_ok(self, logits: np.ndarray) -> bool:
        """Whether `scoring.draw_and_advance` computes this draw: numba installed, the grammar on
        and past the header (which it treats apart), no steering, a cut within types or none,
        finite logits."""
        s = self.settings
        return (scoring.draw_and_advance is not None and scoring._draw_rows is not None
                and s.grammar and self.grammar.position >= 2 and not self.controls.active
                and (s.within_type or not s.truncates) and logits.dtype == np.float32
                and logits.shape[1] == len(scoring._COLUMN_TYPE)
                and scoring._no_nan_or_posinf(logits))

    def _draw_compiled(self, logits: np.ndarray) -> np.ndarray:
        s, g, guard = self.settings, self.grammar, self.silence
        token = np.empty(len(logits), np.int64)

        def steps(value):  # None -> -1
            return -1 if value is None else int(value)
        g.n_ended += scoring.draw_and_advance(
            np.ascontiguousarray(logits), self.rng.random(len(logits)), token, g.allowed,
            g.sounding, g.ended, self.onset_step, self.new_steps, guard.started, guard.heard,
            guard.music, self.done, self.ended, self.n_new, steps(guard.lead_in),
            steps(guard.gap), steps(self.ramp_steps), steps(self.max_note_steps),
            steps(self.max_steps), RELEASE_RAMP_PER_S / STEPS_PER_S,
            np.float32(max(s.temperature, 1e-5)), s.keep_release_mass, s.truncates, s.top_k,
            np.float32(s.top_p), float(s.min_p), *self._tables, *scoring._DRAW_TABLES)
        g.position += 1
        return token

    def stops(self, asked: float | None) -> list[Stop]:
        """Why each row stopped (rows still running ran out of tokens)."""
        reasons = np.where(self.ended, "end", np.where(self.done, "length", "tokens"))
        return [Stop(str(reason), float(steps_to_seconds(steps)), int(n), asked)
                for reason, steps, n in zip(reasons, self.new_steps, self.n_new, strict=True)]

    def _sample(self, logits: np.ndarray, held: np.ndarray) -> np.ndarray:
        allowed = None
        if self.settings.grammar:
            allowed = self.grammar.allowed
            allowed = self.silence.limit(allowed, self.grammar.sounding, self.new_steps)
            if self.grammar.n_ended:  # nothing may follow END: leave such rows unmasked
                allowed = allowed | self.grammar.ended[:, None]
            logits = self._release_ramp(logits, held)
        logits, allowed = self.controls.steer(logits, allowed)
        return draw(logits, allowed, self.settings, self.rng)

    def _held(self) -> np.ndarray:
        """(B, 128) steps each sounding note has sounded (-1 where the pitch is silent)."""
        return np.where(self.grammar.sounding, self.new_steps[:, None] - self.onset_step, -1)

    def _release_ramp(self, logits: np.ndarray, held: np.ndarray) -> np.ndarray:
        """`logits` with the NOTE_OFF of each note held past `release_ramp_s` raised (`held`:
        `_held()`)."""
        if self.ramp_steps is None or held.max() <= self.ramp_steps:
            return logits
        late = held - self.ramp_steps
        logits = logits.copy()
        logits[:, _OFF_IDS] += np.maximum(late, 0) * (RELEASE_RAMP_PER_S / STEPS_PER_S)
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

    def _release_overdue(self, token: np.ndarray, held: np.ndarray) -> np.ndarray:
        """Replace a row's draw by the NOTE_OFF of its longest-held note once that is overdue."""
        if self.max_note_steps is None:
            return token
        return release_overdue(token, held, self.max_note_steps)


def warm_up_draw() -> None:
    """Compile (or load from numba's disk cache) the compiled draw now, by a draw on made-up
    logits past the header, rather than at a generation's first draws."""
    scoring.warm_up()
    state = SamplerState(np.array([[START_ID, note_on_id(60)]]), SamplingSettings(top_p=0.9),
                         VOCAB_SIZE, 1.0, 0)
    state.draw(torch.zeros(1, VOCAB_SIZE))


def _with_own_arrays(state):
    """A shallow copy of `state` with copies of its numpy arrays (its mutable parts; the lists
    it holds are lookup tables, never changed)."""
    twin = copy.copy(state)
    for name, value in vars(state).items():
        if isinstance(value, np.ndarray):
            setattr(twin, name, value.copy())
    return twin


def release_overdue(token: np.ndarray, held: np.ndarray, limit: int,
                    spare: np.ndarray | None = None) -> np.ndarray:
    """`token` (B,) with each row whose longest-held note has sounded `limit` steps or more
    (`held` (B, 128): steps sounded, -1 where silent) drawing that note's NOTE_OFF instead;
    rows in `spare` keep their draw."""
    oldest = held.argmax(1)
    overdue = held[np.arange(len(token)), oldest] >= limit
    if spare is not None:
        overdue &= ~spare
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
        self._longest = int(self._shift.max())
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
        # a few rows: plain ints cost less than a dozen numpy calls on (B,) arrays
        started, music, steps = self.started.tolist(), self.music.tolist(), new_steps.tolist()
        quiet, heard = (~sounding.any(1)).tolist(), self.heard.tolist()
        limited = []
        for row in range(len(started)):
            room = None
            if self.lead_in is not None and not started[row]:
                room = self.lead_in - steps[row]
            elif self.gap is not None and music[row] and quiet[row]:  # past the lead-in
                room = self.gap - (steps[row] - heard[row])
            if room is not None and room < self._longest:
                limited.append((row, room))
        if not limited:
            return allowed
        allowed = allowed.copy()
        for row, room in limited:
            allowed[row] &= ~(self._is_shift & (self._shift > room))
        return allowed


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
    """What `generate_pieces` made: per row, its ids (primer + new) and why it stopped; and
    how many ids of each row came before the new ones (START, a style token, the primer)."""

    rows: list[np.ndarray]
    stops: list[Stop]
    primer_len: int = 0


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
                    threads: int | None = None, fast: bool = True) -> Generation:
    """Continue `primer` (ids, START prepended if missing) into `num_samples` pieces at once.

    `style` (a STYLE slot of the model's config, see `Config.style_slot`) puts that style token
    right after START, as in training, and keeps it in front when the window slides.

    Each row stops at END, once its new music reaches `max_seconds`, or after `max_new_tokens`
    (default: `token_budget(max_seconds)`, room for music far denser than real piano music).
    `progress(seconds, asked)` follows the slowest unfinished row's music.
    `static_shapes` (default: on for CUDA) attends over the whole cache each step so shapes never
    change; off, a CPU step reads only the filled part of the cache, which is faster in eager mode.
    `threads` torch threads decode (default: `sampling_threads`); the caller's count is restored.
    `fast` (default) decodes each step with `engine.fast_step_for`'s step on a CPU (the compiled
    kernel); False keeps every step on `GPT.forward` (the reference the fast paths are tested and
    benchmarked against).
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
            draw, unstyled = guided(model, plain, budget, rows.draw, settings, static, fast,
                                    rows.done)
        steps = decode_steps(model, history, budget, draw, static,
                             keep_front=history[:, 1 : 1 + n_front],
                             restate=settings.restate_sounding, fast=fast, done=rows.done,
                             roll=settings.rolling_cache)
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
                               max_seconds, settings)
        pieces, stops = [pieces[i] for i in chosen], [stops[i] for i in chosen]
    return Generation(pieces, stops, len(start))


def _start(model: GPT, primer, num_samples: int, style: int | None) -> tuple[torch.Tensor, int]:
    """(the batch's history (B, T): START, the style token if any, the primer), style tokens."""
    primer_ids = [int(t) for t in (primer if primer is not None else [])]
    if primer_ids and primer_ids[0] == START_ID:
        primer_ids = primer_ids[1:]
    if style is None and primer_ids and is_style(primer_ids[0]):  # [START, STYLE, ...] primer
        style, primer_ids = primer_ids[0] - style_id(0), primer_ids[1:]
    front = [] if style is None else [style_token(model.config, style)]
    primer_ids = [START_ID, *front, *(t for t in primer_ids if not is_style(t) or not front)]
    history = torch.tensor(primer_ids, device=model.device).repeat(num_samples, 1)
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


def style_token(config, slot: int) -> int:
    """The STYLE id of `slot`, refusing slots the checkpoint did not train."""
    if not 0 <= slot < len(config.styles):
        known = ", ".join(config.styles) or "none"
        raise ValueError(f"style slot {slot} is not one of this checkpoint's styles ({known})")
    return style_id(slot)
