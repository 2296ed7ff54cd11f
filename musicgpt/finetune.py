"""Fine-tuning (`train.py --init-from default|FOLDER`): which checkpoint a run starts from, the
config it trains with, and the style slots the new folder's labels get.

The source gives the weights, the architecture, its style names and its sampling settings; the
run gets fine-tuning's training settings (config.FINETUNE) unless flags say otherwise. Flags that
would change the architecture are refused: the source's weights could not be used.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from .checkpoint_paths import resolve_checkpoint
from .config import FINETUNE, Config
from .vocab import N_STYLES

# What the weights compute: a flag that changes one of these conflicts with --init-from.
ARCHITECTURE = ("vocab_size", "n_layer", "n_head", "n_embd", "block_size", "attention")


class FinetuneError(ValueError):
    """A fine-tuning request that cannot work; the message is one line for the user."""


def source_checkpoint(value: str) -> Path:
    """The checkpoint folder `--init-from` names: "default" (the shipped model), a checkpoint
    folder, or a run folder holding checkpoint/."""
    from .assets import default_model_dir

    if value != "default":
        return resolve_checkpoint(value, "--init-from")
    try:
        return resolve_checkpoint(default_model_dir(), "--init-from")
    except FileNotFoundError:
        raise FinetuneError(f"--init-from default: the shipped model is missing from "
                            f"{default_model_dir()}; give a checkpoint or run folder") from None


def finetune_config(source: Config, given: dict, init_from: str) -> Config:
    """The config of a run fine-tuning `source`: its architecture, styles and sampling, with
    FINETUNE's settings (training, and no style guidance), then the flags `given` (field ->
    value). A flag that changes the architecture is refused in one line."""
    for name in ARCHITECTURE:
        if name in given and given[name] != getattr(source, name):
            flag = "--" + name.replace("_", "-")
            raise FinetuneError(
                f"{flag} {given[name]} conflicts with --init-from {init_from}, whose model has "
                f"{name} = {getattr(source, name)}: a fine-tuned model keeps its source's "
                f"vocabulary and architecture; leave {flag} out (or train from scratch without "
                f"--init-from)")
    settings = {**FINETUNE, **given}
    if given.get("max_minutes") and "max_steps" not in given:
        settings["max_steps"] = 10**9  # the time budget ends the run
    return source.replace(**settings)


def add_styles(config: Config, labels: list[str], names: dict[str, str] | None = None,
               log=print) -> Config:
    """`config` with the style labels of the new data in free STYLE slots.

    The source's slots and names are kept. A label already known (as a source label or as a
    style name) keeps its slot; each new label takes a free slot in order (the most common first
    when there are more than the N_STYLES slots hold), named by `names` (label -> readable
    name) where given. A vocabulary without style tokens trains without styles."""
    counts = Counter(label for label in labels if label)
    if not config.has_fim:
        if counts:
            log("the source model has no style tokens (trained before them): training without "
                "style labels")
        return config
    names = names or {}
    styles = list(config.styles)
    sources = list(config.style_sources or config.styles)
    new = [label for label in sorted(counts, key=lambda label: (-counts[label], label))
           if label not in sources and names.get(label, label) not in styles]
    free = N_STYLES - len(styles)
    if len(new) > free:
        log(f"{len(new)} new style labels and {free} free style slots: "
            f"{', '.join(new[free:])} train without a style token")
        new = new[:free]
    styles += [names.get(label, label) for label in new]
    sources += new
    if new:
        log(f"new style(s): {', '.join(styles[-len(new):])} (slots {len(styles) - len(new)}.."
            f"{len(styles) - 1}); kept from the source: {', '.join(config.styles) or 'none'}")
    return config.replace(styles=tuple(styles), style_sources=tuple(sources))


def label_unlabelled(labels: list[str], folder_name: str) -> list[str]:
    """Each piece's label, the MIDI folder's own name for a piece without one (a file directly
    in the folder): fine-tuning on a folder of one kind of music gives it a style."""
    return [label or folder_name for label in labels]
