"""The page's rough edges, as a new user meets them at 1400x900: where errors and progress show,
when "press Generate" is said, the upload limit, readable primer labels, the span box's caption,
Streamlit's Deploy button; and the .mid a piece downloads keeps its primer file's clock."""

from __future__ import annotations

import io
import re
from pathlib import Path

import mido
import pytest
from helpers import Track, write_midi
from streamlit.testing.v1 import AppTest

from musicgpt import studio

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")


@pytest.fixture
def app(tiny_checkpoint, monkeypatch) -> AppTest:
    monkeypatch.setenv(studio.ENV_CHECKPOINT, str(tiny_checkpoint))
    monkeypatch.setenv(studio.ENV_CHECKPOINTS, "")
    return AppTest.from_file(APP, default_timeout=60).run()


def _setting(name: str) -> str:
    """A value of .streamlit/config.toml (tomllib is Python 3.11+; the settings are one-liners)."""
    text = (REPO / ".streamlit" / "config.toml").read_text()
    return re.search(rf"^{name} = \"?([^\"\n]*)\"?$", text, re.M).group(1)


def _hints(at: AppTest) -> list[str]:
    return [info.value for info in at.info if "press Generate" in info.value]


def _leaves(block) -> list:
    """The page's elements in the order they are drawn."""
    children = getattr(block, "children", None)
    if not children:
        return [block]
    return [leaf for key in sorted(children) for leaf in _leaves(children[key])]


def _song_bytes(tmp_path: Path) -> bytes:
    """Two tracks at 90 bpm in 3/4, 6 s long."""
    path = tmp_path / "song.mid"
    write_midi(path, [Track([(60 + i % 7, 80, 0.5 * i, 0.5 * i + 0.4) for i in range(12)]),
                      Track([(36 + i % 3, 60, 1.0 * i, 1.0 * i + 0.9) for i in range(6)],
                            channel=1)], tempos=[(0.0, 90.0)])
    midi = mido.MidiFile(path)
    midi.tracks[0].insert(0, mido.MetaMessage("time_signature", numerator=3, denominator=4))
    midi.save(path)
    return path.read_bytes()


def _clock(midi: bytes) -> tuple:
    parsed = mido.MidiFile(file=io.BytesIO(midi))
    return (len(parsed.tracks), [(m.type, getattr(m, "tempo", getattr(m, "numerator", None)))
                                 for m in parsed.tracks[0]
                                 if m.type in ("set_tempo", "time_signature")])


def _stop_after_progress(monkeypatch) -> None:
    """Sampling that reports some progress, then fails: the page is left as it is mid-run."""
    import musicgpt.sampling

    def halfway(*args, progress=None, **kwargs):
        progress(1.0, 2.0)
        raise RuntimeError("stopped halfway for the test")
    monkeypatch.setattr(musicgpt.sampling, "generate_pieces", halfway)


def test_a_bad_upload_says_so_beside_the_uploader_and_at_the_top(app):
    app.sidebar.radio(key="primer").set_value("upload").run()
    app.sidebar.file_uploader(key="upload").upload("song.mid", b"not a midi file").run()
    assert any("not a usable MIDI file" in e.value for e in app.sidebar.error)
    assert any("not a usable MIDI file" in e.value for e in app.main.error)
    assert app.sidebar.button(key="generate").disabled
    assert _hints(app) == []  # Generate is disabled: nothing to press


def test_press_generate_is_not_said_while_generating(app, monkeypatch):
    assert _hints(app)
    _stop_after_progress(monkeypatch)
    app.sidebar.button(key="generate").click().run()
    assert _hints(app) == []
    leaves = _leaves(app.main)
    assert leaves[2].type == "progress"  # in the hint's place, under the title


def test_continue_shows_its_progress_beside_its_button(app, monkeypatch):
    app.sidebar.slider(key="seconds").set_value(2)
    app.sidebar.button(key="generate").click().run()
    _stop_after_progress(monkeypatch)
    app.button(key="continue_0").click().run()
    leaves = _leaves(app.main)
    at = next(i for i, leaf in enumerate(leaves) if getattr(leaf, "key", None) == "continue_0")
    assert leaves[at + 1].type == "progress"


def test_the_upload_limit_is_said_once_and_is_the_enforced_one(app):
    assert int(_setting("maxUploadSize")) * 2**20 == studio.MAX_UPLOAD_BYTES
    app.sidebar.radio(key="primer").set_value("upload").run()
    assert "MB" not in app.sidebar.file_uploader(key="upload").label  # the uploader says it


def test_deploy_button_is_hidden():
    assert _setting("toolbarMode") == "minimal"


def test_primer_labels_are_ascii_and_fit_the_sidebar():
    labels = list(studio.example_choices())
    assert all(label.isascii() and len(label) <= 32 for label in labels), labels
    assert labels[0].startswith("POP909 0")


def test_the_span_box_is_explained_under_the_roll(app):
    app.sidebar.slider(key="seconds").set_value(2)
    app.sidebar.button(key="generate").click().run()
    assert any("dashed box" in c.value for c in app.caption)


def _generate_from_upload(at, tmp_path, seconds: int) -> bytes:
    """Upload a test song as the primer (its first 3 s), generate `seconds` more; the song."""
    song = _song_bytes(tmp_path)
    at.sidebar.radio(key="primer").set_value("upload").run()
    at.sidebar.file_uploader(key="upload").upload("song.mid", song).run()
    at.sidebar.slider(key="primer_s").set_value(3)
    at.sidebar.slider(key="seconds").set_value(seconds)
    at.sidebar.button(key="generate").click().run()
    return song


def test_an_uploaded_primer_keeps_its_clock_in_generate_and_continue(app, tmp_path):
    song = _generate_from_upload(app, tmp_path, seconds=2)
    assert not app.exception
    generated = app.session_state["results"][0]["midi"]
    assert _clock(generated) == (4, _clock(song)[1])  # tempo track, 2 tracks, the new one
    app.button(key="continue_0").click().run()
    assert not app.exception
    continued = app.session_state["results"][0]["midi"]
    assert _clock(continued)[1] == _clock(song)[1] and _clock(continued)[0] >= 4


def test_a_regenerated_span_edits_the_pieces_own_file(make_tiny_model, tmp_path, monkeypatch):
    from musicgpt.checkpoint import save_checkpoint

    ckpt = save_checkpoint(make_tiny_model(block_size=256), tmp_path / "checkpoint")
    monkeypatch.setenv(studio.ENV_CHECKPOINT, str(ckpt))
    monkeypatch.setenv(studio.ENV_CHECKPOINTS, "")
    at = AppTest.from_file(APP, default_timeout=60).run()
    song = _generate_from_upload(at, tmp_path, seconds=3)
    at.slider(key="edit_span_s0").set_value((1.0, 2.0)).run()
    at.button(key="edit_go_s0").click().run()
    assert not at.exception, [e.value for e in at.exception]
    history = at.session_state["histories"]["s0"]
    assert history.pending == 1
    edited = history.versions[1].view["midi"]
    assert _clock(edited) == _clock(at.session_state["results"][0]["midi"])  # one new track
    assert _clock(edited)[1] == _clock(song)[1]
