"""GPT core: size, initial loss, KV cache against full recompute, attention weights, overfitting."""

from __future__ import annotations

import math

import pytest
import torch

from musicgpt.training import token_loss
from musicgpt.vocab import BASE_VOCAB_SIZE, VOCAB_SIZE


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matrices: a second thread costs more in hand-offs than it saves (and the CI box is
    shared, where a waiting OpenMP thread can stall each op for a whole time slice)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, BASE_VOCAB_SIZE - 3, (batch, length),
                         generator=torch.Generator().manual_seed(seed))


def test_parameter_count_matches_the_gpt2_formula(tiny_model):
    config = tiny_model.config
    C, L, V, n = config.n_embd, config.block_size, config.vocab_size, config.n_layer
    attn = (C * 3 * C + 3 * C) + (C * C + C)
    mlp = (C * 4 * C + 4 * C) + (4 * C * C + C)
    per_block = 2 * 2 * C + attn + mlp  # two LayerNorms, attention, MLP
    expected = V * C + L * C + n * per_block + 2 * C  # output projection tied to wte: no extra
    assert tiny_model.num_params() == expected


def test_initial_loss_is_about_log_vocab_size(tiny_model):
    model = tiny_model
    ids = _ids(4, 65)
    with torch.no_grad():
        loss = token_loss(model(ids[:, :-1]), ids[:, 1:])
    assert abs(loss.item() - math.log(VOCAB_SIZE)) < 0.1


@pytest.mark.parametrize("attend", [True, False], ids=["attend_len", "static_full_buffer_mask"])
def test_cached_decoding_matches_full_forward_at_every_position(tiny_model, attend):
    model = tiny_model
    ids = _ids(3, 40)
    with torch.no_grad():
        full = model(ids)  # (B, T, V)
        cache = model.new_cache(3, model.config.block_size)
        prefill = 7
        steps = [model(ids[:, :prefill], torch.arange(prefill),
                       attend_len=prefill if attend else None, cache=cache)]
        for pos in range(prefill, ids.size(1)):
            steps.append(model(ids[:, pos : pos + 1], torch.tensor([pos]),
                               attend_len=pos + 1 if attend else None, cache=cache))
    cached = torch.cat(steps, dim=1)
    assert cached.shape == full.shape
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=0)


def test_a_forward_without_gradients_gives_the_same_numbers(tiny_model):
    """Sampling and evaluation (no autograd) run the GELU in place: the same numbers."""
    ids = _ids(2, 30)
    with_grad = tiny_model(ids)
    assert with_grad.requires_grad
    with torch.no_grad():
        assert torch.equal(tiny_model(ids), with_grad.detach())
    with torch.inference_mode():
        assert torch.equal(tiny_model(ids), with_grad.detach())


def test_chunked_prefill_matches_full_forward(tiny_model):
    model = tiny_model
    ids = _ids(2, 30)
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2, 48)  # a cache shorter than block_size is allowed
        first = model(ids[:, :12], torch.arange(12), attend_len=12, cache=cache)
        second = model(ids[:, 12:], torch.arange(12, 30), attend_len=30, cache=cache)
    torch.testing.assert_close(torch.cat([first, second], 1), full, atol=1e-4, rtol=0)


