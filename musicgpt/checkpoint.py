"""Checkpoints as safetensors + JSON, written atomically. Loading never unpickles anything.

A checkpoint folder holds:
    model.safetensors   weights (tied embedding stored once)
    config.json         the Config the weights belong to
    state.safetensors   optional: optimizer moments and RNG state, for --resume
    state.json          optional: step, optimizer hyper-parameters, best validation NLL, ...
The files are written into a fresh sibling folder `NAME.tmp`, which then replaces `NAME` by two
renames (`NAME` -> `NAME.old`, `NAME.tmp` -> `NAME`), so weights and training state always belong
to the same step. A crash between the renames leaves `NAME.old`, which loading falls back to.
Other files a user keeps in the folder (a model card, say) are carried over.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from .config import Config
from .model import GPT
from .vocab import BASE_VOCAB_SIZE, VOCAB_SIZE

CHECKPOINT_FILES = ("model.safetensors", "config.json", "state.safetensors", "state.json")


def save_checkpoint(model: GPT, out_dir: str | Path, *, optimizer=None, state: dict | None = None,
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write weights, config and (optionally) training state to `out_dir` as one atomic swap."""
    out_dir = Path(out_dir)
    tmp, old = out_dir.with_name(out_dir.name + ".tmp"), out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if optimizer is not None or state is not None:
        tensors, opt_json = _optimizer_to_tensors(optimizer) if optimizer else ({}, None)
        tensors.update(extra_tensors or {})
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**(state or {}), "optimizer": opt_json},
                                                   indent=1))
    save_model(model, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(model.config.to_json())
    _swap_in(tmp, out_dir, old)
    return out_dir


def _swap_in(tmp: Path, out_dir: Path, old: Path) -> None:
    """Replace `out_dir` by the complete folder `tmp`, keeping files that are not ours."""
    if out_dir.is_dir():
        for path in out_dir.iterdir():
            if path.name not in CHECKPOINT_FILES and path.is_file():
                shutil.copy2(path, tmp / path.name)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def checkpoint_dir(path: str | Path) -> Path:
    """`path`, or `path.old` when a save was cut off between its two renames."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if not (path / "config.json").is_file() and (old / "config.json").is_file():
        return old
    return path


def has_weights(path: str | Path) -> bool:
    """Whether `path` (or the `.old` a cut-off save left) holds a config and weights to load."""
    folder = checkpoint_dir(path)
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def has_training_state(path: str | Path) -> bool:
    """Whether `path` (or its `.old`) holds a training state that `--resume` can continue from."""
    return (checkpoint_dir(path) / "state.json").is_file()


def load_config(ckpt_dir: str | Path) -> Config:
    """The Config stored with a checkpoint; refuses a vocabulary other than ours."""
    path = checkpoint_dir(ckpt_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt_dir} (missing config.json)")
    values = json.loads(path.read_text())
    if values.get("vocab_size") not in (BASE_VOCAB_SIZE, VOCAB_SIZE):
        raise ValueError(f"checkpoint vocab_size {values.get('vocab_size')} is neither "
                         f"{VOCAB_SIZE} nor {BASE_VOCAB_SIZE} (the vocabulary before FIM)")
    return Config.from_dict(values)


def load_model_from_checkpoint(ckpt_dir: str | Path, device: str | torch.device = "cpu",
                               config: Config | None = None) -> GPT:
    """Rebuild the model from config.json and fill it from model.safetensors (eval mode)."""
    model = GPT(config or load_config(ckpt_dir))
    load_weights(model, ckpt_dir, device)
    return model.to(device).eval()


def load_weights(model: GPT, ckpt_dir: str | Path, device: str | torch.device = "cpu") -> None:
    """Fill `model` in place from a checkpoint's model.safetensors (every tensor must match)."""
    weights = checkpoint_dir(ckpt_dir) / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"no weights at {weights}")
    load_model(model, str(weights), strict=True, device=str(device))


def load_sampling_model(ckpt_dir: str | Path, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype | None = "auto") -> GPT:
    """The model to sample from: loaded, then quantised once, in place (see quantize.py).

    Quantising at load time, not in `generate`, makes every later generation start at once (the
    app and the CLI load once and sample many times). "auto" is int8 weights on a CPU and the
    checkpoint's own weights elsewhere; "float32" is `load_model_from_checkpoint` itself. Use the
    plain float32 model for training, evaluation and attention maps.
    """
    from .quantize import quantize_for_sampling, sampling_dtype

    name = sampling_dtype(dtype, device)  # an unknown dtype fails before the weights are read
    return quantize_for_sampling(load_model_from_checkpoint(ckpt_dir, device), name)


def load_training_state(ckpt_dir: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(state.json contents, state.safetensors tensors) of a checkpoint saved during training."""
    ckpt_dir = checkpoint_dir(ckpt_dir)
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
    """Inverse of `_optimizer_to_tensors`: moments from safetensors, scalars from JSON."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in opt_json["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = torch.tensor(value)
    # JSON turned tuples such as `betas` into lists; give the optimizer back what it saved
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
              for g in opt_json["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
