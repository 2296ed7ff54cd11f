"""Notes -> WAV through TinySoundFont and pretty_midi's General MIDI SoundFont."""

from __future__ import annotations

import io
import sys
import wave

import numpy as np
import pytest

from musicgpt import audio
from musicgpt.events import Note, notes_to_arrays

needs_synth = pytest.mark.skipif(audio.synth_problem() is not None,
                                 reason=str(audio.synth_problem()))


def _read_wav(data: bytes) -> tuple[wave._wave_params, np.ndarray]:
    with wave.open(io.BytesIO(data)) as wav:
        params = wav.getparams()
        frames = np.frombuffer(wav.readframes(params.nframes), dtype="<i2")
    return params, frames.reshape(-1, params.nchannels).astype(np.float64) / 32767


def test_events_release_before_striking_at_the_same_instant():
    notes = notes_to_arrays([Note(60, 80, 0.0, 0.5), Note(60, 90, 0.5, 1.0)])
    events = audio.notes_to_events(notes, sample_rate_hz=1000)
    assert events.tolist() == [[0, 1, 60, 80], [500, 0, 60, 0], [500, 1, 60, 90],
                               [1000, 0, 60, 0]]


@needs_synth
def test_wav_is_44k_stereo_16bit_and_as_long_as_the_notes_plus_tail():
    notes = notes_to_arrays([Note(60, 100, 0.5, 1.0), Note(64, 100, 1.0, 2.0)])
    params, frames = _read_wav(audio.notes_to_wav_bytes(notes))
    assert (params.framerate, params.nchannels, params.sampwidth) == (44100, 2, 2)
    assert params.nframes == int(2.0 * 44100) + int(audio.TAIL_S * 44100)
    assert np.abs(frames[: int(0.5 * 44100)]).max() == 0.0  # silence before the first onset
    assert np.abs(frames).max() == pytest.approx(audio.PEAK, abs=1e-3)


@needs_synth
def test_piano_note_has_harmonics_unlike_a_sine():
    """A4 (440 Hz) from the SoundFont: real piano tone carries energy at 880 and 1320 Hz."""
    pcm = audio.notes_to_pcm(notes_to_arrays([Note(69, 100, 0.0, 1.0)]))
    mono = pcm[: 44100, 0].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
    freqs = np.fft.rfftfreq(len(mono), 1 / 44100)

    def band(hz: float) -> float:
        return float(spectrum[(freqs > hz - 20) & (freqs < hz + 20)].max())

    fundamental = band(440)
    assert fundamental > 50 * float(np.median(spectrum))
    assert band(880) > 0.05 * fundamental and band(1320) > 0.02 * fundamental


@needs_synth
def test_louder_velocity_renders_louder():
    soft = audio.notes_to_pcm(notes_to_arrays([Note(60, 30, 0.0, 0.5)]))
    loud = audio.notes_to_pcm(notes_to_arrays([Note(60, 120, 0.0, 0.5)]))
    assert np.abs(loud).max() > 1.5 * np.abs(soft).max()


@needs_synth
def test_no_notes_renders_only_the_tail():
    params, frames = _read_wav(audio.notes_to_wav_bytes(notes_to_arrays([])))
    assert params.nframes == int(audio.TAIL_S * 44100) and not frames.any()


def test_missing_synthesizer_gives_a_clear_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "tinysoundfont", None)
    problem = audio.synth_problem()
    assert problem and audio.INSTALL_HINT in problem
    with pytest.raises(audio.AudioUnavailable, match="tinysoundfont"):
        audio.notes_to_wav_bytes(notes_to_arrays([Note(60, 80, 0.0, 0.5)]))


def test_soundfont_ships_with_pretty_midi():
    assert audio.bundled_soundfont().name == "TimGM6mb.sf2" and audio.bundled_soundfont().is_file()
    assert audio.soundfont_path().is_file()


def test_soundfont_choice_prefers_the_named_then_the_system_then_the_bundled(tmp_path):
    named, system, bundled = (tmp_path / n for n in ("mine.sf2", "FluidR3_GM.sf2", "Tim.sf2"))
    env = {audio.ENV_SOUNDFONT: str(named)}
    choose = audio.choose_soundfont
    assert choose({}, (system,), bundled) == audio.SoundFont(bundled, bundled.name + " (pretty_midi"
                                                             "'s small General MIDI set)")
    system.write_bytes(b"sf")
    assert choose({}, (system,), bundled).path == system
    missing = choose(env, (system,), bundled)  # named but absent: the system one, saying why
    assert missing.path == system and "not a file" in missing.note
    named.write_bytes(b"sf")
    chosen = choose(env, (system,), bundled)
    assert chosen.path == named and audio.ENV_SOUNDFONT in chosen.label and chosen.note is None


def test_player_audio_is_the_wav_when_small_else_mono_and_lower_rate():
    t = np.arange(44100) / 44100
    tone = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1) * 0.5
    wav = audio.pcm_to_wav_bytes(tone)
    assert audio.wav_for_player(wav, len(wav)) is wav
    with wave.open(io.BytesIO(audio.wav_for_player(wav, len(wav) - 1))) as mono:
        assert (mono.getnchannels(), mono.getframerate(), mono.getnframes()) == (1, 44100, 44100)
    small = audio.wav_for_player(wav, 30_000)
    with wave.open(io.BytesIO(small)) as low:
        assert (low.getnchannels(), low.getframerate()) == (1, 11025)
        assert low.getnframes() == 11025 and len(small) <= 30_000
        peak = np.abs(np.frombuffer(low.readframes(11025), "<i2")).max()
    assert 0.8 * 32767 * audio.PEAK < peak <= 32767 * audio.PEAK + 1  # the tone survives
