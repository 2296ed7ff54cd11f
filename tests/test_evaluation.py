"""NLL evaluation: the sliding window scores each token once and matches plain forwards; CLI."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import write_midi

from musicgpt.cli import main
from musicgpt.evaluation import evaluate_pieces, plan_windows, score_pieces
from musicgpt.vocab import END_ID, START_ID


def _piece(n_tokens: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([[START_ID], rng.integers(0, 388, n_tokens - 2), [END_ID]])


@pytest.mark.parametrize("n_tokens, block_size, stride", [
    (2, 8, 4), (9, 8, 4), (10, 8, 4), (11, 8, 4), (100, 8, 4), (100, 8, 1), (100, 8, 8),
    (101, 16, 5), (1000, 64, 32),
])
def test_windows_score_every_token_once(n_tokens, block_size, stride):
    windows = plan_windows(n_tokens, block_size, stride)
    scored = [pos for w in windows for pos in range(w.first_scored, w.start + w.length + 1)]
    assert sorted(scored) == list(range(1, n_tokens))
    for w in windows:
        assert w.length <= block_size and w.start + w.length + 1 <= n_tokens
        assert w.first_scored > w.start  # a scored target always has its input in the window


def test_windows_give_each_late_token_at_least_block_minus_stride_context():
    windows = plan_windows(500, 64, 32)
    for w in windows[1:]:
        assert w.first_scored - 1 - w.start >= 64 - 32


def test_piece_within_context_equals_one_forward(tiny_model):
    model, piece = tiny_model, _piece(60)  # tiny: block_size 64
    x = torch.from_numpy(piece.astype(np.int64))
    expected = F.cross_entropy(model(x[None, :-1])[0], x[1:], reduction="sum").item()
    assert score_pieces(model, [piece])[0] == pytest.approx(expected, rel=1e-5)


def test_stride_one_gives_each_token_its_full_left_context(make_tiny_model):
    """Against a brute force: one forward per target over the block_size tokens before it."""
    model, piece = make_tiny_model(1), _piece(90, seed=1)
    x = torch.from_numpy(piece.astype(np.int64))
    expected = 0.0
    for j in range(1, len(piece)):
        context = x[max(0, j - 64) : j]
        expected += F.cross_entropy(model(context[None])[0, -1:], x[j : j + 1]).item()
    assert score_pieces(model, [piece], stride=1)[0] == pytest.approx(expected, rel=1e-5)


def test_batching_and_order_do_not_change_per_piece_totals(make_tiny_model):
    model = make_tiny_model(2)
    pieces = [_piece(n, seed=n) for n in (3, 40, 65, 66, 200, 17)]
    one = score_pieces(model, pieces, batch_size=1)
    many = score_pieces(model, pieces, batch_size=4)
    np.testing.assert_allclose(one, many, rtol=1e-5)
    result = evaluate_pieces(model, pieces)
    assert result.tokens == sum(len(p) - 1 for p in pieces)
    assert result.nll_per_token == pytest.approx(one.sum() / result.tokens, rel=1e-5)


def _midi_folder(tmp_path):
    folder = tmp_path / "midi"
    write_midi(folder / "a.mid", [(60, 80, 0.0, 0.5), (64, 80, 0.5, 1.0), (67, 90, 1.0, 2.0)])
    write_midi(folder / "sub" / "b.MIDI", [(48 + i % 24, 70, i * 0.1, i * 0.1 + 0.3)
                                           for i in range(60)])  # > 64 tokens: sliding window
    (folder / "empty.mid").write_bytes(b"")
    (folder / "garbage.mid").write_bytes(b"this is not a MIDI file at all")
    (folder / "notes.txt").write_text("ignored: not a MIDI suffix")
    return folder


def test_evaluate_cli_json_skips_bad_files(tiny_checkpoint, tmp_path, capsys):
    ckpt = tiny_checkpoint
    folder = _midi_folder(tmp_path)
    assert main(["evaluate", "--checkpoint", str(ckpt), "--midi-dir", str(folder), "--json",
                 "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"nll_per_token", "nll_per_second", "files", "tokens", "seconds",
                           "skipped"}
    assert result["files"] == 2
    assert {s["path"] for s in result["skipped"]} == {"empty.mid", "garbage.mid"}
    assert all(s["reason"] for s in result["skipped"])
    # a.mid: 3 notes -> 3 NOTE_ON + 3 NOTE_OFF + velocity changes + shifts + END, all > 6
    assert result["tokens"] > 6 + 120 and result["seconds"] == pytest.approx(2.0 + 6.2, abs=0.05)
    assert 0 < result["nll_per_token"] < 10
    assert result["nll_per_second"] == pytest.approx(
        result["nll_per_token"] * result["tokens"] / result["seconds"], rel=1e-3)


def test_evaluate_cli_text_and_errors(tiny_checkpoint, tmp_path, capsys):
    ckpt = tiny_checkpoint
    folder = _midi_folder(tmp_path)
    assert main(["evaluate", "--checkpoint", str(ckpt), "--midi-dir", str(folder),
                 "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "nats/token" in out and "skipped garbage.mid" in out
    assert "for reference: the shipped model scores 2.1423 nats/token" in out  # MODEL_CARD.md
    assert main(["evaluate", "--checkpoint", str(ckpt), "--midi-dir", str(tmp_path / "nope")]) == 2
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none"), "--midi-dir",
                 str(folder)]) == 2
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.mid").write_bytes(b"MThd")
    assert main(["evaluate", "--checkpoint", str(ckpt), "--midi-dir", str(tmp_path / "bad"),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("musicgpt: error:") == 3 and "Traceback" not in err


def test_the_reference_point_is_the_model_cards():
    from conftest import REPO_ROOT

    from musicgpt.evaluation import SHIPPED_VALIDATION_NLL

    card = (REPO_ROOT / "MODEL_CARD.md").read_text(encoding="utf-8")
    per_token, per_second = SHIPPED_VALIDATION_NLL
    assert f"| **this model** | **{per_token:.4f} (" in card and f"**{per_second:.1f}**" in card
