"""Running a `duet.Duet` in time: a real or a virtual clock, a recorded performance replayed as if
live, MIDI ports, and the whole duet as a `.mid`.

The virtual clock jumps to the next event or poll instead of sleeping, so a replay runs as fast
as the CPU allows with every event at its recorded time; the duet's latency is measured with
`time.perf_counter` inside `Duet.poll` either way, so it is real compute time on both clocks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from .duet import MODEL, PLAYER, Cue, Duet, KeyEvent, Turn

POLL_S = 0.005  # how often the loops ask the duet for its events (the pause is seen this late)

SendFn = Callable[[Cue, str], None]  # (cue, PLAYER or MODEL)
TurnFn = Callable[[Turn], None]


class RealClock:
    """Seconds since it was made; waiting sleeps."""

    def __init__(self):
        self._start = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self._start

    def wait_until(self, time_s: float) -> None:
        delay = time_s - self.now()
        if delay > 0:
            time.sleep(delay)


class VirtualClock:
    """Time that moves only by waiting: `wait_until` jumps there at once."""

    def __init__(self):
        self._now = 0.0

    def now(self) -> float:
        return self._now

    def wait_until(self, time_s: float) -> None:
        self._now = max(self._now, time_s)


class _TurnReporter:
    """Calls `on_turn` once for each turn whose answer has ended."""

    def __init__(self, duet: Duet, on_turn: TurnFn | None):
        self.duet, self.on_turn, self.done = duet, on_turn, 0

    def __call__(self) -> None:
        turns = self.duet.turns
        while self.done < len(turns) and turns[self.done].answer_end_s is not None:
            if self.on_turn is not None:
                self.on_turn(turns[self.done])
            self.done += 1


def performance_events(path) -> list[tuple[float, KeyEvent]]:
    """A `.mid`'s key events by time, to replay (midi_io.MidiReadError for a bad file)."""
    from .midi_io import midi_file_to_performance

    return [(t, KeyEvent(kind, pitch, value))
            for t, kind, pitch, value in midi_file_to_performance(path)]


def replay(duet: Duet, performance: list[tuple[float, KeyEvent]], clock,
           send: SendFn | None = None, on_turn: TurnFn | None = None) -> None:
    """Feed `performance` to `duet` at its times on `clock`, polling every POLL_S, until it is
    played and the last answer has ended; then finish the duet. The player's next phrase cuts an
    answer short, as a live player would. `send` gets every event played (both players')."""
    report = _TurnReporter(duet, on_turn)
    t = duet.turn_settings
    last = performance[-1][0] if performance else 0.0
    give_up = last + t.pause_s + t.max_phrase_s + t.max_answer_s + 1.0
    i = 0
    try:
        while True:
            now = clock.now()
            while i < len(performance) and performance[i][0] <= now:
                at, event = performance[i]
                duet.feed(event, at)
                if send is not None:
                    send(Cue(at, event), PLAYER)
                i += 1
            _send_all(duet.poll(now), send)
            report()
            if (i == len(performance) and duet.idle()) or now > give_up:
                break
            upcoming = performance[i][0] if i < len(performance) else math.inf
            clock.wait_until(min(upcoming, now + POLL_S))
    finally:
        _send_all(duet.finish(clock.now()), send)
        report()


def play_ports(duet: Duet, inport, outport, clock, on_turn: TurnFn | None = None,
               channel: int = 0) -> None:
    """The live loop: read the keyboard (`inport`), feed the duet, send its answers to `outport`
    on `channel`, until Ctrl-C; then release the model's notes."""
    from .midi_ports import key_to_message, message_to_key

    report = _TurnReporter(duet, on_turn)

    def send(cue: Cue, owner: str) -> None:
        if owner == MODEL:
            outport.send(key_to_message(*cue.event, channel=channel))

    try:
        while True:
            for message in inport.iter_pending():
                key = message_to_key(message)
                if key is not None:
                    duet.feed(KeyEvent(*key), clock.now())
            _send_all(duet.poll(clock.now()), send)
            report()
            time.sleep(POLL_S / 2)
    except KeyboardInterrupt:
        pass
    finally:
        _send_all(duet.finish(clock.now()), send)
        report()


def _send_all(cues: list[Cue], send: SendFn | None) -> None:
    if send is not None:
        for cue in cues:
            send(cue, MODEL)


def duet_to_midi_bytes(duet: Duet, bpm: float = 120.0) -> bytes:
    """The whole duet as a `.mid`: the player's notes (pedal folded) on track "player", channel
    1, the model's on track "musicgpt", channel 2; times as they were played."""
    from .midi_io import tracks_to_midi_bytes

    return tracks_to_midi_bytes([("player", duet.notes(PLAYER)), ("musicgpt", duet.notes(MODEL))],
                                bpm=bpm)
