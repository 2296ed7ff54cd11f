"""Trainer: files it writes, schedule, weight decay groups, resume, SIGINT, DDP on CPU (gloo)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_midi

from musicgpt.cli import train_main
from musicgpt.config import preset
from musicgpt.data import preprocess_folder
from musicgpt.layers import Linear
from musicgpt.model import GPT
from musicgpt.training import learning_rate_at, make_optimizer, token_loss, train
from musicgpt.vocab import PAD_ID, VOCAB_SIZE

REPO = Path(__file__).resolve().parents[1]
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Tokens of six short random piano pieces, made by code and run through preprocess_folder."""
    midi_dir = tmp_path_factory.mktemp("midi")
    rng = np.random.default_rng(0)
    for piece in range(6):
        starts = np.sort(rng.uniform(0, 20, 50))
        notes = [(int(rng.integers(40, 90)), int(rng.integers(30, 120)), float(s),
                  float(s + rng.uniform(0.1, 1.0))) for s in starts]
        write_midi(midi_dir / f"piece_{piece}.mid", notes)
    out = tmp_path_factory.mktemp("tokens")
    manifest = preprocess_folder(midi_dir, out, workers=1, progress=False)
    assert len(manifest["pieces"]) == 6
    return out


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tiny_run_writes_checkpoint_metrics_and_parameter_count(data_dir, tmp_path, capsys):
    config = preset("tiny", max_steps=12, eval_interval=6, ckpt_interval=6)
    result = train(config, tmp_path, data_dir=data_dir, progress=True)
    files = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert files == ["config.json", "model.safetensors", "state.json", "state.safetensors"]
    metrics = _lines(tmp_path / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 13))
    assert [m["step"] for m in metrics if "val_nll" in m] == [6, 12]
    assert all(math.isfinite(m["loss"]) and m["tokens_per_s"] > 0 for m in metrics)
    assert result["val_nll"] < math.log(config.vocab_size)
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 12
    printed = capsys.readouterr()
    assert f"{GPT(config).num_params():,} parameters" in printed.out
    bar = printed.err.replace("\r", "\n").splitlines()[-1]  # the progress bar's last state
    assert "12/12" in bar and "loss=" in bar and "tok_s=" in bar, bar


def test_resume_after_interruption_ends_where_an_uninterrupted_run_ends(data_dir, tmp_path):
    # dropout and accumulation on, so the restored RNG and optimizer state both matter
    config = preset("tiny", max_steps=10, eval_interval=5, ckpt_interval=100, dropout=0.1,
                    grad_accum=2)
    whole = train(config, tmp_path / "whole", data_dir=data_dir, progress=False)
    part = train(config, tmp_path / "split", data_dir=data_dir, progress=False, stop_after=4)
    assert part["step"] == 4
    resumed = train(config, tmp_path / "split", data_dir=data_dir, progress=False, resume=True)
    assert resumed["step"] == whole["step"] == 10
    assert resumed["loss"] == pytest.approx(whole["loss"], abs=1e-4)
    assert resumed["val_nll"] == pytest.approx(whole["val_nll"], abs=1e-4)


def test_learning_rate_warms_up_then_follows_a_cosine():
    config = preset("tiny", max_steps=110, warmup_steps=10, learning_rate=1e-3,
                    min_learning_rate=1e-4)
    assert learning_rate_at(0, config) == pytest.approx(1e-4)
    assert learning_rate_at(9, config) == pytest.approx(1e-3)
    assert learning_rate_at(60, config) == pytest.approx(5.5e-4)  # half way down the cosine
    assert learning_rate_at(110, config) == pytest.approx(1e-4)
    rates = [learning_rate_at(s, config) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))


