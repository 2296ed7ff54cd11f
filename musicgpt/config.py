"""The one Config dataclass (model, data, training, sampling), presets, JSON and CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

from .settings import CHECKPOINT_FIELDS, rule
from .vocab import BASE_VOCAB_SIZE, N_STYLES, VOCAB_SIZE

# Sizes beyond these are typos, not models: refused before any memory is spent on them.
MAX_LAYERS, MAX_HEADS, MAX_EMBD, MAX_BLOCK_SIZE = 256, 256, 16384, 16384
MAX_PARAMS = 20_000_000_000


@dataclass(frozen=True)
class Config:
    # model
    vocab_size: int = VOCAB_SIZE
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    block_size: int = 512
    dropout: float = 0.0  # > 0 also drops attention weights, ~2x slower on CPU
    # "absolute" (GPT-2) or "relative" (Music Transformer): relative wins at equal steps, absolute
    # at equal CPU time (1.4x cheaper per step); see MODEL_CARD.md
    attention: str = "absolute"
    # data
    augment: bool = True
    # Fill-in-the-middle: the share of training windows cut at two times and rearranged as
    # prefix, FILL_SUFFIX, gap, suffix, FILL_MIDDLE, middle (fim.py). 0 = plain left-to-right.
    fim_rate: float = 0.5
    # Style names, one per STYLE slot (set from the data at training time; empty = no styles).
    styles: tuple[str, ...] = ()
    style_sources: tuple[str, ...] = ()  # the data label of each style, when renamed
    style_drop: float = 0.2  # share of training windows without their style token
    # training
    batch_size: int = 16
    grad_accum: int = 1
    max_steps: int = 5000
    # A time budget instead of (or as well as) steps: 0 = off. The cosine is planned on time (it
    # ends when the minutes do), training stops before a step that would pass them, then
    # validates and saves. max_steps still caps the run.
    max_minutes: float = 0.0
    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-4
    warmup_steps: int = 200
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_batches: int = 20
    ckpt_interval: int = 250
    seed: int = 1337
    device: str = "auto"
    compile: bool = False
    bf16: bool = True  # bf16 autocast where the hardware has it (CUDA, CPUs with AVX512-BF16/AMX)
    # sampling
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0  # 1 = off; like top_k and min_p it cuts pitches and velocities only
    min_p: float = 0.0  # 0 = off; see sampling.truncate
    style_guidance: float = 0.0  # 0 = off; see sampling.SamplingSettings
    candidates: int = 1  # pieces written per piece kept (best of N); see candidates.py

    def __post_init__(self) -> None:
        failed = [f"{name} = {getattr(self, name)!r} (want {want})" if hasattr(self, name)
                  else want for name, (ok, want) in self._rules().items() if not ok]
        if failed:
            raise ValueError(f"invalid config: {'; '.join(failed)}")

    def _rules(self) -> dict[str, tuple[bool, str]]:
        """Field -> (whether its value is valid, the rule), every field a model, training or
        sampling run reads: a bad value fails here, before any memory is spent on it."""
        heads_ok = 1 <= self.n_head <= MAX_HEADS
        floats = [f.name for f in fields(self) if f.type in ("float", float)]
        return {
            "n_layer": (1 <= self.n_layer <= MAX_LAYERS, f"1..{MAX_LAYERS}"),
            "n_head": (heads_ok, f"1..{MAX_HEADS}"),
            "n_embd": (1 <= self.n_embd <= MAX_EMBD
                       and (not heads_ok or self.n_embd % self.n_head == 0),
                       f"1..{MAX_EMBD}, a multiple of n_head"),
            "block_size": (2 <= self.block_size <= MAX_BLOCK_SIZE, f"2..{MAX_BLOCK_SIZE}"),
            "size": (self.approx_params() <= MAX_PARAMS,
                     f"at most {MAX_PARAMS:,} parameters, not about {self.approx_params():,}"),
            "dropout": (0.0 <= self.dropout < 1.0, "0 <= dropout < 1"),
            "attention": (self.attention in ("absolute", "relative"), "absolute or relative"),
            **{name: rule(name, getattr(self, name)) for name in CHECKPOINT_FIELDS},
            "batch_size": (self.batch_size >= 1, ">= 1"),
            "grad_accum": (self.grad_accum >= 1, ">= 1"),
            "max_steps": (self.max_steps >= 1, ">= 1"),
            "max_minutes": (self.max_minutes >= 0, ">= 0 (0 = no time budget)"),
            "warmup_steps": (self.warmup_steps >= 0, ">= 0"),
            "eval_interval": (self.eval_interval >= 1, ">= 1"),
            "eval_batches": (self.eval_batches >= 1, ">= 1"),
            "ckpt_interval": (self.ckpt_interval >= 1, ">= 1"),
            "seed": (0 <= self.seed < 2**63, "0 <= seed < 2**63"),
            "learning_rate": (self.learning_rate > 0, "> 0"),
            "min_learning_rate": (self.min_learning_rate >= 0, ">= 0"),
            "weight_decay": (self.weight_decay >= 0, ">= 0"),
            "beta1": (0 <= self.beta1 < 1, "0 <= beta1 < 1"),
            "beta2": (0 <= self.beta2 < 1, "0 <= beta2 < 1"),
            "grad_clip": (self.grad_clip > 0, "> 0"),
            "vocab_size": (self.vocab_size in (BASE_VOCAB_SIZE, VOCAB_SIZE),
                           f"{VOCAB_SIZE} or {BASE_VOCAB_SIZE}"),
            "fim_rate": (0.0 <= self.fim_rate <= 1.0, "0..1"),
            "style_drop": (0.0 <= self.style_drop <= 1.0, "0..1"),
            "styles": (len(self.styles) <= N_STYLES and len(set(self.styles)) == len(self.styles)
                       and all(isinstance(s, str) and s.strip() for s in self.styles),
                       f"at most {N_STYLES} distinct names"),
            "style_sources": (not self.style_sources
                              or len(self.style_sources) == len(self.styles), "one per style"),
            "finite": (all(math.isfinite(getattr(self, name)) for name in floats),
                       "finite numbers, not nan or inf"),
        }

    def approx_params(self) -> int:
        """About how many parameters the model has (without building it)."""
        tables = 1 if self.attention == "absolute" else self.n_layer  # wpe, or rel_emb per layer
        return (12 * self.n_layer * self.n_embd**2 + self.vocab_size * self.n_embd
                + tables * self.block_size * self.n_embd)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def has_fim(self) -> bool:
        """Whether the vocabulary has the fill-in-the-middle sentinels and style tokens."""
        return self.vocab_size >= VOCAB_SIZE

    def style_slot(self, name: str | None) -> int | None:
        """The STYLE slot of a style name (None for None); ValueError naming the known ones."""
        if name is None:
            return None
        if name in self.styles:
            return self.styles.index(name)
        known = f"known styles: {', '.join(self.styles)}" if self.styles else "it has none"
        raise ValueError(f"unknown style {name!r} for this checkpoint; {known}")

    def short(self) -> str:
        return (f"{self.n_layer} layers x {self.n_embd} wide x {self.n_head} heads, "
                f"context {self.block_size}, {self.attention} attention")

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        if not isinstance(values, dict):
            raise ValueError(f"a config must be a JSON object, not {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        wrong = [f"{f.name} = {values[f.name]!r} (want {_TYPE_NAMES[str(f.type)]})"
                 for f in fields(cls) if f.name in values and not _has_type(values[f.name], f)]
        if wrong:
            raise ValueError(f"invalid config: {'; '.join(wrong)}")
        for name in _DERIVED_FIELDS:  # JSON has no tuples
            if isinstance(values.get(name), list):
                values = {**values, name: tuple(values[name])}
        if values.get("vocab_size") == BASE_VOCAB_SIZE:  # trained before FIM and styles
            values = {"fim_rate": 0.0, **values}
        return cls(**values)

    @classmethod
    def from_json_file(cls, path: str | Path) -> Config:
        return cls.from_dict(loads_json(Path(path).read_text()))


def loads_json(text: str | bytes):
    """json.loads, where nesting too deep for the parser (a hostile config.json, state.json or
    safetensors header) is a ValueError like any other bad JSON, not a RecursionError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


