"""Notes -> piano audio (WAV bytes) with a real SoundFont synthesizer. No Streamlit, no model.

Rendering is offline: TinySoundFont (the `tinysoundfont` package, a C synth with Python bindings)
plays the notes through a General MIDI SoundFont (preset 0 = Acoustic Grand Piano) and we collect
its output buffer between events. The SoundFont is the best one present (`choose_soundfont`): the
file `$MUSICGPT_SOUNDFONT` names, else Debian's FluidR3_GM (`apt-get install fluid-soundfont-gm`,
a much better piano), else the small `TimGM6mb.sf2` that pretty_midi ships. Nothing here opens an
audio device, so tinysoundfont's optional PyAudio dependency is never imported.

If tinysoundfont is not installed, `synth_problem()` says why in one line and rendering raises
`AudioUnavailable`; callers show the message and carry on without audio.
"""

from __future__ import annotations

import io
import os
import wave
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .events import NoteArrays
from .vocab import steps_to_seconds

SAMPLE_RATE_HZ = 44100
TAIL_S = 1.5  # let the last notes ring out (release + reverb of the SoundFont)
PEAK = 0.89  # -1 dBFS
PIANO_PRESET = 0  # General MIDI: Acoustic Grand Piano
INSTALL_HINT = "pip install --no-deps tinysoundfont==0.3.7"
ENV_SOUNDFONT = "MUSICGPT_SOUNDFONT"  # a .sf2 file the user prefers
SYSTEM_SOUNDFONTS = (Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),)  # Debian fluid-soundfont-gm


class AudioUnavailable(RuntimeError):
    """No synthesizer or SoundFont; the message says what to install."""


def bundled_soundfont() -> Path:
    """The General MIDI SoundFont bundled with pretty_midi (TimGM6mb.sf2, ~6 MB)."""
    import pretty_midi

    return Path(pretty_midi.__file__).resolve().parent / "TimGM6mb.sf2"


@dataclass(frozen=True)
class SoundFont:
    path: Path
    label: str  # what the page says plays the piano
    note: str | None = None  # why a named SoundFont was not used


def choose_soundfont(env: dict[str, str] | None = None,
                     system: tuple[Path, ...] = SYSTEM_SOUNDFONTS,
                     bundled: Path | None = None) -> SoundFont:
    """The SoundFont to play: `$MUSICGPT_SOUNDFONT` if it is a file, else the first system
    SoundFont present (FluidR3_GM), else pretty_midi's TimGM6mb.sf2."""
    env = dict(os.environ) if env is None else env
    note = None
    named = env.get(ENV_SOUNDFONT, "").strip()
    if named:
        path = Path(named).expanduser()
        if path.is_file():
            return SoundFont(path, f"{path.name} (${ENV_SOUNDFONT})")
        note = f"${ENV_SOUNDFONT} names {path}, which is not a file"
    for path in system:
        if path.is_file():
            return SoundFont(path, f"{path.name} (system)", note)
    bundled = bundled_soundfont() if bundled is None else bundled
    return SoundFont(bundled, f"{bundled.name} (pretty_midi's small General MIDI set)", note)


def soundfont_path() -> Path:
    """The SoundFont audio is rendered with (see `choose_soundfont`)."""
    return choose_soundfont().path


def synth_problem() -> str | None:
    """None when audio can be rendered, else a one-line reason with the fix."""
    try:
        import tinysoundfont  # noqa: F401
    except ImportError:
        return f"Audio is off: the tinysoundfont synthesizer is not installed ({INSTALL_HINT})."
    if not soundfont_path().is_file():
        return f"Audio is off: the SoundFont {soundfont_path()} is missing (reinstall pretty_midi)."
    return None


@lru_cache(maxsize=2)
def _soundfont_bytes(path: Path) -> bytes:
    return path.read_bytes()


