"""Every bad input to every command ends in one line on stderr and exit status 2 (issue 12).

One table, run end to end through the CLI entry points: a new command or flag joins it with a
row (command line, words the message must hold). `{ckpt}` is a tiny checkpoint, `{bad_ckpt}`
one with truncated weights, `{midi}` a one-file MIDI folder, `{mid}` its file, `{tokens}` a
token cache, `{dir}` an existing folder, `{file}` an existing plain file, `{tmp}` a scratch
folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import huge_gap_midi_bytes, write_midi

from musicgpt.checkpoint import save_checkpoint
from musicgpt.cli import main, train_main
from musicgpt.data import preprocess_folder, split_of

NO_CUDA = not torch.cuda.is_available()
GEN = "generate --checkpoint {ckpt} --out {tmp}/o.mid --no-progress"
FILL = "infill --checkpoint {ckpt} --midi {mid} --out {tmp}/f.mid --no-progress"
EVAL = "evaluate --checkpoint {ckpt} --midi-dir {midi} --no-progress"
PRE = "preprocess --midi-dir {midi} --no-progress"
TRAIN = "train --preset tiny --data-dir {tokens} --no-progress --out {tmp}/run"

CASES = [
    # generate
    (GEN + " --seconds nan", "--seconds"),
    (GEN + " --seconds inf", "--seconds"),
    (GEN + " --seconds 1e12", "--seconds"),
    (GEN + " --primer {mid} --primer-seconds 0", "--primer-seconds"),
    (GEN + " --primer {mid} --primer-seconds -3", "--primer-seconds"),
    (GEN + " --primer {mid} --primer-seconds nan", "--primer-seconds"),
    (GEN + " --seed -1", "--seed"),
    pytest.param(GEN + " --primer /dev/zero", "not a regular file", marks=pytest.mark.skipif(
        not Path("/dev/zero").is_char_device(), reason="no /dev/zero device")),
    (GEN + " --primer {fifo}", "not a regular file"),
    (GEN + " --num-samples 1000000000", "would need about"),
    (GEN + " --num-samples 0", "--num-samples"),
    (GEN + " --max-tokens 0", "--max-tokens"),
    (GEN + " --max-note-seconds nan", "--max-note-seconds"),
    (GEN + " --temperature nan", "temperature"),
    (GEN + " --temperature inf", "temperature must be a finite number"),
    (GEN + " --top-p nan", "top_p"),
    (GEN + " --min-p nan", "min_p"),
    ("generate --checkpoint {ckpt} --out '' --no-progress", "--out is empty"),
    ("generate --checkpoint {ckpt} --out {dir} --no-progress", "is a folder"),
    ("generate --checkpoint {ckpt} --out {file}/o.mid --no-progress", "is a file"),
    ("generate --checkpoint {bad_ckpt} --out {tmp}/o.mid --no-progress", "truncated"),
    ("generate --checkpoint {heads_ckpt} --out {tmp}/o.mid --no-progress",
     "the weights were saved with n_head = 2, config.json says 4"),
    # outputs never replace what they should not (issue 23)
    ("generate --checkpoint {ckpt} --out {weights} --no-progress",
     "name a MIDI file ending in .mid"),
    ("generate --checkpoint {ckpt} --out {file} --no-progress", "name a MIDI file ending in .mid"),
    ("generate --checkpoint {ckpt} --out {root}/not_midi_2.mid --no-progress",
     "not_midi_2.mid exists and is not a MIDI file"),
    (GEN.replace("{tmp}/o.mid", "{mid}") + " --primer {mid}", "is also this command's input"),
    ("generate --checkpoint {ckpt} --out {fifo} --no-progress", "is a FIFO, not a regular"),
    ("generate --checkpoint {ckpt} --out {not_midi_1} --num-samples 2 --no-progress "
     "--seconds 1", "not_midi_2.mid exists and is not a MIDI file"),
    ("generate --checkpoint {tmp}/none --out {tmp}/o.mid --no-progress", "no checkpoint"),
    pytest.param(GEN + " --device cuda", "CUDA", marks=pytest.mark.skipif(
        not NO_CUDA, reason="this machine has CUDA")),
    (GEN + " --device nonsense", "unknown device"),
    # infill
    (FILL + " --start nan --end 1", "--start"),
    (FILL + " --start 0 --end nan", "--end"),
    (FILL + " --start 0 --end inf", "--end"),
    (FILL + " --start 1 --end 0.5", "span"),
    (FILL.replace("{mid}", "{gaps}") + " --start 0 --end 1", "too long"),
    (FILL + " --start 0 --end 1 --seed -5", "--seed"),
    (FILL + " --start 0 --end 1 --num-samples 0", "--num-samples"),
    ("infill --checkpoint {ckpt} --midi {mid} --out '' --start 0 --end 1", "--out is empty"),
    ("infill --checkpoint {ckpt} --midi {mid} --out {mid} --start 0 --end 1",
     "is also this command's input"),
    ("infill --checkpoint {ckpt} --midi {mid} --out {weights} --start 0 --end 1",
     "name a MIDI file ending in .mid"),
    # evaluate
    (EVAL + " --stride 0", "--stride"),
    (EVAL + " --batch-size 0", "--batch-size"),
    (EVAL + " --batch-size 1000000000", "--batch-size 1,000,000,000 would need about"),
    ("evaluate --checkpoint {bad_ckpt} --midi-dir {midi}", "truncated"),
    ("evaluate --checkpoint {ckpt} --midi-dir {tmp}/none", "not found"),
    pytest.param(EVAL + " --device cuda", "CUDA", marks=pytest.mark.skipif(
        not NO_CUDA, reason="this machine has CUDA")),
    # preprocess
    (PRE + " --out ''", "--out is empty"),
    (PRE + " --out {file}", "is a file"),
    (PRE + " --out {ckpt}", "checkpoint folder"),
    (PRE + " --out {tmp}/t --workers 0", "--workers"),
    (PRE + " --out {midi}", "is the same folder as --midi-dir"),
    ("preprocess --midi-dir {dir} --out {tmp}/t", "no .mid or .midi files"),
    ("preprocess --midi-dir {tmp}/none --out {tmp}/t", "not found"),
    # train.py
    (TRAIN + " --n-head 0", "n_head"),
    (TRAIN + " --n-head 3", "multiple of n_head"),
    (TRAIN + " --ckpt-interval 0", "ckpt_interval"),
    (TRAIN + " --eval-interval 0", "eval_interval"),
    (TRAIN + " --eval-batches 0", "eval_batches"),
    (TRAIN + " --max-steps 0", "max_steps"),
    (TRAIN + " --max-steps -5", "max_steps"),
    (TRAIN + " --learning-rate nan", "nan"),
    (TRAIN + " --learning-rate 1e30 --warmup-steps 0 --max-steps 30", "diverged at step"),
    (TRAIN + " --seed -1", "seed"),
    (TRAIN + " --n-layer 1000000", "n_layer"),
    (TRAIN + " --block-size 60000", "block_size"),
    # sizes that pass the config's limits yet cannot be allocated (issue 23)
    (TRAIN + " --n-embd 16384 --n-layer 6", "would need at least"),
    (TRAIN + " --batch-size 100000", "would need at least"),
    (TRAIN + " --block-size 16384 --batch-size 64", "would need at least"),
    pytest.param(TRAIN + " --device cuda", "CUDA", marks=pytest.mark.skipif(
        not NO_CUDA, reason="this machine has CUDA")),
    ("train --preset tiny --data-dir {tokens} --out ''", "--out is empty"),
    ("train --preset tiny --data-dir {tokens} --out {file}", "is a file"),
    ("train --preset tiny --data-dir {tokens} --out {ckpt}", "checkpoint folder"),
    ("train --preset tiny --data-dir {dir} --out {tmp}/run", "no token cache"),
    ("train --preset tiny --out {tmp}/run", "--midi-dir"),
    ("train --preset tiny --data-dir {tokens} --out {tmp}/run --resume --overwrite",
     "--overwrite"),
    ("train --preset tiny --data-dir {tokens} --out {bad_run}", "--resume"),
    ("train --preset tiny --data-dir {tokens} --out {bad_run} --resume", "truncated"),
    # the folders users pass (issue 11): each message names the folder and says what to do
    ("preprocess --midi-dir {bad_midi} --out {tmp}/t --no-progress",
     "no usable MIDI file in {bad_midi}: all 2 were skipped"),
    ("train --preset tiny --midi-dir {dir} --out {tmp}/run --no-progress",
     "no .mid or .midi files in {dir}"),
    ("train --preset tiny --midi-dir {bad_midi} --out {tmp}/run --no-progress",
     "no usable MIDI file in {bad_midi}"),
    ("train --preset tiny --midi-dir {val_midi} --out {tmp}/run --no-progress",
     "every piece of {val_midi} (1) lands in the validation split"),
    ("train --preset tiny --data-dir {tokens} --out {tmp}/run --resume",
     "nothing to resume in {tmp}/run"),
    # export
    ("export --hf '' --checkpoint {ckpt}", "--hf is empty"),
    ("export --hf {file} --checkpoint {ckpt}", "is a file"),
    ("export --hf {ckpt} --checkpoint {ckpt}", "checkpoint folder"),
    ("export --hf {tmp}/hf --checkpoint {bad_ckpt}", "truncated"),
    ("export --hf {tmp}/hf --checkpoint {tmp}/none", "no checkpoint"),
    ("export --hf {tmp}/hf --checkpoint {relative_ckpt}", "not expressible as GPT-2"),
]


@pytest.fixture(scope="module")
def places(tiny_checkpoint, make_tiny_model, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad_inputs")
    midi = root / "midi"
    name = next(f"piece_{i}.mid" for i in range(100) if split_of(f"piece_{i}.mid") == "train")
    write_midi(midi / name, [(60 + i % 12, 80, i * 0.25, i * 0.25 + 0.5) for i in range(40)])
    preprocess_folder(midi, root / "tokens", workers=1, progress=False)
    bad_run = root / "bad_run"
    save_checkpoint(make_tiny_model(), bad_run / "checkpoint", state={"step": 5})
    weights = bad_run / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    (root / "empty_dir").mkdir()
    (root / "plain_file").write_text("not a folder")
    (root / "weights").mkdir()
    (root / "weights" / "model.safetensors").write_bytes(
        (tiny_checkpoint / "model.safetensors").read_bytes())
    os.mkfifo(root / "fifo.mid")  # a MIDI name: only what it is refuses it
    (root / "gaps.mid").write_bytes(huge_gap_midi_bytes())
    (root / "not_midi_2.mid").write_text("a text file that happens to end in .mid")
    return {"ckpt": str(tiny_checkpoint), "bad_ckpt": str(bad_run / "checkpoint"),
            "bad_run": str(bad_run), "midi": str(midi), "mid": str(midi / name),
            "tokens": str(root / "tokens"), "dir": str(root / "empty_dir"),
            "file": str(root / "plain_file"), "fifo": str(root / "fifo.mid"),
            "not_midi_1": str(root / "not_midi.mid"), "root": str(root),
            "gaps": str(root / "gaps.mid"),
            "weights": str(root / "weights" / "model.safetensors"),
            **_folders_users_pass(root, make_tiny_model)}


def _folders_users_pass(root: Path, make_tiny_model) -> dict[str, str]:
    """A folder of only bad files, one whose every file lands in validation, and a relative
    checkpoint."""
    bad = root / "bad_midi"
    bad.mkdir()
    (bad / "garbage.mid").write_bytes(b"not MIDI at all")
    (bad / "empty.mid").write_bytes(b"")
    val = root / "val_midi"
    name = next(f"piece_{i}.mid" for i in range(100) if split_of(f"piece_{i}.mid") == "val")
    write_midi(val / name, [(60 + i % 12, 80, i * 0.25, i * 0.25 + 0.5) for i in range(40)])
    relative = save_checkpoint(make_tiny_model(attention="relative"), root / "relative")
    heads = save_checkpoint(make_tiny_model(), root / "heads")  # config.json edited after:
    config = json.loads((heads / "config.json").read_text())  # the same shapes, other maths
    (heads / "config.json").write_text(json.dumps({**config, "n_head": 4}))
    return {"bad_midi": str(bad.resolve()), "val_midi": str(val.resolve()),
            "relative_ckpt": str(relative), "heads_ckpt": str(heads)}


def _argv(template: str, places: dict[str, str], tmp: Path) -> list[str]:
    words = template.format(**places, tmp=tmp).split(" ")
    return ["" if word == "''" else word for word in words]


def _run(argv: list[str]) -> int:
    return train_main(argv[1:]) if argv[0] == "train" else main(argv)


@pytest.mark.parametrize(("template", "words"), CASES)
def test_a_bad_input_is_one_line_and_exit_status_2(places, tmp_path, capsys, template, words):
    before = _snapshot(Path(places["root"]))
    code = _run(_argv(template, places, tmp_path))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("musicgpt: error: "), err
    assert words.format(**places, tmp=tmp_path) in err[0], err
    assert not list(tmp_path.rglob("*.tmp"))
    assert _snapshot(Path(places["root"])) == before  # nothing of the inputs changed


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under `root`, the FIFO included, by path."""
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")
            if not p.is_dir()}


