"""The app's Duet page, Python side: the component's messages (duet_web.parse_message), one
browser session's duet (duet_web.DuetSession: a phrase in, the answer out, a key struck cutting
it, a reloaded page), the piano samples (duet_sound) and the page itself under AppTest (the
component's value set as the browser would: answer in its args, the .mid download with both
players, a bad value said once and nothing lost). The browser side: tests/test_browser.py."""

from __future__ import annotations

import io
import json
import math
import wave
from pathlib import Path

import mido
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from musicgpt import duet_page, duet_sound, duet_web, studio
from musicgpt.duet import Duet, TurnSettings

APP = str(Path(__file__).resolve().parents[1] / "app.py")
SCALE = (60, 62, 64, 65, 67)


def _phrase(start_s: float = 0.1, pitches=SCALE, first_seq: int = 1) -> list[list]:
    """Key events of a phrase: each key 0.25 s, every 0.3 s."""
    events, seq = [], first_seq
    for i, pitch in enumerate(pitches):
        t = start_s + 0.3 * i
        events += [[seq, round(t, 3), "on", pitch, 90], [seq + 1, round(t + 0.25, 3), "off",
                                                          pitch, 0]]
        seq += 2
    return events


def _message(events, end=None, now=None, duet=1, page="p1") -> dict:
    last = events[-1][1] if events else 0.0
    end_msg = None if end is None else {"phrase": end[0], "time_s": end[1]}
    return dict(duet=duet, page=page, events=events, end=end_msg,
                now=now if now is not None else (end[1] if end else last))


@pytest.fixture
def session(tiny_model) -> duet_web.DuetSession:
    duet = Duet(tiny_model, None, duet_web.page_turns(TurnSettings()), seed=1)
    return duet_web.DuetSession(duet, 1)


def _ended(events) -> float:
    return events[-1][1] + duet_page.TURNS.pause_s


# --- messages -----------------------------------------------------------------------------------

@pytest.mark.parametrize("value, says", [
    ([1, 2], "expected an object"),
    ({"duet": 1, "page": "p", "events": []}, "missing now"),
    ({"duet": 1, "page": "p", "events": [[1, 0.1, "hum", 60, 90]], "now": 1}, "kind must be"),
    ({"duet": 1, "page": "p", "events": [[1, -2, "on", 60, 90]], "now": 1}, "time in seconds"),
    ({"duet": 1, "page": "p", "events": [[1, 0.1, "on", 128, 90]], "now": 1}, "pitch must be"),
    ({"duet": 1, "page": "p", "events": [], "end": {"phrase": 1}, "now": 1}, "end must be"),
    ({"duet": 1, "page": "p", "events": [], "now": float("nan")}, "now must be"),
])
def test_a_bad_message_is_refused_with_the_reason(value, says):
    with pytest.raises(duet_web.MessageError, match=says):
        duet_web.parse_message(value)


def test_nothing_sent_yet_is_no_message():
    assert duet_web.parse_message(None) is None


# --- one session's duet ---------------------------------------------------------------------------

def test_a_phrase_in_gives_an_answer_out_and_a_resent_message_changes_nothing(session):
    events = _phrase()
    session.handle(duet_web.parse_message(_message(events)))  # streamed while playing
    assert session.reply()["acked"] == {"page": "p1", "seq": len(events)}
    assert session.reply()["answer"] is None
    end = _ended(events)
    assert session.handle(duet_web.parse_message(_message(events, (1, end))))
    answer = session.reply()["answer"]
    assert answer["phrase"] == 1 and answer["start_s"] == pytest.approx(end)
    first = answer["events"][0]
    assert first[0] == pytest.approx(end) and first[2] > 0  # it opens with a note, at once
    if session.pending():
        assert not answer["done"]
        session.draw()
    answer = session.reply()["answer"]
    assert answer["done"] and not session.pending()
    times = [e[0] for e in answer["events"]]
    assert times == sorted(times) and times[-1] <= end + duet_page.TURNS.max_answer_s + 0.01
    ons = sum(1 for e in answer["events"] if e[2] > 0)
    offs = sum(1 for e in answer["events"] if e[2] == 0)
    assert ons >= 1 and offs >= 1
    before = (session.seq, session.phrase, len(session.duet.turns), list(answer["events"]))
    assert not session.handle(duet_web.parse_message(_message(events, (1, end))))
    assert (session.seq, session.phrase, len(session.duet.turns),
            session.reply()["answer"]["events"]) == before
    # the page says it has heard the answer to its end: the turn closes there
    session.handle(duet_web.parse_message(_message([], now=times[-1] + 0.2)))
    turn = session.duet.turns[0]
    assert turn.answer_end_s == pytest.approx(times[-1]) and not turn.cut
    played, answered = session.counts()
    assert played == len(SCALE) and 1 <= answered <= turn.answer_notes