def notes_to_events(notes: NoteArrays, sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """(n_events, 4) int64 rows (sample, is_on, pitch, velocity), sorted by time.

    At one instant note-offs come before note-ons, so a re-struck pitch is released, then struck.
    """
    n = len(notes)
    samples_per_step = sample_rate_hz * float(steps_to_seconds(1))
    times = np.concatenate([notes.end_step, notes.start_step]) * samples_per_step
    is_on = np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64)])
    pitch = np.concatenate([notes.pitch, notes.pitch]).astype(np.int64)
    velocity = np.concatenate([np.zeros(n, np.int64), notes.velocity]).astype(np.int64)
    events = np.stack([np.rint(times).astype(np.int64), is_on, pitch, velocity], axis=1)
    return events[np.lexsort((pitch, is_on, events[:, 0]))]


def notes_to_pcm(notes: NoteArrays, sample_rate_hz: int = SAMPLE_RATE_HZ,
                 tail_s: float = TAIL_S) -> np.ndarray:
    """Render notes to stereo float32 samples (n_samples, 2) in -1..1; raises AudioUnavailable."""
    problem = synth_problem()
    if problem:
        raise AudioUnavailable(problem)
    import tinysoundfont

    synth = tinysoundfont.Synth(samplerate=sample_rate_hz)
    sfid = synth.sfload(_soundfont_bytes(soundfont_path()))
    synth.program_select(0, sfid, 0, PIANO_PRESET)
    events = notes_to_events(notes, sample_rate_hz)
    total = (int(events[-1, 0]) if len(events) else 0) + int(tail_s * sample_rate_hz)
    chunks: list[np.ndarray] = []
    now = 0
    for sample, is_on, pitch, velocity in events.tolist():
        if sample > now:
            chunks.append(_generate(synth, sample - now))
            now = sample
        if is_on:
            synth.noteon(0, pitch, velocity)
        else:
            synth.noteoff(0, pitch)
    if total > now:
        chunks.append(_generate(synth, total - now))
    return np.concatenate(chunks) if chunks else np.zeros((0, 2), np.float32)


def _generate(synth, n_samples: int) -> np.ndarray:
    return np.frombuffer(synth.generate(n_samples), dtype=np.float32).reshape(-1, 2).copy()


def pcm_to_wav_bytes(pcm: np.ndarray, sample_rate_hz: int = SAMPLE_RATE_HZ) -> bytes:
    """Stereo float samples -> 16-bit PCM WAV bytes, peak-normalised to `PEAK` (-1 dBFS).

    The SoundFont's piano peaks far below full scale (~-13 dBFS on real pieces), so without
    normalising the player sounds faint; with many voices it could also clip.
    """
    pcm = np.asarray(pcm, dtype=np.float32).reshape(-1, 2)
    peak = float(np.abs(pcm).max()) if len(pcm) else 0.0
    if peak > 0.0:
        pcm = pcm * (PEAK / peak)
    frames = np.rint(pcm * 32767).astype("<i2").tobytes()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(sample_rate_hz)
        out.writeframes(frames)
    return buffer.getvalue()


def notes_to_wav_bytes(notes: NoteArrays, sample_rate_hz: int = SAMPLE_RATE_HZ) -> bytes:
    """Piano WAV of the notes (44.1 kHz, 16-bit stereo); raises AudioUnavailable."""
    return pcm_to_wav_bytes(notes_to_pcm(notes, sample_rate_hz), sample_rate_hz)


PLAYER_MAX_BYTES = 8 * 2**20  # ~47 s of 44.1 kHz stereo; the page embeds the player's audio


def wav_for_player(wav: bytes, max_bytes: int = PLAYER_MAX_BYTES) -> bytes:
    """The WAV the page's player embeds: `wav` itself when it is small, else mixed to mono and,
    while still too big, at half the sample rate (pairs averaged), down to 11,025 Hz. Long pieces
    (a piece continued many times) then still fit Streamlit's message limit; the .wav download
    keeps the full quality."""
    if len(wav) <= max_bytes:
        return wav
    with wave.open(io.BytesIO(wav)) as source:
        channels, rate = source.getnchannels(), source.getframerate()
        pcm = np.frombuffer(source.readframes(source.getnframes()), "<i2").reshape(-1, channels)
    mono = pcm.astype(np.float32).mean(axis=1)
    while 44 + 2 * len(mono) > max_bytes and rate > 11025:
        mono = mono[: len(mono) // 2 * 2].reshape(-1, 2).mean(axis=1)
        rate //= 2
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.rint(mono).astype("<i2").tobytes())
    return buffer.getvalue()
