"""Sampling weights are made once, at load: load_sampling_model, and the CLI's --dtype."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from musicgpt.checkpoint import load_model_from_checkpoint, load_sampling_model, save_checkpoint
from musicgpt.cli import main
from musicgpt.layers import Linear
from musicgpt.model import GPT
from musicgpt.quantize import PREFILL_ROWS, Int8Linear, quantize_for_sampling, sampling_dtype


@pytest.fixture(scope="module")
def checkpoint(make_tiny_model, tmp_path_factory):
    return save_checkpoint(make_tiny_model(1), tmp_path_factory.mktemp("q") / "checkpoint")


def _ids() -> torch.Tensor:
    return torch.randint(0, 380, (2, 24), generator=torch.Generator().manual_seed(0))


def _is_int8(model: GPT) -> bool:
    linears = [m for m in model.modules() if isinstance(m, Linear | Int8Linear)]
    return all(isinstance(m, Int8Linear) for m in linears)


def test_auto_is_int8_on_cpu_only_and_unknown_names_are_refused():
    assert sampling_dtype("auto", "cpu") == "int8"
    assert sampling_dtype("auto", "cuda") == "float32"
    assert sampling_dtype(None, "cpu") == "float32"
    with pytest.raises(ValueError, match="sampling dtype"):
        sampling_dtype("float8", "cpu")


def test_load_sampling_model_quantises_in_place_at_load(checkpoint):
    exact = load_model_from_checkpoint(checkpoint)
    low = load_sampling_model(checkpoint, dtype="int8")
    assert _is_int8(low) and not _is_int8(exact)
    assert sum(isinstance(m, Int8Linear) for m in low.modules()) == 4 * low.config.n_layer
    with torch.no_grad():
        assert (exact(_ids()).softmax(-1) - low(_ids()).softmax(-1)).abs().max() < 2e-3
        same = load_sampling_model(checkpoint, dtype="float32")
        assert not _is_int8(same) and torch.equal(same(_ids()), exact(_ids()))
    assert quantize_for_sampling(low, "int8") is low  # a second call finds nothing left to do


def test_load_sampling_model_refuses_an_unknown_dtype_before_reading(tmp_path):
    with pytest.raises(ValueError, match="sampling dtype"):
        load_sampling_model(tmp_path / "no-such-checkpoint", dtype="float8")


@pytest.mark.parametrize("dtype, int8", [("int8", True), ("auto", True), ("float32", False)])
def test_cli_generate_samples_from_weights_quantised_at_load(checkpoint, tmp_path, monkeypatch,
                                                             dtype, int8):
    import musicgpt.sampling

    models, real = [], musicgpt.sampling.generate_pieces

    def spy(model, *args, **kwargs):
        models.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(musicgpt.sampling, "generate_pieces", spy)
    assert main(["generate", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "q.mid"),
                 "--seconds", "1", "--max-tokens", "50", "--seed", "0", "--dtype", dtype,
                 "--device", "cpu", "--no-progress"]) == 0
    (model,) = models
    assert _is_int8(model) == int8


@pytest.mark.parametrize("rows", [1, 8, PREFILL_ROWS, 200])
def test_int8_linear_computes_q_times_scale_plus_bias_at_every_size(rows):
    """Decode steps (int8 kernel) and prefills (bf16 matmul of a copy of Q made at load) give
    x @ (Q * scale) + b; the prefill to the bit of the bf16 product it always computed."""
    linear = Linear(64, 96)
    nn.init.normal_(linear.bias)
    layer = Int8Linear(linear)
    x = torch.randn(rows, 64)
    x16 = x.to(torch.bfloat16)
    with torch.inference_mode():
        out = layer(x)
        exact = x16.float() @ (layer.q.float() * layer.scale.float()[:, None]).t() + layer.bias
        assert (out - exact).abs().max() < 2e-2 * exact.abs().max()
        if rows >= PREFILL_ROWS:
            product = (x16 @ layer.q.t().to(torch.bfloat16)) * layer.scale
            assert torch.equal(out, product.float() + layer.bias)
    assert "q16" not in layer.state_dict()  # a copy for speed, never saved


def test_an_int8_last_only_prefill_writes_the_whole_prefills_cache(checkpoint):
    """The last block of a `last_only` prefill multiplies one row per sequence (the decode
    step's int8 product, not the prefill's bf16 one): the same cache, its last logits within
    rounding."""
    model = load_sampling_model(checkpoint, dtype="int8")
    ids, positions = _ids(), torch.arange(24)
    whole_cache, last_cache = model.new_cache(2, 24), model.new_cache(2, 24)
    with torch.inference_mode():
        whole = model(ids, positions, 24, whole_cache)
        last = model(ids, positions, 24, last_cache, last_only=True)
    assert torch.equal(last_cache.k, whole_cache.k) and torch.equal(last_cache.v, whole_cache.v)
    torch.testing.assert_close(last.softmax(-1), whole[:, -1:].softmax(-1), atol=2e-3, rtol=0)
