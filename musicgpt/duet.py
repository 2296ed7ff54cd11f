"""A live duet: the player plays a phrase, the model answers, turn by turn, and the whole duet
(both players' notes) is one piece in the model's context. No threads, ports, clock or
Streamlit: the caller says what happened and when, `Duet.feed(event, time_s)`, and asks what to
play, `Duet.poll(time_s)`; duet_live.py runs it against MIDI ports or a recorded performance.
The events it takes and gives and the piece the played tokens make are in duet_piece.py, the turn
settings and each turn's record in duet_turns.py.

Turns. A phrase starts at the player's first key. It ends when nothing of the player's has
sounded for `TurnSettings.pause_s` (keys up and, the pedal folded in, no note held by it), or
once it has lasted `max_phrase_s`. The answer then starts at once and lasts about the phrase's
length (`answer_ratio`, clamped to `min_answer_s`..`max_answer_s`); its notes still sounding at
its end are released. A key the player strikes during the answer cuts it short there: the
answer's sounding notes are released and a new phrase starts. Releases and the pedal during an
answer (keys still held when a long phrase was cut at `max_phrase_s`) go into the piece without
cutting it.

Prefill. Each player event becomes tokens (time shifts, NOTE_OFF, VELOCITY when its bin
changes, NOTE_ON; the pedal folded into note lengths as midi_io does: a key released under the
pedal sounds until the pedal lifts or the key is struck again) and is pushed into the KV cache
as it arrives (duet_context.py). When the phrase ends, only the pause's time shift and the few
tokens up to the answer's first NOTE_ON are left to compute.

The answer is drawn by a fork of the duet's `sampling.SamplerState` (the grammar, the silence
and long-note rules, temperature and truncation of `SamplingSettings`) a little ahead of the
clock (`lookahead_s`), and each of its events is handed out by `poll` when its time comes
(the first at once). Drawn tokens whose time has not come are a draft: when the player plays,
the draft is cut from the context and the model's notes so far stay. The answer never draws
END, opens with a note (no time shift before its first NOTE_ON) and never releases a note the
player holds. Silence between turns longer than `max_idle_s` is shortened in the context
(never in the times handed out), so waiting at the keyboard does not fill the model's context.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .controls import key_of
from .duet_context import DuetContext
from .duet_piece import (
    ID_IS_NOTE_ON,
    ID_PITCH,
    ID_SHIFT_STEPS,
    MODEL,
    NOTE_OFF,
    NOTE_ON,
    PEDAL,
    PLAYER,
    SHIFT_IDS,
    Cue,
    KeyEvent,
    PlayedPiece,
)
from .duet_turns import FOLLOW_KEY_STRENGTH, Turn, TurnSettings
from .events import NoteArrays
from .model import GPT
from .sampling import SamplerState, SamplingSettings, style_token, token_budget
from .vocab import (
    END_ID,
    START_ID,
    STEPS_PER_S,
    gap_to_shift_ids,
    note_off_id,
    note_on_id,
    seconds_to_steps,
    velocity_id,
    velocity_to_bin,
)

ROOM = 48  # positions kept free in the cache while the player plays (a slide costs ~35 ms)
MAX_DRAWS_PER_POLL = 8  # tokens one poll may draw ahead, so a poll stays short (~10 ms)
MAX_OPENING_TOKENS = 32  # tokens drawn for the first note before giving up on it


@dataclass
class _Phrase:
    start_s: float
    notes: int = 0


@dataclass
class _Answer:
    """The answer being drawn: its sampler (a fork of the duet's), its draft (drawn tokens not
    yet played, with the step each happens at), and its turn."""

    state: SamplerState
    end_step: int
    budget: int
    turn: Turn
    detected: float  # perf_counter() when the phrase's end was detected
    clock: int  # the context step after the last drawn token
    draft: list[tuple[int, int]] = field(default_factory=list)
    drawn: int = 0
    struck: bool = False
    released: bool = False  # the closing NOTE_OFFs are drawn
    key: str | None = None  # the key it is steered towards (TurnSettings.follow_key)


class Duet:
    """The duet between a player and `model` (see the module docstring). Times are seconds on
    one clock the caller keeps, never going back."""

    def __init__(self, model: GPT, settings: SamplingSettings | None = None,
                 turns: TurnSettings = TurnSettings(), *, style: int | None = None,
                 seed: int | None = None, fast: bool = True):
        settings = settings or SamplingSettings()
        front = [START_ID] + ([] if style is None else [style_token(model.config, style)])
        guidance = settings.style_guidance if style is not None else 0.0
        self.context = DuetContext(model, front, guidance, fast)
        self.shadow = SamplerState(np.array([front]), settings, model.config.vocab_size, None,
                                   seed)
        self.settings, self.turn_settings = settings, turns
        self.piece = PlayedPiece()
        self.offset = 0  # wall step - context step (grows when idle time is shortened)
        self.keys: set[int] = set()
        self.pedal = False
        self.pedalled: set[int] = set()  # keys released while the pedal holds them
        self.phrase: _Phrase | None = None
        self.quiet_since: float | None = 0.0  # when the player's last note stopped sounding
        self.answer: _Answer | None = None
        self.turns: list[Turn] = []
        self.outbox: list[Cue] = []

    # --- the caller's side ------------------------------------------------------------------

    @torch.inference_mode()
    def feed(self, event: KeyEvent, time_s: float) -> None:
        """The player did `event` at `time_s`. A NOTE_ON cuts an answer short."""
        step = self._context_step(time_s, round, shorten_idle=True)
        strike = event.kind == NOTE_ON and event.value > 0
        if self.answer is not None:
            self._play_until(step)
            if strike:
                self._drop_draft()
                self._end_answer(step, cut=True)
        tokens = self._player_tokens(event, step)
        if tokens and self.answer is not None:
            self._drop_draft()
        for token in tokens:
            self._play(token, PLAYER, velocity=event.value if ID_IS_NOTE_ON[token] else None)
        if tokens and self.answer is not None:
            self.answer.state = self._fork(self.answer.key)  # redraw from what was played
        if strike:
            self.phrase = self.phrase or _Phrase(time_s)
            self.phrase.notes += 1
        if self.piece.pitches(PLAYER):
            self.quiet_since = None
        elif self.quiet_since is None:
            self.quiet_since = time_s
        if self.answer is None:
            self.context.make_room(ROOM)

    @torch.inference_mode()
    def poll(self, time_s: float) -> list[Cue]:
        """The model's events due by `time_s` (ends a phrase, draws the answer ahead)."""
        started = False
        if self.phrase is not None and self.answer is None:
            ended = self._phrase_end(time_s)
            if ended is not None:
                self._start_answer(time_s, *ended)
                started = True  # hand the first note out now, draw ahead at the next poll
        if self.answer is not None:
            step = self._context_step(time_s, math.floor)
            if not started:
                self._draw_ahead(step)
            self._play_until(step)
            if self.answer.released and not self.answer.draft:
                self._end_answer(self.piece.step, cut=False)
        return self._hand_out()

    @torch.inference_mode()
    def finish(self, time_s: float) -> list[Cue]:
        """End the duet at `time_s`: the answer stops, the model's notes are released (returned
        to send) and every note still sounding ends there."""
        if self.answer is not None:
            step = self._context_step(time_s, math.floor)
            self._play_until(step)
            self._drop_draft()
            self._end_answer(step, cut=True)
        now = self._context_step(time_s, round) + self.offset
        for pitch, opened in sorted(self.piece.sounding.items()):
            self.piece.close(pitch, opened, now)
        self.piece.sounding.clear()
        return self._hand_out()

    def upcoming(self) -> list[Cue]:
        """The answer's drawn events that `poll` has not handed out yet, by time: what it will
        play unless the player plays first (a caller that schedules ahead, like the app's duet
        page, sends them on). Nothing is played or changed."""
        answer = self.answer
        if answer is None:
            return []
        piece = PlayedPiece()  # a scratch copy of what sounds, to pair the draft's releases
        piece.step, piece.velocity_bin = self.piece.step, self.piece.velocity_bin
        piece.sounding = dict(self.piece.sounding)
        out = []
        for token, _ in answer.draft:
            event = piece.apply(token, MODEL, self.offset, None)
            if event is not None:
                out.append(Cue(self._wall_s(piece.step), event))
        return out

    def drawn_s(self) -> float | None:
        """How far (seconds on the caller's clock) the answer is drawn: inf once it is drawn to
        its end (its closing releases too), None without an answer."""
        answer = self.answer
        if answer is None:
            return None
        return math.inf if answer.released else self._wall_s(answer.clock)

    def idle(self) -> bool:
        """No phrase is being played and no answer is playing."""
        return self.phrase is None and self.answer is None

    def notes(self, owner: str) -> NoteArrays:
        """The notes `owner` (PLAYER or MODEL) has played and released, in 10 ms steps of the
        caller's clock, by onset."""
        return _arrays(sorted(self.piece.notes[owner], key=lambda n: (n[2], n[0])))

    def tokens(self) -> list[int]:
        """The ids in the model's cache, position 0 first (front, then the recent piece)."""
        return self.context.window()

    # --- turns --------------------------------------------------------------------------------

    def _phrase_end(self, time_s: float) -> tuple[float, str] | None:
        """(the phrase's end, why) once it has ended, else None."""
        t = self.turn_settings
        if self.quiet_since is not None and time_s - self.quiet_since >= t.pause_s:
            return max(self.quiet_since, self.phrase.start_s), "pause"
        if time_s - self.phrase.start_s >= t.max_phrase_s:
            return self.phrase.start_s + t.max_phrase_s, "max_length"
        return None

    def _start_answer(self, time_s: float, end_s: float, why: str) -> None:
        detected = time.perf_counter()
        phrase, self.phrase = self.phrase, None
        asked = self.turn_settings.answer_seconds(end_s - phrase.start_s)
        step = self._context_step(time_s, math.floor)
        for token in gap_to_shift_ids(step - self.piece.step):
            self._play(int(token), PLAYER)
        turn = Turn(phrase.start_s, end_s, why, phrase.notes, self._wall_s(step), asked)
        self.turns.append(turn)
        key = self._phrase_key(phrase) if self.turn_settings.follow_key else None
        self.answer = _Answer(self._fork(key), step + seconds_to_steps(asked),
                              token_budget(asked), turn, detected, step, key=key)
        while not self.answer.struck and self.answer.drawn < MAX_OPENING_TOKENS:
            self._draw_one()

    def _fork(self, key: str | None) -> SamplerState:
        """A sampler for the answer from the duet so far, steered towards `key` (None: as the
        settings ask)."""
        state = self.shadow.fork()
        if key is not None and self.settings.key is None:
            state.controls = state.controls.with_key(key, FOLLOW_KEY_STRENGTH)
        return state

    def _phrase_key(self, phrase: _Phrase) -> str | None:
        """The key the player's notes since `phrase` started are heard in (None: no notes)."""
        first, now = round(phrase.start_s * STEPS_PER_S) - 1, self.piece.step + self.offset
        rows = [n for n in self.piece.notes[PLAYER] if n[2] >= first]
        rows += [(pitch, velocity, start, now) for pitch, (who, start, velocity)
                 in self.piece.sounding.items() if who == PLAYER and first <= start < now]
        return key_of(_arrays(rows)) if rows else None

    def _end_answer(self, step: int, cut: bool) -> None:
        """Release the model's sounding notes at `step` and close the turn (the draft is
        already dropped or played)."""
        answer, self.answer = self.answer, None
        offs = [int(note_off_id(p)) for p in sorted(self.piece.pitches(MODEL))]
        if offs:
            for token in [*gap_to_shift_ids(step - self.piece.step), *offs]:
                self._play(int(token), MODEL)
        answer.turn.answer_end_s = self._wall_s(max(step, self.piece.step))
        answer.turn.cut = cut

    # --- the answer ---------------------------------------------------------------------------

    def _draw_ahead(self, step: int) -> None:
        answer = self.answer
        ahead = step + seconds_to_steps(self.turn_settings.lookahead_s)
        for _ in range(MAX_DRAWS_PER_POLL):
            if answer.released or answer.clock > ahead:
                return
            if answer.clock >= answer.end_step or answer.drawn >= answer.budget:
                self._draw_release()
                return
            self._draw_one()

    def _draw_one(self) -> None:
        """Draw the answer's next token into the context and the draft."""
        answer = self.answer
        logits = self.context.logits().clone()
        logits[:, END_ID] = -math.inf  # the duet goes on
        if not answer.struck:  # the answer opens with a note, at once
            logits[:, SHIFT_IDS] = -math.inf
        held = self.piece.pitches(PLAYER)
        if held:  # the player's notes are the player's to release
            logits[:, note_off_id(np.array(held))] = -math.inf
        token = int(answer.state.draw(logits)[0])
        self._draft(token)
        answer.struck |= ID_IS_NOTE_ON[token]

    def _draw_release(self) -> None:
        """Append NOTE_OFFs for the model's notes sounding at the end of the draft."""
        answer = self.answer
        sounding = set(self.piece.pitches(MODEL))
        for token, _ in answer.draft:
            if ID_PITCH[token] >= 0:
                (sounding.add if ID_IS_NOTE_ON[token] else sounding.discard)(ID_PITCH[token])
        for pitch in sorted(sounding):
            self._draft(int(note_off_id(pitch)))
        answer.released = True

    def _draft(self, token: int) -> None:
        answer = self.answer
        self.context.push(token)
        answer.clock += ID_SHIFT_STEPS[token]
        answer.draft.append((token, answer.clock))
        answer.drawn += 1

    def _play_until(self, step: int) -> None:
        """Play the draft's tokens that happen by `step`."""
        answer = self.answer
        n = 0
        while n < len(answer.draft) and answer.draft[n][1] <= step:
            n += 1
        for token, _ in answer.draft[:n]:
            self._play(token, MODEL, pushed=True)
        del answer.draft[:n]

    def _drop_draft(self) -> None:
        """Cut the draft from the context (the caller forks a new sampler for the answer)."""
        answer = self.answer
        if answer.draft:
            self.context.cut(len(self.context.tokens) - len(answer.draft))
            answer.draft.clear()
        answer.clock, answer.released = self.piece.step, False

    # --- tokens -------------------------------------------------------------------------------

    def _player_tokens(self, event: KeyEvent, step: int) -> list[int]:
        """The tokens of one player event at `step` (none for a key the pedal holds, a pedal
        going down, or a release of a note not sounding)."""
        pitch, out = event.pitch, []
        if event.kind == NOTE_ON and event.value > 0:
            self.keys.add(pitch)
            self.pedalled.discard(pitch)
            if pitch in self.piece.sounding:  # struck again: the old note ends here
                out.append(int(note_off_id(pitch)))
            velocity_bin = velocity_to_bin(event.value)
            if velocity_bin != self.piece.velocity_bin:
                out.append(int(velocity_id(velocity_bin)))
            out.append(int(note_on_id(pitch)))
        elif event.kind in (NOTE_ON, NOTE_OFF):
            self.keys.discard(pitch)
            if pitch in self.piece.pitches(PLAYER):
                if self.pedal:
                    self.pedalled.add(pitch)
                else:
                    out.append(int(note_off_id(pitch)))
        elif event.kind == PEDAL:
            down = event.value >= 64
            if self.pedal and not down:
                held = set(self.piece.pitches(PLAYER))
                out += [int(note_off_id(p)) for p in sorted(self.pedalled & held)]
                self.pedalled.clear()
            self.pedal = down
        if not out:
            return []
        return [*(int(t) for t in gap_to_shift_ids(step - self.piece.step)), *out]

    def _play(self, token: int, owner: str, velocity: int | None = None,
              pushed: bool = False) -> None:
        """`token` happens: into the context (unless drawn there already), the duet's sampler
        and the piece; a model note goes to the outbox."""
        if not pushed:
            self.context.push(token)
        self.shadow.observe([token])
        event = self.piece.apply(token, owner, self.offset, velocity)
        if owner == MODEL and event is not None:
            self.outbox.append(Cue(self._wall_s(self.piece.step), event))
            if event.kind == NOTE_ON and self.answer is not None:
                self.answer.turn.answer_notes += 1

    def _hand_out(self) -> list[Cue]:
        out, self.outbox = self.outbox, []
        turn = self.turns[-1] if self.turns else None
        if turn is not None and turn.latency_ms is None and self.answer is not None and any(
                cue.event.kind == NOTE_ON for cue in out):
            turn.latency_ms = (time.perf_counter() - self.answer.detected) * 1000.0
        return out

    # --- time ---------------------------------------------------------------------------------

    def _context_step(self, time_s: float, rounding, shorten_idle: bool = False) -> int:
        """The context step of `time_s` (never before the piece's end). Fed after silence
        between turns, the silence is shortened to `max_idle_s` (none before the first note)."""
        step = int(rounding(time_s * STEPS_PER_S + 1e-9)) - self.offset
        if shorten_idle and self.idle() and not self.piece.sounding:
            cap = (seconds_to_steps(self.turn_settings.max_idle_s) if self.piece.notes[PLAYER]
                   or self.piece.notes[MODEL] else 0)
            if step - self.piece.step > cap:
                self.offset += step - self.piece.step - cap
                step = self.piece.step + cap
        return max(step, self.piece.step)

    def _wall_s(self, step: int) -> float:
        return (step + self.offset) / STEPS_PER_S


def _arrays(rows: list[tuple[int, int, int, int]]) -> NoteArrays:
    """(pitch, velocity, start, end) rows as NoteArrays."""
    return NoteArrays(*(np.array([r[i] for r in rows], dtype=np.int64) for i in range(4)))
