"""What `generate` and `infill` write: the user's file edited in place (infill), the primer's clock
kept (generate --primer), --bpm, the seed and lengths on every `wrote` line, --wav and .wav
outputs, refused output names, pieces without notes, infill's progress bar."""

from __future__ import annotations

import io
import re

import mido
import pytest
from conftest import CORPUS_DIR
from helpers import Track, write_midi
from test_midi_edit import assert_edit_keeps_outside

from musicgpt.audio import synth_problem
from musicgpt.checkpoint import save_checkpoint
from musicgpt.cli import main
from musicgpt.midi_edit import NEW_TRACK_NAME
from musicgpt.midi_io import midi_file_to_arrays

NO_AUDIO = synth_problem()


@pytest.fixture(scope="module")
def fim_checkpoint(make_tiny_model, tmp_path_factory):
    """A tiny model with the sentinels and a context long enough to infill 1.5 s."""
    return save_checkpoint(make_tiny_model(block_size=256),
                           tmp_path_factory.mktemp("ckpt") / "checkpoint")


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    """Two named tracks at 90 bpm in 3/4 with a sustain pedal: a DAW user's file."""
    melody = Track([(72 + i % 5, 60 + i, 0.4 * i, 0.4 * i + 0.3) for i in range(12)],
                   pedals=[(0.0, 1.9), (2.0, 4.5)])
    bass = Track([(40 + i % 3, 50, 0.8 * i, 0.8 * i + 0.7) for i in range(6)], channel=1,
                 program=32)
    path = tmp_path_factory.mktemp("song") / "song.mid"
    write_midi(path, [melody, bass], ticks_per_beat=96, tempos=[(0.0, 90.0)])
    midi = mido.MidiFile(path)
    midi.tracks[0].insert(0, mido.MetaMessage("time_signature", numerator=3, denominator=4))
    midi.tracks[1].insert(0, mido.MetaMessage("track_name", name="Melody"))
    midi.tracks[2].insert(0, mido.MetaMessage("track_name", name="Bass"))
    midi.save(path)
    return path


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _meta(path) -> tuple:
    midi = mido.MidiFile(path)
    return (midi.ticks_per_beat, [t.name for t in midi.tracks],
            [(m.type, getattr(m, "tempo", None), getattr(m, "numerator", None))
             for m in midi.tracks[0] if m.type in ("set_tempo", "time_signature")])


def test_infill_edits_the_file_in_place(fim_checkpoint, song, tmp_path, capsys):
    out = tmp_path / "out.mid"
    code, lines, _ = _run(capsys, "infill", "--checkpoint", fim_checkpoint, "--midi", song,
                          "--start", "1.5", "--end", "3.0", "--out", out, "--seed", "3",
                          "--no-progress")
    assert code == 0
    assert_edit_keeps_outside(song.read_bytes(), out.read_bytes(), 150, 300)
    ticks, names, clock = _meta(out)
    assert (ticks, names[:3], clock) == _meta(song)
    assert names[3] == NEW_TRACK_NAME
    assert re.fullmatch(rf"wrote {out} \(1\.50-3\.00 s rewritten, \d+ new notes; 4\.\d s in all, "
                        r"seed 3(; no new notes in the span: .*)?\)\n", lines), lines


def test_infill_shows_progress_in_seconds_of_the_span(fim_checkpoint, song, tmp_path, capsys):
    code, _, err = _run(capsys, "infill", "--checkpoint", fim_checkpoint, "--midi", song,
                        "--start", "1.5", "--end", "3.0", "--out", tmp_path / "o.mid")
    assert code == 0
    assert "/1.5 s of music" in err.replace("\r", "\n"), err


def test_continuation_keeps_the_primer_clock_and_tracks(tiny_checkpoint, song, tmp_path, capsys):
    out = tmp_path / "cont.mid"
    code, lines, _ = _run(capsys, "generate", "--checkpoint", tiny_checkpoint, "--primer", song,
                          "--primer-seconds", "2", "--seconds", "2", "--out", out, "--seed", "5",
                          "--no-progress")
    assert code == 0, lines
    ticks, names, clock = _meta(out)
    assert (ticks, names[:3], clock) == (96, ["", "Melody", "Bass"], _meta(song)[2])
    assert clock == [("time_signature", None, 3), ("set_tempo", mido.bpm2tempo(90), None)]
    assert names[3] == NEW_TRACK_NAME
    assert re.fullmatch(rf"wrote {out} \(\d+\.\d s, \d+ tokens, \d+ new notes, seed 5.*\)\n",
                        lines)
    primer = [(p, s) for p, s in zip(*_pitch_starts(song), strict=True) if s <= 200]
    assert list(zip(*_pitch_starts(out), strict=True))[: len(primer)] == primer


def _pitch_starts(path) -> tuple[list, list]:
    notes = midi_file_to_arrays(path)
    return notes.pitch.tolist(), notes.start_step.tolist()


