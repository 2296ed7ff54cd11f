"""Relative attention: skewing against Shaw's explicit form, cached decoding, weights, budget."""

import math

import numpy as np
import pytest
import torch

from musicgpt.checkpoint import load_model_from_checkpoint, save_checkpoint
from musicgpt.config import preset
from musicgpt.relative import RelativeSelfAttention, skew, skewed_relative_logits
from musicgpt.sampling import SamplingSettings, generate
from musicgpt.training import token_loss
from musicgpt.vocab import END_ID

TOL = 1e-4


@pytest.fixture
def make_relative_model(make_tiny_model):
    """`make(seed)`: a tiny relative-attention model whose relative term matters as much as the
    content term."""

    def make(seed: int = 0):
        model = make_tiny_model(seed, attention="relative")
        with torch.no_grad():
            for block in model.blocks:
                block.attn.rel_emb.normal_(0.0, 0.5)
        return model
    return make


def _shaw_logits(q, k, rel_emb, first_pos=0):
    """Reference: materialise E[pos_i - j] as (T, N, D) and contract; -inf on future keys."""
    T, N = q.shape[2], k.shape[2]
    pos = torch.arange(first_pos, first_pos + T)[:, None]
    distance = pos - torch.arange(N)[None, :]
    table = rel_emb[distance.clamp(min=0)]  # (T, N, D): the tensor skewing avoids
    rel = torch.einsum("bhtd,tnd->bhtn", q, table)
    logits = (q @ k.transpose(-2, -1) + rel) / math.sqrt(q.shape[-1])
    return logits.masked_fill(distance < 0, -math.inf)


def test_skew_moves_each_row_to_key_columns():
    T, N = 3, 5  # queries at positions 2, 3, 4; column c of the input is distance N-1-c
    rel = torch.arange(T * N, dtype=torch.float32).view(T, N)
    out = skew(rel)
    for i in range(T):
        for j in range(N - T + i + 1):
            distance = (N - T + i) - j
            assert out[i, j] == rel[i, N - 1 - distance]


@pytest.mark.parametrize("T,N", [(1, 1), (1, 7), (4, 4), (3, 9)])
def test_skewed_logits_equal_explicit_distance_table(T, N):
    torch.manual_seed(T * 10 + N)
    q, rel_emb = torch.randn(2, 3, T, 8), torch.randn(16, 8)
    got = skewed_relative_logits(q, rel_emb, N)
    distance = (N - T + torch.arange(T))[:, None] - torch.arange(N)[None, :]
    want = torch.einsum("bhtd,tnd->bhtn", q, rel_emb[distance.clamp(min=0)])
    visible = distance >= 0
    torch.testing.assert_close(got[..., visible], want[..., visible], atol=TOL, rtol=0)


def test_forward_matches_shaw_reference():
    torch.manual_seed(1)
    config = preset("tiny", attention="relative")
    attn = RelativeSelfAttention(config).eval()
    with torch.no_grad():
        attn.rel_emb.normal_(0.0, 0.5)
        x = torch.randn(2, 10, config.n_embd)
        q, k, v = attn.qkv(x)
        weights = _shaw_logits(q, k, attn.rel_emb).softmax(-1)
        want = attn.c_proj((weights @ v).transpose(1, 2).reshape(2, 10, config.n_embd))
        torch.testing.assert_close(attn(x), want, atol=TOL, rtol=0)


def test_attention_weights_reproduce_forward_output(make_relative_model):
    model = make_relative_model(2)
    attn = model.blocks[0].attn
    with torch.no_grad():
        x = torch.randn(3, 12, model.config.n_embd)
        weights = attn.attention_weights(x)
        _, _, v = attn.qkv(x)
        y = attn.c_proj((weights @ v).transpose(1, 2).reshape(3, 12, -1))
        torch.testing.assert_close(y, attn(x), atol=TOL, rtol=0)
    assert weights.shape == (3, model.config.n_head, 12, 12)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, model.config.n_head, 12))
    assert torch.all(weights.triu(1) == 0)


def test_fused_sdpa_branch_matches_explicit_softmax(make_relative_model, monkeypatch):
    model = make_relative_model(10)
    ids = torch.randint(0, 388, (2, 40))
    with torch.no_grad():
        explicit = model(ids)
        monkeypatch.setattr("musicgpt.relative._explicit_softmax", lambda q: False)
        fused = model(ids)
    torch.testing.assert_close(fused, explicit, atol=TOL, rtol=0)


def test_absolute_attention_weights_still_reproduce_output(make_tiny_model):
    model = make_tiny_model(3)
    attn = model.blocks[0].attn
    with torch.no_grad():
        x = torch.randn(2, 9, model.config.n_embd)
        _, _, v = attn.qkv(x)
        y = attn.c_proj((attn.attention_weights(x) @ v).transpose(1, 2).reshape(2, 9, -1))
        torch.testing.assert_close(y, attn(x), atol=TOL, rtol=0)


