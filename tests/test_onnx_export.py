"""`musicgpt export --onnx`: the ONNX decoder (Optimum's layout) decodes step by step with the
logits of torch, for absolute and relative attention; the README's onnxruntime example runs
without torch. Skipped where onnxruntime is not installed (`pip install -e ".[onnx]"`)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from musicgpt.cli import main
from musicgpt.onnx_export import io_names

ort = pytest.importorskip("onnxruntime")
README = Path(__file__).resolve().parents[1] / "README.md"


def _session(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _decode(session, config: dict, ids: np.ndarray, prefill: int) -> np.ndarray:
    """Logits (B, T, V): a prefill of `prefill` tokens, then one token per run."""
    inputs, _ = io_names(config["n_layer"])
    B = ids.shape[0]
    feeds = {name: np.zeros((B, config["n_head"], 0, config["onnx"]["head_dim"]), np.float32)
             for name in inputs[2:]}
    chunks = [(0, prefill)] + [(p, p + 1) for p in range(prefill, ids.shape[1])]
    logits = []
    for start, end in chunks:
        feeds["input_ids"] = ids[:, start:end]
        feeds["position_ids"] = np.tile(np.arange(start, end), (B, 1))
        out = session.run(None, feeds)
        logits.append(out[0])
        feeds.update(zip(inputs[2:], out[1:], strict=True))
    return np.concatenate(logits, 1)


@pytest.mark.parametrize("attention", ["absolute", "relative"])
def test_onnx_decoder_matches_torch_step_by_step(make_tiny_model, tmp_path, attention):
    from musicgpt.checkpoint import save_checkpoint

    model = make_tiny_model(seed=5, attention=attention)
    save_checkpoint(model, tmp_path / "ckpt")
    assert main(["export", "--onnx", str(tmp_path / "onnx"), "--checkpoint",
                 str(tmp_path / "ckpt")]) == 0
    config = json.loads((tmp_path / "onnx" / "config.json").read_text())
    assert config["onnx"]["opset"] >= 17 and config["attention"] == attention
    assert json.loads((tmp_path / "onnx" / "vocab.json").read_text())["0"].startswith("NOTE_ON")
    session = _session(tmp_path / "onnx" / "model.onnx")
    inputs, outputs = io_names(model.config.n_layer)
    assert [i.name for i in session.get_inputs()] == inputs
    assert [o.name for o in session.get_outputs()] == outputs
    ids = torch.randint(0, 380, (2, model.config.block_size),
                        generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(ids).numpy()
    got = _decode(session, config, ids.numpy(), 9)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_readme_onnx_example_writes_a_piece_without_torch(tiny_checkpoint, tmp_path):
    assert main(["export", "--onnx", str(tmp_path / "musicgpt_onnx"), "--checkpoint",
                 str(tiny_checkpoint)]) == 0
    text = README.read_text()
    code = re.search(r"## ONNX\n.*?```python\n(.*?)```", text, re.S).group(1)
    code = code.replace("range(300)", "range(60)")  # the tiny model's context is 64
    check = "\nimport sys\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    done = subprocess.run([sys.executable, "-c", code + check], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "onnx.mid").stat().st_size > 0


def test_export_asks_for_a_format(tiny_checkpoint, capsys):
    assert main(["export", "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "--onnx" in capsys.readouterr().err
