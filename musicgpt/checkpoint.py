"""Checkpoints as safetensors + JSON, written atomically. Loading never unpickles anything.

A checkpoint folder holds:
    model.safetensors   weights (tied embedding stored once)
    config.json         the Config the weights belong to
    state.safetensors   optional: optimizer moments and RNG state, for --resume
    state.json          optional: step, optimizer hyper-parameters, best validation NLL, ...
The files are written into a fresh sibling folder `NAME.tmp`, which then replaces `NAME` by two
renames (`NAME` -> `NAME.old`, `NAME.tmp` -> `NAME`), so weights and training state always belong
to the same step. A crash between the renames leaves `NAME.old`, which loading falls back to.
Other files a user keeps in the folder (a model card, say) are carried over. A save that fails
(full or read-only disk) removes `NAME.tmp`, leaves `NAME` as it was and raises
`files.WriteError` naming the folder.

Loading checks before it spends memory: config.json must be a JSON object of valid fields
(`Config` refuses absurd sizes), and the tensor names, shapes, dtypes and byte ranges in
model.safetensors' header must be what that config builds, before the model is allocated;
weights with NaN or inf are refused after reading. Each problem is a `CheckpointError` (a
ValueError) whose one-line message names the file.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from .checkpoint_paths import checkpoint_dir, has_training_state, has_weights  # noqa: F401 (re-exported)
from .config import Config, loads_json
from .files import make_readable, remove, writing
from .model import GPT
from .vocab import BASE_VOCAB_SIZE, VOCAB_SIZE

CHECKPOINT_FILES = ("model.safetensors", "config.json", "state.safetensors", "state.json")


def save_checkpoint(model: GPT, out_dir: str | Path, *, optimizer=None, state: dict | None = None,
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write weights, config and (optionally) training state to `out_dir` as one atomic swap."""
    out_dir = Path(out_dir)
    tmp, old = out_dir.with_name(out_dir.name + ".tmp"), out_dir.with_name(out_dir.name + ".old")
    with writing(out_dir, tmp):
        remove(tmp)
        tmp.mkdir(parents=True)
        if optimizer is not None or state is not None:
            _save_state(tmp, optimizer, state, extra_tensors)
        save_model(model, str(tmp / "model.safetensors"), metadata=_architecture(model.config))
        make_readable(tmp / "model.safetensors")
        (tmp / "config.json").write_text(model.config.to_json())
        _swap_in(tmp, out_dir, old)
    return out_dir


def _save_state(folder: Path, optimizer, state: dict | None,
                extra_tensors: dict[str, torch.Tensor] | None) -> None:
    tensors, opt_json = _optimizer_to_tensors(optimizer) if optimizer else ({}, None)
    tensors.update(extra_tensors or {})
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(tensors, str(folder / "state.safetensors"))
    make_readable(folder / "state.safetensors")
    (folder / "state.json").write_text(json.dumps({**(state or {}), "optimizer": opt_json},
                                                  indent=1))


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


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


class WeightsMismatchError(CheckpointError, RuntimeError):
    """Weights whose tensors are not the ones the config builds (a RuntimeError too, as torch's
    load_state_dict raised before the header was checked first)."""


def load_config(ckpt_dir: str | Path) -> Config:
    """The Config stored with a checkpoint, checked field by field (CheckpointError naming
    config.json otherwise); refuses a vocabulary other than ours."""
    path = checkpoint_dir(ckpt_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt_dir} (missing config.json)")
    try:
        values = loads_json(path.read_text())
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(values, dict):
        raise CheckpointError(f"{path}: not a JSON object of config fields")
    if values.get("vocab_size") not in (BASE_VOCAB_SIZE, VOCAB_SIZE):
        raise CheckpointError(f"{path}: checkpoint vocab_size {values.get('vocab_size')!r} is "
                              f"neither {VOCAB_SIZE} nor {BASE_VOCAB_SIZE} (the vocabulary "
                              f"before FIM)")
    try:
        return Config.from_dict(values)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def load_model_from_checkpoint(ckpt_dir: str | Path, device: str | torch.device = "cpu",
                               config: Config | None = None) -> GPT:
    """Rebuild the model from config.json and fill it from model.safetensors (eval mode).

    The weights file's header is checked against the config before the model is built."""
    config = config or load_config(ckpt_dir)
    check_weights_file(_weights_path(ckpt_dir), config)
    model = GPT(config)
    load_weights(model, ckpt_dir, device)
    return model.to(device).eval()


