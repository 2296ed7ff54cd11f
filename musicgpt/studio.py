"""What the Streamlit page does, minus Streamlit: find checkpoints, build primers, check uploads,
turn generated ids into a piece (notes, primer flags, .mid bytes), and keep the versions of a
piece whose spans are regenerated (span defaults and clamping, keep / undo / restore).

Pure or file-reading functions only, so tests can call them without a browser or a script runner.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .assets import default_model_dir, example_midi_files, primer_midi_files, primers_dir
from .checkpoint import checkpoint_dir, has_weights
from .config import loads_json
from .evaluation import token_nll
from .events import (
    Note,
    NoteArrays,
    arrays_to_ids,
    ids_to_arrays_with_positions,
    ids_to_seconds,
    ids_until_seconds,
    notes_to_ids,
)
from .infilling import InfillError, check_span
from .midi_io import MidiReadError, midi_bytes_to_arrays
from .pipeline import ids_to_midi_bytes, midi_bytes_to_ids  # noqa: F401
from .vocab import END_ID, START_ID, seconds_to_steps, steps_to_seconds

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_UPLOAD_S = 600.0
ENV_CHECKPOINT = "MUSICGPT_CHECKPOINT"  # one checkpoint folder, listed first (tests use it)
ENV_CHECKPOINTS = "MUSICGPT_CHECKPOINTS"  # folders to search, separated by os.pathsep
# Labels short enough for the sidebar's box at 1400 px (about 30 characters show)
BUILTIN_PRIMER = "C-major arpeggio (by code)"
BUILTIN_CADENCE = "I-IV-V-I cadence (by code)"
MODEL_EXAMPLE = " (model's own)"  # suffix of the shipped examples' labels
REPO_ROOT = Path(__file__).resolve().parent.parent


class UploadError(ValueError):
    """An uploaded file that cannot be a primer; the message is meant for the page."""


def checkpoints_in(folder: Path) -> list[Path]:
    """The checkpoints a folder names: itself if it is one; a run folder's checkpoint/ (and its
    best/ where that is another step); else those of the runs one level below it (`runs/`)."""
    if has_weights(folder):
        return [folder]
    if has_weights(folder / "checkpoint"):
        found = [folder / "checkpoint"]
        best = folder / "best"
        if has_weights(best) and _state(best).get("step") != _state(found[0]).get("step"):
            found.append(best)
        return found
    if not folder.is_dir():
        return []
    found = [p for p in sorted(folder.glob("*")) if has_weights(p)]
    for run in sorted(p for p in folder.glob("*") if p.is_dir() and not has_weights(p)):
        found += checkpoints_in(run) if has_weights(run / "checkpoint") else []
    return found


def _read_json(path: Path) -> dict:
    try:
        value = loads_json(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _state(path: Path) -> dict:
    return _read_json(checkpoint_dir(path) / "state.json")


def run_name(path: Path) -> str:
    """A checkpoint's short name: its run folder's for RUN/checkpoint ("RUN (best)" for
    RUN/best), else its own folder's."""
    path = Path(path)
    if path.name == "checkpoint" and path.parent.name:
        return path.parent.name
    if path.name == "best" and has_weights(path.parent / "checkpoint"):
        return f"{path.parent.name} (best)"
    return path.name


def checkpoint_label(path: Path, name: str | None = None) -> str:
    """"mine — step 120, classical+chopin, 40 files, val NLL 1.87": the name, then what the
    checkpoint's state.json and config.json tell (step, the styles it trained on, the number of
    files, its validation NLL), each left out where unknown."""
    state = _state(path)
    config = _read_json(checkpoint_dir(path) / "config.json")
    parts = [f"step {state['step']:,}"] if isinstance(state.get("step"), int) else []
    styles = state.get("data_styles") or config.get("styles") or []
    data = "+".join(str(style) for style in styles) if isinstance(styles, list) else ""
    if isinstance(state.get("files"), int):
        data = ", ".join(filter(None, [data, f"{state['files']} files"]))
    parts += [data] if data else []
    val = state.get("val_nll", state.get("best_val_nll"))
    if isinstance(val, int | float) and not isinstance(val, bool) and math.isfinite(val):
        parts.append(f"val NLL {val:.2f}")
    name = name or run_name(path)
    return f"{name} — {', '.join(parts)}" if parts else name


