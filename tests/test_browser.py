"""End to end: `streamlit run app.py` on localhost, driven in Debian's headless Chromium.

Uses a tiny untrained checkpoint (via $MUSICGPT_CHECKPOINT) in a 1400x900 window: Generate and a
bad upload's error (at the top and beside the uploader) are visible without scrolling, no Deploy
button shows, the sidebar's choices (every built-in primer's label) fit their boxes; Generate
makes a player (roll + audio) whose cursor follows the audio, and "Continue this piece" makes a
longer one. Saves tests/artifacts/app.png for a human look.
Skips only when no Chromium binary is installed (CI installs it in .ci/run).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists()
                                        else None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# A checkpoint to run the app with instead of the tiny untrained one, e.g. the shipped model to
# measure the duet's latency as users see it: MUSICGPT_BROWSER_CHECKPOINT=data/default_model
ENV_CHECKPOINT = "MUSICGPT_BROWSER_CHECKPOINT"

# Generous: on a loaded 2-core machine the first script run (torch import) alone can take a minute.
PAGE_TIMEOUT_MS = 240_000

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium); CI installs it")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited early:\n{server.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"streamlit did not answer {url} within {timeout_s} s")


@pytest.fixture(scope="module")
def app_url(tiny_checkpoint):
    port = _free_port()
    # One torch thread: the server shares the cores with Chromium and pytest, and oversubscribed
    # OpenMP threads slow CPU decoding ~10x on a busy 2-core machine.
    checkpoint = os.environ.get(ENV_CHECKPOINT) or str(tiny_checkpoint)
    env = {**os.environ, "MUSICGPT_CHECKPOINT": checkpoint, "MUSICGPT_CHECKPOINTS": "",
           "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.headless",
         "true", "--server.port", str(port), "--server.address", "127.0.0.1",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/_stcore/health", server)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        try:
            server.wait(timeout=3)
        except subprocess.TimeoutExpired:
            server.kill()  # nothing to save; a busy server can take >10 s to stop gracefully
            server.wait()


def _player_frame(page):
    """The last player on the page (roll canvas + audio): the newest result's."""
    frames = [f for f in page.frames if f != page.main_frame and _holds(f, "canvas#roll")
              and _holds(f, "audio")]
    assert frames, "no player with audio on the page"
    return frames[-1]


def _holds(frame, selector: str) -> bool:
    """`frame` shows `selector` (a frame replaced by a rerun, now detached, shows nothing)."""
    from playwright.sync_api import Error as PlaywrightError

    try:
        return frame.locator(selector).count() > 0
    except PlaywrightError:
        return False


_TOO_WIDE = """(input, labels) => {
    const pen = document.createElement('canvas').getContext('2d');
    const style = getComputedStyle(input);
    pen.font = style.font;
    const room = input.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    return (labels || [input.value]).filter(label => pen.measureText(label).width > room); }"""


def _cut_labels(page) -> list[str]:
    """Sidebar choices that would not fit their box: every built-in primer's label, and the
    value each other box shows but the checkpoint's (a path: as long as it is); each label's
    width in the box's font against its room."""
    from musicgpt.studio import example_choices

    primer = page.get_by_role("combobox", name="Built-in primer")
    primer.wait_for(timeout=PAGE_TIMEOUT_MS)
    cut = primer.evaluate(_TOO_WIDE, list(example_choices()))
    for box in page.get_by_test_id("stSidebar").get_by_role("combobox").all():
        if box.get_attribute("aria-label") != "Checkpoint":
            cut += box.evaluate(_TOO_WIDE, None)
    return cut


