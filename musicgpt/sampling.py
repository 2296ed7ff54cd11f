"""logits -> next token, and the prefill/decode loop. Never sees MIDI, only token ids.

Grammar-aware by default: before each draw, events that cannot be right are masked out (NOTE_OFF
of a silent pitch, NOTE_ON of a sounding pitch, PAD and START mid-piece). Past the model's context
the loop keeps going with a sliding window: the most recent 3/4 of the context is re-prefilled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .model import GPT
from .vocab import (
    END_ID,
    NOTE_OFF_OFFSET,
    NOTE_ON_OFFSET,
    PAD_ID,
    START_ID,
    STEP_MS,
    TIME_SHIFT_OFFSET,
    VELOCITY_OFFSET,
)

ProgressFn = Callable[[int, int], None]  # (tokens generated so far, token budget)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide by the temperature: below 1 sharpens the distribution, above 1 flattens it."""
    return logits / max(temperature, 1e-5)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits per row (k <= 0 keeps all)."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, -math.inf)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches p (nucleus sampling)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop_sorted = probs.cumsum(-1) - probs >= p  # the mass before this token already reaches p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, -math.inf)


def sample(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) logits -> (B,) ids drawn from the softmax."""
    probs = logits.float().softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class GrammarMask:
    """Tracks which pitches sound in each row and forbids the events that cannot be right."""

    def __init__(self, batch_size: int, vocab_size: int, device: torch.device):
        self.sounding = torch.zeros(batch_size, 128, dtype=torch.bool, device=device)
        self.allowed = torch.ones(batch_size, vocab_size, dtype=torch.bool, device=device)
        self.allowed[:, PAD_ID] = False
        self.allowed[:, START_ID] = False
        self._refresh()

    def _refresh(self) -> None:
        self.allowed[:, NOTE_ON_OFFSET : NOTE_ON_OFFSET + 128] = ~self.sounding
        self.allowed[:, NOTE_OFF_OFFSET : NOTE_OFF_OFFSET + 128] = self.sounding

    def observe(self, tokens: torch.Tensor) -> None:
        """Update from (B,) or (B, T) ids, in order."""
        tokens = tokens.view(tokens.size(0), -1)
        for column in tokens.unbind(1):
            is_on = column < NOTE_OFF_OFFSET
            is_off = (column >= NOTE_OFF_OFFSET) & (column < TIME_SHIFT_OFFSET)
            pitch = (column % 128).unsqueeze(1)
            rows = torch.arange(column.size(0), device=column.device).unsqueeze(1)
            current = self.sounding.gather(1, pitch).squeeze(1)
            new = torch.where(is_on, True, torch.where(is_off, False, current))
            self.sounding[rows, pitch] = new.unsqueeze(1)
        self._refresh()

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.masked_fill(~self.allowed, -math.inf)


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 0.95  # 1.0 = off
    grammar: bool = True  # mask events that cannot be right
    # Release a note that has sounded this long (None = never). Past the context the sampler
    # slides its window and the model no longer sees old NOTE_ONs, so it would never end them:
    # without this guard the default model left ~13 notes per 30 s sample sounding for 10 s.
    # Real piano music holds 0.25% of its notes this long (ASAP + POP909 validation split).
    max_note_s: float | None = 6.0

    def __post_init__(self) -> None:
        if self.max_note_s is not None and not self.max_note_s > 0:
            raise ValueError(f"max_note_s must be > 0 or None, got {self.max_note_s}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")


def _shift_steps(tokens: torch.Tensor) -> torch.Tensor:
    is_shift = (tokens >= TIME_SHIFT_OFFSET) & (tokens < VELOCITY_OFFSET)
    return torch.where(is_shift, tokens - TIME_SHIFT_OFFSET + 1, 0)


class _Rows:
    """Per-row sampling state: grammar, music length so far, which rows are finished."""

    def __init__(self, history: torch.Tensor, settings: SamplingSettings, vocab_size: int,
                 max_seconds: float | None, generator: torch.Generator):
        B, device = history.size(0), history.device
        self.settings, self.generator = settings, generator
        self.grammar = GrammarMask(B, vocab_size, device) if settings.grammar else None
        if self.grammar is not None:
            self.grammar.observe(history[:, 1:])
        self.onset_step = torch.zeros(B, 128, dtype=torch.long, device=device)  # primer notes: 0
        self.max_note_steps = (None if settings.max_note_s is None or self.grammar is None
                               else int(round(settings.max_note_s * 1000 / STEP_MS)))
        self.done = torch.zeros(B, dtype=torch.bool, device=device)
        self.n_new = torch.zeros(B, dtype=torch.long, device=device)  # tokens each row keeps
        self.new_steps = torch.zeros(B, dtype=torch.long, device=device)
        self.max_steps = None if max_seconds is None else int(round(max_seconds * 1000 / STEP_MS))

    def draw(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, V) logits -> (B,) next ids; finished rows get PAD."""
        logits = apply_temperature(logits.float(), self.settings.temperature)
        if self.grammar is not None:
            logits = self.grammar.apply(logits)
        logits = top_p_filter(top_k_filter(logits, self.settings.top_k), self.settings.top_p)
        token = self._release_overdue(sample(logits, self.generator))
        token = torch.where(self.done, PAD_ID, token)
        self.n_new += ~self.done
        is_on = token < NOTE_OFF_OFFSET
        self.onset_step[is_on, token[is_on]] = self.new_steps[is_on]
        if self.grammar is not None:
            self.grammar.observe(token)
        self.new_steps += _shift_steps(token)
        self.done |= token == END_ID
        if self.max_steps is not None:
            self.done |= self.new_steps >= self.max_steps
        return token

    def _release_overdue(self, token: torch.Tensor) -> torch.Tensor:
        """Replace a row's draw by the NOTE_OFF of its longest-held note once that is overdue."""
        if self.max_note_steps is None:
            return token
        held = self.new_steps[:, None] - self.onset_step
        overdue = self.grammar.sounding & (held >= self.max_note_steps)
        if not bool(overdue.any()):
            return token
        oldest = torch.where(overdue, held, -1).argmax(1)
        return torch.where(overdue.any(1), NOTE_OFF_OFFSET + oldest, token)