def find_checkpoints(env: dict[str, str] | None = None, cwd: Path | None = None,
                     extra: list[str] | tuple[str, ...] = ()) -> dict[str, Path]:
    """Label (checkpoint_label) -> checkpoint folder, in the order the page offers them.

    1. `$MUSICGPT_CHECKPOINT` (one folder), 2. the shipped default model, 3. the runs under
    `runs/` in the repository and the working directory, 4. those under each folder in
    `$MUSICGPT_CHECKPOINTS` (separated by os.pathsep), 5. those of the `extra` folders (typed
    into the page). A folder may be a checkpoint, a run folder or a folder of runs.
    """
    env = dict(os.environ) if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    candidates: list[tuple[str | None, Path]] = []
    if env.get(ENV_CHECKPOINT):
        path = Path(env[ENV_CHECKPOINT])
        if has_weights(path):
            candidates.append((f"{run_name(path)} (${ENV_CHECKPOINT})", path))
    if has_weights(default_model_dir()):
        candidates.append(("default model", default_model_dir()))
    folders = [REPO_ROOT / "runs", cwd / "runs"]
    folders += [Path(p) for p in env.get(ENV_CHECKPOINTS, "").split(os.pathsep) if p]
    folders += [Path(p).expanduser() for p in extra]
    for folder in folders:
        candidates += [(None, p) for p in checkpoints_in(folder)]
    found: dict[str, Path] = {}
    seen: set[Path] = set()
    for name, path in candidates:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            label = checkpoint_label(path, name)
            found[label if label not in found else f"{label} [{path}]"] = path
    return found


def upload_to_ids(data: bytes, name: str = "upload") -> np.ndarray:
    """Token ids (no START) of an uploaded .mid; raises UploadError with a reason for the page."""
    if not data:
        raise UploadError(f"{name} is empty (0 bytes).")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(f"{name} is {len(data) / 2**20:.1f} MB; the limit is "
                          f"{MAX_UPLOAD_BYTES // 2**20} MB.")
    try:
        notes = midi_bytes_to_arrays(data)
    except MidiReadError as exc:
        raise UploadError(f"{name} is not a usable MIDI file: {exc}.") from exc
    seconds = float(steps_to_seconds(notes.end_step.max()))  # checked before encoding: a
    if seconds > MAX_UPLOAD_S:  # few bytes can hold hours of silence, millions of tokens
        raise UploadError(f"{name} lasts {_minutes(seconds)} minutes; the limit is "
                          f"{MAX_UPLOAD_S / 60:.0f} minutes.")
    return arrays_to_ids(notes).astype(np.int64)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:,.1f}" if seconds < 6e7 else f"{seconds / 60:.3g}"


def builtin_primer_notes() -> list[Note]:
    """Two bars of a rising and falling C-major arpeggio (C4 E4 G4 C5 G4 E4 C4), 0.25 s apart."""
    pitches = [60, 64, 67, 72, 67, 64, 60]
    return [Note(p, 80, 0.25 * i, 0.25 * i + 0.3) for i, p in enumerate(pitches)]


def cadence_notes() -> list[Note]:
    """A I-IV-V-I cadence in C: four one-second chords (bass, three voices) under a melody
    E5 F5 D5 C5 in half notes, then quarter passing notes in the melody's last bar."""
    chords = [(48, 64, 67, 72), (53, 65, 69, 72), (55, 62, 67, 71), (48, 64, 67, 72)]
    notes = [Note(p, 70, float(i), i + 0.95) for i, chord in enumerate(chords) for p in chord]
    melody = [(76, 0.0), (77, 1.0), (74, 2.0), (79, 2.5), (76, 3.0), (72, 3.5)]
    notes += [Note(p, 90, t, t + 0.48) for p, t in melody]
    return sorted(notes, key=lambda n: (n.start_s, n.pitch))