@contextlib.contextmanager
def _app_page(app_url: str):
    """The app at `app_url` in a 1400x900 headless Chromium page that may play audio (muted)."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM,
                                     args=[*CHROMIUM_ARGS, "--autoplay-policy="
                                           "no-user-gesture-required", "--mute-audio"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(app_url)
            yield page
        finally:
            browser.close()


def _in_view(page, locator) -> bool:
    """Visible without scrolling: inside the 1400x900 viewport with the page scrolled to the top."""
    box = locator.bounding_box()
    top = page.evaluate("() => window.scrollY")
    return box is not None and top == 0 and box["y"] >= 0 and box["y"] + box["height"] <= 900


def test_browser_generate_shows_audio_and_piano_roll(app_url):
    with _app_page(app_url) as page:
        button = page.get_by_role("button", name="Generate")
        button.wait_for(timeout=PAGE_TIMEOUT_MS)
        page.get_by_text("press Generate").wait_for(timeout=PAGE_TIMEOUT_MS)
        generate_in_view = _in_view(page, button)
        deploy_buttons = page.get_by_role("button", name="Deploy").count()
        cut_labels = _cut_labels(page)
        # a bad upload: its error shows without scrolling, then back to a built-in primer
        primer = page.get_by_test_id("stRadio").filter(has_text="built-in")
        primer.get_by_text("upload", exact=True).click()
        page.locator("input[type=file]").set_input_files(
            files=[{"name": "bad.mid", "mimeType": "audio/midi", "buffer": b"not midi"}])
        error = page.get_by_text("not a usable MIDI file").first
        error.wait_for(timeout=PAGE_TIMEOUT_MS)
        error_in_view = _in_view(page, error)
        beside = page.get_by_test_id("stSidebar").get_by_text("not a usable MIDI file")
        beside.wait_for(timeout=PAGE_TIMEOUT_MS)
        beside_in_view = _in_view(page, beside)
        primer.get_by_text("built-in", exact=True).click()
        page.get_by_text("press Generate").wait_for(timeout=PAGE_TIMEOUT_MS)
        length = page.get_by_test_id("stSlider").filter(has_text="Length of new music")
        length.get_by_role("slider").press("Home")  # shortest piece: 2 s
        page.get_by_test_id("stSlider").filter(has_text="2").first.wait_for()
        button.click()
        more = page.get_by_role("button", name="Continue this piece")
        more.wait_for(timeout=PAGE_TIMEOUT_MS)
        page.locator(".js-plotly-plot >> visible=true").first.wait_for(timeout=PAGE_TIMEOUT_MS)
        frame = _player_frame(page)
        audio_src = frame.locator("audio").get_attribute("src")
        played = frame.evaluate("""() => { const a = document.getElementById('audio');
            a.muted = true; return a.play().then(() => true, () => false); }""")
        page.wait_for_timeout(1500)
        if not played:  # no audio output at all: seeking still moves the cursor
            frame.evaluate("() => { document.getElementById('audio').currentTime = 0.5; }")
            page.wait_for_timeout(500)
        cursor = float(frame.locator("canvas#roll").get_attribute("data-cursor"))
        page.wait_for_timeout(1000)  # let plotly finish drawing before the screenshot
        page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
        bars = page.locator(".js-plotly-plot .barlayer path").count()
        more.click()
        page.get_by_text("earlier ones can be recalled").wait_for(timeout=PAGE_TIMEOUT_MS)
        page.get_by_role("button", name="Continue this piece").wait_for(
            timeout=PAGE_TIMEOUT_MS)
        continued_src = _player_frame(page).locator("audio").get_attribute("src")
        errors = page.locator("[data-testid='stException']").count()
    assert generate_in_view, "Generate is not visible without scrolling at 1400x900"
    assert error_in_view, "the upload's error is not visible without scrolling at 1400x900"
    assert beside_in_view, "the upload's error is not shown beside the uploader"
    assert deploy_buttons == 0, "Streamlit's Deploy button shows"
    assert cut_labels == [], f"sidebar labels cut off: {cut_labels}"
    assert audio_src and audio_src.startswith("data:audio/wav"), "the player has no audio"
    assert cursor > 0.0, "the playback cursor did not move"
    assert bars >= 1, "the piano roll drew no notes"
    assert continued_src and continued_src != audio_src, "Continue made no new piece"
    assert errors == 0, "the page shows a Python exception"


def _duet_frame(page):
    """The Duet page's component (its piano)."""
    deadline = time.monotonic() + PAGE_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        for frame in page.frames:
            if frame != page.main_frame and _holds(frame, "#piano .w"):
                return frame
        page.wait_for_timeout(250)
    raise AssertionError("no duet piano on the page")


