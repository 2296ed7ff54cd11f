"""`musicgpt generate`: writes readable MIDI; user mistakes end in one line and exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import write_midi

from musicgpt.checkpoint import save_checkpoint
from musicgpt.cli import main
from musicgpt.midi_io import midi_file_to_arrays


def _one_line_error(capsys, code: int, *words: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("musicgpt: error:"), err
    assert all(word in err[0] for word in words), err


def test_generate_writes_a_readable_midi_file(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out.mid"
    code = main(["generate", "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                 "--seconds", "3", "--max-tokens", "300", "--seed", "0", "--no-progress"])
    assert code == 0
    assert len(midi_file_to_arrays(out)) > 0
    assert f"wrote {out}" in capsys.readouterr().out


def test_generate_continues_a_primer_into_several_files(tiny_checkpoint, tmp_path):
    primer = tmp_path / "primer.mid"
    write_midi(primer, [(60, 80, 0.0, 0.5), (64, 80, 0.5, 1.5)])
    code = main(["generate", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "x.mid"),
                 "--primer", str(primer), "--seconds", "2", "--num-samples", "2",
                 "--top-k", "20", "--temperature", "0.9", "--dtype", "int8", "--no-progress"])
    assert code == 0
    for name in ("x_1.mid", "x_2.mid"):
        pitches = midi_file_to_arrays(tmp_path / name).pitch.tolist()
        assert pitches[:2] == [60, 64]  # the primer's notes come first


def test_sampling_defaults_come_from_the_checkpoint_and_flags_override_them(make_tiny_model,
                                                                           tmp_path):
    # a near-zero temperature draws the argmax
    greedy = save_checkpoint(make_tiny_model(temperature=1e-6), tmp_path / "greedy")

    def notes(seed: int, *flags: str) -> list:
        out = tmp_path / f"{seed}_{len(flags)}.mid"
        assert main(["generate", "--checkpoint", str(greedy), "--out", str(out), "--seconds", "3",
                     "--max-tokens", "200", "--seed", str(seed), "--dtype", "float32",
                     "--no-progress", "--plain-mask", *flags]) == 0
        return midi_file_to_arrays(out).pitch.tolist()

    # the release rule would end a random tiny model's argmax notes at once (zero length)
    greedy_notes = notes(1)
    assert greedy_notes and greedy_notes == notes(2)  # the checkpoint's temperature: no randomness
    assert notes(1, "--temperature", "1") != notes(2, "--temperature", "1")


def test_a_rolling_cache_writes_a_piece_past_the_context(make_tiny_model, tmp_path):
    """`--rolling-cache` decodes past the tiny model's 64-token context without re-prefilling."""
    ckpt = save_checkpoint(make_tiny_model(attention="relative"), tmp_path / "relative")
    out = tmp_path / "rolled.mid"
    assert main(["generate", "--checkpoint", str(ckpt), "--out", str(out), "--seconds", "5",
                 "--max-tokens", "200", "--seed", "1", "--no-progress", "--rolling-cache"]) == 0
    assert len(midi_file_to_arrays(out).pitch) > 0


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    code = main(["generate", "--checkpoint", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "o.mid")])
    _one_line_error(capsys, code, "no checkpoint", "nope")


@pytest.mark.parametrize("content", [b"this is not MIDI", b"", None],
                         ids=["garbage", "empty", "missing"])
def test_bad_primer_is_one_line(tiny_checkpoint, tmp_path, capsys, content):
    primer = tmp_path / "primer.mid"
    if content is not None:
        primer.write_bytes(content)
    code = main(["generate", "--checkpoint", str(tiny_checkpoint), "--primer", str(primer),
                 "--out", str(tmp_path / "o.mid"), "--no-progress"])
    _one_line_error(capsys, code, "primer")
    assert not (tmp_path / "o.mid").exists()


