"""The Duet page's piano in the browser: one note of every third key rendered once from the app's
SoundFont (audio.py), served beside the page's component, which plays a key from the nearest
sample (at most a semitone away, resampled). The player's keys sound at once and the model's
answer is scheduled note by note, both with the SoundFont piano the app's players use.

`component_dir` is the folder Streamlit serves the component from: the page (duet_component/
index.html, copied) and `piano.wav`, made once per SoundFont in a cache folder.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import wave
from pathlib import Path

import numpy as np

from . import audio

SAMPLE_RATE_HZ = 22050
SAMPLE_PITCHES = tuple(range(21, 109, 3))  # A0..C8, every third key
HOLD_S = 2.2  # each sample: the key held this long, then released
RELEASE_S = 0.3
VELOCITY = 100  # the page scales the loudness for other velocities
PAGE_DIR = Path(__file__).resolve().parent / "duet_component"
WAV_NAME = "piano.wav"


def samples_pcm(sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """(len(SAMPLE_PITCHES), n) float32 mono: one note per sample pitch, back to back; raises
    audio.AudioUnavailable."""
    problem = audio.synth_problem()
    if problem:
        raise audio.AudioUnavailable(problem)
    import tinysoundfont

    synth = tinysoundfont.Synth(samplerate=sample_rate_hz)
    sfid = synth.sfload(audio._soundfont_bytes(audio.soundfont_path()))
    synth.program_select(0, sfid, 0, audio.PIANO_PRESET)
    hold, release = int(HOLD_S * sample_rate_hz), int(RELEASE_S * sample_rate_hz)
    rows = []
    for pitch in SAMPLE_PITCHES:
        synth.noteon(0, pitch, VELOCITY)
        held = audio._generate(synth, hold)
        synth.noteoff(0, pitch)
        rows.append(np.concatenate([held, audio._generate(synth, release)]).mean(axis=1))
        synth.sounds_off()  # silence the tail before the next key
    return np.stack(rows).astype(np.float32)


def samples_wav(sample_rate_hz: int = SAMPLE_RATE_HZ) -> bytes:
    """The samples as one 16-bit mono WAV, peak-normalised together (their loudness relative
    to each other kept)."""
    pcm = samples_pcm(sample_rate_hz).reshape(-1)
    peak = float(np.abs(pcm).max()) if len(pcm) else 0.0
    if peak > 0:
        pcm = pcm * (audio.PEAK / peak)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate_hz)
        out.writeframes(np.rint(pcm * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def manifest() -> dict:
    """What the page needs to cut `piano.wav` into notes."""
    return dict(url=WAV_NAME, pitches=list(SAMPLE_PITCHES), seconds=HOLD_S + RELEASE_S,
                hold_s=HOLD_S, velocity=VELOCITY)


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "musicgpt"


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for page_file in sorted(PAGE_DIR.iterdir()):
        digest.update(page_file.name.encode() + page_file.read_bytes())
    if audio.synth_problem() is None:
        font = audio.soundfont_path()
        stat = font.stat()
        digest.update(f"{font}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    digest.update(repr((SAMPLE_RATE_HZ, SAMPLE_PITCHES, HOLD_S, RELEASE_S, VELOCITY)).encode())
    return digest.hexdigest()[:16]


def component_dir(root: Path | None = None) -> tuple[Path, str | None]:
    """(the folder to serve the component from, why there is no piano sound or None). Made once
    per page version and SoundFont, under `root` (default ~/.cache/musicgpt, else the temp
    folder); without a synthesizer the page falls back to a plain tone and says why."""
    problem = audio.synth_problem()
    roots = [root] if root is not None else [_cache_root(), Path(tempfile.gettempdir())]
    for base in roots:
        folder = base / f"duet_component-{_fingerprint()}"
        try:
            if not folder.is_dir():
                _build(folder, problem is None)
            return folder, problem
        except OSError:
            continue
    return PAGE_DIR, problem or "Piano sound is off: no folder to write its samples in."


def _build(folder: Path, with_sound: bool) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        for page_file in PAGE_DIR.iterdir():
            shutil.copyfile(page_file, scratch / page_file.name)
        if with_sound:
            (scratch / WAV_NAME).write_bytes(samples_wav())
        scratch.rename(folder)
    except OSError:
        if folder.is_dir():  # another process made it first
            shutil.rmtree(scratch, ignore_errors=True)
            return
        shutil.rmtree(scratch, ignore_errors=True)
        raise