@pytest.mark.parametrize("attention", ["absolute", "relative"])
def test_a_last_only_prefill_writes_the_same_cache_and_last_logits(make_tiny_model, attention):
    """`last_only` runs the last block for the last position alone: every layer's keys and
    values as a whole prefill writes them, and that prefill's last logits (cached or not)."""
    model = make_tiny_model(attention=attention)
    ids, positions = _ids(2, 40), torch.arange(40)
    whole_cache, last_cache = model.new_cache(2), model.new_cache(2)
    with torch.no_grad():
        whole = model(ids, positions, 40, whole_cache)
        last = model(ids, positions, 40, last_cache, last_only=True)
        uncached = model(ids, last_only=True)
    assert last.shape == uncached.shape == (2, 1, whole.shape[-1])
    assert torch.equal(last_cache.k, whole_cache.k) and torch.equal(last_cache.v, whole_cache.v)
    torch.testing.assert_close(last, whole[:, -1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(uncached, whole[:, -1:], atol=1e-5, rtol=1e-5)


def test_cache_is_preallocated_and_written_in_place(tiny_model):
    model = tiny_model
    cache = model.new_cache(2, 16)
    buffers = [(kv.k.data_ptr(), kv.v.data_ptr()) for kv in cache.layers]
    with torch.no_grad():
        model(_ids(2, 5), torch.arange(5), attend_len=5, cache=cache)
        model(_ids(2, 1), torch.tensor([5]), attend_len=6, cache=cache)
    assert [(kv.k.data_ptr(), kv.v.data_ptr()) for kv in cache.layers] == buffers
    assert len(cache.layers) == model.config.n_layer
    assert cache.layers[0].k.shape == (2, 2, 16, 16)  # (B, H, max_len, D)
    assert cache.max_len == 16 and cache.batch_size == 2
    assert cache.layers[0].k[:, :, 6:].abs().sum() == 0
    assert not any("cache" in name for name, _ in model.named_buffers())  # weights only


def test_cache_writes_a_run_of_positions_as_it_writes_scattered_ones():
    """A run of positions (a prefill) is copied as a slice, any others through index_copy_."""
    from musicgpt.layers import KVCache

    k, v = torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 4)
    run, scattered = (KVCache(1, 2, 3, 16, 4, torch.float32, "cpu").layers[0] for _ in "ab")
    run.update(torch.arange(5, 11), k, v)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    scattered.update(5 + order, k[:, :, order], v[:, :, order])
    assert torch.equal(run.k, scattered.k) and torch.equal(run.v, scattered.v)
    assert torch.equal(run.k[:, :, 5:11], k)
    assert run.k[:, :, :5].count_nonzero() == run.k[:, :, 11:].count_nonzero() == 0


def test_bad_lengths_and_missing_cache_are_refused(tiny_model):
    model = tiny_model
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(_ids(1, 65))
    with pytest.raises(ValueError, match="exceeds block_size"):
        model.new_cache(1, 65)
    with pytest.raises(ValueError, match="new_cache"):
        model(_ids(1, 3), torch.arange(3))


def test_attention_weights_reproduce_the_fast_path_layer_by_layer(tiny_model):
    model = tiny_model
    ids = _ids(2, 20)
    with torch.no_grad():
        x = model.wte(ids) + model.wpe(torch.arange(20))
        for block in model.blocks:
            attn = block.attn
            h = block.ln_1(x)
            weights = attn.attention_weights(h)  # (B, H, T, T)
            assert weights.shape == (2, model.config.n_head, 20, 20)
            torch.testing.assert_close(weights.sum(-1), torch.ones(2, model.config.n_head, 20))
            assert weights.triu(1).abs().max() == 0  # nothing attends to the future
            _, _, v = attn.qkv(h)
            y = (weights @ v).transpose(1, 2).reshape(2, 20, model.config.n_embd)
            torch.testing.assert_close(attn.c_proj(y), attn(h), atol=1e-5, rtol=0)
            x = block(x)
        torch.testing.assert_close(model.ln_f(x) @ model.wte.weight.t(), model(ids),
                                   atol=1e-5, rtol=0)


def test_tiny_overfits_one_batch(tiny_model):
    model = tiny_model.train()
    ids = _ids(4, 65, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(250):
        loss = token_loss(model(ids[:, :-1]), ids[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3, f"loss {loss.item():.3f} after 250 steps on one batch"


def test_dropout_is_active_in_training_only(make_tiny_model):
    model = make_tiny_model(dropout=0.2)
    ids = _ids(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), model(ids))
        model.train()
        assert not torch.allclose(model(ids), model(ids))