# What the shipped model (data/default_model/config.json) uses beyond the Config defaults:
# relative attention and its sampling settings. A new run from the `default` or `large` preset
# gets them; the Config defaults stay as they were, so an old config.json reads as it was saved.
SHIPPED = dict(attention="relative", top_p=0.9, style_guidance=1.0, candidates=3)

PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, block_size=64, dropout=0.0, batch_size=4,
                 max_steps=50, warmup_steps=5, eval_interval=25, eval_batches=2, ckpt_interval=25),
    "default": dict(SHIPPED),
    "large": dict(SHIPPED, n_layer=6, n_head=8, n_embd=512, block_size=1024, learning_rate=6e-4,
                  min_learning_rate=6e-5),
}

# Settings of a fine-tuning run (train.py --init-from): a small folder, a trained model. A lower
# learning rate than from scratch, a short warm-up, and validation early and often (and at the
# end), so a short run has a best validation NLL and a checkpoint kept at it. No style guidance
# by default: a style learnt in a few hundred steps has no settled direction to push along. 10
# minutes on piano-midi.de, guidance 1 against 0, 20 pieces each: notes/s 13.8 against 11.0
# (held-out music 9.0), and all five statistics further from the held-out music; on Nottingham,
# four of five. The model's shape, styles and other sampling settings come from the source
# checkpoint; flags given override all of these.
FINETUNE = dict(max_steps=200, learning_rate=3e-4, min_learning_rate=3e-5, warmup_steps=10,
                eval_interval=10, eval_batches=4, ckpt_interval=10, style_guidance=0.0)


def preset(name: str, **overrides) -> Config:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return Config(**{**PRESETS[name], **overrides})


_DERIVED_FIELDS = ("styles", "style_sources")  # set from the data, not by a flag
_TYPE_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
               "tuple[str, ...]": "a list of strings"}


def _has_type(value, f: dataclasses.Field) -> bool:
    """Whether a JSON value fits a Config field (JSON has no tuples; true is not a number)."""
    kind = str(f.type)
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind in ("int", "float"):
        return isinstance(value, int) or (kind == "float" and isinstance(value, float))
    if kind == "str":
        return isinstance(value, str)
    return isinstance(value, list | tuple) and all(isinstance(item, str) for item in value)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--field` flag per Config field (default None = take it from the preset)."""
    group = parser.add_argument_group("config (defaults come from --preset)")
    for f in fields(Config):
        if f.name in _DERIVED_FIELDS:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            group.add_argument(flag, dest=f.name, default=None,
                               action=argparse.BooleanOptionalAction)
        else:
            kind = {"int": int, "float": float, "str": str}[str(f.type)]
            group.add_argument(flag, dest=f.name, type=kind, default=None,
                               help=f"default {f.default!r}")


def config_from_arguments(args: argparse.Namespace, base: Config | None = None) -> Config:
    overrides = {f.name: getattr(args, f.name) for f in fields(Config)
                 if f.name not in _DERIVED_FIELDS and getattr(args, f.name, None) is not None}
    if base is not None:
        return base.replace(**overrides)
    return preset(getattr(args, "preset", "default") or "default", **overrides)