def test_token_loss_skips_pad_targets():
    logits = torch.randn(2, 5, VOCAB_SIZE, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([[1, 2, 3, PAD_ID, PAD_ID], [4, 5, 6, 7, PAD_ID]])
    kept = targets != PAD_ID
    expected = torch.nn.functional.cross_entropy(logits[kept], targets[kept], reduction="sum")
    torch.testing.assert_close(token_loss(logits, targets, reduction="sum"), expected)
    torch.testing.assert_close(token_loss(logits, targets), expected / int(kept.sum()))


def test_weight_decay_applies_to_linear_matrices_only(tiny_model):
    model = tiny_model
    decay, no_decay = make_optimizer(model, model.config).param_groups
    assert decay["weight_decay"] > 0 and no_decay["weight_decay"] == 0
    matrices = {id(m.weight) for m in model.modules() if isinstance(m, Linear)}
    assert {id(p) for p in decay["params"]} == matrices
    names = {id(p): n for n, p in model.named_parameters()}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert {"wte.weight", "wpe.weight", "ln_f.weight", "blocks.0.attn.c_attn.bias"} <= kept


def _wait_for_steps(path: Path, steps: int, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if path.is_file() and len(path.read_text().splitlines()) >= steps:
            return
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"training wrote fewer than {steps} metric lines in {timeout_s} s")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_a_checkpoint_and_resume_continues(data_dir, tmp_path, signum):
    command = [sys.executable, "train.py", "--preset", "tiny", "--data-dir", str(data_dir),
               "--out", str(tmp_path), "--no-progress", "--ckpt-interval", "100000",
               "--eval-interval", "100000"]
    process = subprocess.Popen([*command, "--max-steps", "100000"], cwd=REPO, env=CHILD_ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_steps(tmp_path / "metrics.jsonl", 3, process, timeout_s=120)
    process.send_signal(signum)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, out  # saved, but not finished (issue 23)
    assert "interrupted: checkpoint at step" in out and "Traceback" not in out
    step = json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"]
    assert step >= 3
    done = subprocess.run([*command, "--resume", "--max-steps", str(step + 2)], cwd=REPO,
                          env=CHILD_ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resumed from step {step}" in done.stdout
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == step + 2


def test_ddp_with_two_cpu_processes_finishes_and_checkpoints(data_dir, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "train.py", "--preset", "tiny", "--data-dir",
               str(data_dir), "--out", str(tmp_path), "--max-steps", "4", "--eval-interval", "2",
               "--no-progress"]
    done = subprocess.run(command, cwd=REPO, env=CHILD_ENV, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "2 process(es)" in done.stdout
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 4
    assert [m["step"] for m in _lines(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]


def test_train_cli_without_data_is_a_one_line_error(tmp_path, capsys):
    assert train_main(["--out", str(tmp_path), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--midi-dir" in err[0]


# --- a trained checkpoint is never destroyed by accident (issue 12) --------------------------

def _trained_checkpoint(run: Path, make_tiny_model, step: int = 3000) -> dict[str, bytes]:
    """A checkpoint in run/checkpoint as training leaves it; returns its files' bytes."""
    from musicgpt.checkpoint import save_checkpoint

    model = make_tiny_model(seed=5)
    save_checkpoint(model, run / "checkpoint", optimizer=make_optimizer(model, model.config),
                    state={"step": step}, extra_tensors={"rng.torch": torch.get_rng_state()})
    return {p.name: p.read_bytes() for p in (run / "checkpoint").iterdir()}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _train_cli(run: Path, data_dir: Path, *flags: str) -> int:
    return train_main(["--preset", "tiny", "--data-dir", str(data_dir), "--out", str(run),
                       "--no-progress", "--max-steps", "2", *flags])


def test_a_new_run_over_a_checkpoint_is_refused(data_dir, tmp_path, make_tiny_model, capsys):
    before = _trained_checkpoint(tmp_path, make_tiny_model)
    assert _train_cli(tmp_path, data_dir) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0] and "--overwrite" in err[0], err
    assert "step 3000" in err[0]
    assert _files(tmp_path / "checkpoint") == before
    assert _train_cli(tmp_path, data_dir, "--resume", "--overwrite") == 2
    assert _files(tmp_path / "checkpoint") == before
    assert _train_cli(tmp_path, data_dir, "--overwrite") == 0  # said explicitly: replaced
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_resume_without_a_usable_state_keeps_the_weights(data_dir, tmp_path, make_tiny_model,
                                                         capsys, damage):
    from musicgpt.checkpoint import load_model_from_checkpoint

    _trained_checkpoint(tmp_path, make_tiny_model)
    state = tmp_path / "checkpoint" / "state.json"
    state.unlink() if damage == "missing" else state.write_text('{"step": "x"')
    # a learning rate of ~0, so the weights after one step are the checkpoint's
    assert _train_cli(tmp_path, data_dir, "--resume", "--max-steps", "1", "--learning-rate",
                      "1e-12", "--min-learning-rate", "0") == 0
    assert "fresh optimizer" in capsys.readouterr().out
    trained = load_model_from_checkpoint(tmp_path / "checkpoint").state_dict()
    for name, value in make_tiny_model(seed=5).state_dict().items():
        torch.testing.assert_close(trained[name], value, atol=1e-6, rtol=0)


def test_resume_refuses_bad_weights_in_one_line_and_keeps_them(data_dir, tmp_path,
                                                               make_tiny_model, capsys):
    _trained_checkpoint(tmp_path, make_tiny_model)
    weights = tmp_path / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    before = _files(tmp_path / "checkpoint")
    assert _train_cli(tmp_path, data_dir, "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(weights) in err[0] and "truncated" in err[0], err
    assert _files(tmp_path / "checkpoint") == before


def _disk_full(kind: str):
    """What a full disk raises in a checkpoint save: an OSError, or safetensors' own error
    (not an OSError, issue 23)."""
    import errno

    from safetensors import SafetensorError

    def fail(*args, **kwargs):
        if kind == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: '
                              'StorageFull, message: "No space left on device" })')
    return fail


@pytest.mark.parametrize("kind", ["oserror", "safetensors"])
def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_previous(data_dir, tmp_path,
                                                                        make_tiny_model,
                                                                        monkeypatch, capsys,
                                                                        kind):
    from musicgpt import checkpoint

    before = _trained_checkpoint(tmp_path, make_tiny_model, step=1)
    monkeypatch.setattr(checkpoint, "save_model", _disk_full(kind))
    assert _train_cli(tmp_path, data_dir, "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"musicgpt: error: cannot write {tmp_path / 'checkpoint'}: "
                   "No space left on device"]
    assert _files(tmp_path / "checkpoint") == before
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*/*.tmp"))


def test_a_full_disk_in_a_new_run_and_in_export_is_one_line(data_dir, tmp_path, tiny_checkpoint,
                                                            monkeypatch, capsys):
    from musicgpt import checkpoint, hf_export
    from musicgpt.cli import main

    monkeypatch.setattr(checkpoint, "save_model", _disk_full("safetensors"))
    monkeypatch.setattr(hf_export, "save_file", _disk_full("safetensors"))
    assert _train_cli(tmp_path / "run", data_dir) == 2
    assert main(["export", "--hf", str(tmp_path / "hf"), "--checkpoint",
                 str(tiny_checkpoint)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.endswith("No space left on device") for line in err), err
    assert not list(tmp_path.rglob("*.tmp"))


# --- no NaN passed off as a result (issue 23) -------------------------------------------------

def _strict_json_lines(path: Path) -> list[dict]:
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(
        data_dir, tmp_path, make_tiny_model, capsys):
    before = _trained_checkpoint(tmp_path, make_tiny_model, step=1)
    code = _train_cli(tmp_path, data_dir, "--resume", "--max-steps", "40", "--learning-rate",
                      "1e30", "--warmup-steps", "0", "--ckpt-interval", "1000",
                      "--eval-interval", "1000")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "diverged at step" in err[0], err
    assert "last good checkpoint is kept" in err[0]
    assert _files(tmp_path / "checkpoint") == before
    records = _strict_json_lines(tmp_path / "metrics.jsonl")
    assert all(math.isfinite(r["loss"]) for r in records)


def test_metrics_hold_each_step_once_after_a_resume(data_dir, tmp_path):
    flags = ["--ckpt-interval", "2", "--eval-interval", "1000"]
    assert _train_cli(tmp_path, data_dir, *flags, "--max-steps", "3") == 0
    (tmp_path / "metrics.jsonl").open("a").write('{"step": 4, "loss": NaN}\n')  # redone below
    # the checkpoint is at step 3 (the last step saves): steps 4, 5 are redone
    assert _train_cli(tmp_path, data_dir, *flags, "--max-steps", "5", "--resume") == 0
    steps = [r["step"] for r in _strict_json_lines(tmp_path / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("step", [10**12, 2])
def test_resume_at_or_past_max_steps_is_refused_naming_the_state(data_dir, tmp_path,
                                                                 make_tiny_model, capsys, step):
    _trained_checkpoint(tmp_path, make_tiny_model, step=step)
    assert _train_cli(tmp_path, data_dir, "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "state.json" in err[0] and "--max-steps" in err[0], err


def test_a_negative_step_in_the_state_is_named(data_dir, tmp_path, make_tiny_model, capsys):
    _trained_checkpoint(tmp_path, make_tiny_model, step=-50)
    assert _train_cli(tmp_path, data_dir, "--resume", "--learning-rate", "1e-12") == 0
    out = capsys.readouterr().out
    assert "state.json: step -50 is negative" in out and "fresh optimizer" in out
