"""An absolute-attention checkpoint as a Hugging Face GPT-2 folder (`musicgpt export --hf DIR`).

The absolute model is GPT-2 exactly: learned positions, pre-norm blocks, LayerNorm eps 1e-5,
tanh-approximated GELU (`gelu_new`), a 4x MLP, and the output projection tied to the token
embedding. Our `layers.Linear` stores W as (in, out), as GPT-2's Conv1D does, so every tensor
copies over unchanged under GPT-2's names (`blocks.i` -> `transformer.h.i`); `lm_head.weight`
is the tied embedding and is not stored, as transformers itself saves it. The folder holds
config.json (GPT2LMHeadModel, vocab_size and n_positions from our config) and model.safetensors.
Relative attention has no GPT-2 counterpart, so those checkpoints are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from .config import Config
from .files import make_readable, tmp_path, writing
from .model import GPT
from .vocab import END_ID, PAD_ID, START_ID


class NotGPT2Error(ValueError):
    """A checkpoint whose model GPT-2 cannot express; the message says why."""


def hf_config(config: Config) -> dict:
    """The config.json of transformers' GPT2LMHeadModel computing what `config` builds."""
    if config.attention != "absolute":
        raise NotGPT2Error(f"{config.attention} attention is not expressible as GPT-2 (only "
                           f"absolute-attention checkpoints export)")
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": config.vocab_size, "n_positions": config.block_size,
        "n_ctx": config.block_size, "n_embd": config.n_embd, "n_layer": config.n_layer,
        "n_head": config.n_head, "n_inner": None, "activation_function": "gelu_new",
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout, "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "tie_word_embeddings": True, "use_cache": True,
        "bos_token_id": START_ID, "eos_token_id": END_ID, "pad_token_id": PAD_ID,
        "torch_dtype": "float32",
    }


def hf_state_dict(model: GPT) -> dict:
    """Our weights under GPT-2's names (fp32, contiguous); the tied lm_head is left out."""
    hf_config(model.config)  # refuses relative attention
    return {"transformer." + name.replace("blocks.", "h.", 1): tensor.detach().float()
            .contiguous().cpu() for name, tensor in model.state_dict().items()}


def export_hf(model: GPT, out_dir: str | Path) -> Path:
    """Write `model` as a transformers-loadable GPT-2 folder (config.json + model.safetensors).

    Each file goes to NAME.tmp first and is renamed into place; WriteError names a failed one."""
    out_dir = Path(out_dir)
    config = json.dumps(hf_config(model.config), indent=1) + "\n"
    tensors = hf_state_dict(model)
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    _write(out_dir / "model.safetensors",
           lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    _write(out_dir / "config.json", lambda tmp: tmp.write_text(config))
    return out_dir


def _write(path: Path, write) -> None:
    """`write(tmp)`, then give tmp the usual mode and rename it to `path`."""
    tmp = tmp_path(path)
    with writing(path, tmp):
        write(tmp)
        make_readable(tmp)
        tmp.replace(path)
