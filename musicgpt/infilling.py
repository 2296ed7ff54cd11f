"""Regenerate a span of a piece: keep everything outside it, write a new middle that lasts exactly
the span and joins the suffix with no grammar error. Never sees MIDI, only token ids.

With a checkpoint that has the fill-in-the-middle sentinels (fim.py), the model reads the prefix
before the span and the suffix after it, in the order it was trained on:

    header  FILL_SUFFIX <gap shifts> FILL_SUFFIX  suffix-head  FILL_MIDDLE  prefix-tail  FILL_MIDDLE
    -> middle

and writes the middle. A checkpoint of the base vocabulary (no sentinels) continues the prefix
instead; the same constraints make it stop at the span's end and join the suffix, but it cannot
see what comes after, and `Infill.note` says so.

Constraints applied at every draw, on top of the piece grammar (`events.NoteGrammar`):
- time shifts that would run past the span's end are masked;
- once the span is filled, only the tokens that make the sounding notes match the suffix may
  come: releases of notes the suffix does not release, onsets of those it does
  (`fim.sounding_at_start`); the middle ends when they match;
- when the token budget nears its end, only the longest shift that fits and those fix-ups remain
  (each brings the end one token closer), so the middle always ends inside the model's context.
A long piece keeps the nearest prefix and suffix that fit the context beside the middle's budget.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .candidates import choose_middles
from .controls import Controls
from .decode import decode_steps, guided
from .events import NoteGrammar, ids_to_arrays
from .fim import Cut, canonical, cut_at_steps, ids_to_timeline, sounding_at_start
from .model import GPT
from .restate import restate_segment
from .sampling import SamplingSettings, release_overdue, sampling_threads, torch_threads
from .scoring import draw
from .vocab import (
    FILL_MIDDLE_ID,
    FILL_SUFFIX_ID,
    MAX_SHIFT_STEPS,
    N_PITCHES,
    PAD_ID,
    START_ID,
    gap_to_shift_ids,
    is_event,
    is_note_off,
    is_note_on,
    is_shift,
    is_style,
    is_velocity,
    note_off_id,
    note_on_id,
    note_pitch,
    seconds_to_steps,
    shift_id,
    shift_steps,
    steps_to_seconds,
    style_id,
)

MIDDLE_TOKENS_PER_S = 48  # budget for the middle; real piano music averages ~35 tokens/s
MIDDLE_TOKEN_MARGIN = 16
MIN_MIDDLE_TOKENS_PER_S = 16
LOCAL_BUDGET_FACTOR = 1.5
MIN_CONTEXT_TOKENS = 32  # prefix + suffix the model must at least see
CONTEXT_S = 8.0  # the music around a span that sets how long its notes may sound
NOTE_LIMIT_FACTOR = 1.25
MIN_NOTE_S = 1.0

ProgressFn = Callable[[float, float], None]  # (seconds of the span written, span seconds)


@contextlib.contextmanager
def _closing(steps):
    """Close the generator `steps` (if any) when the block ends, however it ends."""
    try:
        yield
    finally:
        if steps is not None:
            steps.close()


class InfillError(ValueError):
    """A span that cannot be infilled; the message is one line for the user."""


@dataclass(frozen=True)
class Infill:
    pieces: list[np.ndarray]  # whole pieces: header, prefix, new middle, suffix (canonical ids)
    middles: list[np.ndarray]  # the new middles alone
    start_s: float
    end_s: float
    note: str | None  # why the result is less than a true infill (base-vocabulary model)


def middle_budget(gap_steps: int, tokens_per_s: float = MIDDLE_TOKENS_PER_S) -> int:
    """Tokens the middle may take: dense music for the span's length, plus a margin."""
    return math.ceil(float(steps_to_seconds(gap_steps)) * tokens_per_s) + MIDDLE_TOKEN_MARGIN


