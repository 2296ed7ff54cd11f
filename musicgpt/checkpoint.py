"""Checkpoints as safetensors + JSON, written atomically. Loading never unpickles anything.

A checkpoint folder holds:
    model.safetensors   weights (tied embedding stored once)
    config.json         the Config the weights belong to
    state.safetensors   optional: optimizer moments and RNG state, for --resume
    state.json          optional: step, optimizer hyper-parameters, best validation NLL, ...
Each file is written to a temporary name, then renamed; the folder is complete once
`config.json`, written last, is in place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from .config import Config
from .model import GPT
from .vocab import VOCAB_SIZE


def _replace(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)


def save_checkpoint(model: GPT, out_dir: str | Path, *, optimizer=None, state: dict | None = None,
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write weights, config and (optionally) training state to `out_dir`, atomically per file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if optimizer is not None or state is not None:
        tensors, opt_json = _optimizer_to_tensors(optimizer) if optimizer else ({}, None)
        tensors.update(extra_tensors or {})
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(tensors, str(out_dir / "state.safetensors.tmp"))
        _replace(out_dir / "state.safetensors.tmp", out_dir / "state.safetensors")
        payload = {**(state or {}), "optimizer": opt_json}
        (out_dir / "state.json.tmp").write_text(json.dumps(payload, indent=1))
        _replace(out_dir / "state.json.tmp", out_dir / "state.json")
    save_model(model, str(out_dir / "model.safetensors.tmp"))
    _replace(out_dir / "model.safetensors.tmp", out_dir / "model.safetensors")
    (out_dir / "config.json.tmp").write_text(model.config.to_json())
    _replace(out_dir / "config.json.tmp", out_dir / "config.json")
    return out_dir


def load_config(ckpt_dir: str | Path) -> Config:
    path = Path(ckpt_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt_dir} (missing config.json)")
    values = json.loads(path.read_text())
    if values.get("vocab_size") != VOCAB_SIZE:
        raise ValueError(f"checkpoint vocab_size {values.get('vocab_size')} != {VOCAB_SIZE}")
    return Config.from_dict(values)


def load_model_from_checkpoint(ckpt_dir: str | Path, device: str | torch.device = "cpu",
                               config: Config | None = None) -> GPT:
    """Rebuild the model from config.json and fill it from model.safetensors (eval mode)."""
    config = config or load_config(ckpt_dir)
    weights = Path(ckpt_dir) / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"no weights at {weights}")
    model = GPT(config)
    load_model(model, str(weights), strict=True, device=str(device))
    return model.to(device).eval()


def load_training_state(ckpt_dir: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    ckpt_dir = Path(ckpt_dir)
    state = json.loads((ckpt_dir / "state.json").read_text())
    tensors = load_file(str(ckpt_dir / "state.safetensors"))
    return state, tensors


def _optimizer_to_tensors(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, param_state in sd["state"].items():
        for key, value in param_state.items():
            if torch.is_tensor(value) and value.dim() > 0:
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = float(value)
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer, opt_json: dict, tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in opt_json["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = torch.tensor(value)
    optimizer.load_state_dict({"state": state, "param_groups": opt_json["param_groups"]})