def test_the_installed_commands_print_no_traceback(places, tmp_path):
    code = "import sys; from musicgpt.cli import main, train_main; sys.exit({}(sys.argv[1:]))"
    for entry, argv in (("main", _argv(GEN + " --seconds nan", places, tmp_path)),
                        ("train_main", _argv(TRAIN + " --n-head 0", places, tmp_path)[1:])):
        done = subprocess.run([sys.executable, "-c", code.format(entry), *argv],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="no /dev/full device here")
def test_a_full_disk_under_stdout_is_one_line(places, tmp_path):
    argv = _argv(EVAL + " --json --device cpu", places, tmp_path)
    code = "import sys; from musicgpt.cli import main; sys.exit(main(sys.argv[1:]))"
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-c", code, *argv], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "musicgpt: error: cannot write standard output: No space left on device"]


def test_the_app_says_a_bad_checkpoint_in_one_line(places, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from musicgpt import studio

    monkeypatch.setenv(studio.ENV_CHECKPOINT, places["bad_ckpt"])
    monkeypatch.setenv(studio.ENV_CHECKPOINTS, "")
    app = Path(__file__).resolve().parents[1] / "app.py"
    at = AppTest.from_file(str(app), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert any("model.safetensors" in e and "truncated" in e for e in errors), errors