def local_budget(cut: Cut, block_size: int) -> int:
    """The middle's budget from the music around it: `LOCAL_BUDGET_FACTOR` times the tokens per
    second of up to `CONTEXT_S` on each side, at least MIN_MIDDLE_TOKENS_PER_S, and at most what
    leaves the model `MIN_CONTEXT_TOKENS` of context. Every token the middle is not given goes to
    the prefix and suffix the model reads, so sparse music is infilled with more of its
    surroundings in view, and dense music gets the tokens it needs (at a fixed 48 per second, a
    middle in a passage of 20 notes/s was squeezed to half its density)."""
    context = seconds_to_steps(CONTEXT_S)
    before = np.cumsum(shift_steps(cut.prefix[::-1]))  # steps back from the span's start
    after = np.cumsum(shift_steps(cut.suffix))
    tokens = int((before < context).sum() + (after < context).sum())
    seconds = float(steps_to_seconds(min(int(before[-1]) if len(before) else 0, context)
                                     + min(int(after[-1]) if len(after) else 0, context)))
    rate = LOCAL_BUDGET_FACTOR * tokens / seconds if seconds > 0 else MIDDLE_TOKENS_PER_S
    room = (block_size - len(cut.header) - len(gap_to_shift_ids(cut.gap_steps))
            - MIN_CONTEXT_TOKENS - 4)
    # check_span made sure the room holds at least MIDDLE_TOKENS_PER_S for the span
    return min(middle_budget(cut.gap_steps, max(rate, MIN_MIDDLE_TOKENS_PER_S)), room)


def check_span(ids, start_s: float, end_s: float, block_size: int) -> tuple[int, int]:
    """(t1, t2) in steps for a span of the piece `ids`, or InfillError saying what is wrong."""
    if not (math.isfinite(start_s) and math.isfinite(end_s)):
        raise InfillError(f"the span {start_s}..{end_s} s is not a pair of numbers")
    total = int(shift_steps(ids).sum())
    t1, t2 = seconds_to_steps(start_s), seconds_to_steps(end_s)
    if t1 >= 0 and t2 <= t1 and end_s > start_s:
        raise InfillError(f"the span {start_s:g}..{end_s:g} s is shorter than one 10 ms step")
    if t1 < 0 or t2 <= t1:
        raise InfillError(f"the span must start at 0 s or later and end after it starts "
                          f"(got {start_s:g}..{end_s:g} s)")
    if t2 > total:
        raise InfillError(f"the span ends at {end_s:g} s, after the piece "
                          f"({float(steps_to_seconds(total)):.2f} s)")
    needed = middle_budget(t2 - t1) + MIN_CONTEXT_TOKENS + len(gap_to_shift_ids(t2 - t1)) + 6
    if needed > block_size:
        longest = (block_size - MIN_CONTEXT_TOKENS - MIDDLE_TOKEN_MARGIN - 20) / MIDDLE_TOKENS_PER_S
        if longest < 0.1:
            raise InfillError(f"this model's context ({block_size} tokens) is too short to "
                              f"infill any span")
        raise InfillError(f"a span of {end_s - start_s:g} s is longer than this model's context "
                          f"({block_size} tokens) allows; at most about {longest:.1f} s")
    return t1, t2


def with_header(ids, style: int | None, has_styles: bool) -> np.ndarray:
    """`ids` starting with START and, if asked, the STYLE token of slot `style` (replacing any)."""
    ids = np.asarray(ids, dtype=np.int64)
    head = int(np.flatnonzero(is_event(ids))[0]) if is_event(ids).any() else len(ids)
    header = [t for t in ids[:head].tolist() if t != START_ID and not is_style(t)]
    if style is None and has_styles:
        header += [t for t in ids[:head].tolist() if is_style(t)]
    elif style is not None:
        header.append(style_id(style))
    return np.concatenate([[START_ID], header, ids[head:]]).astype(np.int64)