def _weights_path(ckpt_dir: str | Path) -> Path:
    weights = checkpoint_dir(ckpt_dir) / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"no weights at {weights}")
    return weights


def load_weights(model: GPT, ckpt_dir: str | Path, device: str | torch.device = "cpu") -> None:
    """Fill `model` in place from a checkpoint's model.safetensors (every tensor must match;
    CheckpointError naming the file otherwise, NaN and inf included)."""
    weights = _weights_path(ckpt_dir)
    check_weights_file(weights, model.config)
    try:
        load_model(model, str(weights), strict=True, device=str(device))
    except (OSError, RuntimeError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"{weights}: {_first_line(exc)}") from exc
    bad = next((name for name, p in model.named_parameters()
                if not bool(torch.isfinite(p).all())), None)
    if bad is not None:
        raise CheckpointError(f"{weights}: tensor {bad} holds NaN or inf values")


MAX_HEADER_BYTES = 100_000_000  # a safetensors header is JSON of tensor names and shapes
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


# The fields that decide what the weights compute, stored in model.safetensors' metadata so a
# config.json edited afterwards (n_head changed, same tensor shapes) is caught at load.
ARCHITECTURE_FIELDS = ("vocab_size", "n_layer", "n_head", "n_embd", "block_size", "attention")


def _architecture(config: Config) -> dict[str, str]:
    return {f"musicgpt.{name}": str(getattr(config, name)) for name in ARCHITECTURE_FIELDS}


def check_weights_file(path: str | Path, config: Config) -> None:
    """Check model.safetensors against `config` from its header alone, without allocating the
    model: a safetensors file, not cut short, holding exactly the tensors (names, shapes, float
    dtypes) that `config` builds, saved (where its metadata says) for the same architecture.
    CheckpointError naming the file otherwise."""
    path = Path(path)
    header, metadata = _read_header(path)
    expected = expected_tensors(config)
    unexpected = sorted(set(header) - {name for group in expected for name in group})
    if unexpected:
        raise WeightsMismatchError(f"{path}: tensor {unexpected[0]} is not part of the model "
                                   f"config.json describes ({config.short()})")
    for names, shape in expected.items():
        present = [name for name in names if name in header]
        if not present:
            raise WeightsMismatchError(f"{path}: tensor {names[0]} is missing")
        for name in present:
            found = tuple(header[name]["shape"])
            if found != shape:
                raise WeightsMismatchError(f"{path}: tensor {name} has shape {list(found)}, "
                                           f"the config ({config.short()}) needs {list(shape)}")
    _check_architecture(path, metadata, config)


def expected_tensors(config: Config) -> dict[tuple[str, ...], tuple[int, ...]]:
    """(names of one tensor: tied weights have several) -> shape, for the model `config`
    builds, found on the meta device: nothing is allocated."""
    with torch.device("meta"):
        model = GPT(config)
    groups: dict[int, tuple[list[str], tuple[int, ...]]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), ([], tuple(tensor.shape)))[0].append(name)
    return {tuple(names): shape for names, shape in groups.values()}


def _check_architecture(path: Path, metadata, config: Config) -> None:
    """Refuse weights whose metadata names another architecture than `config` (weights saved
    before the metadata, or by other tools, carry none and pass)."""
    stored = _architecture(config)
    if not isinstance(metadata, dict):
        return
    for key, value in stored.items():
        if key in metadata and metadata[key] != value:
            name = key.split(".", 1)[1]
            raise WeightsMismatchError(f"{path}: the weights were saved with {name} = "
                                       f"{metadata[key]}, config.json says {value}")