def primer_titles(folder: Path | None = None) -> dict[str, str]:
    """File stem -> "POP909 019, title (artist)", from the lines of the primers' README.txt
    that name a file ("    pop909_019_opening.mid  POP909 019, ...")."""
    readme = (primers_dir() if folder is None else folder) / "README.txt"
    titles = {}
    if readme.is_file():
        for line in readme.read_text(encoding="utf-8").splitlines():
            name, _, title = line.strip().partition(".mid ")
            if name and title and " " not in name:
                titles[name] = title.strip()
    return titles


def _song_number(title: str) -> str:
    """"POP909 019" of a primer's title ("POP909 019, <title in Chinese> (<artist>)"): labels stay
    readable where no CJK font is installed, and short enough for the sidebar."""
    return title.split(",")[0].strip()


def _example_name(stem: str) -> str:
    """"classical, seed 2" for example_classical_seed2 ("seed 1" for example_seed1)."""
    name, found, seed = stem.removeprefix("example_").rpartition("seed")
    if not found:
        return stem
    return ", ".join(filter(None, [name.strip("_"), f"seed {seed}"]))


def example_choices() -> dict[str, Path | list[Note]]:
    """Label -> primer source, in the order the page offers them: the openings of real music
    (data/primers), the pieces written by code, then the model's own examples (data/examples)."""
    titles = primer_titles()
    choices: dict[str, Path | list[Note]] = {
        f"{_song_number(titles.get(p.stem, p.stem))}, opening": p for p in primer_midi_files()}
    choices[BUILTIN_CADENCE] = cadence_notes()
    choices[BUILTIN_PRIMER] = builtin_primer_notes()
    choices.update({_example_name(p.stem) + MODEL_EXAMPLE: p for p in example_midi_files()})
    return choices


def example_midi_bytes(label: str) -> bytes | None:
    """The .mid file a built-in primer comes from, or None for one written by code."""
    source = example_choices()[label]
    return None if isinstance(source, list) else source.read_bytes()


def primer_from_ids(ids, seconds: float) -> np.ndarray:
    """START + the events covering the first `seconds` of a piece (int64)."""
    body = ids_until_seconds(np.asarray(ids, dtype=np.int64), seconds)
    return np.concatenate([[START_ID], body]).astype(np.int64)


def example_primer(label: str, seconds: float) -> np.ndarray:
    source = example_choices()[label]
    ids = notes_to_ids(source) if isinstance(source, list) else upload_to_ids(
        source.read_bytes(), source.name)
    return primer_from_ids(ids, seconds)


def continuation_primer(ids) -> np.ndarray:
    """A piece as the primer of its own continuation: everything before its END (if any)."""
    ids = np.asarray(ids, dtype=np.int64)
    ends = np.flatnonzero(ids == END_ID)
    return ids[: ends[0]] if len(ends) else ids


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


def note_surprisal(model, ids) -> np.ndarray:
    """How unexpected `model` found each note: the NLL (nats) of the note's NOTE_ON token given
    everything before it, one value per decoded note (the roll's order), float64; NaN for a note
    whose NOTE_ON is the piece's first token. Use the float32 model (the one the arcs use)."""
    ids = np.asarray(ids, dtype=np.int64)
    _, positions = ids_to_arrays_with_positions(ids)
    return token_nll(model, ids)[positions] if len(positions) else np.zeros(0)