def fim_prompt(cut: Cut, block_size: int, budget: int, restate: bool = True) -> np.ndarray:
    """The training order up to the middle (fim.arrange), with the nearest suffix and prefix
    tokens that fit beside the middle's `budget` (the prefix's notes that still sound where its
    kept tail starts restated, `prefix_tail`)."""
    gap = gap_to_shift_ids(cut.gap_steps)
    room = block_size - budget - len(cut.header) - len(gap) - 4
    n_prefix = min(len(cut.prefix), max(room - min(len(cut.suffix), room * 2 // 5), 0))
    n_suffix = min(len(cut.suffix), room - n_prefix)
    return np.concatenate([cut.header, [FILL_SUFFIX_ID], gap, [FILL_SUFFIX_ID],
                           cut.suffix[:n_suffix], [FILL_MIDDLE_ID],
                           prefix_tail(cut.prefix, n_prefix, restate),
                           [FILL_MIDDLE_ID]]).astype(np.int64)


def continuation_prompt(cut: Cut, block_size: int, budget: int,
                        restate: bool = True) -> np.ndarray:
    room = block_size - budget - len(cut.header)
    return np.concatenate([cut.header, prefix_tail(cut.prefix, max(room, 0), restate)])


def prefix_tail(prefix: np.ndarray, size: int, restate: bool = True) -> np.ndarray:
    """At most `size` tokens: the end of `prefix`, led (with `restate`) by the notes that still
    sound where the kept part starts (restate.py), so the model sees every note the middle may
    have to end."""
    start = max(len(prefix) - size, 0)
    # the restatement takes room from the tail, which may change what it restates
    for _ in range(4 if restate else 0):
        tail = restate_segment(prefix[:start], prefix[start:]) if start else prefix
        if len(tail) <= size:
            return tail
        start = max(start + len(tail) - size, 0)
    return prefix[len(prefix) - size :] if size else prefix[:0]


def _prefix_onsets(prefix: np.ndarray) -> np.ndarray:
    """(128,) the step each pitch was last struck at in `prefix`, counted from its end (<= 0)."""
    line = ids_to_timeline(prefix)
    onset = np.zeros(N_PITCHES, dtype=np.int64)
    struck = is_note_on(line.tokens)
    onset[note_pitch(line.tokens[struck])] = line.steps[struck] - line.total_steps
    return onset


def note_limit_around(ids, t1: int, t2: int, settings: SamplingSettings) -> int | None:
    """Steps a middle's note may sound: `NOTE_LIMIT_FACTOR` times the longest note of the music
    within `CONTEXT_S` of the span (notes that touch the span left out), at least `MIN_NOTE_S`
    and at most `settings.max_note_s` (None: no limit). The music around says how long notes
    are held here; without a limit a third of the middles held one note over the whole span."""
    if settings.max_note_s is None:
        return None
    notes, context = ids_to_arrays(ids), seconds_to_steps(CONTEXT_S)
    before = (notes.start_step >= t1 - context) & (notes.end_step <= t1)
    after = (notes.start_step >= t2) & (notes.start_step < t2 + context)
    lengths = (notes.end_step - notes.start_step)[before | after]
    longest = NOTE_LIMIT_FACTOR * float(lengths.max()) if len(lengths) else 0.0
    return int(min(max(longest, seconds_to_steps(MIN_NOTE_S)),
                   seconds_to_steps(settings.max_note_s)))


class MiddleState:
    """Per-row state of the middles being written: the grammar (notes sounding, from the whole
    prefix), the span time left, the token budget left, and the rows that are done."""

    def __init__(self, cut: Cut, batch: int, vocab_size: int, budget: int,
                 settings: SamplingSettings, seed: int | None, note_limit: int | None = None):
        self.grammar = NoteGrammar(batch, vocab_size)
        for token in np.concatenate([cut.header, cut.prefix]).tolist():
            self.grammar.observe([token] * batch)
        # the step (from the span's start) each sounding pitch was struck at, for `note_limit`
        self.onset = np.repeat(_prefix_onsets(cut.prefix)[None], batch, axis=0)
        self.note_limit = note_limit  # steps a note may sound before it is released (None: any)
        self.fixing = np.zeros(batch, dtype=bool)  # rows in which only the join's fix-ups remain
        self.required = np.zeros(N_PITCHES, dtype=bool)  # must sound where the suffix starts
        self.required[sorted(sounding_at_start(cut.suffix))] = True
        self.gap_steps = cut.gap_steps
        self.left = np.full(batch, cut.gap_steps, dtype=np.int64)  # steps of the span to write
        self.budget = budget
        self.n_new = np.zeros(batch, dtype=np.int64)
        self.done = np.zeros(batch, dtype=bool)
        self.last_velocity = np.zeros(batch, dtype=bool)
        self.settings, self.rng = settings, np.random.default_rng(seed)
        ids = np.arange(vocab_size)
        self._steps = shift_steps(ids)
        self._shift, self._velocity = is_shift(ids), is_velocity(ids)
        self._on, self._off = is_note_on(ids), is_note_off(ids)
        prefix = np.concatenate([cut.header, cut.prefix])
        self.controls = Controls(settings, batch, vocab_size, np.repeat(prefix[None], batch, 0))
        self._update_done()

    def mask(self) -> np.ndarray:
        """(B, V) tokens allowed next in each row."""
        allowed = self.grammar.allowed.copy()
        allowed[:, ~(self._shift | self._velocity | self._on | self._off)] = False  # END too
        allowed &= ~self._shift | (self._steps[None] <= self.left[:, None])
        sounding = self.grammar.sounding
        fix_off = sounding & ~self.required  # notes the middle still has to release
        fix_on = self.required & ~sounding  # notes it still has to strike
        tight = self.budget - self.n_new <= (fix_off.sum(1) + fix_on.sum(1)
                                             + -(-self.left // MAX_SHIFT_STEPS) + 2)
        self.fixing = (self.left == 0) | tight
        for row in np.flatnonzero(self.fixing):
            allowed[row] = False
            allowed[row, note_off_id(np.flatnonzero(fix_off[row]))] = True
            allowed[row, note_on_id(np.flatnonzero(fix_on[row]))] = True
            # a velocity for the notes struck at the end, once, and only while there is room
            allowed[row, self._velocity] = (fix_on[row].any() and not tight[row]
                                            and not self.last_velocity[row])
            if self.left[row] > 0:
                allowed[row, shift_id(min(int(self.left[row]), MAX_SHIFT_STEPS))] = True
        allowed[self.done, PAD_ID] = True  # finished rows draw PAD (then replaced anyway)
        return allowed

    def draw(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, V) logits -> (B,) next ids; finished rows get PAD."""
        allowed = self.mask()  # also says which rows are only closing the join (`fixing`)
        steered, allowed = self.controls.steer(logits.detach().float().cpu().numpy(), allowed,
                                               rows=~(self.fixing | self.done))
        token = self._release_overdue(draw(steered, allowed, self.settings, self.rng))
        token[self.done] = PAD_ID
        self.n_new += ~self.done
        self.left -= np.where(self.done, 0, self._steps[token])
        now = self.gap_steps - self.left
        struck = self._on[token] & ~self.done
        self.onset[struck, note_pitch(token[struck])] = now[struck]
        self.last_velocity = self._velocity[token]
        self.grammar.observe(np.where(self.done, PAD_ID, token))
        self.controls.observe(np.where(self.done, PAD_ID, token))
        self._update_done()
        return torch.from_numpy(token).to(logits.device)

    def _release_overdue(self, token: np.ndarray) -> np.ndarray:
        """A row's draw replaced by the NOTE_OFF of its longest-held note once that has sounded
        `note_limit` steps (not while only the join's fix-ups remain)."""
        if self.note_limit is None:
            return token
        now = (self.gap_steps - self.left)[:, None]
        held = np.where(self.grammar.sounding, now - self.onset, -1)
        return release_overdue(token, held, self.note_limit, self.fixing | self.done)

    def _update_done(self) -> None:
        matches = (self.grammar.sounding == self.required[None]).all(1)
        self.done |= (self.left == 0) & matches


@torch.inference_mode()
def infill(model: GPT, ids, start_s: float, end_s: float, *, num_samples: int = 1,
           settings: SamplingSettings | None = None, seed: int | None = None,
           style: int | None = None, progress: ProgressFn | None = None) -> Infill:
    """Rewrite the music of `ids` between `start_s` and `end_s` (seconds from the piece's start)
    in `num_samples` ways at once.

    Notes starting before `start_s` and from `end_s` on keep their pitch, onset and velocity; a
    note sounding across a cut keeps its outside part (the middle decides when one struck before
    the span ends, and strikes one the suffix releases). `style` is a STYLE slot (None keeps the
    piece's own, if any); with a style, `settings.style_guidance` pushes the middle towards it
    as in `generate` (a second, unstyled decode in lockstep). `settings.grammar` does not apply:
    the grammar is always on. A note of the middle (or one the prefix left sounding) is released
    once it has sounded as long as `note_limit_around` allows. With `settings.candidates` > 1,
    that many middles are written per sample and the best kept (`candidates.choose_middles`).
    """
    config, settings = model.config, settings or SamplingSettings()
    piece = with_header(ids, style if config.has_fim else None, config.has_fim)
    t1, t2 = check_span(piece, start_s, end_s, config.block_size)
    cut = cut_at_steps(piece, t1, t2)
    budget = local_budget(cut, config.block_size)
    if config.has_fim:
        prompt = fim_prompt(cut, config.block_size, budget, settings.restate_sounding)
        note = None
    else:
        prompt = continuation_prompt(cut, config.block_size, budget, settings.restate_sounding)
        note = ("this checkpoint has no fill-in-the-middle tokens: the span continues the music "
                "before it without hearing what follows, then joins it")
    n_rows = num_samples * settings.candidates
    state = MiddleState(cut, n_rows, config.vocab_size, budget, settings, seed,
                        note_limit_around(piece, t1, t2, settings))
    device = model.device
    history = torch.tensor(prompt, device=device).repeat(n_rows, 1)
    drawn: list[np.ndarray] = []
    n_tokens = min(budget, config.block_size - len(prompt))
    draw, unstyled = state.draw, None
    styled = torch.from_numpy(is_style(cut.header))
    if styled.any() and settings.style_guidance > 0:  # the same prompt without its style token
        head = len(cut.header)
        plain = torch.cat([history[:, :head][:, ~styled], history[:, head:]], 1)
        draw, unstyled = guided(model, plain, n_tokens, state.draw, settings, done=state.done)
    steps = decode_steps(model, history, n_tokens, draw, done=state.done)
    with torch_threads(sampling_threads(n_rows, model)), _closing(unstyled):
        for token in steps:
            drawn.append(token.cpu().numpy())
            if progress is not None:
                progress(float(steps_to_seconds(cut.gap_steps - state.left.max())),
                         float(steps_to_seconds(cut.gap_steps)))
            if state.done.all():
                steps.close()
                break
    if not state.done.all():  # cannot happen while the budget guard holds; never return a bad join
        raise RuntimeError("the middle did not close inside its token budget")
    table = np.stack(drawn, 1) if drawn else np.zeros((n_rows, 0), np.int64)
    middles = [row[:n] for row, n in zip(table, state.n_new.tolist(), strict=True)]
    pieces = [canonical(np.concatenate([cut.header, cut.prefix, m, cut.suffix]))
              for m in middles]
    if settings.candidates > 1:
        chosen = choose_middles(model, cut, pieces, middles, piece, t1, t2, settings.candidates)
        pieces, middles = [pieces[i] for i in chosen], [middles[i] for i in chosen]
    return Infill(pieces, middles, float(steps_to_seconds(t1)), float(steps_to_seconds(t2)), note)
