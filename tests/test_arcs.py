"""Attention maps from the model, the token -> note attribution rule, and arcs (musicgpt.arcs)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from musicgpt.arcs import (
    attention_maps,
    ids_to_note_tokens,
    layer_heatmap,
    note_weights,
    notes_in_window,
    query_arcs,
)
from musicgpt.events import ids_to_arrays
from musicgpt.vocab import START_ID, VOCAB_SIZE, name_to_id


def _ids(names: str) -> np.ndarray:
    return np.array([name_to_id(n) for n in names.split()], dtype=np.int64)


# START V64 C4 +100ms E4 +200ms offC4 V96 G4 +300ms offE4 offG4
PIECE = _ids("START VELOCITY_64 NOTE_ON_C4 TIME_SHIFT_100ms NOTE_ON_E4 TIME_SHIFT_200ms "
             "NOTE_OFF_C4 VELOCITY_96 NOTE_ON_G4 TIME_SHIFT_300ms NOTE_OFF_E4 NOTE_OFF_G4")


def test_note_tokens_follow_the_attribution_rule():
    tokens = ids_to_note_tokens(PIECE)
    assert tokens.notes.pitch.tolist() == [60, 64, 67]
    assert tokens.note_pos.tolist() == [2, 4, 8]
    # START none; V64->C4; C4; shift->C4; E4; shift->E4; offC4->C4; V96->G4; G4; shift->G4;
    # offE4->E4; offG4->G4
    assert tokens.owner.tolist() == [-1, 0, 0, 0, 1, 1, 0, 2, 2, 2, 1, 2]


def test_note_indices_match_the_decoder_when_a_chord_is_written_out_of_pitch_order():
    ids = _ids("START NOTE_ON_G4 NOTE_ON_C4 TIME_SHIFT_500ms NOTE_OFF_G4 NOTE_OFF_C4")
    tokens = ids_to_note_tokens(ids)
    assert tokens.notes.pitch.tolist() == ids_to_arrays(ids).pitch.tolist() == [60, 67]
    assert tokens.note_pos.tolist() == [2, 1]
    assert tokens.owner.tolist() == [-1, 1, 0, 0, 1, 0]


def test_a_restruck_pitch_in_one_step_keeps_the_later_onset_like_the_decoder():
    ids = _ids("START NOTE_ON_C4 NOTE_ON_C4 TIME_SHIFT_100ms NOTE_OFF_C4")
    tokens = ids_to_note_tokens(ids)
    assert len(tokens.notes) == len(ids_to_arrays(ids)) == 1
    assert tokens.note_pos.tolist() == [2]
    assert tokens.owner.tolist() == [-1, -1, 0, 0, 0]


def test_tokens_after_end_and_trailing_velocities():
    ids = _ids("START NOTE_ON_C4 TIME_SHIFT_100ms VELOCITY_32 END NOTE_ON_D4")
    tokens = ids_to_note_tokens(ids)
    assert len(tokens.notes) == 1
    assert tokens.owner.tolist() == [-1, 0, 0, 0, -1, -1]


def test_attention_maps_are_causal_distributions(tiny_model):
    maps, offset = attention_maps(tiny_model, PIECE)
    n = len(PIECE)
    assert offset == 0 and maps.shape == (2, 2, n, n)
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(maps, k=1) == 0)


def test_attention_maps_equal_the_weights_recomputed_layer_by_layer(tiny_model):
    maps, _ = attention_maps(tiny_model, PIECE)
    idx = torch.as_tensor(PIECE).unsqueeze(0)
    with torch.no_grad():
        x = tiny_model.wte(idx) + tiny_model.wpe(torch.arange(len(PIECE)))
        for layer, block in enumerate(tiny_model.blocks):
            expected = block.attn.attention_weights(block.ln_1(x))[0].numpy()
            np.testing.assert_allclose(maps[layer], expected, atol=1e-6)
            x = block(x)


def test_attention_maps_cover_the_last_block_and_leave_no_hooks(tiny_model):
    ids = np.concatenate([[START_ID], np.tile(PIECE[1:], 10)])  # 111 tokens > block_size 64
    maps, offset = attention_maps(tiny_model, ids)
    assert maps.shape[-1] == 64 and offset == len(ids) - 64
    assert all(not block.attn._forward_pre_hooks for block in tiny_model.blocks)


def test_attention_maps_work_with_relative_attention(make_tiny_model):
    model = make_tiny_model(attention="relative")
    maps, offset = attention_maps(model, PIECE)
    assert maps.shape == (2, 2, len(PIECE), len(PIECE)) and offset == 0
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)


def test_note_weights_sum_each_notes_tokens():
    owner = np.array([-1, 0, 0, 1, 1, 0])
    row = np.array([0.1, 0.2, 0.3, 0.15, 0.05, 0.2])
    np.testing.assert_allclose(note_weights(row, owner, 3), [0.7, 0.2, 0.0])


def _one_hot_maps(n_tokens: int, query_pos: int, weights: dict[int, float]) -> np.ndarray:
    maps = np.zeros((1, 2, n_tokens, n_tokens))
    for key_pos, weight in weights.items():
        maps[0, 0, query_pos, key_pos] = weight
    maps[0, 1, query_pos, 0] = 1.0  # head 1 looks only at START (no note)
    return maps


def test_query_arcs_point_back_to_the_strongest_earlier_notes():
    tokens = ids_to_note_tokens(PIECE)
    # query G4 (token 8): 0.5 on C4's note-off (token 6), 0.3 on E4 (token 4), 0.2 on its velocity
    maps = _one_hot_maps(len(PIECE), 8, {6: 0.5, 4: 0.3, 7: 0.2})
    arcs = query_arcs(maps, 0, tokens, layer=0, query_note=2, heads=[0, 1], top_n=5)
    assert [(a.head, a.key_note) for a in arcs] == [(0, 0), (0, 1)]
    assert [round(a.weight, 6) for a in arcs] == [0.5, 0.3]
    top_one = query_arcs(maps, 0, tokens, layer=0, query_note=2, heads=[0], top_n=1)
    assert [a.key_note for a in top_one] == [0]


def test_query_outside_the_window_has_no_arcs():
    tokens = ids_to_note_tokens(PIECE)
    maps = np.full((1, 1, 6, 6), 1 / 6)  # window = tokens 6..11
    assert query_arcs(maps, 6, tokens, layer=0, query_note=0, heads=[0]) == []
    assert notes_in_window(tokens, 6, 6).tolist() == [2]


def test_layer_heatmap_averages_heads_over_the_window():
    maps = np.arange(2 * 3 * 4 * 4, dtype=float).reshape(2, 3, 4, 4)
    heat = layer_heatmap(maps, 1, 1, 3)
    np.testing.assert_allclose(heat, maps[1].mean(0)[1:3, 1:3])


@settings(derandomize=True, deadline=None, max_examples=100)
@given(st.lists(st.integers(-2, VOCAB_SIZE + 2), max_size=120))
def test_each_note_owns_its_note_on_token_whatever_the_ids(ids):
    tokens = ids_to_note_tokens(ids)
    assert len(tokens.notes) == len(ids_to_arrays(ids)) == len(tokens.note_pos)
    assert tokens.owner[tokens.note_pos].tolist() == list(range(len(tokens.notes)))
    assert ((tokens.owner >= -1) & (tokens.owner < len(tokens.notes))).all()
