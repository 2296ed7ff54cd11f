"""The Streamlit page, driven headless by Streamlit's AppTest with a tiny untrained checkpoint,
plus the page's plain logic in musicgpt.studio (checkpoint discovery, upload checks, primers,
span defaults and the version history of regenerated spans)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from musicgpt import studio
from musicgpt.checkpoint import save_checkpoint
from musicgpt.events import Note, ids_to_arrays, notes_to_arrays, notes_to_ids
from musicgpt.infilling import InfillError, check_span
from musicgpt.midi_io import arrays_to_midi_file
from musicgpt.vocab import BASE_VOCAB_SIZE, START_ID, style_id

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


def _players(at: AppTest, with_audio: bool = True) -> list[str]:
    """The pages of the players (roll + cursor + audio) on the page, those with audio by default."""
    pages = [frame.proto.srcdoc for frame in at.get("iframe")]
    return [page for page in pages if "data-cursor" in page and ("<audio" in page or
                                                                  not with_audio)]


def _option_note(label: str) -> int:
    """The note index a query option names ("E4 at 3.25 s (note 12)" -> 12)."""
    return int(label.rsplit("note ", 1)[1].rstrip(")"))


def _generate(at: AppTest, seconds: int = 3, num_samples: int = 1) -> AppTest:
    at.sidebar.slider(key="seconds").set_value(seconds)
    at.sidebar.slider(key="num_samples").set_value(num_samples)
    return at.sidebar.button(key="generate").click().run()


def _open(checkpoint: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv(studio.ENV_CHECKPOINT, str(checkpoint))
    monkeypatch.setenv(studio.ENV_CHECKPOINTS, "")
    return AppTest.from_file(APP, default_timeout=60).run()


@pytest.fixture(scope="module")
def style_checkpoint(make_tiny_model, tmp_path_factory) -> Path:
    """A tiny model with two styles and a context long enough to infill a few seconds."""
    model = make_tiny_model(styles=("classical", "pop"), block_size=256)
    return save_checkpoint(model, tmp_path_factory.mktemp("styles") / "checkpoint")


@pytest.fixture
def style_app(style_checkpoint, monkeypatch) -> AppTest:
    return _open(style_checkpoint, monkeypatch)


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
    assert len(results) == 2 and len(_players(app)) == 2  # the primer's and the sample's
    # the primer's surprisal; the sample's roll, surprisal, arcs and heatmap
    assert len(app.get("plotly_chart")) == 5
    assert {b.label for b in app.download_button} == {"Download .mid", "Download .wav"}
    assert results[0]["midi"].startswith(b"MThd") and results[0]["wav"].startswith(b"RIFF")
    app.radio(key="sample").set_value(1).run()
    app.slider(key="arc_layer").set_value(0)
    app.selectbox(key="arc_head").set_value(1)
    query = app.select_slider(key="arc_query_1")
    query.set_value(_option_note(query.options[0])).run()
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
    assert len(_players(app)) == 1


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
    assert app.session_state["results"][0]["wav"] is None
    # the sample's player has no audio (the primer's was rendered before the synthesizer went)
    assert len(_players(app, with_audio=False)) == 2 and len(_players(app)) == 1
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


def test_roll_marks_a_span_shaded_or_framed():
    from musicgpt.plots import mark_span, piano_roll

    notes = notes_to_arrays([Note(60, 80, 0.0, 4.0)])
    fig = mark_span(piano_roll(notes, np.array([False]), names=("kept", "regenerated")), 1.0, 2.5)
    fig = mark_span(fig, 3.0, 3.5, "next", outline_only=True)
    shaded, framed = fig.layout.shapes
    assert (shaded.type, shaded.x0, shaded.x1, shaded.layer) == ("rect", 1.0, 2.5, "below")
    assert shaded.opacity < 1 and framed.line.dash == "dash"
    assert [a.text for a in fig.layout.annotations] == ["regenerated", "next"]
    assert [t.name for t in fig.data] == ["kept", "regenerated"]


# --- versions of a piece: plain logic ------------------------------------------------------------

def test_history_push_keep_and_undo():
    history = studio.History(np.array([START_ID, 60]), "original")
    assert (history.current, history.pending, history.can_undo) == (0, None, False)
    first = history.push([START_ID, 61], (1.0, 2.0))
    assert (first, history.pending, history.shown, history.current) == (1, 1, 1, 0)
    assert history.versions[1].label == "v2: 1.00-2.00 s of v1 regenerated"
    assert history.undo() == 0 and len(history) == 1 and history.pending is None  # thrown away
    history.push([START_ID, 62], (1.0, 2.0), note="fell back")
    assert history.keep() == 1 and history.pending is None
    assert history.versions[1].note == "fell back" and history.versions[1].parent == 0
    history.push([START_ID, 63], (0.5, 1.0))
    assert history.keep() == 2 and history.versions[2].parent == 1
    assert history.undo() == 1 and history.undo() == 0  # back along the parents
    assert not history.can_undo and history.undo() == 0 and len(history) == 3  # kept ones stay
    with pytest.raises(ValueError, match="no new version"):
        history.keep()


def test_history_restore_and_fresh_seeds():
    history = studio.History([START_ID, 60])
    assert history.next_seed(7) == 7
    history.push([START_ID, 61], (0.0, 1.0))
    history.push([START_ID, 62], (0.0, 1.0))  # another take: the first stays listed
    assert len(history) == 3 and history.pending == 2
    history.undo()
    assert history.next_seed(7) == 9  # an undone take still moves the seed on
    assert history.restore(1) == 1 and history.pending is None
    with pytest.raises(IndexError):
        history.restore(5)


@pytest.mark.parametrize(("seconds", "longest", "span"), [
    (20.0, 9.0, (8.5, 11.5)),  # SPAN_DEFAULT_S in the middle
    (6.0, 9.0, (2.0, 4.0)),  # a third of a short piece
    (20.0, 0.23, (9.9, 10.1)),  # what the model's context allows
    (0.1, 0.0, (0.0, 0.1)),
])
def test_default_span_is_a_few_seconds_in_the_middle(seconds, longest, span):
    assert studio.default_span(seconds, longest) == span


def test_clamp_span_orders_bounds_and_rounds():
    assert studio.clamp_span((5.0, 2.3000000000000003), 10.0) == (2.3, 5.0)
    assert studio.clamp_span((-1.0, 12.0), 10.0) == (0.0, 10.0)


def test_longest_span_is_what_infilling_accepts():
    ids = np.concatenate([[START_ID], notes_to_ids([Note(60, 80, float(i), i + 0.5)
                                                    for i in range(30)])])
    longest = studio.longest_span_s(ids, 256)
    assert 1.0 < longest < 10.0
    check_span(ids, 0.0, longest, 256)
    with pytest.raises(InfillError, match="context"):
        check_span(ids, 0.0, longest + 0.01, 256)
    assert studio.longest_span_s(ids, 40) == 0.0
    assert studio.editable_seconds(ids) == 29.5


def test_span_piece_marks_the_notes_inside_the_span_as_new():
    ids = notes_to_ids([Note(60 + i, 80, float(i), i + 0.5) for i in range(5)])
    piece = studio.span_piece(ids, (1.0, 3.0))
    assert piece.is_primer.tolist() == [True, False, False, True, True]


# --- the page: regenerate a span, styles ---------------------------------------------------------

def _note_set(ids, keep) -> set[tuple[int, int, int]]:
    notes = ids_to_arrays(ids)
    return {(p, s, v) for p, s, v in zip(notes.pitch.tolist(), notes.start_step.tolist(),
                                         notes.velocity.tolist(), strict=True) if keep(s)}


def _chart_shapes(at: AppTest, key_end: str) -> list[dict]:
    charts = [c for c in at.get("plotly_chart") if c.proto.id.endswith(key_end)]
    assert len(charts) == 1, key_end
    return json.loads(charts[0].proto.spec)["layout"].get("shapes", [])


def test_app_regenerates_a_span_keeps_the_outside_then_keep_and_undo(style_app):
    at = _generate(style_app, seconds=4)
    original = at.session_state["results"][0]["piece"].ids
    at.slider(key="edit_span_s0").set_value((3.0, 5.0)).run()
    at.button(key="edit_go_s0").click().run()
    _no_problems(at)
    history = at.session_state["histories"]["s0"]
    assert (len(history), history.current, history.pending) == (2, 0, 1)
    new = history.versions[1].ids
    assert _note_set(new, lambda s: s < 300) == _note_set(original, lambda s: s < 300)
    assert _note_set(original, lambda s: s >= 500) <= _note_set(new, lambda s: s >= 500)
    shaded = _chart_shapes(at, "roll_s0_v2")
    assert [(s["x0"], s["x1"]) for s in shaded] == [(3.0, 5.0)]
    assert len(_players(at)) == 5  # the primer, current, new, and the two compared
    assert any("New version: v2" in m.value for m in at.markdown)
    at.button(key="edit_keep_s0").click().run()
    _no_problems(at)
    assert (history.current, history.pending) == (1, None)
    assert any("Current piece: v2" in m.value for m in at.markdown)
    at.button(key="edit_undo_s0").click().run()
    _no_problems(at)
    assert (history.current, len(history)) == (0, 2)
    assert any("Current piece: v1" in m.value for m in at.markdown)


def test_app_undo_throws_the_new_version_away_and_compare_lists_versions(style_app):
    at = _generate(style_app, seconds=3)
    at.button(key="edit_go_s0").click().run()
    at.button(key="edit_go_s0").click().run()  # a second take of the same span
    _no_problems(at)
    history = at.session_state["histories"]["s0"]
    assert len(history) == 3 and history.pending == 2
    assert not np.array_equal(history.versions[1].ids, history.versions[2].ids)
    compared = [box for box in at.selectbox if box.key and box.key.startswith("edit_cmp_")]
    assert len(compared) == 2 and [box.value for box in compared] == [2, 0]
    assert "v2" in compared[0].options[1]
    at.button(key="edit_undo_s0").click().run()
    _no_problems(at)
    assert (len(history), history.current, history.pending) == (2, 0, None)


def test_app_bad_span_shows_one_error_line_and_no_exception(app):
    _generate(app, seconds=3)
    app.slider(key="edit_span_s0").set_value((0.5, 6.5)).run()  # past a 64-token context
    app.button(key="edit_go_s0").click().run()
    assert not app.exception
    assert len(app.error) == 1 and "context" in app.error[0].value
    assert "\n" not in app.error[0].value
    assert app.session_state["histories"]["s0"].pending is None
    app.slider(key="edit_span_s0").set_value((2.0, 2.0)).run()
    app.button(key="edit_go_s0").click().run()
    assert not app.exception and len(app.error) == 1
    assert "end after it starts" in app.error[0].value


def test_app_shipped_like_model_falls_back_and_says_so(make_tiny_model, tmp_path, monkeypatch):
    model = make_tiny_model(block_size=256, vocab_size=BASE_VOCAB_SIZE)
    at = _open(save_checkpoint(model, tmp_path / "checkpoint"), monkeypatch)
    assert "style" not in [box.key for box in at.sidebar.selectbox]
    _generate(at, seconds=3)
    at.button(key="edit_go_s0").click().run()
    _no_problems(at)
    assert any("no fill-in-the-middle tokens" in info.value for info in at.info)


def test_app_style_selector_only_for_checkpoints_with_styles(app, style_app):
    assert "style" not in [box.key for box in app.sidebar.selectbox]
    assert any("without style tokens" in c.value for c in app.sidebar.caption)
    box = style_app.sidebar.selectbox(key="style")
    assert box.options == ["none", "classical", "pop"]
    box.set_value("pop")
    _generate(style_app, seconds=2)
    _no_problems(style_app)
    piece = style_app.session_state["results"][0]["piece"]
    assert piece.ids[1] == style_id(1)
    primer = studio.example_primer(style_app.sidebar.selectbox(key="example").value, 8)
    assert piece.primer_len == len(primer) + 1  # START, STYLE, the primer's events
    assert np.array_equal(piece.ids[2 : len(primer) + 1], primer[1:])
    style_app.button(key="edit_go_s0").click().run()
    _no_problems(style_app)
    assert style_app.session_state["histories"]["s0"].versions[1].ids[1] == style_id(1)


def test_app_edits_the_primer_and_generates_from_the_kept_version(style_app):
    at = style_app
    at.sidebar.toggle(key="primer_edit").set_value(True).run()
    _no_problems(at)
    key = next(k for k in at.session_state["histories"] if k.startswith("p"))
    at.button(key=f"edit_go_{key}").click().run()
    at.button(key=f"edit_keep_{key}").click().run()
    _no_problems(at)
    kept = at.session_state["histories"][key].versions[1].ids
    assert any("current version, v2" in c.value for c in at.sidebar.caption)
    _generate(at, seconds=2)
    _no_problems(at)
    piece = at.session_state["results"][0]["piece"]
    assert np.array_equal(piece.ids[: len(kept)], kept) and piece.primer_len == len(kept)


# --- the app as a musician uses it: primers, preview, player, continue, recall, surprisal -------

def test_builtin_primers_are_real_music_first_then_code_then_the_models_examples():
    from musicgpt.assets import primer_midi_files

    choices = studio.example_choices()
    labels = list(choices)
    files = primer_midi_files()
    assert 3 <= len(files) <= 5 and all(f.name.startswith("pop909_") for f in files)
    assert all(label.startswith("POP909 ") for label in labels[: len(files)])
    assert labels[len(files) : len(files) + 2] == [studio.BUILTIN_CADENCE, studio.BUILTIN_PRIMER]
    assert all(label.endswith(studio.MODEL_EXAMPLE) for label in labels[len(files) + 2 :])
    readme = (files[0].parent / "README.txt").read_text(encoding="utf-8")
    assert "POP909" in readme and "MIT" in readme
    pyproject = (Path(APP).parent / "pyproject.toml").read_text()
    assert '"primers/*.mid"' in pyproject and '"primers/*.txt"' in pyproject
    for label in labels[: len(files)]:
        primer = studio.example_primer(label, 15.0)
        notes = ids_to_arrays(primer)
        assert len(notes) >= 30 and notes.start_step.min() == 0  # an opening, from its first note
        assert 10.0 <= studio.editable_seconds(primer) <= 15.0


def test_cadence_primer_is_four_chords_under_a_melody():
    primer = studio.example_primer(studio.BUILTIN_CADENCE, 30.0)
    notes = ids_to_arrays(primer)
    assert sorted(set(notes.start_step.tolist()))[:4] == [0, 100, 200, 250]
    assert notes.pitch[notes.start_step == 0].tolist() == [48, 64, 67, 72, 76]


def test_continuation_primer_drops_the_end():
    assert studio.continuation_primer([START_ID, 60, 300, 188, 390]).tolist() == [START_ID, 60,
                                                                                    300, 188]
    assert studio.continuation_primer([START_ID, 60]).tolist() == [START_ID, 60]


def test_result_log_keeps_each_results_versions_when_recalled():
    log, live = studio.ResultLog(), {"p123": "primer's versions"}
    log.add("first", ["a"], live)
    live["s0"] = "versions of first"
    log.add("second", ["b"], live)
    assert log.labels == ["#1: first", "#2: second"] and log.shown == 1
    assert live == {"p123": "primer's versions"}  # the new result starts without versions
    live["s0"] = "versions of second"
    assert log.recall(0, live) == ["a"] and live["s0"] == "versions of first"
    assert log.recall(1, live) == ["b"] and live["s0"] == "versions of second"
    with pytest.raises(IndexError):
        log.recall(2, live)


def test_note_surprisal_is_each_note_ons_nll_in_one_pass(tiny_model):
    import torch

    ids = np.concatenate([[START_ID], notes_to_ids([Note(60 + i % 5, 80, 0.2 * i, 0.2 * i + 0.3)
                                                    for i in range(8)])])
    surprisal = studio.note_surprisal(tiny_model, ids)
    with torch.no_grad():
        logp = torch.log_softmax(tiny_model(torch.as_tensor(ids)[None]).float(), -1)[0].numpy()
    positions = np.flatnonzero(ids < 128)  # NOTE_ON ids; notes here start in pitch order
    expected = [-logp[pos - 1, ids[pos]] for pos in positions]
    assert len(surprisal) == 8 and np.allclose(surprisal, expected, atol=1e-4)
    long_ids = np.concatenate([ids] + [ids[1:]] * 12)  # past the 64-token context: windows
    long_surprisal = studio.note_surprisal(tiny_model, long_ids)
    assert len(long_surprisal) == len(ids_to_arrays(long_ids))
    assert np.isfinite(long_surprisal).all()
    assert "primer notes" in studio.surprisal_summary(surprisal, np.arange(8) < 3)


def test_default_query_has_arcs_and_is_away_from_the_edges():
    from musicgpt import arcs

    ids = notes_to_ids([Note(60 + i, 80, 0.5 * i, 0.5 * i + 0.4) for i in range(12)])
    tokens = arcs.ids_to_note_tokens(ids)
    n = len(ids)
    maps = np.tril(np.ones((1, 2, n, n)))
    maps /= maps.sum(-1, keepdims=True)  # uniform over the past: later notes have more mass
    strong = int(tokens.note_pos[7])
    maps[0, :, strong] = 0.0
    maps[0, :, strong, tokens.note_pos[2]] = 1.0  # note 7 looks hard at note 2
    queries = arcs.notes_in_window(tokens, 0, n)
    assert arcs.default_query(maps, 0, tokens, 0, queries) == 7
    maps[0, :, strong] = 0.0
    maps[0, :, strong, strong] = 1.0  # now only itself: the latest allowed note wins, not the last
    chosen = arcs.default_query(maps, 0, tokens, 0, queries)
    assert chosen < queries[-1] and chosen > queries[0]


def test_player_page_is_self_contained_with_a_cursor_and_the_audio():
    from musicgpt import player, plots

    notes = notes_to_arrays([Note(60, 80, 0.0, 0.5), Note(72, 90, 0.5, 1.5)])
    page = player.player_html(notes, np.array([True, False]), b"RIFFxxxx", [(0.2, 0.4)])
    assert 'data-cursor="0.00"' in page and "data:audio/wav;base64,UklGRnh4eHg=" in page
    assert '[[0.0, 0.5, 60, 1], [0.5, 1.5, 72, 0]]' in page and "currentTime" in page
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched from the network
    silent = player.player_html(notes, np.array([True, False]), None)
    assert "<audio" not in silent and player.player_height(None) < player.player_height(b"x")
    assert plots.note_label(notes, 1) == "C5 at 0.50 s (note 1)"


def test_surprisal_roll_colours_notes_by_nats_and_marks_the_primer_end():
    from musicgpt.plots import surprisal_roll

    notes = notes_to_arrays([Note(60, 80, 0.0, 0.5), Note(64, 80, 0.5, 1.0),
                             Note(67, 80, 1.0, 1.5)])
    fig = surprisal_roll(notes, np.array([np.nan, 2.0, 5.0]), np.array([True, True, False]))
    (bars,) = fig.data
    assert list(bars.marker.color) == [0.0, 2.0, 5.0] and bars.marker.colorbar.title.text == "nats"
    assert bars.customdata[0][2] == "not scored" and bars.customdata[2][3] == "new"
    assert fig.layout.shapes[0].x0 == 1.0


def test_app_previews_an_uploaded_primer_before_generating(app, tmp_path):
    notes = [Note(60 + 2 * i, 90, 0.5 * i, 0.5 * i + 0.4) for i in range(8)]
    app.sidebar.radio(key="primer").set_value("upload").run()
    app.sidebar.file_uploader(key="upload").upload("primer.mid", _midi_bytes(tmp_path, notes))
    app.run()
    _no_problems(app)
    assert [e.label for e in app.expander] == ["Primer: 3.9 s, 8 notes (33 tokens)"]
    assert len(_players(app)) == 1 and len(app.get("plotly_chart")) == 1  # its surprisal
    assert any("primer notes" in c.value for c in app.caption)


def test_app_continues_a_piece_and_recalls_the_earlier_result(app):
    _generate(app, seconds=2)
    first = app.session_state["results"]
    piece = first[0]["piece"]
    query = app.select_slider(key="arc_query_0")
    assert query.value < _option_note(query.options[-1])  # not the last note at the right edge
    assert f"(note {query.value})" in query.options[query.value - _option_note(query.options[0])]
    assert any("Surprisal" in h.value for h in app.header)
    app.button(key="continue_0").click().run()
    _no_problems(app)
    longer = app.session_state["results"][0]["piece"]
    start = studio.continuation_primer(piece.ids)
    assert np.array_equal(longer.ids[: len(start)], start) and longer.primer_len == len(start)
    assert len(longer.ids) > len(start)
    recall = next(box for box in app.selectbox if box.key and box.key.startswith("recall_"))
    assert recall.value == 1 and "continued by 2 s" in recall.options[1]
    recall.set_value(0).run()
    _no_problems(app)
    assert app.session_state["results"] is first


def test_app_says_when_a_sample_stops_before_the_asked_length(make_tiny_model, tmp_path,
                                                              monkeypatch):
    import torch

    from musicgpt.vocab import END_ID

    model = make_tiny_model()
    with torch.no_grad():  # END gets a logit of about 5: ~30% of every draw
        model.ln_f.bias[0] = 10.0
        model.wte.weight[END_ID, 0] = 0.5
    at = _open(save_checkpoint(model, tmp_path / "checkpoint"), monkeypatch)
    _generate(at, seconds=30)
    assert not at.exception, [e.value for e in at.exception]
    notes = [info.value for info in at.info if "shorter than asked" in info.value]
    assert len(notes) == 1 and "it stopped at END after " in notes[0], notes
    assert notes[0].endswith(" of 30 s."), notes


# --- checkpoints: runs found, labelled, and added by typing a folder ----------------------------

def _run_with_state(model, run: Path, **state) -> Path:
    return save_checkpoint(model, run / "checkpoint", state={"step": 120, **state})


def test_checkpoints_are_labelled_with_name_step_data_and_validation(tiny_model, tmp_path):
    _run_with_state(tiny_model, tmp_path / "runs" / "mine", val_nll=1.8709, files=40,
                    data_styles=["chopin", "pop"])
    env = {studio.ENV_CHECKPOINT: "", studio.ENV_CHECKPOINTS: ""}
    found = studio.find_checkpoints(env, cwd=tmp_path)
    assert found["mine — step 120, chopin+pop, 40 files, val NLL 1.87"] == (
        tmp_path / "runs" / "mine" / "checkpoint")


def test_a_folder_in_the_env_list_or_typed_may_be_a_run_or_a_folder_of_runs(tiny_model,
                                                                             tmp_path):
    run = _run_with_state(tiny_model, tmp_path / "elsewhere" / "a").parent
    other = _run_with_state(tiny_model, tmp_path / "more" / "b").parent
    env = {studio.ENV_CHECKPOINT: "", studio.ENV_CHECKPOINTS: str(tmp_path / "elsewhere")}
    found = studio.find_checkpoints(env, cwd=tmp_path, extra=[str(other)])
    assert {run / "checkpoint", other / "checkpoint"} <= set(found.values())
    assert studio.checkpoints_in(tmp_path / "nothing here") == []


def test_app_adds_a_typed_run_folder_and_warns_once_about_a_bad_one(app, tiny_model, tmp_path):
    run = _run_with_state(tiny_model, tmp_path / "typed_run", val_nll=2.5, files=3).parent
    before = app.sidebar.selectbox(key="checkpoint").value
    app.sidebar.text_input(key="add_folder").input(str(tmp_path / "no such run")).run()
    _no_problems(app)
    assert [w.value for w in app.sidebar.warning] == [
        f"No checkpoint in {tmp_path / 'no such run'}: there is no such folder (looked for "
        f"config.json and model.safetensors in it, in its checkpoint/ and in the run folders "
        f"inside it)."]
    assert app.sidebar.selectbox(key="checkpoint").value == before  # nothing lost
    app.sidebar.text_input(key="add_folder").input(str(run)).run()
    _no_problems(app)
    assert not app.sidebar.warning
    picker = app.sidebar.selectbox(key="checkpoint")
    assert picker.value == str(run / "checkpoint")
    assert "typed_run — step 120, 3 files, val NLL 2.50" in picker.options
    app.run()  # kept for the session
    assert app.sidebar.selectbox(key="checkpoint").value == str(run / "checkpoint")