@torch.no_grad()
def generate(model: GPT, primer: list[int] | np.ndarray | None = None, *,
             max_new_tokens: int = 1024, max_seconds: float | None = None,
             num_samples: int = 1, settings: SamplingSettings = SamplingSettings(),
             seed: int | None = None, progress: ProgressFn | None = None,
             static_shapes: bool | None = None, dtype: str | torch.dtype | None = None,
             ) -> list[np.ndarray]:
    """Continue `primer` (ids, START prepended if missing) into `num_samples` pieces at once.

    Each row stops at END, after `max_new_tokens`, or once its new music reaches `max_seconds`.
    Returns, per row, the primer plus the new ids (END kept if drawn), as int64 arrays.
    `static_shapes` (default: on for CUDA) attends over the whole cache each step so shapes never
    change; off, a CPU step reads only the filled part of the cache, which is faster in eager mode.
    `dtype` "int8" samples from a copy with int8 weights (about 1.7x faster on CPU, NLL within
    0.01%; see quantize.py and BENCHMARKS.md), "bfloat16" from a bf16 copy (for GPUs); None or
    "float32" uses the model as it is.
    """
    from .quantize import sampling_copy

    model = sampling_copy(model, dtype)
    device = model.wte.weight.device
    primer_ids = [int(t) for t in (primer if primer is not None else [])]
    if not primer_ids or primer_ids[0] != START_ID:
        primer_ids = [START_ID] + primer_ids
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**31, (1,))))
    history = torch.tensor(primer_ids, device=device).repeat(num_samples, 1)  # (B, T)
    rows = _Rows(history, settings, model.config.vocab_size, max_seconds, generator)
    static = device.type == "cuda" if static_shapes is None else static_shapes
    new_tokens: list[torch.Tensor] = []
    steps = decode_steps(model, history, max_new_tokens, rows.draw, static)
    for token in steps:
        new_tokens.append(token)
        if progress is not None:
            progress(len(new_tokens), max_new_tokens)
        if bool(rows.done.all()):
            steps.close()  # frees the cache now rather than at garbage collection
            break
    generated = (torch.stack(new_tokens, 1) if new_tokens else history[:, :0]).cpu().numpy()
    start = history[0].cpu().numpy()
    return [np.concatenate([start, row[:n]]) for row, n in zip(generated, rows.n_new.tolist(),
                                                               strict=True)]


def decode_steps(model: GPT, history: torch.Tensor, max_new_tokens: int,
                 draw: Callable[[torch.Tensor], torch.Tensor],
                 static_shapes: bool = False) -> Iterator[torch.Tensor]:
    """Prefill `history` (B, T), then yield up to `max_new_tokens` (B,) tokens from `draw`.

    `draw` turns (B, V) logits into (B,) ids. Past the context the most recent 3/4 of it is
    re-prefilled from position 0 (a sliding window), so any number of tokens can be made. The
    cache lives for the iteration only.
    """
    block_size = model.config.block_size
    keep = max(1, block_size * 3 // 4)
    window = history[:, -keep:] if history.size(1) > block_size else history
    # a cache no longer than the piece can get: short pieces never hold a full-context buffer
    capacity = min(block_size, window.size(1) + max_new_tokens)
    positions = torch.arange(capacity, device=history.device)
    tail: list[torch.Tensor] = []  # tokens drawn since `window` was prefilled
    model.setup_cache(history.size(0), capacity)
    try:
        logits, pos = _prefill(model, window), window.size(1)
        for i in range(max_new_tokens):
            if i > 0 and pos < capacity:  # one step at position pos
                attend = None if static_shapes else pos + 1
                logits = model(tail[-1][:, None], positions[pos : pos + 1], attend)[:, -1]
                pos += 1
            elif i > 0:  # the context is full: slide
                window = torch.cat([window, torch.stack(tail, 1)], 1)[:, -keep:]
                tail = []
                logits, pos = _prefill(model, window), window.size(1)
            token = draw(logits)
            tail.append(token)
            yield token
    finally:
        model.clear_cache()


def _prefill(model: GPT, window: torch.Tensor) -> torch.Tensor:
    """Fill the cache with `window` (B, T) from position 0; logits (B, V) for what follows."""
    positions = torch.arange(window.size(1), device=window.device)
    return model(window, positions, attend_len=window.size(1))[:, -1]
