"""The live duet on synthetic key streams and a tiny model: turn-taking (pause, longest phrase,
pedal), cutting an answer short, the context the model answers from, and `musicgpt duet
--replay` end to end. Time is virtual (the test says when), so nothing here waits."""

from __future__ import annotations

import json
import sys

import mido
import numpy as np
import pytest
import torch
from helpers import Track, write_midi

from musicgpt.cli import main
from musicgpt.duet import MODEL, NOTE_OFF, NOTE_ON, PEDAL, PLAYER, Duet, KeyEvent, TurnSettings
from musicgpt.events import ids_to_arrays
from musicgpt.sampling import SamplingSettings
from musicgpt.vocab import START_ID, style_id

TICK_S = 0.01


def _keys(notes, pedals=()) -> list[tuple[float, KeyEvent]]:
    """Key events of (pitch, start_s, end_s) notes and (down_s, up_s) pedal spans, by time
    (at one time: releases and the pedal first, then strikes)."""
    out = []
    for pitch, start, end in notes:
        out += [(start, 1, KeyEvent(NOTE_ON, pitch, 80)), (end, 0, KeyEvent(NOTE_OFF, pitch))]
    for down, up in pedals:
        out += [(down, 0, KeyEvent(PEDAL, 0, 127)), (up, 0, KeyEvent(PEDAL, 0, 0))]
    return [(t, event) for t, _, event in sorted(out, key=lambda e: (e[0], e[1]))]


class _Stage:
    """Drives a Duet on a virtual clock: feeds key events at their times, polls every tick."""

    def __init__(self, duet: Duet):
        self.duet, self.now, self.cues = duet, 0.0, []

    def play(self, keys, until_s: float, each_tick=None) -> None:
        keys = [k for k in keys if k[0] >= self.now - 1e-9]
        i = 0
        while self.now <= until_s + 1e-9:
            while i < len(keys) and keys[i][0] <= self.now + 1e-9:
                self.duet.feed(keys[i][1], keys[i][0])
                i += 1
            self.cues += self.duet.poll(self.now)
            if each_tick is not None:
                each_tick()
            self.now = round(self.now + TICK_S, 6)


def _duet(model, **turns) -> Duet:
    return Duet(model, turns=TurnSettings(**turns), seed=0)


def test_a_phrase_ends_once_nothing_has_sounded_for_the_pause(tiny_model):
    stage = _Stage(_duet(tiny_model, pause_s=0.6))
    keys = _keys([(60, 0.0, 0.4), (64, 0.9, 1.0)])  # a 0.5 s gap inside the phrase
    stage.play(keys, until_s=1.55)
    assert stage.duet.turns == [] and stage.cues == []
    stage.play(keys, until_s=1.6)
    (turn,) = stage.duet.turns
    assert (turn.ended_by, turn.phrase_start_s, turn.phrase_end_s) == ("pause", 0.0, 1.0)
    assert turn.answer_start_s == pytest.approx(1.6) and turn.phrase_notes == 2
    first = stage.cues[0]  # the answer opens with a note, at once
    assert first.event.kind == NOTE_ON and first.time_s == pytest.approx(turn.answer_start_s)
    assert turn.latency_ms is not None and turn.latency_ms > 0


def test_a_phrase_with_no_pause_ends_at_the_longest_phrase(tiny_model):
    stage = _Stage(_duet(tiny_model, pause_s=0.6, max_phrase_s=3.0))
    legato = [(60 + i % 7, i * 0.25, i * 0.25 + 0.3) for i in range(20)]  # 5 s, never quiet
    stage.play(_keys(legato), until_s=2.99)
    assert stage.duet.turns == []
    stage.play(_keys(legato), until_s=3.0)
    (turn,) = stage.duet.turns
    assert (turn.ended_by, turn.phrase_end_s, turn.answer_start_s) == ("max_length", 3.0, 3.0)


