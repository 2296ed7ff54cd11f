"""The app under load (issue 23): sessions share one cached model, so generating and infilling
take turns on it; each session still gets exactly the music it would get alone."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from musicgpt import infilling, sampling, studio
from musicgpt.checkpoint import save_checkpoint

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture(scope="module")
def checkpoint(make_tiny_model, tmp_path_factory) -> Path:
    model = make_tiny_model(styles=("classical", "pop"), block_size=256)
    return save_checkpoint(model, tmp_path_factory.mktemp("shared") / "checkpoint")


def _session(seconds: int = 3) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.sidebar.slider(key="seconds").set_value(seconds)
    return at


def _tracked(real, state: dict, guard: threading.Lock):
    """`real`, counting how many calls run at once (each lingers, so overlaps show)."""
    def run(*args, **kwargs):
        with guard:
            state["active"] += 1
            state["peak"] = max(state["peak"], state["active"])
        try:
            time.sleep(0.5)
            return real(*args, **kwargs)
        finally:
            with guard:
                state["active"] -= 1
    return run


def _parse_one_at_a_time(monkeypatch) -> None:
    """Each run parses app.py, and CPython 3.11.7 can fail two parses racing in two threads
    ("SystemError: AST constructor recursion depth mismatch", CPython gh-106905): the sessions
    here parse one at a time, which is not what this test is about."""
    from streamlit.runtime.scriptrunner import magic

    lock, add_magic = threading.Lock(), magic.add_magic

    def one_at_a_time(*args, **kwargs):
        with lock:
            return add_magic(*args, **kwargs)
    monkeypatch.setattr(magic, "add_magic", one_at_a_time)


def test_two_sessions_generating_and_one_infilling_at_once_are_each_correct(checkpoint,
                                                                             monkeypatch):
    monkeypatch.setenv(studio.ENV_CHECKPOINT, str(checkpoint))
    monkeypatch.setenv(studio.ENV_CHECKPOINTS, "")
    alone = _session().sidebar.button(key="generate").click().run()
    expected = alone.session_state["results"][0]["piece"].ids
    editor = _session(seconds=4).sidebar.button(key="generate").click().run()
    editor.slider(key="edit_span_s0").set_value((3.0, 5.0)).run()
    first, second = _session(), _session()

    state, guard = {"active": 0, "peak": 0}, threading.Lock()
    _parse_one_at_a_time(monkeypatch)
    monkeypatch.setattr(sampling, "generate_pieces",
                        _tracked(sampling.generate_pieces, state, guard))
    monkeypatch.setattr(infilling, "infill", _tracked(infilling.infill, state, guard))
    presses = [first.sidebar.button(key="generate"), second.sidebar.button(key="generate"),
               editor.button(key="edit_go_s0")]
    start = threading.Barrier(len(presses))

    def press(button) -> None:
        start.wait()
        button.click().run()

    threads = [threading.Thread(target=press, args=(button,)) for button in presses]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    for at in (first, second, editor):
        assert not at.exception, [e.value for e in at.exception]
        assert not at.error, [e.value for e in at.error]
    assert state["peak"] == 1  # the shared model was used by one session at a time
    for at in (first, second):
        assert np.array_equal(at.session_state["results"][0]["piece"].ids, expected)
    history = editor.session_state["histories"]["s0"]
    assert (len(history), history.pending) == (2, 1)


def test_the_server_defaults_are_safe_and_the_upload_limit_is_the_apps():
    import tomllib

    config = tomllib.loads((Path(APP).parent / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "localhost"
    assert config["server"]["maxUploadSize"] * 2**20 == studio.MAX_UPLOAD_BYTES
    assert config["client"]["showErrorDetails"] == "none"
    assert config["browser"]["gatherUsageStats"] is False
    readme = (Path(APP).parent / "README.md").read_text()
    assert "--server.address 0.0.0.0" in readme
