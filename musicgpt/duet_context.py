"""The duet's tokens in the model's KV cache: one piece, pushed a token at a time as it is played
or drawn, cut back when a drawn tail is dropped, and slid past the context as decode.py slides
it. Nothing about MIDI, turns or sampling rules: tokens in, next-token logits out.

Every push runs one cached step, so the cache always holds the piece so far and the logits for
what follows are ready: prefilling happens while the player plays, not when the answer starts.
With a style and style guidance, an unstyled twin of the piece (the same tokens without the
style token) is kept in its own cache in lockstep, and `logits` mixes the two as
`decode.guided` does.
"""

from __future__ import annotations

import torch

from .decode import kept_tokens, prefill, step_for
from .model import GPT

# A cut that leaves fewer than this share of `kept_tokens` in the window re-prefills it from
# the piece, so the model never answers from a window emptied by a cut.
_MIN_KEPT_SHARE = 0.5


class _Window:
    """One KV cache over `front` + the piece's most recent tokens (`tokens[start:]`)."""

    def __init__(self, model: GPT, front: list[int], fast: bool):
        self.model, self.front = model, list(front)
        self.block_size = model.config.block_size
        self.keep = kept_tokens(self.block_size, len(front))
        self.cache = model.new_cache(1, self.block_size)
        self.step = step_for(model, self.block_size, fast=fast)
        self.start = 0
        self.logits: torch.Tensor | None = None

    def filled(self, n_tokens: int) -> int:
        """Positions of the cache in use when the piece holds `n_tokens` tokens."""
        return len(self.front) + n_tokens - self.start

    def pushed(self, tokens: list[int]) -> None:
        """`tokens[-1]` was just appended to the piece: one step, or a slide when full."""
        pos = self.filled(len(tokens)) - 1
        if pos >= self.block_size:
            self.slide(tokens)
            return
        token = torch.tensor([tokens[-1]], device=self.model.device)
        self.logits = self.step(token, pos, self.cache)

    def slide(self, tokens: list[int]) -> None:
        """Re-prefill front + the last `keep` tokens from position 0."""
        self.start = max(0, len(tokens) - self.keep)
        window = torch.tensor([self.front + tokens[self.start :]], device=self.model.device)
        self.logits = prefill(self.model, window, self.cache)

    def cut(self, tokens: list[int]) -> None:
        """The piece was cut back to `tokens`: positions past it are stale (never read again, as a
        step attends only up to its own position)."""
        if len(tokens) - self.start < _MIN_KEPT_SHARE * self.keep and self.start > 0:
            self.slide(tokens)
        else:
            self.logits = None

    def next_logits(self, tokens: list[int]) -> torch.Tensor:
        if self.logits is None:  # after a cut: recompute the last position (same keys/values)
            if len(tokens) > self.start:
                pos = self.filled(len(tokens)) - 1
                token = torch.tensor([tokens[-1]], device=self.model.device)
                self.logits = self.step(token, pos, self.cache)
            else:
                self.slide(tokens)
        return self.logits


class DuetContext:
    """The piece so far (`tokens`, after the front: START and the style token, if any) and the
    model's logits for the next token.

    `push` appends a token (one cached step; past the context, a slide), `cut(n)` keeps the
    first n tokens, `make_room(n)` slides now when fewer than n positions are free (so a slide
    happens while the player plays, not when the answer starts)."""

    @torch.inference_mode()
    def __init__(self, model: GPT, front: list[int], guidance: float = 0.0, fast: bool = True):
        self.tokens: list[int] = []
        self.weight = 1.0 + guidance
        self.windows = [_Window(model, front, fast)]
        if guidance > 0 and len(front) > 1:  # the unstyled twin: START only
            self.windows.append(_Window(model, front[:1], fast))
        for window in self.windows:
            window.slide(self.tokens)

    @torch.inference_mode()
    def push(self, token: int) -> None:
        self.tokens.append(int(token))
        for window in self.windows:
            window.pushed(self.tokens)

    @torch.inference_mode()
    def cut(self, length: int) -> None:
        if length >= len(self.tokens):
            return
        del self.tokens[length:]
        for window in self.windows:
            window.cut(self.tokens)

    @torch.inference_mode()
    def make_room(self, free: int) -> None:
        for window in self.windows:
            if window.block_size - window.filled(len(self.tokens)) < free:
                window.slide(self.tokens)

    @torch.inference_mode()
    def logits(self) -> torch.Tensor:
        """(1, V) float logits for the token after the piece (styled, mixed with the unstyled
        twin's under guidance)."""
        styled = self.windows[0].next_logits(self.tokens).float()
        if len(self.windows) == 1:
            return styled
        base = self.windows[1].next_logits(self.tokens).float()
        return base + self.weight * (styled - base)

    def window(self) -> list[int]:
        """The ids in the (styled) cache, position 0 first: front + the most recent tokens."""
        first = self.windows[0]
        return first.front + self.tokens[first.start :]