def test_notes_held_by_the_pedal_keep_the_phrase_going_and_end_at_its_lift(tiny_model):
    stage = _Stage(_duet(tiny_model, pause_s=0.6))
    # keys up by 0.7 s, the pedal holds them to 2.0; 60 struck again under the pedal
    keys = _keys([(60, 0.0, 0.3), (64, 0.3, 0.6), (60, 0.5, 0.7)], pedals=[(0.1, 2.0)])
    stage.play(keys, until_s=2.55)
    assert stage.duet.turns == []
    stage.play(keys, until_s=2.6)
    (turn,) = stage.duet.turns
    assert (turn.ended_by, turn.phrase_end_s) == ("pause", 2.0)
    played = stage.duet.notes(PLAYER)
    got = sorted(zip(played.pitch.tolist(), played.start_step.tolist(),
                     played.end_step.tolist(), strict=True))
    assert got == [(60, 0, 50), (60, 50, 200), (64, 30, 200)]  # re-struck: ends at the strike


def test_the_player_cuts_the_answer_short_by_playing(tiny_model):
    stage = _Stage(_duet(tiny_model, pause_s=0.6, min_answer_s=3.0))
    keys = _keys([(60, 0.0, 0.4), (64, 0.5, 1.0), (67, 2.3, 2.5)])  # 67 comes mid-answer
    stage.play(keys, until_s=2.29)
    assert stage.duet.answer is not None
    stage.play(keys, until_s=2.5)
    turn = stage.duet.turns[0]
    assert turn.cut and turn.answer_end_s == pytest.approx(2.3)
    model = stage.duet.notes(MODEL)
    assert len(model) == turn.answer_notes > 0
    assert model.start_step.max() < 230 and model.end_step.max() <= 230
    after = [c for c in stage.cues if c.time_s > 2.3 + 1e-9]
    assert after == []  # nothing more from the model until the new phrase ends
    assert stage.duet.phrase is not None and stage.duet.phrase.start_s == 2.3


def test_the_context_holds_both_players_notes_as_they_were_played(make_tiny_model):
    duet = _duet(make_tiny_model(block_size=512), pause_s=0.5, min_answer_s=1.5)
    stage = _Stage(duet)
    keys = _keys([(60, 0.0, 0.4), (62, 0.4, 0.8), (64, 0.8, 1.2),  # phrase 1
                  (67, 2.2, 2.6), (65, 2.6, 3.0)])  # phrase 2 cuts the answer (1.7-3.2)
    stage.play(keys, until_s=6.0)
    assert duet.idle() and duet.turns[0].cut and not duet.turns[1].cut
    both = [duet.notes(owner) for owner in (PLAYER, MODEL)]
    want = sorted(zip(*(np.concatenate([getattr(n, f) for n in both]).tolist()
                        for f in ("start_step", "pitch", "end_step")), strict=True))
    decoded = ids_to_arrays(duet.tokens()[1:])  # after START
    assert sorted(zip(decoded.start_step.tolist(), decoded.pitch.tolist(),
                      decoded.end_step.tolist(), strict=True)) == want


