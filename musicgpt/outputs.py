"""What `generate` and `infill` write: the kind of an output from its name, the seed, the files
(a `.mid`, and its audio as the app renders it), and the one line that reports each.

No torch, no model: the CLI hands finished `.mid` bytes in.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from . import cli_checks as checks
from .cli_checks import UserError

MIDI_SUFFIXES = (".mid", ".midi")
WAV_SUFFIX = ".wav"
SEED_RANGE = 2**31  # a drawn seed: short enough to retype, as the app's


def out_path(flag: str, value: str, wav_flag: bool) -> tuple[Path, bool]:
    """The output checked (a .mid/.midi, or a .wav, where audio can be made) and whether audio
    is wanted (`wav_flag`, or a name ending in .wav)."""
    path = checks.out_file(flag, value)
    check_out_name(flag, path)
    wav = wants_wav(path, wav_flag)
    check_audio(wav)
    return path, wav


def check_out_name(flag: str, path: Path) -> None:
    """Refuse an output name that is neither a MIDI file nor a `.wav`, in one line."""
    suffix = path.suffix.lower()
    if suffix not in (*MIDI_SUFFIXES, WAV_SUFFIX):
        raise UserError(f"{flag} {path}: name a MIDI file ending in .mid or .midi (or .wav for "
                        f"audio only)")


def check_audio(wanted: bool) -> None:
    """Refuse audio output where no synthesizer or SoundFont is installed, before sampling."""
    from .audio import synth_problem

    problem = synth_problem() if wanted else None
    if problem:
        raise UserError(problem)


def wants_wav(path: Path, flag: bool) -> bool:
    return flag or path.suffix.lower() == WAV_SUFFIX


def draw_seed(seed: int | None) -> int:
    """`seed`, or a fresh one to print, so any result can be made again."""
    return secrets.randbelow(SEED_RANGE) if seed is None else seed


def write_piece(midi: bytes, path: Path, wav: bool) -> list[Path]:
    """Write `midi` to `path` (unless `path` names a `.wav`) and, with `wav`, its audio beside it
    (same name, `.wav`); all or nothing per file. Returns the paths written; a failed write is a
    one-line UserError."""
    from .midi_io import bytes_to_file

    written = []
    try:
        if path.suffix.lower() != WAV_SUFFIX:
            written.append(bytes_to_file(midi, path))
        if wav:
            written.append(bytes_to_file(midi_to_wav_bytes(midi), path.with_suffix(WAV_SUFFIX)))
    except OSError as exc:
        raise UserError(f"cannot write {exc.filename or path}: {exc.strerror or exc}") from exc
    return written


def midi_to_wav_bytes(midi: bytes) -> bytes:
    """The piano audio of a `.mid` (its notes as the model reads them: tracks merged, pedal
    folded), rendered as the app renders it; a file without notes gives a short silence."""
    import numpy as np

    from .audio import notes_to_wav_bytes
    from .events import NoteArrays
    from .midi_io import MidiReadError, midi_bytes_to_arrays

    try:
        notes = midi_bytes_to_arrays(midi)
    except MidiReadError:  # "no notes"
        empty = np.zeros(0, dtype=np.int64)
        notes = NoteArrays(empty, empty, empty, empty)
    return notes_to_wav_bytes(notes)


def wrote_line(paths: list[Path], details: str, seed: int, n_notes: int, what: str = "notes",
               stop: str = "") -> str:
    """`wrote a.mid and a.wav (details, seed 7)`, saying so when the piece has no notes."""
    line = f"wrote {' and '.join(map(str, paths))} ({details}, seed {seed}"
    if n_notes == 0:
        line += f"; no {what}: try another seed or a higher temperature"
    return line + (f"; {stop}" if stop else "") + ")"
