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
- START, END, PAD, any other special, and events before the first note belong to no note.
Note indices are those of `events.ids_to_arrays` (sorted by start, then pitch), so they match the
piano roll; the decoder itself says where each note's NOTE_ON is
(`events.ids_to_arrays_with_positions`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .events import NoteArrays, ids_to_arrays_with_positions
from .vocab import KIND, EventType, kind_of, note_pitch

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
    token t of the window is ids[offset + t]. One uncached forward.
    """
    ids = np.asarray(ids, dtype=np.int64)
    offset = max(0, len(ids) - model.config.block_size)
    window = torch.as_tensor(ids[offset:], device=model.device).unsqueeze(0)
    collected: list[torch.Tensor] = []

    def _hook(module, args, kwargs):
        x = args[0] if args else kwargs["x"]
        collected.append(module.attention_weights(x)[0].float().cpu())

    handles = [block.attn.register_forward_pre_hook(_hook, with_kwargs=True)
               for block in model.blocks]
    try:
        model(window)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(collected).numpy(), offset


_ON, _OFF, _SHIFT, _VELOCITY, _END = (KIND[etype] for etype in (
    EventType.NOTE_ON, EventType.NOTE_OFF, EventType.TIME_SHIFT, EventType.VELOCITY, EventType.END))


def ids_to_note_tokens(ids) -> NoteTokens:
    """Decode `ids` and attribute every token to a note by the rule in the module docstring."""
    ids = np.asarray(ids, dtype=np.int64)
    notes, note_pos = ids_to_arrays_with_positions(ids)
    on_note = np.full(len(ids), -1, dtype=np.int64)  # decoded note of each NOTE_ON token
    on_note[note_pos] = np.arange(len(notes))
    return NoteTokens(notes, note_pos, _owners(ids, on_note))


def _owners(ids: np.ndarray, on_note: np.ndarray) -> np.ndarray:
    """(T,) note index each token is attributed to, -1 for none."""
    owner = np.full(len(ids), -1, dtype=np.int64)
    pending: list[int] = []  # VELOCITY positions waiting for their NOTE_ON
    sounding: dict[int, int] = {}  # pitch -> note index
    last = -1
    for pos, (kind, pitch) in enumerate(zip(kind_of(ids).tolist(), note_pitch(ids).tolist(),
                                            strict=True)):
        if kind == _END:
            break
        if kind == _ON:
            note = int(on_note[pos])
            if note >= 0:
                owner[[*pending, pos]] = note
                pending, last = [], note
                sounding[pitch] = note
            else:  # a zero-length note the decoder dropped
                owner[pos] = last
        elif kind == _OFF:
            owner[pos] = sounding.pop(pitch, last)
        elif kind == _SHIFT:
            owner[pos] = last
        elif kind == _VELOCITY:
            pending.append(pos)
    owner[pending] = last  # velocity events after the last note
    return owner


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


def default_query(maps: np.ndarray, offset: int, tokens: NoteTokens, layer: int,
                  queries: np.ndarray, top_n: int = 4, edge: float = 0.15) -> int:
    """A query note whose arcs are worth seeing: among the window's notes away from its edges
    (the first and last `edge` of them, so not the last note at the right edge, nor an early note
    with little to look back at), the one whose heads put the most attention on earlier notes,
    summed over each head's `top_n` strongest (what the arcs draw)."""
    queries = np.asarray(queries)
    if len(queries) < 3:
        return int(queries[-1])
    cut = int(len(queries) * edge)
    candidates = queries[max(1, cut) : len(queries) - max(1, cut)]
    if len(candidates) == 0:
        candidates = queries[1:-1]
    owner = tokens.owner[offset : offset + maps.shape[-1]]
    scores = []
    for note in candidates.tolist():
        row = int(tokens.note_pos[note]) - offset
        weights = note_weights(maps[layer, :, row], owner, len(tokens.notes))  # (heads, notes)
        weights[:, note:] = 0.0  # earlier notes only (the query itself and later starts out)
        scores.append(np.sort(weights, axis=1)[:, -top_n:].sum())
    return int(candidates[int(np.argmax(scores))])