def _play_phrase(page, keys: str) -> None:
    """Keys of the computer keyboard, each held 0.2 s, one after another."""
    for key in keys:
        page.keyboard.down(key)
        page.wait_for_timeout(200)
        page.keyboard.up(key)
        page.wait_for_timeout(60)


_ANSWERED = re.compile(r"Answered (\d+) notes in (\d+) ms")


def test_browser_duet_answers_phrases_played_on_the_computer_keyboard(app_url):
    """Phrases typed on the letter rows get answers: the status says how many notes and how long
    after the phrase's end (detected in the page) the first one sounds; the model's notes appear
    in the roll; a key struck during an answer cuts it short. Saves tests/artifacts/duet.png."""

    from musicgpt.audio import synth_problem

    with _app_page(app_url) as page:
        page.get_by_role("button", name="Generate").wait_for(timeout=PAGE_TIMEOUT_MS)
        page.get_by_test_id("stRadio").get_by_text("Duet", exact=True).click()
        frame = _duet_frame(page)
        frame.locator("#roll").click()  # focus the piano's page: keys go to it
        statuses, latencies = [], []
        for n, keys in enumerate(("asdfg", "gfdsa"), 1):
            _play_phrase(page, keys)
            frame.wait_for_function(f"() => JSON.parse(document.body.dataset.latencies || "
                                    f"'[]').length >= {n}", timeout=PAGE_TIMEOUT_MS)
            status = frame.locator("#status").filter(has_text=_ANSWERED)
            status.wait_for(timeout=PAGE_TIMEOUT_MS)
            statuses.append(status.inner_text())
            frame.wait_for_function("() => !/drawing/.test(document.getElementById("
                                    "'status').textContent)", timeout=PAGE_TIMEOUT_MS)
            page.wait_for_timeout(600)  # it sounds: the roll shows its notes
            model_notes = int(frame.locator("#roll").get_attribute("data-model-notes"))
            latencies = json.loads(frame.locator("body").get_attribute("data-latencies"))
            if keys == "asdfg":
                page.wait_for_timeout(3000)  # the first answer plays to its end
                frame.locator("#status").click()
        page.keyboard.press("h")  # during the second answer: cut it short
        page.wait_for_timeout(300)  # the roll redraws (and counts) on the next frame
        cut = frame.locator("#status").filter(has_text="cut short").count()
        player_notes = int(frame.locator("#roll").get_attribute("data-player-notes"))
        sound = frame.locator("body").get_attribute("data-sound")
        running = frame.evaluate("() => ctx !== null && ctx.state === 'running'")
        page.screenshot(path=str(ARTIFACTS / "duet.png"), full_page=True)
        errors = page.locator("[data-testid='stException']").count()
    print(f"duet: {statuses}; phrase end -> first answer note sounding (ms): {latencies}")
    assert len(latencies) == 2, statuses
    assert all(int(_ANSWERED.search(s).group(1)) >= 1 for s in statuses)
    assert model_notes >= 1, "no answer note in the roll"
    assert player_notes == 11, "the roll does not show the player's notes"
    assert cut == 1, "a key struck during the answer did not cut it short"
    assert max(latencies) < 700, f"an answer started {max(latencies)} ms after the phrase ended"
    assert sound == ("tone" if synth_problem() else "soundfont"), sound  # the app's piano
    assert running, "the page's audio does not run"
    assert errors == 0, "the page shows a Python exception"