def test_what_the_page_schedules_is_what_the_duet_plays(session):
    events = _phrase()
    session.handle(duet_web.parse_message(_message(events, (1, _ended(events)))))
    session.draw()
    sent = session.reply()["answer"]["events"]
    session.handle(duet_web.parse_message(_message([], now=sent[-1][0] + 1.0)))
    its = session.duet.notes("model")
    ons = sorted((round(t * 100), p) for t, p, v in sent if v > 0)
    played = sorted(zip(its.start_step.tolist(), its.pitch.tolist(), strict=True))
    assert set(played) <= set(ons)  # notes of no length are dropped by the duet, as ever


def test_a_key_struck_during_the_answer_cuts_it_there(session):
    events = _phrase()
    end = _ended(events)
    session.handle(duet_web.parse_message(_message(events, (1, end))))
    session.draw()
    strike = end + 0.5
    session.handle(duet_web.parse_message(_message([[len(events) + 1, strike, "on", 72, 90]])))
    turn = session.duet.turns[0]
    assert turn.cut and turn.answer_end_s == pytest.approx(strike)
    its = session.duet.notes("model")
    assert len(its) == 0 or its.end_step.max() <= round(strike * 100)
    assert session.duet.phrase is not None  # the strike opens the next phrase


def test_a_reloaded_page_goes_on_from_where_the_duet_was(session):
    events = _phrase()
    session.handle(duet_web.parse_message(_message(events, (1, _ended(events)))))
    session.draw()
    was = session.time
    again = _phrase(0.2)  # the new page's clock starts at 0
    session.handle(duet_web.parse_message(_message(again, page="p2")))
    assert session.offset >= was and session.time > was
    assert session.reply()["acked"] == {"page": "p2", "seq": len(again)}


def test_an_old_duets_message_is_ignored(session):
    assert not session.handle(duet_web.parse_message(_message(_phrase(), (1, 2.0), duet=7)))
    assert session.seq == 0 and not session.duet.turns


# --- piano samples --------------------------------------------------------------------------------

def test_piano_samples_hold_every_sample_pitch_and_the_page_is_served_beside_them(tmp_path):
    from musicgpt import audio

    if audio.synth_problem():
        pytest.skip(audio.synth_problem())
    folder, problem = duet_sound.component_dir(tmp_path)
    assert problem is None and (folder / "index.html").is_file()
    with wave.open(io.BytesIO((folder / duet_sound.WAV_NAME).read_bytes())) as wav:
        rate, frames = wav.getframerate(), wav.getnframes()
        pcm = np.frombuffer(wav.readframes(frames), "<i2").astype(np.float32)
    size = duet_sound.manifest()
    per = round(size["seconds"] * rate)
    assert frames == per * len(size["pitches"])
    loudness = [float(np.abs(pcm[i * per:(i + 1) * per]).max())
                for i in range(len(size["pitches"]))]
    assert min(loudness) > 300, "a sample is (nearly) silent"
    assert duet_sound.component_dir(tmp_path)[0] == folder  # made once


# --- the page under AppTest ----------------------------------------------------------------------

