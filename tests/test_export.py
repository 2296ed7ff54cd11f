"""`musicgpt export --hf`: an absolute checkpoint becomes a transformers GPT-2 with our logits;
relative checkpoints are refused in one line.

The transformers check skips where transformers is not installed (`pip install transformers`,
or the bench extra); the folder's names and config are checked everywhere.
"""

from __future__ import annotations

import json

import pytest
import torch

from musicgpt.checkpoint import read_safetensors_header, save_checkpoint
from musicgpt.cli import main


@pytest.fixture(scope="module")
def checkpoint(make_tiny_model, tmp_path_factory):
    """A tiny absolute model with every weight moved off its initial value (so that a wrong
    layout, a missing bias or another GELU would change the logits), saved as a checkpoint."""
    model = make_tiny_model(5)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn_like(param))
    return model, save_checkpoint(model, tmp_path_factory.mktemp("export") / "checkpoint")


def _export(checkpoint_dir, out) -> int:
    return main(["export", "--hf", str(out), "--checkpoint", str(checkpoint_dir)])


def test_the_export_holds_gpt2_names_and_config(checkpoint, tmp_path, capsys):
    model, ckpt = checkpoint
    assert _export(ckpt, tmp_path / "hf") == 0
    assert "GPT2LMHeadModel" in capsys.readouterr().out
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    c = model.config
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert (config["vocab_size"], config["n_positions"], config["n_layer"], config["n_head"],
            config["n_embd"]) == (c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd)
    assert config["activation_function"] == "gelu_new" and config["tie_word_embeddings"]
    header = read_safetensors_header(tmp_path / "hf" / "model.safetensors")
    assert "transformer.h.1.attn.c_attn.weight" in header and "lm_head.weight" not in header
    assert header["transformer.h.0.mlp.c_fc.weight"]["shape"] == [c.n_embd, 4 * c.n_embd]
    assert not list(tmp_path.rglob("*.tmp"))


def test_transformers_loads_the_export_with_our_logits(checkpoint, tmp_path):
    transformers = pytest.importorskip("transformers")
    model, ckpt = checkpoint
    assert _export(ckpt, tmp_path / "hf") == 0
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, model.config.vocab_size, (2, model.config.block_size),
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert ours.abs().max() > 1.0  # logits far from zero, so the comparison means something
    assert (ours - theirs).abs().max() < 1e-5  # fp32 rounding only (2e-6 here)
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied


def test_a_relative_checkpoint_is_not_expressible_as_gpt2(make_tiny_model, tmp_path, capsys):
    ckpt = save_checkpoint(make_tiny_model(attention="relative"), tmp_path / "relative")
    assert _export(ckpt, tmp_path / "hf") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not expressible as GPT-2" in err[0] and str(ckpt) in err[0], err
    assert not (tmp_path / "hf").exists()