@pytest.mark.parametrize("flags", [["--top-p", "0"], ["--temperature", "-1"], ["--top-k", "-2"],
                                   ["--min-p", "1"], ["--num-samples", "0"]])
def test_bad_sampling_values_are_one_line(tiny_checkpoint, tmp_path, capsys, flags):
    code = main(["generate", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "o.mid"),
                 *flags])
    _one_line_error(capsys, code)


def test_installed_command_prints_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-c", "from musicgpt.cli import main; "
                           "raise SystemExit(main())", "generate", "--checkpoint",
                           str(tmp_path / "missing"), "--out", str(tmp_path / "o.mid")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("error", [28, 30], ids=["disk_full", "read_only"])
def test_a_failed_write_is_one_line_keeps_the_old_file_and_leaves_no_tmp(tiny_checkpoint, tmp_path,
                                                                         capsys, monkeypatch,
                                                                         error):
    import os
    import pathlib

    out = tmp_path / "o.mid"
    out.write_bytes(b"MThd the previous piece")

    def fail_half_way(self, data):
        with open(self, "wb") as handle:
            handle.write(data[:4])
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(pathlib.Path, "write_bytes", fail_half_way)
    code = main(["generate", "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                 "--seconds", "1", "--max-tokens", "50", "--no-progress"])
    _one_line_error(capsys, code, f"cannot write {out}", os.strerror(error))
    assert out.read_bytes() == b"MThd the previous piece"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.mid"]


def test_written_files_are_readable_by_others(tiny_checkpoint, tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        assert main(["generate", "--checkpoint", str(tiny_checkpoint), "--out",
                     str(tmp_path / "o.mid"), "--seconds", "1", "--max-tokens", "50",
                     "--no-progress"]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "o.mid").stat().st_mode) == 0o644


def _end_checkpoint(make_tiny_model, folder, end_logit: float):
    """A tiny checkpoint whose END logit is about `end_logit` (-100: never drawn; 5: often)."""
    import torch

    from musicgpt.vocab import END_ID

    model = make_tiny_model()
    with torch.no_grad():  # a constant feature in the final norm, read only by END's row
        model.ln_f.bias[0] = 10.0
        model.wte.weight[END_ID, 0] = end_logit / 10.0
    return save_checkpoint(model, folder)


def test_sixty_seconds_asked_gives_four_pieces_of_sixty_seconds(make_tiny_model, tmp_path,
                                                                capsys):
    from musicgpt.events import ids_to_seconds
    from musicgpt.pipeline import midi_file_to_ids

    ckpt = _end_checkpoint(make_tiny_model, tmp_path / "no_end", -100.0)
    code = main(["generate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "p.mid"),
                 "--seconds", "60", "--num-samples", "4", "--seed", "0", "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "stopped" not in out, out
    for i in range(1, 5):
        assert ids_to_seconds(midi_file_to_ids(tmp_path / f"p_{i}.mid")) >= 59.0


def test_a_piece_that_stops_early_says_why_per_file(make_tiny_model, tmp_path, capsys):
    ckpt = _end_checkpoint(make_tiny_model, tmp_path / "end", 5.0)  # END ~30% of each draw
    assert main(["generate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "p.mid"),
                 "--seconds", "30", "--num-samples", "2", "--seed", "0", "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("; stopped at END after " in line and line.endswith(" of 30)")
                                   for line in lines), lines
    assert main(["generate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "q.mid"),
                 "--seconds", "30", "--max-tokens", "3", "--seed", "1", "--no-progress"]) == 0
    line = capsys.readouterr().out.strip()
    assert "stopped at" in line and line.endswith(" of 30)"), line


def test_the_progress_bar_counts_seconds_of_music(tiny_checkpoint, tmp_path, capsys):
    assert main(["generate", "--checkpoint", str(tiny_checkpoint), "--out",
                 str(tmp_path / "o.mid"), "--seconds", "4", "--seed", "0"]) == 0
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "/4 s of music" in bar, bar