@pytest.fixture
def duet_app(tiny_checkpoint, monkeypatch, tmp_path) -> AppTest:
    monkeypatch.setenv(studio.ENV_CHECKPOINT, str(tiny_checkpoint))
    monkeypatch.setenv(studio.ENV_CHECKPOINTS, "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    return at.radio(key="page").set_value("Duet").run()


def _args(at: AppTest) -> dict:
    [component] = at.get("component_instance")
    return json.loads(component.proto.json_args)


def _send(at: AppTest, value) -> AppTest:
    at.session_state[duet_page.KEY] = value
    return at.run()


def _downloads(monkeypatch) -> list[bytes]:
    """The bytes each .mid download button of the next runs serves."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    served, keep = [], MemoryMediaFileStorage.load_and_get_id

    def load(self, path_or_data, mimetype, kind, filename=None):
        if mimetype == "audio/midi":
            served.append(bytes(path_or_data))
        return keep(self, path_or_data, mimetype, kind, filename)
    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", load)
    return served


def test_the_duet_page_answers_a_phrase_and_downloads_both_players(duet_app, monkeypatch):
    assert not duet_app.exception and not duet_app.error
    args = _args(duet_app)
    assert args["answer"] is None and args["turns"]["pause_s"] == pytest.approx(0.6)
    events = _phrase()
    served = _downloads(monkeypatch)
    at = _send(duet_app, _message(events, (1, _ended(events))))
    assert not at.exception and not at.error
    answer = _args(at)["answer"]
    assert answer["phrase"] == 1 and answer["done"]  # the rest was drawn and sent in a rerun
    assert any(e[2] > 0 for e in answer["events"])
    at = _send(at, _message([], now=answer["events"][-1][0] + 0.5))  # heard to its end
    midi = mido.MidiFile(file=io.BytesIO(served[-1]))
    names = {track.name: sum(m.type == "note_on" and m.velocity > 0 for m in track)
             for track in midi.tracks}
    assert names["player"] == len(SCALE) and names["musicgpt"] >= 1
    assert f"{len(SCALE)} notes of yours" in " ".join(c.value for c in at.caption)


def test_a_bad_component_value_says_so_once_and_loses_nothing(duet_app):
    events = _phrase()
    at = _send(duet_app, _message(events))
    fed = _args(at)["acked"]
    at = _send(at, {"duet": 1, "page": "p1", "events": [[99, 1.0, "hum", 60, 90]], "now": 2.0})
    assert len(at.error) == 1 and "cannot be read" in at.error[0].value
    assert "kind must be" in at.error[0].value
    assert _args(at)["acked"] == fed  # the duet so far is kept
    at = _send(at, _message(events, (1, _ended(events))))
    assert not at.error and _args(at)["answer"]["phrase"] == 1


def test_the_duet_takes_the_sidebars_settings_and_new_duet_starts_afresh(duet_app):
    at = duet_app.sidebar.slider(key="temperature").set_value(0.7).run()
    recipe, session = at.session_state[duet_page.SESSION]
    assert session.duet.settings.temperature == pytest.approx(0.7)
    assert session.duet.settings.candidates == 1  # one answer at a time
    events = _phrase()
    at = _send(at, _message(events, (1, _ended(events))))
    first = at.session_state[duet_page.SESSION][1]
    at = at.button(key="duet_new_button").click().run()
    fresh = at.session_state[duet_page.SESSION][1]
    assert fresh is not first and fresh.id == first.id + 1 and not fresh.duet.turns
    assert _args(at)["duet"] == fresh.id and _args(at)["answer"] is None
    assert math.isclose(fresh.duet.settings.temperature, 0.7)


def test_a_long_phrase_is_answered_at_its_length_with_the_held_keys_ended_there(session):
    # the page cuts a phrase at max_phrase_s: keys still held are released there, then the end
    cut = 0.1 + duet_page.TURNS.max_phrase_s
    events = [[1, 0.1, "on", 60, 90], [2, 0.5, "on", 64, 90], [3, 1.0, "off", 64, 0],
              [4, cut, "off", 60, 0]]
    assert session.handle(duet_web.parse_message(_message(events, (1, cut))))
    session.draw()
    turn = session.duet.turns[0]
    assert turn.ended_by == "max_length" and turn.answer_start_s == pytest.approx(cut)
    assert session.reply()["answer"]["events"][0][0] == pytest.approx(cut)
    session.handle(duet_web.parse_message(_message([], now=cut + 10)))
    held = session.duet.notes("player")
    assert sorted(zip(held.pitch.tolist(), held.end_step.tolist(), strict=True)) == [
        (60, round(cut * 100)), (64, 100)]


def test_the_generate_pages_primer_choice_survives_a_visit_to_the_duet_page(tiny_checkpoint,
                                                                            monkeypatch):
    monkeypatch.setenv(studio.ENV_CHECKPOINT, str(tiny_checkpoint))
    monkeypatch.setenv(studio.ENV_CHECKPOINTS, "")
    at = AppTest.from_file(APP, default_timeout=60).run()
    choices = at.sidebar.selectbox(key="example").options
    at = at.sidebar.selectbox(key="example").set_value(choices[-1]).run()
    at = at.sidebar.slider(key="primer_s").set_value(5).run()
    at = at.radio(key="page").set_value("Duet").run()
    at = at.radio(key="page").set_value("Generate").run()
    assert at.sidebar.selectbox(key="example").value == choices[-1]
    assert at.sidebar.slider(key="primer_s").value == 5


def test_the_duet_page_hides_what_only_generate_reads_and_keeps_it(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv(studio.ENV_CHECKPOINT, str(tiny_checkpoint))
    monkeypatch.setenv(studio.ENV_CHECKPOINTS, "")
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.sidebar.slider(key="seconds").set_value(7)
    at = at.sidebar.slider(key="candidates").set_value(2).run()
    at = at.radio(key="page").set_value("Duet").run()
    shown = {w.key for w in at.sidebar.slider}
    assert not shown & {"seconds", "num_samples", "candidates"}
    assert {"temperature", "density", "pitch_range"} <= shown  # the duet's own settings stay
    at = at.radio(key="page").set_value("Generate").run()
    assert at.sidebar.slider(key="seconds").value == 7
    assert at.sidebar.slider(key="candidates").value == 2