def surprisal_summary(surprisal: np.ndarray, is_primer: np.ndarray) -> str:
    """One line for the page: mean surprisal of the primer's and of the new notes."""
    parts = []
    for name, mask in (("primer", is_primer), ("new", ~is_primer)):
        values = surprisal[mask & np.isfinite(surprisal)]
        if len(values):
            parts.append(f"{name} notes {values.mean():.2f} nats on average "
                         f"(most surprising {values.max():.2f})")
    return "; ".join(parts) if parts else "No notes to score."


# --- versions: regenerate a span, keep it or undo ----------------------------------------------

SPAN_STEP_S = 0.1  # resolution of the span slider
SPAN_DEFAULT_S = 3.0  # the span offered first (at most a third of the piece, and what fits)


def _down_to_step(seconds: float) -> float:
    return round(math.floor(seconds / SPAN_STEP_S + 1e-9) * SPAN_STEP_S, 2)


def editable_seconds(ids) -> float:
    """How far a span may reach: the piece's music length, down to the slider's step."""
    return _down_to_step(ids_to_seconds(ids))


def _span_fits(ids, steps: int, block_size: int) -> bool:
    try:
        check_span(ids, 0.0, float(steps_to_seconds(steps)), block_size)
    except InfillError:
        return False
    return True


def longest_span_s(ids, block_size: int) -> float:
    """The longest span `infilling.infill` takes in this piece from a model with this context
    (0.0 when none fits), found with infilling's own check."""
    low, high = 0, seconds_to_steps(ids_to_seconds(ids))
    while low < high:  # invariant: `low` steps fit (or low == 0), more than `high` do not
        mid = (low + high + 1) // 2
        low, high = (mid, high) if _span_fits(ids, mid, block_size) else (low, mid - 1)
    return float(steps_to_seconds(low))


def default_span(seconds: float, longest_s: float) -> tuple[float, float]:
    """A span in the middle of a piece of `seconds`: SPAN_DEFAULT_S long, or less when the piece
    (a third of it) or the model (`longest_s`) asks for less; on the slider's steps."""
    length = _down_to_step(min(SPAN_DEFAULT_S, seconds / 3, longest_s))
    length = max(length, min(SPAN_STEP_S, _down_to_step(seconds)))
    start = _down_to_step((seconds - length) / 2)
    return start, round(start + length, 2)


def clamp_span(span, seconds: float) -> tuple[float, float]:
    """(start, end) in order, inside 0..`seconds`, on 10 ms (no slider float noise)."""
    start, end = sorted(min(max(float(x), 0.0), seconds) for x in span)
    return round(start, 2), round(end, 2)


@dataclass
class Version:
    """One state of a piece: its ids, a label for lists, the span regenerated to make it (None
    for the original), the version it was made from, and `infill`'s note when it fell back.
    `view` is the page's cache of what it made for this version (audio, decoded notes)."""

    ids: np.ndarray
    label: str
    span: tuple[float, float] | None = None
    parent: int | None = None
    note: str | None = None
    view: dict = field(default_factory=dict, repr=False, compare=False)


