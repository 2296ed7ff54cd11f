"""The app's Duet page without Streamlit: what the browser sends, what it is sent back, and the
`duet.Duet` in between (one per browser session, in st.session_state; duet_page.py draws it).

The page's component (duet_component/index.html) keeps a clock of its own (seconds since it was
loaded, standing still while it waits for an answer), numbers each key event it sends, and sends
every event not yet acknowledged, so a message lost to a quick rerun loses nothing:

    {"duet": 3, "page": "k2x9", "events": [[seq, time_s, "on"|"off"|"pedal", pitch, value], ...],
     "end": {"phrase": 2, "time_s": 5.61} | null, "now": 5.61}

`end` says phrase 2 ended (its pause was seen) at that time; `now` is the page's clock when it
sent. `DuetSession.handle` feeds the new events in order, and for a new `end` starts the answer
and draws it ahead: the first `FIRST_CHUNK_S` at once, the rest after the page has been sent
the start (`draw`). The page is sent every event of the answer drawn so far, which it
schedules at their times (`reply`). While the answer plays the page sends no key releases (a
key held when a long phrase was cut at `max_phrase_s` ends there in the duet); a key struck
cuts the answer short, at its time, in the next message.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

from .duet import MODEL, NOTE_OFF, NOTE_ON, PEDAL, PLAYER, Cue, Duet, KeyEvent, TurnSettings

FIRST_CHUNK_S = 1.5  # music drawn before the page hears of the answer; the rest follows
PAGE_KINDS = {"on": NOTE_ON, "off": NOTE_OFF, "pedal": PEDAL}
MAX_EVENTS = 20_000  # per message: far more than a phrase (8 s) can hold
MAX_TIME_S = 7 * 24 * 3600.0


class MessageError(ValueError):
    """The page sent something this module cannot read; the message says what."""


@dataclass(frozen=True)
class Message:
    duet: int
    page: str
    events: list[tuple[int, float, KeyEvent]]  # (seq, page time, event), by seq
    end: tuple[int, float] | None  # (phrase number, page time its end was seen)
    now: float


def page_turns(turns: TurnSettings) -> TurnSettings:
    """`turns` with the whole answer drawn ahead (the page schedules it; the duet keeps the part
    not yet played as a draft that a key struck cuts)."""
    return replace(turns, lookahead_s=turns.max_answer_s + turns.max_phrase_s + 1.0)


def _time(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and 0 <= value <= MAX_TIME_S):
        raise MessageError(f"{what} must be a time in seconds >= 0, got {value!r}")
    return float(value)


def _int(value, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MessageError(f"{what} must be a whole number in {low}..{high}, got {value!r}")
    return value


def parse_message(value) -> Message | None:
    """The page's message (None: it has sent nothing yet); MessageError says what is wrong."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise MessageError(f"expected an object, got {type(value).__name__}")
    missing = [k for k in ("duet", "page", "events", "now") if k not in value]
    if missing:
        raise MessageError(f"missing {', '.join(missing)}")
    page = value["page"]
    if not isinstance(page, str) or not 0 < len(page) <= 64:
        raise MessageError(f"page must be a short text, got {page!r}")
    events = value["events"]
    if not isinstance(events, list) or len(events) > MAX_EVENTS:
        raise MessageError(f"events must be a list of at most {MAX_EVENTS}")
    parsed = [_event(row, i) for i, row in enumerate(events)]
    parsed.sort(key=lambda e: e[0])
    end = value.get("end")
    if end is not None:
        if not isinstance(end, dict) or "phrase" not in end or "time_s" not in end:
            raise MessageError(f"end must be {{phrase, time_s}} or null, got {end!r}")
        end = (_int(end["phrase"], "end.phrase", 1, 2**31), _time(end["time_s"], "end.time_s"))
    return Message(_int(value["duet"], "duet", 0, 2**31), page, parsed, end,
                   _time(value["now"], "now"))


def _event(row, i: int) -> tuple[int, float, KeyEvent]:
    if not isinstance(row, list) or len(row) != 5:
        raise MessageError(f"event {i} must be [seq, time_s, kind, pitch, value], got {row!r}")
    seq, at, kind, pitch, value = row
    if kind not in PAGE_KINDS:
        raise MessageError(f"event {i}: kind must be one of {', '.join(PAGE_KINDS)}, "
                           f"got {kind!r}")
    return (_int(seq, f"event {i}: seq", 1, 2**31), _time(at, f"event {i}: time"),
            KeyEvent(PAGE_KINDS[kind], _int(pitch, f"event {i}: pitch", 0, 127),
                     _int(value, f"event {i}: value", 0, 127)))