@pytest.mark.parametrize("attention", ["absolute", "relative"])
def test_the_prefilled_cache_gives_a_fresh_forwards_logits(make_tiny_model, attention):
    model = make_tiny_model(attention=attention)  # block_size 64: the window slides often
    duet = _duet(model, pause_s=0.3, min_answer_s=0.5, max_answer_s=1.0)
    stage = _Stage(duet)
    worst = []

    def compare() -> None:
        if round(stage.now * 100) % 7:
            return
        with torch.no_grad():
            fresh = model(torch.tensor([duet.tokens()]))[0, -1]
        worst.append(float((duet.context.logits()[0] - fresh).abs().max()))
    phrases = [(48 + (i * 5) % 24, 1.5 * (i // 4) + 0.2 * (i % 4), 1.5 * (i // 4) + 0.2 * (i % 4)
                + 0.15) for i in range(24)]  # 6 phrases of 4 notes, each cutting the answer
    stage.play(_keys(phrases), until_s=10.0, each_tick=compare)
    assert len(duet.context.tokens) > 2 * model.config.block_size  # slid several times
    assert any(t.cut for t in duet.turns) and len(worst) > 100
    assert max(worst) < 1e-4


def test_style_guidance_mixes_the_styled_and_unstyled_contexts(make_tiny_model):
    model = make_tiny_model(styles=["a", "b"])
    duet = Duet(model, SamplingSettings(style_guidance=1.5), TurnSettings(pause_s=0.3),
                style=1, seed=0)
    stage = _Stage(duet)
    stage.play(_keys([(60 + i, 0.2 * i, 0.2 * i + 0.15) for i in range(12)]), until_s=4.0)
    styled, plain = duet.context.windows
    assert styled.front == [START_ID, style_id(1)] and plain.front == [START_ID]
    with torch.no_grad():
        fresh = [model(torch.tensor([w.front + duet.context.tokens[w.start:]]))[0, -1]
                 for w in (styled, plain)]
    mixed = fresh[1] + 2.5 * (fresh[0] - fresh[1])
    assert float((duet.context.logits()[0] - mixed).abs().max()) < 1e-4


def test_turn_settings_refuse_nonsense():
    with pytest.raises(ValueError, match="pause_s"):
        TurnSettings(pause_s=0)
    with pytest.raises(ValueError, match="min_answer_s"):
        TurnSettings(min_answer_s=9, max_answer_s=8)
    assert TurnSettings().answer_seconds(0.5) == 2.0
    assert TurnSettings().answer_seconds(5.0) == 5.0
    assert TurnSettings().answer_seconds(20.0) == 8.0


# --- the command ------------------------------------------------------------------------------

CALLS = [(60 + i % 8, 80, 6.0 * (i // 8) + 0.25 * (i % 8), 6.0 * (i // 8) + 0.25 * (i % 8) + 0.2)
         for i in range(24)]  # three 2 s phrases, 4 s apart


@pytest.fixture(scope="module")
def replayed(tiny_checkpoint, tmp_path_factory):
    """`musicgpt duet --replay` of three phrases (the first under the pedal): (stdout lines,
    the saved duet)."""
    folder = tmp_path_factory.mktemp("duet")
    performance = folder / "calls.mid"
    write_midi(performance, [Track(CALLS, pedals=[(0.5, 2.5)])])
    out = folder / "duet.mid"
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["duet", "--replay", str(performance), "--virtual-clock", "--json",
                     "--save", str(out), "--checkpoint", str(tiny_checkpoint), "--seed", "1",
                     "--dtype", "float32"])
    assert code == 0
    return stdout.getvalue().splitlines(), out


def test_replay_prints_one_json_object_per_turn(replayed):
    lines, _ = replayed
    turns = [json.loads(line) for line in lines]
    assert len(turns) == 3
    for turn in turns:
        assert set(turn) >= {"phrase_start_s", "phrase_end_s", "answer_start_s", "notes",
                             "latency_ms"}
        assert turn["phrase_start_s"] < turn["phrase_end_s"] < turn["answer_start_s"]
        assert turn["notes"] >= 1 and turn["latency_ms"] > 0
    assert [t["phrase_start_s"] for t in turns] == [0.0, 6.0, 12.0]
    assert turns[0]["phrase_end_s"] == 2.5  # the pedal held the first phrase to its lift


def test_replay_writes_the_duet_with_each_player_on_its_own_track(replayed):
    _, out = replayed
    midi = mido.MidiFile(out)
    tracks = {t.name: t for t in midi.tracks if t.name}
    assert set(tracks) == {"player", "musicgpt"}
    for name, channel in (("player", 0), ("musicgpt", 1)):
        ons = [m for m in tracks[name] if m.type == "note_on" and m.velocity > 0]
        assert ons and {m.channel for m in ons} == {channel}
    player_ons = [m.note for m in tracks["player"] if m.type == "note_on" and m.velocity > 0]
    assert player_ons == [p for p, _, _, _ in CALLS]


def test_duet_without_rtmidi_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "rtmidi", None)  # import now raises ImportError
    assert main(["duet", "--list-ports"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install -e ".[live]"' in err


def test_duet_wants_a_keyboard_or_a_replay(capsys):
    assert main(["duet"]) == 2
    assert "--in PORT" in capsys.readouterr().err
