"""Where the shipped files live: the default model and the example MIDI files."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def _data_root() -> Path:
    try:
        return Path(str(resources.files("musicgpt_data")))
    except ModuleNotFoundError:  # running from a source checkout without installing
        return Path(__file__).resolve().parent.parent / "data"


def default_model_dir() -> Path:
    """Folder with the shipped default model (model.safetensors + config.json)."""
    return _data_root() / "default_model"


def examples_dir() -> Path:
    return _data_root() / "examples"


def example_midi_files() -> list[Path]:
    folder = examples_dir()
    return sorted(folder.glob("*.mid")) if folder.is_dir() else []


def primers_dir() -> Path:
    """Built-in primers: openings of real music (data/primers/README.txt says whose)."""
    return _data_root() / "primers"


def primer_midi_files() -> list[Path]:
    folder = primers_dir()
    return sorted(folder.glob("*.mid")) if folder.is_dir() else []
