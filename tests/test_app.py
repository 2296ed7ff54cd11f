"""The Streamlit page, driven headless by Streamlit's AppTest with a tiny untrained checkpoint,
plus the page's plain logic in musicgpt.studio (checkpoint discovery, upload checks, primers)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from musicgpt import studio
from musicgpt.checkpoint import save_checkpoint
from musicgpt.events import Note, notes_to_arrays
from musicgpt.midi_io import arrays_to_midi_file
from musicgpt.vocab import START_ID

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture
def app(tiny_checkpoint, monkeypatch) -> AppTest:
    monkeypatch.setenv(studio.ENV_CHECKPOINT, str(tiny_checkpoint))
    monkeypatch.setenv(studio.ENV_CHECKPOINTS, "")
    return AppTest.from_file(APP, default_timeout=60).run()


def _midi_bytes(tmp_path: Path, notes: list[Note]) -> bytes:
    return arrays_to_midi_file(notes_to_arrays(notes), tmp_path / "x.mid").read_bytes()


def _no_problems(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _generate(at: AppTest, seconds: int = 3, num_samples: int = 1) -> AppTest:
    at.sidebar.slider(key="seconds").set_value(seconds)
    at.sidebar.slider(key="num_samples").set_value(num_samples)
    return at.sidebar.button(key="generate").click().run()


# --- plain logic ---------------------------------------------------------------------------------

def test_find_checkpoints_lists_env_checkpoint_first_then_searched_folders(tiny_checkpoint,
                                                                          tiny_model, tmp_path):
    other = save_checkpoint(tiny_model, tmp_path / "runs" / "b" / "checkpoint")
    env = {studio.ENV_CHECKPOINT: str(tiny_checkpoint), studio.ENV_CHECKPOINTS: str(tmp_path)}
    found = list(studio.find_checkpoints(env, cwd=tmp_path).values())
    assert found[0] == tiny_checkpoint
    assert other in found


def test_find_checkpoints_is_empty_without_any_model(tmp_path, monkeypatch):
    monkeypatch.setattr(studio, "default_model_dir", lambda: tmp_path / "missing")
    monkeypatch.setattr(studio, "REPO_ROOT", tmp_path)
    assert studio.find_checkpoints({studio.ENV_CHECKPOINT: str(tmp_path)}, cwd=tmp_path) == {}


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"this is not a MIDI file", "not a usable MIDI file"),
    (b"MThd" + bytes(studio.MAX_UPLOAD_BYTES), "the limit is 5 MB"),
])
def test_upload_to_ids_rejects_bad_bytes_with_a_reason(data, reason):
    with pytest.raises(studio.UploadError, match=reason):
        studio.upload_to_ids(data, "x.mid")


def test_upload_to_ids_rejects_a_midi_without_notes(tmp_path):
    with pytest.raises(studio.UploadError, match="no notes"):
        studio.upload_to_ids(_midi_bytes(tmp_path, []), "empty.mid")


def test_upload_to_ids_rejects_a_piece_over_ten_minutes(tmp_path):
    notes = [Note(60, 80, 0.0, 1.0), Note(62, 80, 601.0, 602.0)]
    with pytest.raises(studio.UploadError, match="10 minutes"):
        studio.upload_to_ids(_midi_bytes(tmp_path, notes), "long.mid")


def test_upload_primer_keeps_only_the_first_seconds(tmp_path):
    notes = [Note(60 + i, 80, float(i), i + 0.5) for i in range(10)]
    primer = studio.primer_from_ids(studio.upload_to_ids(_midi_bytes(tmp_path, notes)), 3.2)
    assert primer[0] == START_ID
    assert sorted(int(t) for t in primer if t < 128) == [60, 61, 62, 63]


def test_builtin_example_primer_is_an_arpeggio():
    primer = studio.example_primer(studio.BUILTIN_PRIMER, 30.0)
    assert primer[0] == START_ID
    assert [int(t) for t in primer if t < 128] == [60, 64, 67, 72, 67, 64, 60]


# --- the page ------------------------------------------------------------------------------------

def test_app_opens_ready_to_generate(app, tiny_checkpoint):
    _no_problems(app)
    assert not app.sidebar.button(key="generate").disabled
    assert str(tiny_checkpoint) in app.sidebar.selectbox(key="checkpoint").value
    assert any("press Generate" in info.value for info in app.info)


def test_app_generates_then_arcs_controls_reuse_the_same_results(app):
    _generate(app, seconds=3, num_samples=2)
    _no_problems(app)
    results = app.session_state["results"]
    assert len(results) == 2 and len(app.get("audio")) == 1
    assert len(app.get("plotly_chart")) == 3  # piano roll, arcs, heatmap
    assert {b.label for b in app.download_button} == {"Download .mid", "Download .wav"}
    assert results[0]["midi"].startswith(b"MThd") and results[0]["wav"].startswith(b"RIFF")
    app.radio(key="sample").set_value(1).run()
    app.slider(key="arc_layer").set_value(0)
    app.selectbox(key="arc_head").set_value(1)
    query = app.slider(key="arc_query_1")
    query.set_value(query.min).run()
    window = app.slider(key="heat_window_1")
    window.set_value((window.min, window.min + 5)).run()
    _no_problems(app)
    assert app.session_state["results"] is results  # not regenerated


def test_app_bad_upload_shows_an_error_and_stays_usable(app):
    app.sidebar.radio(key="primer").set_value("upload").run()
    app.sidebar.file_uploader(key="upload").upload("song.mid", b"not a midi file").run()
    assert not app.exception
    assert any("not a usable MIDI file" in e.value for e in app.error)
    assert app.sidebar.button(key="generate").disabled
    app.sidebar.radio(key="primer").set_value("none").run()
    _generate(app)
    _no_problems(app)
    assert len(app.get("audio")) == 1


def test_app_upload_primer_notes_are_marked_as_primer(app, tmp_path):
    notes = [Note(60 + 2 * i, 90, 0.3 * i, 0.3 * i + 0.25) for i in range(8)]
    app.sidebar.radio(key="primer").set_value("upload").run()
    app.sidebar.file_uploader(key="upload").upload("primer.mid", _midi_bytes(tmp_path, notes))
    app.run()
    _generate(app, seconds=2)
    _no_problems(app)
    piece = app.session_state["results"][0]["piece"]
    primer_pitches = sorted(piece.notes.pitch[piece.is_primer].tolist())
    assert primer_pitches == [60 + 2 * i for i in range(8)]


def test_app_without_synthesizer_generates_and_says_why(app, monkeypatch):
    monkeypatch.setitem(sys.modules, "tinysoundfont", None)  # import now raises ImportError
    _generate(app, seconds=2)
    _no_problems(app)
    assert not app.get("audio")
    assert any("tinysoundfont" in info.value for info in app.info)
    assert [b.label for b in app.download_button] == ["Download .mid"]


def test_app_says_clearly_when_no_model_is_found(tmp_path, monkeypatch):
    monkeypatch.delenv(studio.ENV_CHECKPOINT, raising=False)
    monkeypatch.setenv(studio.ENV_CHECKPOINTS, "")
    monkeypatch.setattr(studio, "default_model_dir", lambda: tmp_path / "missing")
    monkeypatch.setattr(studio, "REPO_ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert any("No model found" in e.value for e in at.error)
    assert at.sidebar.button(key="generate").disabled


def test_generated_notes_are_finite_and_in_range(app):
    _generate(app, seconds=3)
    piece = app.session_state["results"][0]["piece"]
    assert np.all((piece.notes.pitch >= 0) & (piece.notes.pitch < 128))
    assert np.all(piece.notes.end_step > piece.notes.start_step)


# --- figures -------------------------------------------------------------------------------------

def test_piano_roll_colours_primer_and_generated_and_hovers_note_details():
    from musicgpt.plots import GENERATED_COLOUR, PRIMER_COLOUR, piano_roll

    notes = notes_to_arrays([Note(60, 80, 0.0, 0.5), Note(69, 100, 0.5, 1.25)])
    fig = piano_roll(notes, np.array([True, False]))
    primer, generated = fig.data
    assert (primer.marker.color, generated.marker.color) == (PRIMER_COLOUR, GENERATED_COLOUR)
    assert list(generated.customdata[0][:4]) == ["A4", "100", "0.5", "0.75"]
    assert "velocity" in generated.hovertemplate and "length" in generated.hovertemplate


def test_arcs_are_drawn_one_per_weight_with_stronger_ones_wider():
    from musicgpt.arcs import Arc
    from musicgpt.plots import add_arcs, piano_roll

    notes = notes_to_arrays([Note(60, 80, 0.0, 0.5), Note(64, 80, 0.5, 1.0),
                             Note(67, 80, 1.0, 1.5)])
    fig = add_arcs(piano_roll(notes, np.zeros(3, bool)), notes, 2,
                   [Arc(0, 0, 0.6), Arc(1, 1, 0.2)])
    lines = [t for t in fig.data if t.type == "scatter" and t.mode == "lines"]
    assert len(lines) == 2 and lines[0].line.width < lines[1].line.width
    assert fig.data[-1].name == "query note"