class History:
    """The versions of one piece. `current` is the piece being edited; regenerating a span of it
    adds a `pending` version, which `keep` makes current and `undo` throws away. With nothing
    pending, `undo` goes back from the current version to the one it was made from. Every version
    made stays listed (to compare or `restore`) unless undone while pending."""

    def __init__(self, ids, label: str = "original"):
        self.versions = [Version(np.asarray(ids, dtype=np.int64), f"v1: {label}")]
        self.current = 0
        self.pending: int | None = None
        self.made = 0  # spans regenerated so far, undone ones included

    def __len__(self) -> int:
        return len(self.versions)

    @property
    def shown(self) -> int:
        """The version the page shows as the result: the pending one, else the current one."""
        return self.current if self.pending is None else self.pending

    def next_seed(self, seed: int) -> int:
        """A seed for the next regeneration: `seed` moved on by the takes made so far, so pressing
        the button again (even after an undo) gives another take, reproducibly."""
        return int(seed) + self.made

    def push(self, ids, span: tuple[float, float], note: str | None = None) -> int:
        """Add the version made by regenerating `span` of the current one; it is pending."""
        number = len(self.versions) + 1
        label = (f"v{number}: {span[0]:.2f}-{span[1]:.2f} s of v{self.current + 1} "
                 "regenerated")
        self.versions.append(Version(np.asarray(ids, dtype=np.int64), label,
                                     (float(span[0]), float(span[1])), self.current, note))
        self.made += 1
        self.pending = len(self.versions) - 1
        return self.pending

    def keep(self) -> int:
        """The pending version becomes the current one."""
        if self.pending is None:
            raise ValueError("there is no new version to keep")
        self.current, self.pending = self.pending, None
        return self.current

    @property
    def can_undo(self) -> bool:
        return self.pending is not None or self.versions[self.current].parent is not None

    def undo(self) -> int:
        """Throw the pending version away, or with none pending go back to the version the current
        one was made from; returns the current version."""
        if self.pending is not None:
            del self.versions[self.pending]  # always the last one: push appends, others clear it
            self.pending = None
        elif self.versions[self.current].parent is not None:
            self.current = self.versions[self.current].parent
        return self.current

    def restore(self, index: int) -> int:
        """Make any listed version the current one (a pending one stays listed)."""
        if not 0 <= index < len(self.versions):
            raise IndexError(f"no version {index + 1}; there are {len(self.versions)}")
        self.current, self.pending = index, None
        return self.current


def piece_key(ids) -> str:
    """A short name for a piece's ids (which history in the page's state belongs to it)."""
    return hashlib.sha1(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()[:10]


def span_piece(ids, span: tuple[float, float]) -> Piece:
    """Piece of a version with a regenerated span: its notes that start inside the span are the
    new ones; the rest count as kept (drawn like a primer)."""
    ids = np.asarray(ids, dtype=np.int64)
    notes, _ = ids_to_arrays_with_positions(ids)
    t1, t2 = (seconds_to_steps(s) for s in span)
    new = (notes.start_step >= t1) & (notes.start_step < t2)
    return Piece(ids, 0, notes, ~new)


# --- results on the page: every generation and continuation, recallable ------------------------

@dataclass
class LogEntry:
    """One press of Generate or Continue: a label, its samples (the page's rendered dicts) and,
    while another entry is shown, the versions of its samples (`History` per sample key)."""

    label: str
    results: list
    histories: dict = field(default_factory=dict)


class ResultLog:
    """Every result made on the page, newest last; `shown` is the one on screen. The versions of
    the shown entry's samples live in the page's shared dict of histories (`live`, keys "s0",
    "s1", ...); switching entries stashes them with the old entry and brings back the new one's.
    """

    SAMPLE_PREFIX = "s"

    def __init__(self):
        self.entries: list[LogEntry] = []
        self.shown: int | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def _swap(self, live: dict, index: int) -> None:
        samples = [k for k in live if k.startswith(self.SAMPLE_PREFIX)]
        if self.shown is not None:
            self.entries[self.shown].histories = {k: live[k] for k in samples}
        for key in samples:
            del live[key]
        live.update(self.entries[index].histories)
        self.shown = index

    def add(self, label: str, results: list, live: dict) -> int:
        """Append a new result and show it; returns its index."""
        self.entries.append(LogEntry(f"#{len(self.entries) + 1}: {label}", results))
        self._swap(live, len(self.entries) - 1)
        return len(self.entries) - 1

    def recall(self, index: int, live: dict) -> list:
        """Show an earlier result (its samples' versions as they were left); returns its
        samples."""
        if not 0 <= index < len(self.entries):
            raise IndexError(f"no result #{index + 1}; there are {len(self.entries)}")
        if index != self.shown:
            self._swap(live, index)
        return self.entries[index].results

    @property
    def labels(self) -> list[str]:
        return [entry.label for entry in self.entries]
