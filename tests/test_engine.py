"""The fast decode steps (engine.FastStep in torch ops, engine.KernelStep compiled by numba)
compute what GPT.forward computes, step by step, for absolute and relative attention, fp32 and
int8; the sampler uses the kernel by default on a CPU, FastStep where numba is missing."""

import numpy as np
import pytest
import torch

from musicgpt import kernel
from musicgpt.engine import FastStep, KernelStep, fast_step_for
from musicgpt.quantize import sampling_copy
from musicgpt.sampling import SamplingSettings, generate, generate_pieces
from musicgpt.vocab import START_ID

STEPS = [FastStep, pytest.param(KernelStep, marks=pytest.mark.skipif(
    not kernel.available(), reason="numba is not installed"))]


def _steps(model, ids: torch.Tensor, prefill: int, fast: bool, kind=FastStep) -> torch.Tensor:
    """Logits (B, T - prefill, V) for each position after a prefill, one cached step at a time."""
    B, T = ids.shape
    cache = model.new_cache(B, model.config.block_size)
    step = kind(model)
    out = [model(ids[:, :prefill], torch.arange(prefill), prefill, cache)[:, -1]]
    for pos in range(prefill, T - 1):
        if fast:
            out.append(step(ids[:, pos], pos, cache))
        else:
            out.append(model(ids[:, pos : pos + 1], torch.tensor([pos]), pos + 1, cache)[:, -1])
    return torch.stack(out, 1)


