"""Checkpoints: safetensors + JSON round trip, no pickle, refusal of a foreign vocabulary."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from musicgpt import checkpoint
from musicgpt.checkpoint import (
    has_training_state,
    has_weights,
    load_config,
    load_model_from_checkpoint,
    load_training_state,
    restore_optimizer,
    save_checkpoint,
)
from musicgpt.config import preset
from musicgpt.training import make_optimizer


def _ids() -> torch.Tensor:
    return torch.randint(0, 380, (2, 24), generator=torch.Generator().manual_seed(0))


def test_save_then_load_gives_identical_logits(tiny_model, tmp_path):
    model = tiny_model
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_model_from_checkpoint(tmp_path / "ckpt")
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(_ids()), model(_ids()))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json",
                                                                     "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no .tmp or .old left behind


def test_loading_never_unpickles(tiny_model, tmp_path, monkeypatch):
    model = tiny_model
    optimizer = make_optimizer(model, model.config)
    model(_ids()).sum().backward()
    optimizer.step()
    save_checkpoint(model, tmp_path / "ckpt", optimizer=optimizer, state={"step": 3},
                    extra_tensors={"rng.torch": torch.get_rng_state()})

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading a checkpoint")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = load_model_from_checkpoint(tmp_path / "ckpt")
    state, tensors = load_training_state(tmp_path / "ckpt")
    assert state["step"] == 3 and "rng.torch" in tensors
    with torch.no_grad():
        assert torch.equal(loaded(_ids()), model(_ids()))
    # the weights file is safetensors: an 8-byte header length, then a JSON header
    raw = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert "wte.weight" in header


def test_optimizer_state_round_trips(tiny_model, tmp_path):
    model = tiny_model
    optimizer = make_optimizer(model, model.config)
    for _ in range(2):
        model(_ids()).square().mean().backward()
        optimizer.step()
    save_checkpoint(model, tmp_path / "ckpt", optimizer=optimizer, state={"step": 2})
    fresh = make_optimizer(model, model.config)
    state, tensors = load_training_state(tmp_path / "ckpt")
    restore_optimizer(fresh, state["optimizer"], tensors)
    before, after = optimizer.state_dict(), fresh.state_dict()
    assert before["param_groups"] == after["param_groups"]
    for index, param_state in before["state"].items():
        for key, value in param_state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(after["state"][index][key]))


def test_a_foreign_vocabulary_is_refused(tiny_model, tmp_path):
    save_checkpoint(tiny_model, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "config.json"
    values = json.loads(path.read_text())
    path.write_text(json.dumps({**values, "vocab_size": 390}))
    with pytest.raises(ValueError, match="vocab_size 390"):
        load_model_from_checkpoint(tmp_path / "ckpt")


def test_missing_checkpoint_or_weights_are_clear_errors(tiny_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_config(tmp_path / "nothing")
    save_checkpoint(tiny_model, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_model_from_checkpoint(tmp_path / "ckpt")


def test_weights_of_another_shape_are_refused(tiny_model, tmp_path):
    save_checkpoint(tiny_model, tmp_path / "ckpt")
    with pytest.raises(RuntimeError):
        load_model_from_checkpoint(tmp_path / "ckpt", config=preset("tiny", n_embd=64))


def test_overwriting_keeps_foreign_files_and_survives_a_cut_between_renames(make_tiny_model,
                                                                            tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    save_checkpoint(make_tiny_model(seed=0), ckpt)
    (ckpt / "MODEL_CARD.md").write_text("card")
    save_checkpoint(make_tiny_model(seed=1), ckpt)
    assert (ckpt / "MODEL_CARD.md").read_text() == "card"
    with torch.no_grad():
        assert torch.equal(load_model_from_checkpoint(ckpt)(_ids()),
                           make_tiny_model(seed=1)(_ids()))

    real_replace, calls = checkpoint.os.replace, []

    def crash_on_second_rename(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies between the two renames
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(make_tiny_model(seed=2), ckpt)
    monkeypatch.undo()
    assert not ckpt.exists()
    with torch.no_grad():  # loading falls back to the previous complete checkpoint
        assert torch.equal(load_model_from_checkpoint(ckpt)(_ids()),
                           make_tiny_model(seed=1)(_ids()))


def test_probes_tell_weights_from_training_state_and_follow_a_cut_save(tiny_model, tmp_path):
    ckpt = tmp_path / "ckpt"
    assert not has_weights(ckpt) and not has_training_state(ckpt)
    save_checkpoint(tiny_model, ckpt)
    assert has_weights(ckpt) and not has_training_state(ckpt)
    save_checkpoint(tiny_model, ckpt, state={"step": 1})
    assert has_weights(ckpt) and has_training_state(ckpt)
    ckpt.rename(tmp_path / "ckpt.old")  # a save cut between its two renames
    assert has_weights(ckpt) and has_training_state(ckpt)
    (tmp_path / "ckpt.old" / "model.safetensors").unlink()
    assert not has_weights(ckpt)
