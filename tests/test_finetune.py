"""Fine-tuning (train.py --init-from), time budgets (--max-minutes), run folders as --checkpoint,
and the from-scratch defaults that match the shipped model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_midi

from musicgpt import schedule, training
from musicgpt.checkpoint import load_config, load_model_from_checkpoint, save_checkpoint
from musicgpt.cli import main, train_main
from musicgpt.config import Config, preset
from musicgpt.data import preprocess_folder
from musicgpt.finetune import add_styles, finetune_config
from musicgpt.vocab import N_STYLES

REPO = Path(__file__).resolve().parents[1]
# flags that keep a fine-tuning run of the tiny model to a second or two
QUICK = ["--batch-size", "2", "--eval-batches", "1", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def mine(tmp_path_factory) -> Path:
    """A folder named `mine` of six short random pieces, directly in it (no labels of their own)."""
    folder = tmp_path_factory.mktemp("user") / "mine"
    rng = np.random.default_rng(1)
    for piece in range(6):
        starts = np.sort(rng.uniform(0, 15, 40))
        write_midi(folder / f"song_{piece}.mid",
                   [(int(rng.integers(48, 84)), 80, float(s), float(s) + 0.3) for s in starts])
    return folder


@pytest.fixture(scope="module")
def source(make_tiny_model, tmp_path_factory) -> Path:
    """A tiny 'shipped' model with two styles and its own sampling settings."""
    model = make_tiny_model(seed=3, styles=("classical", "pop"), style_sources=("asap", "pop909"),
                            top_p=0.8, candidates=2)
    return save_checkpoint(model, tmp_path_factory.mktemp("source") / "checkpoint")


def test_init_from_starts_with_the_source_weights(source, mine, tmp_path):
    data = tmp_path / "data"
    preprocess_folder(mine, data, workers=1, progress=False)
    config = finetune_config(load_config(source), {}, str(source))
    run = training._setup(config, tmp_path / "run", None, data, False, init_from=source)
    reference = load_model_from_checkpoint(source)
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(0))
    run.model.eval()
    torch.testing.assert_close(run.model(ids), reference(ids), rtol=0, atol=0)
    assert run.config.top_p == 0.8 and run.config.candidates == 2  # the source's sampling
    assert run.config.learning_rate == 3e-4 and run.config.eval_interval == 10  # fine-tuning's
    assert run.config.styles == ("classical", "pop", "mine")
    assert set(run.train_windows.slots) == {2}  # every piece carries the folder's style


def test_finetuned_run_folder_generates_with_its_new_style(source, mine, tmp_path, capsys):
    run = tmp_path / "runs" / "mine"
    code = train_main(["--midi-dir", str(mine), "--out", str(run), "--init-from", str(source),
                       "--max-steps", "3", "--style-names", "mine=folk", *QUICK])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["best_val_nll"] is not None and result["step"] == 3
    config = load_config(run / "checkpoint")
    assert config.styles == ("classical", "pop", "folk")
    assert config.style_sources == ("asap", "pop909", "mine")
    assert load_config(run / "best").styles == config.styles
    out = tmp_path / "folk.mid"
    assert main(["generate", "--checkpoint", str(run), "--style", "folk", "--seconds", "1",
                 "--out", str(out), "--no-progress", "--seed", "1"]) == 0  # the run folder
    assert out.is_file()
    assert main(["generate", "--checkpoint", str(run), "--style", "jazz", "--seconds", "1",
                 "--out", str(out), "--no-progress"]) == 2
    assert "known styles: classical, pop, folk" in capsys.readouterr().err


def test_new_labels_fill_free_slots_and_known_ones_keep_theirs():
    config = preset("tiny", styles=("classical", "pop"), style_sources=("asap", "pop909"))
    labels = ["pop909", "classical", "chopin", "chopin", "satie"] + [f"x{i:02}" for i in range(20)]
    merged = add_styles(config, labels, {"satie": "gymnopedie"}, log=lambda _: None)
    assert merged.styles[:4] == ("classical", "pop", "chopin", "gymnopedie")
    assert len(merged.styles) == N_STYLES
    assert training.style_slots(merged, ["pop909", "classical", "satie", "x19"]) == [1, 0, 3, -1]


@pytest.mark.parametrize("flags, named", [
    (["--n-layer", "3"], "--n-layer 3 conflicts with --init-from"),
    (["--attention", "relative"], "--attention relative conflicts"),
    (["--preset", "tiny"], "--preset tiny sets a model's shape"),
    (["--resume"], "--init-from starts a new run"),
])
def test_flags_that_conflict_with_init_from_are_one_line(source, mine, tmp_path, capsys, flags,
                                                         named):
    code = train_main(["--midi-dir", str(mine), "--out", str(tmp_path / "r"), "--init-from",
                       str(source), *flags, *QUICK])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and named in err[0], err
    assert not (tmp_path / "r" / "checkpoint").exists()


def test_init_from_a_folder_without_a_checkpoint_names_where_it_looked(mine, tmp_path, capsys):
    code = train_main(["--midi-dir", str(mine), "--out", str(tmp_path / "r"), "--init-from",
                       str(tmp_path), *QUICK])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no checkpoint" in err and str(tmp_path / "checkpoint") in err


def test_init_from_never_replaces_a_trained_checkpoint(source, mine, tmp_path, capsys):
    save_checkpoint(load_model_from_checkpoint(source), tmp_path / "checkpoint")
    before = (tmp_path / "checkpoint" / "model.safetensors").read_bytes()
    code = train_main(["--midi-dir", str(mine), "--out", str(tmp_path), "--init-from",
                       str(source), *QUICK])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "checkpoint" / "model.safetensors").read_bytes() == before


def test_a_time_budget_stops_near_time_with_the_schedule_at_its_end(mine, tmp_path, capsys):
    started = time.perf_counter()
    code = train_main(["--midi-dir", str(mine), "--out", str(tmp_path), "--preset", "tiny",
                       "--max-minutes", "0.05", "--eval-interval", "10", "--warmup-steps", "2",
                       *QUICK])
    wall = time.perf_counter() - started
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    config = load_config(tmp_path / "checkpoint")
    assert result["minutes"] == pytest.approx(0.05, abs=0.03) and wall < 15
    assert "val_nll" in metrics[-1] and result["best_val_nll"] is not None
    rates = [m["lr"] for m in metrics[config.warmup_steps:]]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))
    span = config.learning_rate - config.min_learning_rate  # the cosine ran (nearly) to its end
    assert rates[-1] - config.min_learning_rate < 0.1 * span
    assert len(metrics) > 5


def test_a_resumed_timed_run_goes_on_from_the_time_it_had(mine, tmp_path, capsys):
    flags = ["--midi-dir", str(mine), "--out", str(tmp_path), *QUICK]
    assert train_main([*flags, "--preset", "tiny", "--max-minutes", "0.02"]) == 0
    first = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert train_main([*flags, "--resume", "--max-minutes", "0.04"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["step"] > first["step"] and state["warm_seconds"] == first["warm_seconds"]
    assert result["minutes"] == pytest.approx(state["train_seconds"] / 60, abs=0.005)
    assert state["train_seconds"] < 0.04 * 60 + 1.0  # 1.2 s more, not another 2.4 s
    assert train_main([*flags, "--resume", "--max-minutes", "0.01"]) == 2
    assert "nothing to train; give a larger --max-minutes" in capsys.readouterr().err


def test_the_clock_plans_the_cosine_on_time(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(schedule.time, "perf_counter", lambda: now[0])
    config = preset("tiny", warmup_steps=1, learning_rate=1e-3, min_learning_rate=1e-4)
    clock = schedule.TrainClock(budget_s=10.0)
    assert clock.progress(0, config) is None  # warming up: the rate follows the steps
    now[0] += 1.0
    clock.step_done()
    assert clock.progress(1, config) == 0.0  # the warm-up ended 1 s in: 9 s of cosine remain
    now[0] += 3.5
    clock.step_done()
    assert clock.progress(2, config) == pytest.approx(0.5 * 3.5 / 4.5)
    assert not clock.out_of_time()  # 4.5 s spent, steps of 2.25 s: one more fits
    now[0] += 4.0
    clock.step_done()
    assert clock.out_of_time()  # 8.5 s spent + 2.83 s would pass 10 s
    assert schedule.learning_rate_at(5, config, progress=1.0) == pytest.approx(1e-4)


def test_a_timed_run_warms_up_for_at_most_a_tenth_of_its_budget(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(schedule.time, "perf_counter", lambda: now[0])
    config = preset("tiny", warmup_steps=100, learning_rate=1e-3)  # 100 steps would take 50 s
    clock = schedule.TrainClock(budget_s=10.0)
    now[0] += 0.5
    clock.step_done()
    assert clock.warmup_steps(config) == 2  # the steps that fit in 1 s
    assert schedule.learning_rate_at(1, config, None, 2) == pytest.approx(1e-3)
    assert clock.progress(2, config) == 0.0
    assert schedule.TrainClock(0.0).warmup_steps(config) == 100  # a run planned on steps


def test_run_folder_or_checkpoint_folder_for_every_command(tiny_checkpoint, tmp_path, capsys):
    run = tiny_checkpoint.parent  # holds checkpoint/
    midi = tmp_path / "midi"
    write_midi(midi / "a.mid", [(60 + i, 80, 0.25 * i, 0.25 * i + 0.2) for i in range(16)])
    assert main(["evaluate", "--checkpoint", str(run), "--midi-dir", str(midi), "--json",
                 "--no-progress"]) == 0
    assert main(["export", "--hf", str(tmp_path / "hf"), "--checkpoint", str(run)]) == 0
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x.mid"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("musicgpt: error: no checkpoint at --checkpoint")
    assert f"in {tmp_path} and in {tmp_path / 'checkpoint'} (a run folder)" in err


def test_a_new_run_has_the_shipped_models_shape_and_sampling():
    shipped = load_config(REPO / "data" / "default_model")
    fields = ("n_layer", "n_head", "n_embd", "block_size", "attention", "vocab_size",
              "temperature", "top_k", "top_p", "min_p", "style_guidance", "candidates")
    assert {f: getattr(preset("default"), f) for f in fields} == {
        f: getattr(shipped, f) for f in fields}
    assert preset("tiny").attention == Config().attention == "absolute"  # what old configs mean


def test_finetune_benchmark_runs_end_to_end_on_a_tiny_model(tiny_checkpoint, tmp_path):
    corpus = tmp_path / "folk"
    for i in range(8):
        write_midi(corpus / f"tune_{i}.mid", [(60 + (i + j) % 12, 80, 0.25 * j, 0.25 * j + 0.2)
                                              for j in range(40)])
    out = tmp_path / "finetune.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "finetune.py"), "--corpus",
                           str(corpus), "--files", "5", "--held-out", "3", "--minutes", "0.02",
                           "--pieces", "2", "--seconds", "1", "--init-from",
                           str(tiny_checkpoint), "--scratch-preset", "tiny", "--work",
                           str(tmp_path / "work"), "--json-out", str(out)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["style"] == "folk" and report["train_files"] == 5
    assert report["nll"]["shipped"]["files"] == 3
    assert all(run["steps"] >= 1 for run in report["runs"].values())
    for name in ("finetuned", "shipped"):
        overlap = report["stats"][name]["note_density_per_s"]["overlap"]
        assert 0 <= overlap <= 1
        assert "| note_density_per_s | " in done.stdout


def test_finetuning_settings_turn_style_guidance_off_unless_asked():
    from musicgpt.finetune import finetune_config

    shipped = load_config(REPO / "data" / "default_model")
    tuned = finetune_config(shipped, {}, "default")
    assert shipped.style_guidance == 1.0 and tuned.style_guidance == 0.0
    assert (tuned.top_p, tuned.candidates, tuned.styles) == (shipped.top_p, shipped.candidates,
                                                             shipped.styles)
    assert finetune_config(shipped, {"style_guidance": 2.0}, "default").style_guidance == 2.0
