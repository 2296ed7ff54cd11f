"""What the Streamlit page does, minus Streamlit: find checkpoints, build primers, check uploads,
and turn generated ids into a piece (notes, primer flags, .mid bytes).

Pure or file-reading functions only, so tests can call them without a browser or a script runner.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .assets import default_model_dir, example_midi_files
from .checkpoint import has_weights
from .events import (
    Note,
    NoteArrays,
    ids_to_arrays_with_positions,
    ids_to_seconds,
    ids_until_seconds,
    notes_to_ids,
)
from .midi_io import MidiReadError
from .pipeline import ids_to_midi_file, midi_bytes_to_ids
from .vocab import START_ID, steps_to_seconds

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_UPLOAD_S = 600.0
TOKENS_PER_S_BUDGET = 100  # token cap per second asked for; real piano music averages ~35
TOKENS_PER_S_EXPECTED = 40  # for the progress bar only
ENV_CHECKPOINT = "MUSICGPT_CHECKPOINT"  # one checkpoint folder, listed first (tests use it)
ENV_CHECKPOINTS = "MUSICGPT_CHECKPOINTS"  # folders to search, separated by os.pathsep
BUILTIN_PRIMER = "C-major arpeggio (built in)"
REPO_ROOT = Path(__file__).resolve().parent.parent


class UploadError(ValueError):
    """An uploaded file that cannot be a primer; the message is meant for the page."""


def _search_folder(folder: Path) -> list[Path]:
    """The folder itself if it is a checkpoint, else checkpoints one or two levels below it."""
    if has_weights(folder):
        return [folder]
    if not folder.is_dir():
        return []
    found = [p for p in sorted(folder.glob("*")) if has_weights(p)]
    return found + [p for p in sorted(folder.glob("*/checkpoint")) if has_weights(p)]


def find_checkpoints(env: dict[str, str] | None = None, cwd: Path | None = None) -> dict[str, Path]:
    """Label -> checkpoint folder, in the order the page offers them.

    1. `$MUSICGPT_CHECKPOINT` (one folder), 2. the shipped default model, 3. `runs/*/checkpoint`
    under the repository and the working directory, 4. anything in `$MUSICGPT_CHECKPOINTS`.
    """
    env = dict(os.environ) if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    candidates: list[tuple[str, Path]] = []
    if env.get(ENV_CHECKPOINT):
        path = Path(env[ENV_CHECKPOINT])
        candidates += [(f"{path} (${ENV_CHECKPOINT})", path)] if has_weights(path) else []
    if has_weights(default_model_dir()):
        candidates.append(("default model", default_model_dir()))
    folders = [REPO_ROOT / "runs", cwd / "runs"]
    folders += [Path(p) for p in env.get(ENV_CHECKPOINTS, "").split(os.pathsep) if p]
    for folder in folders:
        candidates += [(str(p), p) for p in _search_folder(folder)]
    found: dict[str, Path] = {}
    seen: set[Path] = set()
    for label, path in candidates:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            found[label] = path
    return found


def upload_to_ids(data: bytes, name: str = "upload") -> np.ndarray:
    """Token ids (no START) of an uploaded .mid; raises UploadError with a reason for the page."""
    if not data:
        raise UploadError(f"{name} is empty (0 bytes).")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(f"{name} is {len(data) / 2**20:.1f} MB; the limit is "
                          f"{MAX_UPLOAD_BYTES // 2**20} MB.")
    try:
        ids = midi_bytes_to_ids(data)
    except MidiReadError as exc:
        raise UploadError(f"{name} is not a usable MIDI file: {exc}.") from exc
    seconds = ids_to_seconds(ids)
    if seconds > MAX_UPLOAD_S:
        raise UploadError(f"{name} lasts {seconds / 60:.1f} minutes; the limit is "
                          f"{MAX_UPLOAD_S / 60:.0f} minutes.")
    return ids.astype(np.int64)


def builtin_primer_notes() -> list[Note]:
    """Two bars of a rising and falling C-major arpeggio (C4 E4 G4 C5 G4 E4 C4), 0.25 s apart."""
    pitches = [60, 64, 67, 72, 67, 64, 60]
    return [Note(p, 80, 0.25 * i, 0.25 * i + 0.3) for i, p in enumerate(pitches)]


def example_choices() -> dict[str, Path | None]:
    """Label -> example .mid (None = the built-in arpeggio, always offered last)."""
    choices: dict[str, Path | None] = {p.stem: p for p in example_midi_files()}
    choices[BUILTIN_PRIMER] = None
    return choices


def primer_from_ids(ids, seconds: float) -> np.ndarray:
    """START + the events covering the first `seconds` of a piece (int64)."""
    body = ids_until_seconds(np.asarray(ids, dtype=np.int64), seconds)
    return np.concatenate([[START_ID], body]).astype(np.int64)


def example_primer(label: str, seconds: float) -> np.ndarray:
    path = example_choices()[label]
    ids = notes_to_ids(builtin_primer_notes()) if path is None else upload_to_ids(
        path.read_bytes(), path.name)
    return primer_from_ids(ids, seconds)


def token_budget(seconds: float) -> int:
    """Upper bound on new tokens for `seconds` of music (the sampler stops at the seconds first)."""
    return max(64, int(round(seconds * TOKENS_PER_S_BUDGET)))


def expected_tokens(seconds: float) -> int:
    """About how many tokens `seconds` of piano music take (progress estimate, not a limit)."""
    return max(1, int(round(seconds * TOKENS_PER_S_EXPECTED)))


@dataclass(frozen=True)
class Piece:
    """One generated sample: its ids, decoded notes and which notes came from the primer."""

    ids: np.ndarray
    primer_len: int  # number of leading ids that were the primer (START included)
    notes: NoteArrays
    is_primer: np.ndarray  # (n_notes,) bool

    @property
    def seconds(self) -> float:
        return float(steps_to_seconds(self.notes.end_step.max())) if len(self.notes) else 0.0


def ids_to_piece(ids, primer_len: int, note_pos: np.ndarray | None = None) -> Piece:
    """Piece from ids; a note belongs to the primer exactly when its NOTE_ON was in the primer.
    `note_pos`: each note's NOTE_ON position (as `arcs.ids_to_note_tokens` gives it); by default
    the decoder's own."""
    ids = np.asarray(ids, dtype=np.int64)
    notes, positions = ids_to_arrays_with_positions(ids)
    positions = positions if note_pos is None else np.asarray(note_pos)
    return Piece(ids, primer_len, notes, positions < primer_len)


def ids_to_midi_bytes(ids) -> bytes:
    """The .mid file (one piano track) the ids decode to, as bytes."""
    with tempfile.TemporaryDirectory() as folder:
        path = ids_to_midi_file(ids, Path(folder) / "piece.mid")
        return path.read_bytes()