def read_safetensors_header(path: str | Path) -> dict[str, dict]:
    """Tensor name -> {"dtype", "shape", "data_offsets"} of a safetensors file, each entry
    checked to lie inside the file; CheckpointError naming the file otherwise."""
    return _read_header(path)[0]


def _read_header(path: str | Path) -> tuple[dict[str, dict], dict | None]:
    """(read_safetensors_header, the file's __metadata__ or None)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < 8:
                raise CheckpointError(f"{path}: {'empty file' if size == 0 else 'truncated'} "
                                      f"({size} bytes), not a safetensors file")
            length = int.from_bytes(handle.read(8), "little")
            if length > min(size - 8, MAX_HEADER_BYTES):
                raise CheckpointError(f"{path}: not a safetensors file, or truncated (its "
                                      f"header would be {length:,} bytes of {size:,})")
            raw = handle.read(length)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
    try:
        header = loads_json(raw)
    except ValueError as exc:
        raise CheckpointError(f"{path}: not a safetensors file (bad header: {exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (its header is not an object)")
    metadata = header.pop("__metadata__", None)
    for name, info in header.items():
        _check_entry(path, name, info, size - 8 - length)
    return header, metadata


def _check_entry(path: Path, name: str, info, data_bytes: int) -> None:
    """One header entry: a float dtype, a shape, and a byte range of that size in the file."""
    try:
        dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        numel = math.prod(int(d) for d in shape)
        ok = all(isinstance(d, int) and d >= 0 for d in (*shape, begin, end))
    except (TypeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a safetensors file (bad entry for {name})") from exc
    if dtype not in _DTYPE_BYTES:
        raise CheckpointError(f"{path}: tensor {name} has dtype {dtype}, not a float type")
    if not ok or end - begin != numel * _DTYPE_BYTES[dtype]:
        raise CheckpointError(f"{path}: not a safetensors file (bad entry for {name})")
    if end > data_bytes:
        raise CheckpointError(f"{path}: truncated: tensor {name} needs bytes up to {end:,} of "
                              f"the data, the file holds {data_bytes:,}")


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def load_sampling_model(ckpt_dir: str | Path, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype | None = "auto") -> GPT:
    """The model to sample from: loaded, then quantised once, in place (see quantize.py).

    Quantising at load time, not in `generate`, makes every later generation start at once (the
    app and the CLI load once and sample many times). "auto" is int8 weights on a CPU and the
    checkpoint's own weights elsewhere; "float32" is `load_model_from_checkpoint` itself. Use the
    plain float32 model for training, evaluation and attention maps.

    Loads on one torch thread (the caller's count is given back): its ops are small, and with
    two threads each waits for a core that another process may hold (Xeon, 2 cores, the other
    busy: 0.8-1.5 s on two threads, 0.09 s on one).
    """
    from .quantize import quantize_for_sampling, sampling_dtype

    name = sampling_dtype(dtype, device)  # an unknown dtype fails before the weights are read
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return quantize_for_sampling(load_model_from_checkpoint(ckpt_dir, device), name)
    finally:
        torch.set_num_threads(threads)


def load_training_state(ckpt_dir: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(state.json contents, state.safetensors tensors) of a checkpoint saved during training;
    CheckpointError naming the file when either is missing or unreadable."""
    ckpt_dir = checkpoint_dir(ckpt_dir)
    path = ckpt_dir / "state.json"
    try:
        state = loads_json(path.read_text())
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise ValueError("not a JSON object with a step")
        if state["step"] < 0:
            raise ValueError(f"step {state['step']} is negative")
        path = ckpt_dir / "state.safetensors"
        tensors = load_file(str(path))
    except (OSError, ValueError, SafetensorError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _first_line(exc)
        raise CheckpointError(f"{path}: {reason}") from exc
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