def _decode_like_sampler(model, ids, prefill_len, attend):
    """Logits (B, T, V) the way sampling.generate gets them: prefill, then one token per step."""
    B, T = ids.shape
    cache = model.new_cache(B, model.config.block_size)
    positions = torch.arange(prefill_len)
    steps = [model(ids[:, :prefill_len], positions,
                   attend_len=prefill_len if attend else None, cache=cache)]
    for pos in range(prefill_len, T):
        steps.append(model(ids[:, pos : pos + 1], torch.tensor([pos]),
                           attend_len=pos + 1 if attend else None, cache=cache))
    return torch.cat(steps, 1)


@pytest.mark.parametrize("attend", [True, False], ids=["attend_len", "full_buffer_mask"])
@pytest.mark.parametrize("prefill_len", [1, 17])
def test_cached_decoding_equals_full_recompute(make_relative_model, attend, prefill_len):
    model = make_relative_model(4)
    T = model.config.block_size
    ids = torch.randint(0, 388, (3, T), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = model(ids)  # causal: row t of a full pass = logits of the prefix 0..t
        cached = _decode_like_sampler(model, ids, prefill_len, attend)
    torch.testing.assert_close(cached, full, atol=TOL, rtol=0)


def test_prefill_at_later_positions_matches_full_pass(make_relative_model):
    model = make_relative_model(6)
    ids = torch.randint(0, 388, (2, 30), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2, model.config.block_size)
        model(ids[:, :12], torch.arange(12), attend_len=12, cache=cache)
        chunk = model(ids[:, 12:30], torch.arange(12, 30), attend_len=30, cache=cache)
    torch.testing.assert_close(chunk, full[:, 12:30], atol=TOL, rtol=0)


def test_forward_without_positions_stays_causal_with_a_cache(make_relative_model):
    model = make_relative_model(11)
    ids = torch.randint(0, 388, (2, 20))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2, model.config.block_size)
        cached = model(ids, cache=cache)  # no input_pos: the model fills positions 0..T-1
    torch.testing.assert_close(cached, full, atol=TOL, rtol=0)


def test_non_contiguous_positions_are_refused(make_relative_model):
    model = make_relative_model(7)
    cache = model.new_cache(1, model.config.block_size)
    with pytest.raises(ValueError, match="contiguous"):
        model(torch.zeros(1, 3, dtype=torch.long), torch.tensor([0, 2, 5]), cache=cache)


def test_generation_runs_past_the_context(make_relative_model):
    model = make_relative_model(8)
    rows = generate(model, [], max_new_tokens=150, num_samples=2, seed=1,
                    settings=SamplingSettings(top_p=1.0))
    assert all(len(r) == 151 or r[-1] == END_ID for r in rows)  # START + up to 150 new
    assert max(len(r) for r in rows) > 2 * model.config.block_size  # slid at least twice
    assert all(np.all((r >= 0) & (r < model.config.vocab_size)) for r in rows)


def test_budget_matches_absolute_when_layers_equal_heads(make_tiny_model):
    absolute = make_tiny_model(n_layer=2, n_head=2)
    relative = make_tiny_model(n_layer=2, n_head=2, attention="relative")
    assert absolute.num_params() == relative.num_params()
    names = {n for n, _ in absolute.named_parameters()}
    assert "wpe.weight" in names and not any("rel_emb" in n for n in names)
    rel_names = {n for n, _ in relative.named_parameters()}
    assert "wpe.weight" not in rel_names and "blocks.0.attn.rel_emb" in rel_names


def test_relative_embeddings_get_gradients(make_tiny_model):
    model = make_tiny_model(attention="relative").train()
    ids = torch.randint(0, 388, (2, 20))
    token_loss(model(ids[:, :-1]), ids[:, 1:]).backward()
    grad = model.blocks[1].attn.rel_emb.grad
    assert grad is not None and grad[:18].abs().sum() > 0 and grad[19:].abs().sum() == 0


def test_checkpoint_round_trip_keeps_logits(make_relative_model, tmp_path):
    model = make_relative_model(9)
    save_checkpoint(model, tmp_path)
    loaded = load_model_from_checkpoint(tmp_path)
    assert loaded.config.attention == "relative"
    ids = torch.randint(0, 388, (1, 25))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)


def test_a_chunked_prefill_equals_the_whole_one(make_tiny_model, monkeypatch):
    """A CPU prefill from 0 attends PREFILL_CHUNK queries at a time over the keys up to each
    chunk's end (relative._attend_in_chunks): the same logits, cache and last-only logits as the
    whole (T, T) pass."""
    from musicgpt import relative

    model = make_tiny_model(attention="relative", block_size=160)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.rel_emb.normal_(0.0, 0.5)
    ids = torch.randint(0, 300, (2, 150), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(150)
    monkeypatch.setattr(relative, "PREFILL_CHUNK", 32)
    chunked_cache = model.new_cache(2)
    with torch.no_grad():
        chunked = model(ids, positions, 150, chunked_cache)
        last = model(ids, positions, 150, model.new_cache(2), last_only=True)
    monkeypatch.setattr(relative, "PREFILL_CHUNK", 10_000)
    whole_cache = model.new_cache(2)
    with torch.no_grad():
        whole = model(ids, positions, 150, whole_cache)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last, whole[:, -1:], atol=1e-5, rtol=1e-5)
    for a, b in zip(chunked_cache.layers, whole_cache.layers, strict=True):
        torch.testing.assert_close(a.v, b.v, atol=1e-5, rtol=1e-5)
