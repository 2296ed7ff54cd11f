"""The decode loop: prefill a history, then one cached step per token, sliding the window past
the model's context; and style guidance's unstyled twin decode in lockstep. Hands each step's
logits to a `draw` function and never looks at what the tokens mean (restate.py aside).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from .engine import KernelStep, fast_step_for
from .layers import KVCache
from .model import GPT
from .restate import SoundingTracker, restatements

if TYPE_CHECKING:
    from .sampling import SamplingSettings


def guided(model: GPT, plain: torch.Tensor, budget: int, draw,
           settings: SamplingSettings, static: bool = False, fast: bool = True,
           done: np.ndarray | None = None):
    """(a draw for the styled decode that mixes in the unstyled logits, the unstyled decode):
    logits = unstyled + (1 + settings.style_guidance) * (styled - unstyled).

    The unstyled decode runs over `plain` (the styled history without its style token) on the
    same weights with its own KV cache (a value of its decode loop, so no copy), in lockstep:
    each styled draw first advances it one step for its logits, draws the token from both, and
    writes that token into the buffer the unstyled decode just yielded, which that decode feeds
    back at its next step. Past the context each decode slides its own window.
    """
    mailbox: dict[str, torch.Tensor] = {}
    weight = 1.0 + settings.style_guidance

    def hold(logits: torch.Tensor) -> torch.Tensor:
        mailbox["logits"] = logits
        mailbox["token"] = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return mailbox["token"]

    unstyled = decode_steps(model, plain, budget, hold, static, restate=settings.restate_sounding,
                            fast=fast, done=done, roll=settings.rolling_cache)

    def guided_draw(logits: torch.Tensor) -> torch.Tensor:
        next(unstyled)
        base = mailbox["logits"].float()
        token = draw(base + weight * (logits.float() - base))
        mailbox["token"].copy_(token)
        return token

    return guided_draw, unstyled


def decode_steps(model: GPT, history: torch.Tensor, max_new_tokens: int,
                 draw: Callable[[torch.Tensor], torch.Tensor],
                 static_shapes: bool = False,
                 keep_front: torch.Tensor | None = None,
                 restate: bool = False, fast: bool = True,
                 done: np.ndarray | None = None, roll: bool = False) -> Iterator[torch.Tensor]:
    """Prefill `history` (B, T), then yield up to `max_new_tokens` (B,) tokens from `draw`.

    `draw` turns (B, V) logits into (B,) ids. Past the context, any number of tokens can be made
    in one of two ways:
    - the window slides (the default): the most recent 5/8 of the context is re-prefilled from
      position 0, `keep_front` (B, k) in front as training windows that start mid-piece carry
      them; with `restate`, the notes still sounding where the kept tokens start are restated
      after the front (restate.py), so the model sees every note it may have to release.
    - with `roll`, where the step can (`engine.KernelStep`, relative attention), the cache rolls
      instead: each token's keys and values are computed once, the window's front stays (START
      and `keep_front`, where there is a `keep_front`) and the rest holds the most recent
      tokens; nothing is re-prefilled.
      Faster, but its validation NLL past the context is 0.2% higher (teacher forcing on 88
      validation pieces, BENCHMARKS.md "Decode engine").
    `done` (B,) bool, the caller's own array updated in place as rows finish (their draws no
    longer count): the kernel step spends no attention on those rows (best of 3 waits for its
    densest candidate, and 16-38% of the rows' steps were finished ones).
    The KV cache is this loop's own value, alive for the iteration only, so decodes on one model
    never share state. With `fast` (the default) each step runs `engine.fast_step_for`'s step
    where the model allows it (CPU, fp32 or int8 weights, eval mode, no static shapes);
    `fast=False` keeps every step on `GPT.forward`, the reference.
    """
    block_size = model.config.block_size
    front = history[:, :0] if keep_front is None else keep_front
    keep = kept_tokens(block_size, front.size(1))
    truncated = history.size(1) > block_size
    window = torch.cat([front, history[:, -keep:]], 1) if truncated else history
    # a cache no longer than the piece can get: short pieces never hold a full-context buffer
    capacity = min(block_size, window.size(1) + max_new_tokens)
    sequence = _Sequence(history, model.config.vocab_size, restate)
    cache = model.new_cache(history.size(0), capacity)
    step = step_for(model, capacity, static_shapes, fast)
    rolls = roll and getattr(step, "rolls", False) and model.config.attention == "relative"
    skip = {"skip": done} if done is not None and isinstance(step, KernelStep) else {}
    # the front that stays when the cache rolls: `keep_front`, and START before it if present
    n_pin = front.size(1) + (0 if truncated or not front.size(1) else 1)
    if truncated:
        window = sequence.window(front, keep, block_size)
    logits, pos = prefill(model, window, cache), window.size(1)
    for i in range(max_new_tokens):
        if i > 0 and rolls:
            logits, pos = step(sequence.last, pos, cache, n_pin, **skip), pos + 1
        elif i > 0 and pos < capacity:  # one step at position pos
            logits, pos = step(sequence.last, pos, cache, **skip), pos + 1
        elif i > 0:  # the context is full: slide
            window = sequence.window(front, keep, block_size)
            logits, pos = prefill(model, window, cache), window.size(1)
        token = draw(logits)
        sequence.append(token)
        yield token


def kept_tokens(block_size: int, n_front: int) -> int:
    """Recent tokens a window re-prefilled past the context keeps: 5/8 of the context, less the
    `n_front` tokens (START, a style) that go in front of it. Measured by teacher forcing on 88
    validation pieces (BENCHMARKS.md): 5/8 and 3/4 give the same NLL past the context (within
    0.0005 nats/token), and 5/8 re-prefills a shorter window less often (~2x cheaper)."""
    return max(1, block_size * 5 // 8 - n_front)


def step_for(model: GPT, capacity: int, static_shapes: bool = False, fast: bool = True):
    """The one-token cached step, `step(token (B,), pos, cache) -> (B, V) logits`: `FastStep`
    where the model allows it (and `fast`), else `GPT.forward` over a cache of `capacity`."""
    fast_step = fast_step_for(model) if fast and not static_shapes else None
    return fast_step or _eager_step(model, capacity, static_shapes)


def _eager_step(model: GPT, capacity: int, static_shapes: bool):
    """`GPT.forward` as a step, (B,) token at an int position -> (B, V) logits: the reference
    path, and the one for GPUs (static shapes attend over the whole buffer)."""
    positions = torch.arange(capacity, device=model.device)

    def step(token: torch.Tensor, pos: int, cache: KVCache) -> torch.Tensor:
        attend = None if static_shapes else pos + 1
        return model(token[:, None], positions[pos : pos + 1], attend, cache)[:, -1]
    return step


class _Sequence:
    """The tokens of a decode so far (history, then each drawn column), and the window to
    re-prefill when the context is full: front, the restated sounding notes, the recent tokens."""

    def __init__(self, history: torch.Tensor, vocab_size: int, restate: bool):
        self.columns = list(history.unbind(1))  # (B,) tensors; a drawn one may be filled later
        self.tracker = SoundingTracker(history.size(0), vocab_size) if restate else None
        self.scanned = 0
        self.last = history[:, -1]

    def append(self, token: torch.Tensor) -> None:
        self.columns.append(token)
        self.last = token

    def window(self, front: torch.Tensor, keep: int, block_size: int) -> torch.Tensor:
        cut = len(self.columns) - keep
        recent = torch.stack(self.columns[cut:], 1)
        if self.tracker is None:
            return torch.cat([front, recent], 1)
        if cut > self.scanned:
            self.tracker.advance(torch.stack(self.columns[self.scanned : cut], 1).cpu().numpy())
            self.scanned = cut
        said = restatements(self.tracker)
        if said.shape[1] > block_size - keep - front.size(1):  # no room: leave it out
            said = said[:, :0]
        return torch.cat([front, torch.from_numpy(said).to(recent.device), recent], 1)


def prefill(model: GPT, window: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Fill `cache` with `window` (B, T) from position 0; logits (B, V) for what follows."""
    positions = torch.arange(window.size(1), device=window.device)
    return model(window, positions, attend_len=window.size(1), cache=cache, last_only=True)[:, -1]
