"""Attention maps -> note-to-note arcs. No Streamlit, no plotting.

Two halves:
- `attention_maps` runs one uncached pass of the model and collects each layer's per-head softmax
  through the layer's own `attention_weights(x)` (fused SDPA returns no weights). It hooks the
  input of every `block.attn`, so it works for any attention variant that offers that method.
- Pure functions map token positions to notes and attention rows to arcs.

Attribution rule (how attention on non-note events is credited to notes):
- a NOTE_ON token is its note;
- a VELOCITY token belongs to the NOTE_ON that follows it (it sets that note's loudness);
- a NOTE_OFF token belongs to the note it releases;
- a TIME_SHIFT token belongs to the most recent NOTE_ON before it (it measures the wait after it);
- START, END, PAD, and events before the first note belong to no note.
Note indices are those of `events.ids_to_arrays` (sorted by start, then pitch), so they match the
piano roll. A note is identified by (onset step, pitch): the decoder keeps one note per such pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .events import NoteArrays, ids_to_arrays
from .vocab import (
    END_ID,
    NOTE_OFF_OFFSET,
    PAD_ID,
    TIME_SHIFT_OFFSET,
    VELOCITY_OFFSET,
)

ATTRIBUTION_RULE = (
    "Attention on a non-note event is credited to a note: a velocity event to the note it "
    "introduces (the next note-on), a note-off to the note it releases, a time shift to the most "
    "recent note-on before it. START and events before the first note belong to no note."
)


@dataclass(frozen=True)
class NoteTokens:
    """Decoded notes plus, per token, the note it is attributed to."""

    notes: NoteArrays  # as ids_to_arrays decodes them: sorted by (start_step, pitch)
    note_pos: np.ndarray  # (n_notes,) position of each note's NOTE_ON token
    owner: np.ndarray  # (T,) note index each token is attributed to, -1 for none


@torch.no_grad()
def attention_maps(model: torch.nn.Module, ids) -> tuple[np.ndarray, int]:
    """Per-layer, per-head attention over the last (up to block_size) tokens.

    Returns (weights, offset): weights (n_layer, n_head, T, T) float32, rows = queries, where
    token t of the window is ids[offset + t]. One uncached forward; the model's cache is left off.
    """
    ids = np.asarray(ids, dtype=np.int64)
    offset = max(0, len(ids) - model.config.block_size)
    window = torch.as_tensor(ids[offset:], device=model.wte.weight.device).unsqueeze(0)
    collected: list[torch.Tensor] = []

    def _hook(module, args, kwargs):
        x = args[0] if args else kwargs["x"]
        collected.append(module.attention_weights(x)[0].float().cpu())

    model.clear_cache()
    handles = [block.attn.register_forward_pre_hook(_hook, with_kwargs=True)
               for block in model.blocks]
    try:
        model(window)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(collected).numpy(), offset


def ids_to_note_tokens(ids) -> NoteTokens:
    """Decode `ids` and attribute every token to a note by the rule in the module docstring."""
    ids = np.asarray(ids, dtype=np.int64)
    notes = ids_to_arrays(ids)
    on_note = _note_on_indices(ids, notes)
    owner = np.full(len(ids), -1, dtype=np.int64)
    pending: list[int] = []  # VELOCITY positions waiting for their NOTE_ON
    sounding: dict[int, int] = {}  # pitch -> note index
    last = -1
    for pos, token in enumerate(ids.tolist()):
        if token == END_ID:
            break
        if token < NOTE_OFF_OFFSET:
            note = on_note[pos]
            if note >= 0:
                owner[[*pending, pos]] = note
                pending, last = [], note
                sounding[token] = note
            else:  # a zero-length note the decoder dropped
                owner[pos] = last
        elif token < TIME_SHIFT_OFFSET:
            owner[pos] = sounding.pop(token - NOTE_OFF_OFFSET, last)
        elif token < VELOCITY_OFFSET:
            owner[pos] = last
        elif token < PAD_ID:
            pending.append(pos)
    owner[pending] = last  # velocity events after the last note
    note_pos = np.full(len(notes), -1, dtype=np.int64)
    has_note = on_note >= 0
    note_pos[on_note[has_note]] = np.flatnonzero(has_note)
    return NoteTokens(notes, note_pos, owner)


def _note_on_indices(ids: np.ndarray, notes: NoteArrays) -> np.ndarray:
    """(T,) decoded-note index of each NOTE_ON token, -1 for other tokens and dropped notes."""
    is_shift = (ids >= TIME_SHIFT_OFFSET) & (ids < VELOCITY_OFFSET)
    step = np.cumsum(np.where(is_shift, ids - TIME_SHIFT_OFFSET + 1, 0))
    ended = np.cumsum(ids == END_ID) > 0
    index_of = {(s, p): i for i, (s, p) in
                enumerate(zip(notes.start_step.tolist(), notes.pitch.tolist(), strict=True))}
    last_token: dict[tuple[int, int], int] = {}  # the decoder keeps the last onset of a pair
    for pos in np.flatnonzero((ids < NOTE_OFF_OFFSET) & (ids >= 0) & ~ended).tolist():
        last_token[(int(step[pos]), int(ids[pos]))] = pos
    on_note = np.full(len(ids), -1, dtype=np.int64)
    for key, pos in last_token.items():
        on_note[pos] = index_of.get(key, -1)
    return on_note


def note_weights(attention_row: np.ndarray, owner: np.ndarray, n_notes: int) -> np.ndarray:
    """Sum one query's attention over the tokens of each note: (..., T) -> (..., n_notes).

    `owner` covers the same T tokens as the row; weight on tokens owned by no note is dropped.
    """
    row = np.asarray(attention_row, dtype=np.float64)
    owned = owner >= 0
    onehot = np.zeros((len(owner), n_notes))
    onehot[np.flatnonzero(owned), owner[owned]] = 1.0
    return row @ onehot


@dataclass(frozen=True)
class Arc:
    head: int
    key_note: int  # the earlier note attended to
    weight: float  # attention mass on that note's tokens, 0..1


def query_arcs(maps: np.ndarray, offset: int, tokens: NoteTokens, layer: int, query_note: int,
               heads: list[int], top_n: int = 5, min_weight: float = 0.01) -> list[Arc]:
    """Arcs from `query_note` back to the `top_n` earlier notes each head attends to most.

    The query row is the note's NOTE_ON token (what the model looked at while reading that note);
    weight on the query note's own tokens is left out. Empty if the NOTE_ON is outside the window.
    """
    row_pos = int(tokens.note_pos[query_note]) - offset
    if row_pos < 0 or row_pos >= maps.shape[-1]:
        return []
    owner = tokens.owner[offset : offset + maps.shape[-1]]
    arcs: list[Arc] = []
    for head in heads:
        weights = note_weights(maps[layer, head, row_pos], owner, len(tokens.notes))
        weights[query_note] = 0.0
        for note in np.argsort(-weights, kind="stable")[:top_n].tolist():
            if weights[note] >= min_weight:
                arcs.append(Arc(head, note, float(weights[note])))
    return arcs


def notes_in_window(tokens: NoteTokens, offset: int, window_len: int) -> np.ndarray:
    """Indices of the notes whose NOTE_ON lies in the attention window (the valid queries)."""
    pos = tokens.note_pos
    return np.flatnonzero((pos >= offset) & (pos < offset + window_len))


def layer_heatmap(maps: np.ndarray, layer: int, start: int, stop: int) -> np.ndarray:
    """Heads-averaged attention of one layer for window tokens start..stop-1 (queries x keys)."""
    return maps[layer].mean(axis=0)[start:stop, start:stop]