class DuetSession:
    """One browser session's duet: the `Duet` (made with `page_turns`), the page clock's offset
    on the duet's clock (a reloaded page starts its clock again), what has been fed, and the
    answer the page is playing."""

    def __init__(self, duet: Duet, ident: int):
        self.duet, self.id = duet, ident
        self.page: str | None = None
        self.offset = 0.0  # duet time = page time + offset
        self.seq = 0  # the last event fed from this page
        self.time = 0.0  # the duet's clock: the latest time fed or polled
        self.phrase = 0  # the last phrase whose end was handled
        self.answer: dict | None = None  # the page's current answer (see `reply`)
        self._turn = None  # the duet's Turn of that answer while it plays
        self._handed: list[Cue] = []

    # --- the page's messages -------------------------------------------------------------------

    def handle(self, message: Message | None) -> bool:
        """Feed what is new in `message` (an old duet's or an already handled one: nothing).
        True when it started an answer."""
        if message is None or message.duet != self.id:
            return False
        if message.page != self.page:
            self.page, self.seq = message.page, 0
            self.offset = self.time + (1.0 if self.time > 0 else 0.0)
        for seq, at, event in message.events:
            if seq <= self.seq:
                continue
            t = max(at + self.offset, self.time)
            if self.duet.phrase is None:  # an answer may end (or be cut) first
                self._poll(t)
            self.duet.feed(event, t)
            self.time, self.seq = t, seq
        if message.end is not None and message.end[0] > self.phrase:
            self.phrase = message.end[0]
            self._start_answer(max(message.end[1] + self.offset, self.time))
            return True
        if self.duet.phrase is None:
            self._poll(max(message.now + self.offset, self.time))
        return False

    def _poll(self, t: float) -> None:
        cues = self.duet.poll(t)
        self.time = t
        if self._playing():
            self._handed += cues
            self._snapshot()

    def _playing(self) -> bool:
        return (self._turn is not None and self.duet.answer is not None
                and self.duet.turns[-1] is self._turn)

    def _start_answer(self, t: float) -> None:
        started = time.perf_counter()
        cues = self.duet.poll(t)
        duet = self.duet
        if duet.answer is None and duet.phrase is not None and duet.quiet_since is not None:
            t = max(t, duet.quiet_since + duet.turn_settings.pause_s + 1e-6)  # its own rule
            cues += duet.poll(t)
        self.time = t
        self._turn = duet.turns[-1] if duet.answer is not None else None
        self._handed = cues if self._turn is not None else []
        self.answer = dict(phrase=self.phrase, start_s=round(t - self.offset, 3), events=[],
                           done=self._turn is None, compute_ms=0.0)
        self.draw(t + FIRST_CHUNK_S)
        self.answer["compute_ms"] = round((time.perf_counter() - started) * 1000.0, 1)

    def draw(self, until_s: float = math.inf) -> None:
        """Draw the playing answer ahead until `until_s` (duet time) or its end."""
        while self._playing():
            drawn = self.duet.drawn_s()
            if drawn is None or drawn >= until_s:
                break
            self._handed += self.duet.poll(self.time)
            if self.duet.drawn_s() == drawn:
                break  # nothing more to draw (the lookahead is the page's whole answer)
        self._snapshot()

    def _snapshot(self) -> None:
        """The answer's events for the page: those handed out and those drawn ahead."""
        if self.answer is None or not self._playing():
            return
        cues = self._handed + self.duet.upcoming()
        self.answer["events"] = [[round(c.time_s - self.offset, 3), c.event.pitch,
                                  c.event.value if c.event.kind == NOTE_ON else 0]
                                 for c in cues if c.event.kind in (NOTE_ON, NOTE_OFF)]
        self.answer["done"] = self.duet.drawn_s() == math.inf

    def pending(self) -> bool:
        """The playing answer is not drawn to its end yet (call `draw`, then send `reply`)."""
        return self._playing() and self.duet.drawn_s() != math.inf

    # --- what the page is sent ---------------------------------------------------------------

    def reply(self) -> dict:
        """The component's args: this duet, the events fed (per page), and the answer: its
        phrase, start and events [page time, pitch, velocity (0: release)], whether it is drawn
        to its end, and the compute time from the phrase's end to its first chunk."""
        return dict(duet=self.id, acked=dict(page=self.page, seq=self.seq), answer=self.answer)

    def counts(self) -> tuple[int, int]:
        """Notes played and released so far: (the player's, the model's)."""
        return len(self.duet.notes(PLAYER)), len(self.duet.notes(MODEL))
