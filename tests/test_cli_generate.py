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
    greedy = save_checkpoint(make_tiny_model(top_k=1), tmp_path / "greedy")  # argmax

    def notes(seed: int, *flags: str) -> list:
        out = tmp_path / f"{seed}_{len(flags)}.mid"
        assert main(["generate", "--checkpoint", str(greedy), "--out", str(out), "--seconds", "3",
                     "--max-tokens", "200", "--seed", str(seed), "--dtype", "float32",
                     "--no-progress", *flags]) == 0
        return midi_file_to_arrays(out).pitch.tolist()

    greedy_notes = notes(1)
    assert greedy_notes and greedy_notes == notes(2)  # the checkpoint's top_k=1: no randomness
    assert notes(1, "--top-k", "0") != notes(2, "--top-k", "0")


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
                                   ["--num-samples", "0"]])
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

    import pretty_midi

    out = tmp_path / "o.mid"
    out.write_bytes(b"the previous piece")

    def fail_half_way(self, filename):
        with open(filename, "wb") as handle:
            handle.write(b"MThd")
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(pretty_midi.PrettyMIDI, "write", fail_half_way)
    code = main(["generate", "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                 "--seconds", "1", "--max-tokens", "50", "--no-progress"])
    _one_line_error(capsys, code, f"cannot write {out}", os.strerror(error))
    assert out.read_bytes() == b"the previous piece"
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
