"""What a training run trains on: the token pieces of both splits (preprocessed first where a MIDI
folder is given), the run's style table from the pieces' labels, and the training and validation
windows. No model and no optimizer: training.py builds those.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import Config
from .data import (
    TokenWindows,
    folder_label,
    load_split,
    no_training_pieces,
    piece_styles,
    preprocess_folder,
)
from .finetune import add_styles, label_unlabelled
from .vocab import N_STYLES


@dataclass
class TrainingData:
    """Token pieces of both splits and each piece's style label ('' for none)."""

    train: list[np.ndarray]
    val: list[np.ndarray]
    train_styles: list[str]
    val_styles: list[str]


def prepare_data(midi_dir: str | Path | None, data_dir: str | Path,
                 progress: bool = True) -> TrainingData:
    if midi_dir is not None:
        manifest = preprocess_folder(midi_dir, data_dir, progress=progress)
        if progress and manifest["skipped"]:
            print(f"skipped {len(manifest['skipped'])} file(s); reasons in {data_dir}/report.json")
    train, val = load_split(data_dir, "train"), load_split(data_dir, "val")
    if not train:
        raise ValueError(no_training_pieces(data_dir))
    train_styles, val_styles = piece_styles(data_dir, "train"), piece_styles(data_dir, "val")
    if not val:
        val, val_styles = train, train_styles
    return TrainingData(train, val, train_styles, val_styles)


def resolve_styles(config: Config, labels: list[str], names: dict[str, str] | None = None,
                   log=print) -> Config:
    """Give `config` its style table from the training pieces' labels, unless it has one.

    Each distinct label gets a STYLE slot (the N_STYLES most common if there are more; the rest
    train without a style token), named by `names` (label -> readable name) where given. One
    label only, or a vocabulary without style tokens, means no styles.
    """
    if config.styles or not config.has_fim:
        return config
    counts = Counter(label for label in labels if label)
    if len(counts) < 2:
        return config
    kept = sorted(sorted(counts, key=lambda label: -counts[label])[:N_STYLES])
    if len(counts) > N_STYLES:
        log(f"{len(counts)} style labels; the {N_STYLES} most common get a style token, "
            f"the rest train without one")
    names = names or {}
    return config.replace(styles=tuple(names.get(label, label) for label in kept),
                          style_sources=tuple(kept))


def style_slots(config: Config, labels: list[str]) -> list[int]:
    """STYLE slot of each piece's label (-1 for no style or one the config does not know): the
    slot whose data label it is, else the slot of that name."""
    sources = config.style_sources or config.styles
    return [sources.index(label) if label in sources
            else config.styles.index(label) if label in config.styles else -1
            for label in labels]


def make_windows(config: Config, data: TrainingData) -> tuple[TokenWindows, TokenWindows]:
    """Training windows (augmented, styles dropped at style_drop, FIM at fim_rate) and
    validation windows (plain left-to-right, always with their style)."""
    fim_rate = config.fim_rate if config.has_fim else 0.0
    train = TokenWindows(data.train, config.block_size, augment=config.augment, seed=config.seed,
                         styles=style_slots(config, data.train_styles),
                         style_drop=config.style_drop, fim_rate=fim_rate)
    val = TokenWindows(data.val, config.block_size, seed=config.seed + 1,
                       styles=style_slots(config, data.val_styles))
    return train, val


def run_styles(config: Config, data: TrainingData, data_dir: Path, names: dict[str, str] | None,
               init_from, log) -> tuple[Config, TrainingData]:
    """The run's style table, and the data with the labels it trains on. Fine-tuning labels a
    piece without a label with the MIDI folder's name and adds the labels to the source's
    styles; so does a resumed fine-tuning run (whose styles hold that name)."""
    folder = folder_label(data_dir)
    if init_from is not None or (config.styles and folder in (config.style_sources
                                                              or config.styles)):
        data = TrainingData(data.train, data.val, label_unlabelled(data.train_styles, folder),
                            label_unlabelled(data.val_styles, folder))
    if init_from is not None:
        return add_styles(config, data.train_styles + data.val_styles, names, log), data
    return resolve_styles(config, data.train_styles, names, log), data


def labelled_style_names(config: Config, labels: list[str]) -> list[str]:
    """The style name of each labelled piece that has a slot."""
    return [config.styles[slot] for slot in style_slots(config, labels) if slot >= 0]