def test_without_a_primer_bpm_sets_the_written_tempo(tiny_checkpoint, tmp_path, capsys):
    for bpm, name in (("90", "slow.mid"), (None, "default.mid")):
        flags = ["--bpm", bpm] if bpm else []
        code, _, _ = _run(capsys, "generate", "--checkpoint", tiny_checkpoint, "--seconds", "2",
                          "--out", tmp_path / name, "--seed", "1", "--no-progress", *flags)
        assert code == 0
    tempos = [[round(mido.tempo2bpm(m.tempo), 3) for m in mido.MidiFile(tmp_path / n).tracks[0]
               if m.type == "set_tempo"] for n in ("slow.mid", "default.mid")]
    assert tempos == [[90.0], [120.0]]
    assert _pitch_starts(tmp_path / "slow.mid") == _pitch_starts(tmp_path / "default.mid")


def test_a_seed_is_drawn_printed_and_repeats(tiny_checkpoint, tmp_path, capsys):
    code, lines, _ = _run(capsys, "generate", "--checkpoint", tiny_checkpoint, "--seconds", "2",
                          "--out", tmp_path / "a.mid", "--no-progress")
    assert code == 0
    seed = re.search(r"seed (\d+)", lines).group(1)
    code, again, _ = _run(capsys, "generate", "--checkpoint", tiny_checkpoint, "--seconds", "2",
                          "--out", tmp_path / "b.mid", "--seed", seed, "--no-progress")
    assert f"seed {seed}" in again
    assert (tmp_path / "a.mid").read_bytes() == (tmp_path / "b.mid").read_bytes()


@pytest.mark.parametrize("name", ["piece.txt", "piece", "piece.mid.bak"])
@pytest.mark.parametrize("command", ["generate", "infill"])
def test_an_output_that_is_not_midi_is_refused_in_one_line(tiny_checkpoint, song, tmp_path,
                                                          capsys, name, command):
    flags = ["--midi", song, "--start", "1", "--end", "2"] if command == "infill" else []
    code, _, err = _run(capsys, command, "--checkpoint", tiny_checkpoint, "--out",
                        tmp_path / name, "--no-progress", *flags)
    assert code == 2 and len(err.strip().splitlines()) == 1 and ".mid or .midi" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("bpm", ["0", "-90", "nan", "7000"])
def test_a_bad_bpm_is_refused_in_one_line(tiny_checkpoint, tmp_path, capsys, bpm):
    code, _, err = _run(capsys, "generate", "--checkpoint", tiny_checkpoint, "--out",
                        tmp_path / "o.mid", "--bpm", bpm, "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--bpm" in err


@pytest.mark.skipif(NO_AUDIO is not None, reason=f"{NO_AUDIO}")
def test_wav_flag_and_wav_output_render_audio(tiny_checkpoint, tmp_path, capsys):
    code, lines, _ = _run(capsys, "generate", "--checkpoint", tiny_checkpoint, "--seconds", "1",
                          "--out", tmp_path / "a.mid", "--wav", "--seed", "2", "--no-progress")
    assert code == 0 and f"wrote {tmp_path / 'a.mid'} and {tmp_path / 'a.wav'} (" in lines
    code, lines, _ = _run(capsys, "generate", "--checkpoint", tiny_checkpoint, "--seconds", "1",
                          "--out", tmp_path / "b.wav", "--seed", "2", "--no-progress")
    assert code == 0 and lines.startswith(f"wrote {tmp_path / 'b.wav'} (")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mid", "a.wav", "b.wav"]
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    assert (tmp_path / "a.wav").read_bytes()[:4] == b"RIFF"


def test_a_piece_without_notes_says_so(make_tiny_model, tmp_path, capsys):
    import torch

    from musicgpt.vocab import END_ID

    model = make_tiny_model()
    with torch.no_grad():  # END at once
        model.ln_f.bias[0] = 10.0
        model.wte.weight[END_ID, 0] = 100.0
    ckpt = save_checkpoint(model, tmp_path / "ends")
    code, lines, _ = _run(capsys, "generate", "--checkpoint", ckpt, "--out", tmp_path / "e.mid",
                          "--seed", "0", "--no-progress")
    assert code == 0 and "0 new notes, seed 0; no notes: try another seed" in lines, lines
    assert mido.MidiFile(file=io.BytesIO((tmp_path / "e.mid").read_bytes())).type == 1


@pytest.mark.skipif(not CORPUS_DIR.is_dir(), reason=f"corpus folder {CORPUS_DIR} is absent")
@pytest.mark.parametrize("name", ["pop909/001.mid", "asap/Bach/Fugue/bwv_880/Sun02.mid",
                                  "pianomidi/Albeniz/alb_esp3.mid"])
def test_infill_on_real_files_keeps_every_other_event(fim_checkpoint, tmp_path, capsys, name):
    """POP909 (type 1, 4 tracks, 2/4, pedal), ASAP (type 0, pedal), piano-midi.de (type 1,
    8 tracks, hundreds of tempo changes): the whole CLI, the model's middle written in."""
    source = CORPUS_DIR / name
    out = tmp_path / "out.mid"
    start = int(midi_file_to_arrays(source).start_step.min()) + 2000  # 20 s into the music
    code, lines, _ = _run(capsys, "infill", "--checkpoint", fim_checkpoint, "--midi", source,
                          "--start", start / 100, "--end", start / 100 + 1.5, "--out", out,
                          "--seed", "1", "--no-progress")
    assert code == 0 and f"{start / 100:.2f}-{start / 100 + 1.5:.2f} s rewritten" in lines
    assert assert_edit_keeps_outside(source.read_bytes(), out.read_bytes(), start,
                                     start + 150) > 0
    assert _meta(out)[2] == _meta(source)[2]
