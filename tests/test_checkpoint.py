"""Checkpoints: safetensors + JSON round trip, no pickle, refusal of a foreign vocabulary."""

from __future__ import annotations

import errno
import json
import os
import pickle
import stat
import struct

import pytest
import torch

from musicgpt import checkpoint
from musicgpt.checkpoint import (
    CheckpointError,
    has_training_state,
    has_weights,
    load_config,
    load_model_from_checkpoint,
    load_training_state,
    restore_optimizer,
    save_checkpoint,
)
from musicgpt.config import preset
from musicgpt.files import WriteError
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


# --- a checkpoint is checked before it costs memory (issue 12) -------------------------------

def _corrupt_config(folder, text: str) -> None:
    (folder / "config.json").write_text(text)


def _corrupt_weights(folder, make_bytes) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(make_bytes(path.read_bytes()))


def _with_weight(value: float):
    """Weights whose first float (of the first tensor in the file) is `value`."""
    def edit(raw: bytes) -> bytes:
        start = 8 + int.from_bytes(raw[:8], "little")
        return raw[:start] + struct.pack("<f", value) + raw[start + 4:]
    return edit


def _config_edit(**changes):
    def edit(folder):
        values = json.loads((folder / "config.json").read_text())
        _corrupt_config(folder, json.dumps({**values, **changes}))
    return edit


CORRUPTIONS = {
    "config_not_an_object": (lambda f: _corrupt_config(f, "[1, 2, 3]"), "config.json",
                             "not a JSON object"),
    "config_not_json": (lambda f: _corrupt_config(f, "{n_layer: 2"), "config.json",
                        "not valid JSON"),
    "config_strings_for_numbers": (_config_edit(n_layer="2"), "config.json", "n_layer"),
    "config_nan": (_config_edit(learning_rate=float("nan")), "config.json", "finite"),
    "config_huge_n_layer": (_config_edit(n_layer=1_000_000), "config.json", "n_layer"),
    "config_heads_do_not_divide": (_config_edit(n_head=3), "config.json", "multiple of n_head"),
    "config_bigger_than_weights": (_config_edit(block_size=8192), "model.safetensors",
                                   "wpe.weight has shape"),
    "weights_empty": (lambda f: _corrupt_weights(f, lambda raw: b""), "model.safetensors",
                      "empty"),
    "weights_truncated": (lambda f: _corrupt_weights(f, lambda raw: raw[: len(raw) // 2]),
                          "model.safetensors", "truncated"),
    "weights_not_safetensors": (lambda f: _corrupt_weights(f, lambda raw: b"PK\x03\x04" * 500),
                                "model.safetensors", "not a safetensors file"),
    "weights_nan": (lambda f: _corrupt_weights(f, _with_weight(float("nan"))),
                    "model.safetensors", "NaN or inf"),
    "weights_inf": (lambda f: _corrupt_weights(f, _with_weight(float("inf"))),
                    "model.safetensors", "NaN or inf"),
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_a_bad_checkpoint_is_refused_in_one_line_naming_the_file(tiny_model, tmp_path,
                                                                 monkeypatch, name):
    corrupt, file_name, problem = CORRUPTIONS[name]
    save_checkpoint(tiny_model, tmp_path / "ckpt")
    corrupt(tmp_path / "ckpt")
    real_gpt = checkpoint.GPT

    def only_on_meta(config):  # the header is checked against the config before allocating
        assert torch.get_default_device().type == "meta", "model allocated before the checks"
        return real_gpt(config)

    monkeypatch.setattr(checkpoint, "GPT", only_on_meta)
    with pytest.raises(CheckpointError) as caught:
        checkpoint.load_config(tmp_path / "ckpt")
        checkpoint.check_weights_file(tmp_path / "ckpt" / "model.safetensors",
                                      checkpoint.load_config(tmp_path / "ckpt"))
        monkeypatch.setattr(checkpoint, "GPT", real_gpt)  # the checks passed: NaN/inf are next
        load_model_from_checkpoint(tmp_path / "ckpt")
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert str(tmp_path / "ckpt" / file_name) in message and problem in message, message


def test_both_vocabularies_still_load(make_tiny_model, tmp_path):
    from musicgpt.vocab import BASE_VOCAB_SIZE, VOCAB_SIZE

    for size in (BASE_VOCAB_SIZE, VOCAB_SIZE):
        save_checkpoint(make_tiny_model(vocab_size=size), tmp_path / str(size))
        assert load_model_from_checkpoint(tmp_path / str(size)).config.vocab_size == size


def test_checkpoint_files_are_readable_by_others(tiny_model, tmp_path):
    old = os.umask(0o022)
    try:
        save_checkpoint(tiny_model, tmp_path / "ckpt", state={"step": 1},
                        optimizer=make_optimizer(tiny_model, tiny_model.config))
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "ckpt").iterdir()}
    assert set(modes.values()) == {0o644}, modes


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EROFS], ids=["disk_full", "read_only"])
def test_a_failed_save_names_the_folder_leaves_no_tmp_and_keeps_the_old_one(
        make_tiny_model, tmp_path, monkeypatch, error):
    ckpt = save_checkpoint(make_tiny_model(seed=0), tmp_path / "ckpt", state={"step": 7})
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}

    def fail(*args, **kwargs):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(checkpoint, "save_model", fail)
    with pytest.raises(WriteError) as caught:
        save_checkpoint(make_tiny_model(seed=1), ckpt, state={"step": 8})
    assert str(caught.value) == f"cannot write {ckpt}: {os.strerror(error)}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before


def test_a_bad_training_state_names_its_file(tiny_model, tmp_path):
    save_checkpoint(tiny_model, tmp_path / "ckpt", state={"step": 3})
    (tmp_path / "ckpt" / "state.json").write_text("{")
    with pytest.raises(CheckpointError, match="state.json"):
        load_training_state(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "state.json").write_text('{"step": 3}')
    (tmp_path / "ckpt" / "state.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="state.safetensors"):
        load_training_state(tmp_path / "ckpt")