@pytest.mark.parametrize("kind", STEPS)
@pytest.mark.parametrize("attention", ["absolute", "relative"])
@pytest.mark.parametrize("batch", [1, 4])  # 4 rows: the kernel's three-row pass, then one
def test_fast_steps_equal_the_eager_forward(make_tiny_model, attention, batch, kind):
    model = make_tiny_model(seed=2, attention=attention)
    ids = torch.randint(0, 380, (batch, model.config.block_size),
                        generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        eager, fast = _steps(model, ids, 5, False), _steps(model, ids, 5, True, kind)
        full = model(ids)[:, 4:-1]  # the uncached pass, the ground truth for both
    torch.testing.assert_close(fast, eager, atol=1e-4, rtol=0)
    torch.testing.assert_close(fast, full, atol=1e-4, rtol=0)


@pytest.mark.skipif(not kernel.available(), reason="numba is not installed")
@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_the_kernel_takes_widths_its_unrolled_loops_do_not_divide(make_tiny_model, dtype):
    """34 wide (heads of 17): the products' leftover input rows after the 8- and 4-row passes."""
    model = sampling_copy(make_tiny_model(seed=12, n_embd=34, attention="relative"), dtype)
    ids = torch.randint(0, 380, (4, 30), generator=torch.Generator().manual_seed(6))
    step, cache = KernelStep(model), model.new_cache(4, 30)
    with torch.inference_mode():
        got = torch.stack([step(ids[:, pos], pos, cache) for pos in range(30)], 1)
        if dtype == "float32":
            torch.testing.assert_close(got, model(ids), atol=1e-4, rtol=0)
        else:  # the int8 forward's bf16 activations round differently
            assert (got - model(ids)).abs().max() < 5e-2


@pytest.mark.parametrize("attention", ["absolute", "relative"])
def test_fast_int8_steps_stay_near_the_eager_int8_forward(make_tiny_model, attention):
    model = sampling_copy(make_tiny_model(seed=3, attention=attention), "int8")
    ids = torch.randint(0, 380, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        eager, fast = _steps(model, ids, 8, False), _steps(model, ids, 8, True)
    # bf16 activations into the int8 kernel: the same rounding either way, up to fp32 order
    assert (fast - eager).abs().max() < 2e-2
    assert torch.equal(fast.argmax(-1), eager.argmax(-1))


@pytest.mark.skipif(not kernel.available(), reason="numba is not installed")
@pytest.mark.parametrize("attention", ["absolute", "relative"])
def test_kernel_int8_steps_equal_the_dequantised_fp32_model(make_tiny_model, attention):
    """The kernel widens int8 weights to fp32 and keeps fp32 activations: its logits are the
    fp32 forward of a model whose weights are the int8 values times their scales."""
    from musicgpt.quantize import Int8Linear

    model = make_tiny_model(seed=3, attention=attention)
    int8 = sampling_copy(model, "int8")
    with torch.no_grad():
        for name, layer in int8.named_modules():
            if isinstance(layer, Int8Linear):
                weight = (layer.q.float() * layer.scale.float()[:, None]).t()
                model.get_submodule(name).weight.copy_(weight)
    ids = torch.randint(0, 380, (4, 40), generator=torch.Generator().manual_seed(2))
    step, cache = KernelStep(int8), int8.new_cache(4, 40)
    with torch.inference_mode():
        steps = torch.stack([step(ids[:, pos], pos, cache) for pos in range(40)], 1)
        torch.testing.assert_close(steps, model(ids), atol=1e-4, rtol=0)


@pytest.mark.skipif(not kernel.available(), reason="numba is not installed")
def test_the_int8_kernel_sees_what_a_forward_wrote_between_its_steps(make_tiny_model):
    """The duet prefills played notes between steps: the int8 kernel's int16 copy of the cache
    must then be made again, so its steps see those positions as a fresh copy would."""
    model = sampling_copy(make_tiny_model(seed=8), "int8")
    ids = torch.randint(0, 380, (2, 24), generator=torch.Generator().manual_seed(4))
    step, cache = KernelStep(model), model.new_cache(2, 32)
    with torch.inference_mode():
        model(ids[:, :5], torch.arange(5), 5, cache)
        for pos in range(5, 10):
            step(ids[:, pos], pos, cache)
        model(ids[:, 10:15], torch.arange(10, 15), 15, cache)  # written behind the kernel's back
        fresh = _cache_clone(cache)
        assert torch.equal(step(ids[:, 15], 15, cache), step(ids[:, 15], 15, fresh))


@pytest.mark.skipif(not kernel.available(), reason="numba is not installed")
def test_many_rows_on_two_threads_go_through_faststep_and_the_kernel_takes_over(
        make_tiny_model):
    """8 running rows with two torch threads step through FastStep (faster there); once rows
    finish the kernel takes the same cache over and sees every position FastStep wrote. On one
    thread the kernel steps them all, unless the weights are float32."""
    from musicgpt.engine import TORCH_FROM_ROWS
    from musicgpt.sampling import torch_threads

    model = sampling_copy(make_tiny_model(seed=10), "int8")
    B = TORCH_FROM_ROWS + 1
    ids = torch.randint(0, 380, (B, 20), generator=torch.Generator().manual_seed(5))
    step, cache = KernelStep(model), model.new_cache(B, 32)
    done = np.zeros(B, dtype=bool)
    with torch.inference_mode(), torch_threads(2):
        model(ids[:, :4], torch.arange(4), 4, cache)
        done[:2] = True
        step(ids[:, 4], 4, cache, skip=done)  # 6 rows: the kernel, its int16 copy made here
        done[:2] = False
        writes = cache.writes
        for pos in range(5, 12):  # 8 rows: FastStep writes positions 5-11
            torch.testing.assert_close(step(ids[:, pos], pos, cache, skip=done),
                                       FastStep(model)(ids[:, pos], pos, _cache_clone(cache)))
        assert cache.writes == writes + 7  # each FastStep step counted as a write
        done[:2] = True  # two rows finish: the kernel takes over
        fresh = _cache_clone(cache)
        got, want = step(ids[:, 12], 12, cache, skip=done), step(ids[:, 12], 12, fresh, skip=done)
    assert torch.equal(got[2:], want[2:])
    with torch.inference_mode(), torch_threads(1):
        writes = cache.writes
        step(ids[:, 13], 13, cache)
        assert cache.writes == writes  # one thread: all 8 rows through the kernel
        fp32 = make_tiny_model(seed=10)  # float32 weights: FastStep's products win at 8 rows
        cache = fp32.new_cache(B, 32)
        fp32(ids[:, :4], torch.arange(4), 4, cache)
        writes = cache.writes
        KernelStep(fp32)(ids[:, 4], 4, cache)
        assert cache.writes == writes + 1


def _cache_clone(cache):
    """A copy of `cache`'s buffers with no int16 copy of them yet."""
    import copy

    twin = copy.copy(cache)
    twin.k, twin.v = cache.k.clone(), cache.v.clone()
    twin.kernel_copy = None
    return twin


def test_the_fast_path_is_the_default_and_draws_what_the_reference_draws(make_tiny_model):
    model = make_tiny_model(seed=4, styles=["a", "b"])
    guided = SamplingSettings(style_guidance=1.0)
    for options in [dict(num_samples=3, max_new_tokens=150, seed=5),  # slides past 64
                    dict(settings=guided, style=1, max_new_tokens=80, seed=6)]:
        fast = generate(model, [START_ID], **options)
        eager = generate_pieces(model, [START_ID], fast=False, **options).rows
        assert all(np.array_equal(a, b) for a, b in zip(fast, eager, strict=True))


def test_models_the_fast_step_cannot_serve_decode_through_forward(make_tiny_model):
    model = make_tiny_model()
    assert isinstance(fast_step_for(model), KernelStep if kernel.available() else FastStep)
    assert isinstance(fast_step_for(model, "torch"), FastStep)
    assert fast_step_for(sampling_copy(model, "bfloat16")) is None
    model.train()
    assert fast_step_for(model) is None
    model.eval()
    model.forward = model.forward  # a wrapper on the instance sees every step
    assert fast_step_for(model) is None


@pytest.mark.skipif(not kernel.available(), reason="numba is not installed")
def test_the_kernel_sees_weights_changed_in_place(make_tiny_model):
    """The packed weights are kept per model and re-packed when a weight changes (a fine-tune
    in the same process, an optimiser step): a step never runs stale weights."""
    model = make_tiny_model(seed=6)
    ids = torch.randint(0, 380, (1, 6), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        before = _steps(model, ids, 2, True, KernelStep)
    with torch.no_grad():
        model.blocks[0].mlp.c_fc.weight.mul_(1.5)
    with torch.inference_mode():
        after, eager = _steps(model, ids, 2, True, KernelStep), _steps(model, ids, 2, False)
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, eager, atol=1e-4, rtol=0)


def _decode_logits(model, history: torch.Tensor, n_new: int, fast: bool,
                   keep_front: torch.Tensor | None = None, roll: bool = False):
    """(logits (B, n_new, V) that `decode_steps` hands its draw, the ids it decoded (B, T)), fed
    fixed tokens (drawn from a seeded generator, not the logits), through the whole decode."""
    from musicgpt.decode import decode_steps

    tokens = torch.randint(4, 300, (n_new, history.size(0)),
                           generator=torch.Generator().manual_seed(7))
    seen = []

    def draw(logits):
        seen.append(logits.clone())
        return tokens[len(seen) - 1]

    with torch.inference_mode():
        for _ in decode_steps(model, history, n_new, draw, keep_front=keep_front, fast=fast,
                              roll=roll):
            pass
    return torch.stack(seen, 1), torch.cat([history, tokens[: n_new - 1].t()], 1)


@torch.inference_mode()
def rolling_reference(model, ids: torch.Tensor, cap: int, n_pin: int) -> torch.Tensor:
    """Logits (B, T, V) of a relative fp32 model whose cache rolls past `cap` positions, in one
    pass over all T positions, written from the rule and not from the kernel: position t sees
    every key j <= t while t < cap; after that the first `n_pin` keys (at distance cap - 1 - j,
    as if a full window started with them) and the cap - n_pin most recent positions."""
    B, T = ids.shape
    t, j = torch.arange(T)[:, None], torch.arange(T)[None]
    inside = t < cap
    pinned = ~inside & (j < n_pin)
    visible = (j <= t) & (inside | pinned | (j > t - (cap - n_pin)))
    distance = torch.where(pinned, cap - 1 - j, t - j).clamp(0, cap - 1)
    x = model.wte(ids)
    for block in model.blocks:
        attn = block.attn
        q, k, v = attn.qkv(block.ln_1(x))
        q = q / attn.head_dim ** 0.5
        rel = torch.einsum("bhtd,tjd->bhtj", q, attn.rel_emb[distance])
        scores = (q @ k.transpose(-2, -1) + rel).masked_fill(~visible, float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1)
        x = x + attn.c_proj(y)
        x = x + block.mlp(block.ln_2(x))
    return torch.nn.functional.linear(model.ln_f(x), model.wte.weight)


@pytest.mark.parametrize("kernel_on", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_the_fast_decode_equals_the_reference_through_the_sliding_window(
        make_tiny_model, batch, kernel_on, monkeypatch):
    """By default the window slides (re-prefilled past the context) as GPT.forward's does, with
    the kernel or FastStep."""
    import musicgpt.engine

    monkeypatch.setattr(musicgpt.engine, "_KERNEL_ON", kernel_on)
    model = make_tiny_model(seed=5, attention="relative")
    history = torch.full((batch, 1), START_ID)
    n_new = 3 * model.config.block_size + 10  # several slides of the window
    (fast, _), (eager, _) = (_decode_logits(model, history, n_new, f) for f in (True, False))
    torch.testing.assert_close(fast, eager, atol=1e-4, rtol=0)


@pytest.mark.skipif(not kernel.available(), reason="numba is not installed")
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("styled", [False, True])
def test_the_kernel_decode_rolls_past_the_context(make_tiny_model, batch, styled):
    """Asked to roll, the kernel's cache rolls: three contexts' worth of tokens decoded step by
    step give the rolling rule's logits, START and a style token staying in front when styled."""
    model = make_tiny_model(seed=5, attention="relative")
    history = torch.full((batch, 2 if styled else 1), START_ID)
    if styled:
        history[:, 1] = 7  # any id: the front the window keeps
    n_new = 3 * model.config.block_size + 10
    front = history[:, 1:] if styled else None
    logits, ids = _decode_logits(model, history, n_new, True, front, roll=True)
    reference = rolling_reference(model, ids, model.config.block_size, 2 if styled else 0)
    torch.testing.assert_close(logits, reference[:, history.size(1) - 1 :], atol=1e-4, rtol=0)
    # and within the context it is the eager forward's decode
    eager, _ = _decode_logits(model, history, 40, False, front)
    torch.testing.assert_close(logits[:, :40], eager, atol=1e-4, rtol=0)


@pytest.mark.parametrize("batch", [1, 3])
def test_the_shipped_model_decodes_600_tokens_as_the_reference(batch):
    """The shipped model, fp32: the fast decode equals GPT.forward's through a slide of the
    window; asked to roll, the kernel gives the rolling rule's logits."""
    from musicgpt.assets import default_model_dir
    from musicgpt.checkpoint import load_sampling_model

    model = load_sampling_model(default_model_dir(), "cpu", "float32")
    history = torch.full((batch, 1), START_ID)
    (fast, ids), (eager, _) = (_decode_logits(model, history, 600, f) for f in (True, False))
    torch.testing.assert_close(fast, eager, atol=1e-4, rtol=0)
    if kernel.available():
        rolled, _ = _decode_logits(model, history, 600, True, roll=True)
        reference = rolling_reference(model, ids, model.config.block_size, 0)
        torch.testing.assert_close(rolled, reference, atol=1e-4, rtol=0)


@pytest.mark.skipif(not kernel.available(), reason="numba is not installed")
def test_finished_rows_cost_no_attention_and_change_no_other_row(make_tiny_model):
    """Rows the caller marks done (a finished candidate) are skipped by the kernel; the rows
    still running get exactly the logits they get with every row computed."""
    from musicgpt.decode import decode_steps

    model = make_tiny_model(seed=9, attention="relative")
    history = torch.full((3, 1), START_ID)
    tokens = torch.randint(4, 300, (150, 3), generator=torch.Generator().manual_seed(8))

    def run(done):
        seen = []

        def draw(logits):
            seen.append(logits.clone())
            if done is not None and len(seen) == 20:
                done[1] = True  # row 1 finishes after 20 tokens
            return tokens[len(seen) - 1]

        with torch.inference_mode():
            for _ in decode_steps(model, history, 150, draw, done=done, roll=True):
                pass
        return torch.stack(seen, 1)

    every, skipping = run(None), run(np.zeros(3, dtype=bool))
    assert torch.equal(skipping[:, :20], every[:, :20])
    assert torch.equal(skipping[[0, 2]], every[[0, 2]])  # through the rolling past 64 too
    assert not torch.equal(skipping[1, 20:], every[1, 20:])  # row 1 was no longer computed


@pytest.mark.skipif(not kernel.available(), reason="numba is not installed")
def test_warm_up_readies_the_kernel_for_the_model_s_weights(make_tiny_model):
    """The app readies the compiled step when it loads a model (engine.warm_up): afterwards the
    kernel has a compiled version for int8 weights, and the draw one too."""
    from musicgpt import scoring
    from musicgpt.engine import warm_up

    warm_up(sampling_copy(make_tiny_model(seed=11), "int8"))
    assert any(str(signature[7].dtype) == "int8" for signature in kernel._step.signatures)
    assert scoring._rank_drops.signatures and scoring.draw_and_advance.signatures
