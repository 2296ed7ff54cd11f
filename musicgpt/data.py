"""MIDI folder -> token streams on disk (cached, parallel, robust), and random training windows.

Output of `preprocess_folder(midi_dir, out_dir)`:
    out_dir/tokens.bin      every piece as START ... END, uint16, back to back
    out_dir/manifest.json   vocabulary and codec versions and, per piece: source path, sha1,
                            offset, tokens, seconds, split ("train" or "val")
    out_dir/report.json     files skipped, each with its reason, and pieces the reader's limits
                            changed ("clipped": notes cut), see pipeline.MAX_PIECE_SECONDS
A second run reuses every piece whose file is unchanged (same size and mtime, else same sha1),
unless the vocabulary or the codec version changed.

The three files are committed as a whole: each is written to NAME.tmp first, and only when all
are complete are they renamed into place, manifest.json last. The manifest names the token file
it belongs to with its size and sha1, so a run cut off between the renames is detected on load:
preprocessing then re-encodes instead of reusing, and `load_split` refuses the cache. A failed
write (full or read-only disk) removes the .tmp files, leaves the previous cache as it was, and
raises files.WriteError naming the path.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .config import loads_json
from .events import ids_to_seconds
from .files import tmp_path, writing
from .fim import random_fim
from .locks import folder_lock
from .midi_io import CODEC_VERSION
from .pipeline import MidiPiece, read_midi_piece
from .vocab import (
    END_ID,
    N_PITCHES,
    PAD_ID,
    START_ID,
    VOCAB_VERSION,
    gap_to_shift_ids,
    interleave_shifts,
    is_note,
    is_note_on,
    is_shift,
    note_off_id,
    note_on_id,
    note_pitch,
    shift_steps,
    style_id,
)

MIDI_SUFFIXES = (".mid", ".midi")
VAL_PERCENT = 5


@dataclass(frozen=True)
class Piece:
    path: str  # relative to the MIDI folder
    sha1: str
    size: int
    mtime_ns: int
    offset: int  # into tokens.bin
    tokens: int
    seconds: float
    split: str
    note: str = ""  # what the reader's limits changed (notes cut), for the report


def find_midi_files(midi_dir: str | Path) -> list[Path]:
    """Every `.mid`/`.midi` file below `midi_dir`, any case, sorted. Symlinked folders are
    followed (each real folder once, so a link back up cannot loop)."""
    root = Path(midi_dir)
    found, seen = [], set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        found += [os.path.join(folder, n) for n in names
                  if os.path.splitext(n)[1].lower() in MIDI_SUFFIXES]
    return sorted(Path(p) for p in found if os.path.isfile(p))  # Path order: by parts


def has_token_cache(out_dir: str | Path) -> bool:
    """Whether `out_dir` holds a token cache written by `preprocess_folder`."""
    return (Path(out_dir) / "manifest.json").is_file()


def _group_keys(root: Path) -> dict[str, str]:
    """Optional `index.csv` with `file` and `piece_group` columns keeps a piece's files together."""
    return _index_column(root, "piece_group")


def split_of(key: str) -> str:
    """Deterministic ~5% validation split from a file's (or piece group's) key."""
    return "val" if zlib.crc32(key.encode("utf-8")) % 100 < VAL_PERCENT else "train"


def _load_previous(out_dir: Path) -> tuple[dict[str, dict], np.ndarray | None]:
    """The previous run's pieces and tokens, if its cache is whole and of this codec."""
    manifest_path, tokens_path = out_dir / "manifest.json", out_dir / "tokens.bin"
    try:
        manifest = loads_json(manifest_path.read_text())
        if (manifest.get("vocab_version"), manifest.get("codec_version")) != (VOCAB_VERSION,
                                                                              CODEC_VERSION):
            return {}, None
        data = tokens_path.read_bytes()
        if cache_mismatch(manifest, data) is not None:
            return {}, None
        return {p["path"]: p for p in manifest["pieces"]}, np.frombuffer(data, dtype=np.uint16)
    except (OSError, ValueError, KeyError, TypeError):
        return {}, None


def cache_mismatch(manifest: dict, tokens: bytes | np.ndarray) -> str | None:
    """Why `tokens` is not the token file `manifest` was written with (None if it is): its
    size, and its sha1 where the manifest has one (caches written before the sha1 have not)."""
    data = memoryview(tokens).cast("B")
    expected = manifest.get("tokens_bytes", 2 * int(manifest.get("tokens", -1)))
    if len(data) != expected:
        return f"tokens.bin is {len(data):,} bytes, manifest.json expects {expected:,}"
    if "tokens_sha1" in manifest and hashlib.sha1(data).hexdigest() != manifest["tokens_sha1"]:
        return "tokens.bin is not the file manifest.json was written with (sha1 differs)"
    return None


def _commit(out_dir: Path, files: dict[str, bytes]) -> None:
    """Replace the cache's files all together: every .tmp is written before any is renamed,
    manifest.json (listed last) is renamed last."""
    tmps = [tmp_path(out_dir / name) for name in files]
    for (name, data), tmp in zip(files.items(), tmps, strict=True):
        with writing(out_dir / name, *tmps):
            tmp.write_bytes(data)
    for name, tmp in zip(files, tmps, strict=True):
        with writing(out_dir / name, *tmps):
            os.replace(tmp, out_dir / name)


def preprocess_folder(midi_dir: str | Path, out_dir: str | Path, *, workers: int | None = None,
                      progress: bool = True) -> dict:
    """Encode a MIDI folder to `out_dir`; returns the manifest (with `skipped` and `reused`).
    One writer at a time: `out_dir` is locked (locks.FolderBusyError while another holds it)."""
    root, out_dir = Path(midi_dir), Path(out_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"MIDI folder not found: {root}")
    files = find_midi_files(root)
    if not files:
        raise FileNotFoundError(f"no .mid or .midi files in {root} (searched with its "
                                f"subfolders, symlinked ones included); give the folder that "
                                f"holds your MIDI files")
    with folder_lock(out_dir, "preprocess"):
        return _preprocess_locked(root, out_dir, files, workers, progress)


def _preprocess_locked(root: Path, out_dir: Path, files: list[Path], workers: int | None,
                       progress: bool) -> dict:
    """`preprocess_folder` once `out_dir` is locked."""
    from tqdm import tqdm

    previous, old_tokens = _load_previous(out_dir)
    old_by_sha = {p["sha1"]: p for p in previous.values()}
    groups = _group_keys(root)
    old_skipped = _previous_skipped(out_dir) if old_tokens is not None else {}

    results: dict[str, MidiPiece] = {}
    to_encode: list[Path] = []
    for path in files:
        rel, stat = path.relative_to(root).as_posix(), path.stat()
        old = previous.get(rel)
        bad = old_skipped.get(rel)
        if old and old["size"] == stat.st_size and old["mtime_ns"] == stat.st_mtime_ns:
            results[rel] = MidiPiece(old["sha1"], _slice(old_tokens, old), None, old.get("note"))
        elif bad and bad["size"] == stat.st_size and bad["mtime_ns"] == stat.st_mtime_ns:
            results[rel] = MidiPiece("", None, bad["reason"])
        else:
            to_encode.append(path)
    if not to_encode and previous.keys() | old_skipped.keys() == set(results):
        manifest = loads_json((out_dir / "manifest.json").read_text())
        return {**manifest, "skipped": list(old_skipped.values()),
                "clipped": _clipped(manifest["pieces"]), "reused": len(files)}
    workers = min(workers or os.cpu_count() or 1, os.cpu_count() or 1, len(to_encode))
    bar = tqdm(total=len(to_encode), desc="preprocess", unit="file", disable=not progress)
    if workers > 1 and len(to_encode) > 1:
        with ProcessPoolExecutor(workers) as pool:
            for path, result in zip(to_encode, pool.map(read_midi_piece, map(str, to_encode),
                                                        chunksize=16), strict=True):
                results[path.relative_to(root).as_posix()] = result
                bar.update()
    else:
        for path in to_encode:
            results[path.relative_to(root).as_posix()] = read_midi_piece(path)
            bar.update()
    bar.close()

    pieces, skipped, chunks, offset = [], [], [], 0
    for path in files:
        rel = path.relative_to(root).as_posix()
        sha1, ids, reason, note = results[rel]
        old = old_by_sha.get(sha1)
        if ids is None and old:
            ids, note = _slice(old_tokens, old), old.get("note")
        stat = path.stat()
        if ids is None:
            skipped.append({"path": rel, "reason": reason, "size": stat.st_size,
                            "mtime_ns": stat.st_mtime_ns})
            continue
        seconds = old["seconds"] if old else ids_to_seconds(ids)
        pieces.append(Piece(rel, sha1, stat.st_size, stat.st_mtime_ns, offset, len(ids),
                            round(seconds, 2), split_of(groups.get(rel, rel)), note or ""))
        chunks.append(ids)
        offset += len(ids)
    manifest = _write_cache(out_dir, root, pieces, chunks, skipped)
    return {**manifest, "skipped": skipped, "clipped": _clipped(manifest["pieces"]),
            "reused": len(files) - len(to_encode)}


def _write_cache(out_dir: Path, root: Path, pieces: list[Piece], chunks: list[np.ndarray],
                 skipped: list[dict]) -> dict:
    """Commit tokens.bin, report.json and manifest.json; returns the manifest."""
    tokens = np.concatenate(chunks).astype(np.uint16) if chunks else np.zeros(0, np.uint16)
    data = tokens.tobytes()
    records = [asdict(p) for p in pieces]
    manifest = {"vocab_version": VOCAB_VERSION, "codec_version": CODEC_VERSION,
                "midi_dir": str(root.resolve()), "tokens_file": "tokens.bin",
                "tokens_bytes": len(data), "tokens_sha1": hashlib.sha1(data).hexdigest(),
                "tokens": len(tokens), "seconds": round(sum(p.seconds for p in pieces), 2),
                "pieces": records}
    report = {"skipped": skipped, "clipped": _clipped(records)}
    _commit(out_dir, {"tokens.bin": data, "report.json": json.dumps(report, indent=1).encode(),
                      "manifest.json": json.dumps(manifest, indent=1).encode()})
    return manifest


def _clipped(pieces: list[dict]) -> list[dict]:
    """{"path", "note"} of each piece the reader's limits changed."""
    return [{"path": p["path"], "note": p["note"]} for p in pieces if p.get("note")]


def _previous_skipped(out_dir: Path) -> dict[str, dict]:
    try:
        skipped = loads_json((out_dir / "report.json").read_text())["skipped"]
        return {s["path"]: s for s in skipped}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _slice(tokens: np.ndarray | None, piece: dict) -> np.ndarray | None:
    if tokens is None or piece["offset"] + piece["tokens"] > len(tokens):
        return None
    return tokens[piece["offset"] : piece["offset"] + piece["tokens"]].copy()


def with_style(ids: np.ndarray, slot: int) -> np.ndarray:
    """`ids` with the STYLE token of `slot` in front, or right after START if it starts with one."""
    ids = np.asarray(ids, dtype=np.int64)
    at = 1 if len(ids) and ids[0] == START_ID else 0
    return np.insert(ids, at, style_id(slot))


def piece_styles(out_dir: str | Path, split: str) -> list[str]:
    """Style label of each piece of a split ('' for none), in `load_split` order: the `style`
    (else `source`) column of the MIDI folder's `index.csv` where it has one, else the piece's
    top-level folder (a file directly in the MIDI folder has none)."""
    manifest = loads_json((Path(out_dir) / "manifest.json").read_text())
    root = Path(manifest.get("midi_dir", ""))
    column = _index_column(root, "style") or _index_column(root, "source")
    return [column.get(p["path"]) or (p["path"].split("/")[0] if "/" in p["path"] else "")
            for p in manifest["pieces"] if p["split"] == split]


def folder_label(out_dir: str | Path) -> str:
    """The name of the MIDI folder a token cache was made from (a fine-tuning run's label for
    the pieces without one)."""
    manifest = loads_json((Path(out_dir) / "manifest.json").read_text())
    return Path(manifest.get("midi_dir", "") or Path(out_dir).name).name


def _index_column(root: Path, name: str) -> dict[str, str]:
    """file -> value of one column of `root/index.csv` ({} without the file or the column)."""
    index = root / "index.csv"
    if not index.is_file():
        return {}
    with index.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"file", name} <= rows[0].keys():
        return {}
    return {row["file"]: row[name] for row in rows if row[name]}


class TokenCacheError(ValueError):
    """A token cache whose files do not belong together (a preprocessing run was cut off)."""


def load_split(out_dir: str | Path, split: str) -> list[np.ndarray]:
    """The pieces of one split as uint16 arrays (views into a memory map of tokens.bin).

    TokenCacheError when tokens.bin is not the file manifest.json was written with."""
    out_dir = Path(out_dir)
    manifest = loads_json((out_dir / "manifest.json").read_text())
    tokens = (np.memmap(out_dir / "tokens.bin", dtype=np.uint16, mode="r") if manifest["tokens"]
              else np.fromfile(out_dir / "tokens.bin", dtype=np.uint16))  # mmap refuses 0 bytes
    mismatch = cache_mismatch(manifest, tokens)
    if mismatch:
        raise TokenCacheError(f"token cache {out_dir} is inconsistent: {mismatch} (a "
                              f"preprocessing run was cut off?); preprocess it again")
    return [tokens[p["offset"] : p["offset"] + p["tokens"]]
            for p in manifest["pieces"] if p["split"] == split]


def no_training_pieces(out_dir: str | Path) -> str:
    """Why the token cache `out_dir` has no training pieces, naming its MIDI folder and what to
    do: no usable file, or every piece in the validation split."""
    out_dir = Path(out_dir)
    manifest = loads_json((out_dir / "manifest.json").read_text())
    source, pieces = manifest.get("midi_dir", str(out_dir)), manifest["pieces"]
    if pieces:
        return (f"every piece of {source} ({len(pieces)}) lands in the validation split "
                f"(~{VAL_PERCENT}% of files, chosen by name or index.csv piece_group), so "
                f"training has nothing: add more MIDI files to the folder")
    skipped = len(_previous_skipped(out_dir))
    if skipped:
        return (f"no usable MIDI file in {source}: all {skipped} were skipped (reasons in "
                f"{out_dir / 'report.json'}); give a folder of piano MIDI files")
    return f"no pieces in the token cache {out_dir}; preprocess a folder of MIDI files into it"


# --- augmentation and training windows -------------------------------------------------------

STRETCH_FACTORS = (0.95, 0.975, 1.0, 1.025, 1.05)
TRANSPOSE_RANGE = (-3, 3)


def transpose_ids(ids: np.ndarray, semitones: int) -> np.ndarray:
    """Shift every note by `semitones`; notes pushed outside 0..127 are dropped (on and off)."""
    ids = np.asarray(ids, dtype=np.int64)
    note = is_note(ids)
    pitch = note_pitch(ids) + semitones
    keep = ~note | ((pitch >= 0) & (pitch < N_PITCHES))
    moved = np.where(is_note_on(ids), note_on_id(pitch), note_off_id(pitch))
    return np.where(note, moved, ids)[keep]


def stretch_ids(ids: np.ndarray, factor: float) -> np.ndarray:
    """Scale all times by `factor` at the event level, re-quantising the time shifts."""
    ids = np.asarray(ids, dtype=np.int64)
    if factor == 1.0:
        return ids
    steps = shift_steps(ids)
    time_before = np.cumsum(steps) - steps  # absolute step at which each event happens
    others = ~is_shift(ids)
    new_times = np.rint(time_before[others] * factor).astype(np.int64)
    body = interleave_shifts(np.diff(new_times, prepend=0), ids[others])
    tail = int(np.rint(steps.sum() * factor)) - (int(new_times[-1]) if len(new_times) else 0)
    return np.concatenate([body, gap_to_shift_ids(tail)])


class TokenWindows:
    """Random windows of `length + 1` tokens over pieces, a pure function of (seed, step).

    Pieces are picked in proportion to their length; a piece shorter than the window is used
    whole and padded with PAD (the loss ignores PAD targets). With `augment`, each window is
    transposed by -3..+3 semitones and stretched by one of 0.95..1.05, as in Music Transformer.
    With `styles` (a STYLE slot per piece, -1 for none), a window carries its piece's style token
    in front (after START when it begins the piece), except for a `style_drop` share of windows,
    so the model also learns music without one. A `fim_rate` share of windows is rearranged for
    fill-in-the-middle (fim.py) after that, the style token staying in front.
    """

    def __init__(self, pieces: list[np.ndarray], length: int, *, augment: bool = False,
                 seed: int = 0, styles: Sequence[int] | None = None, style_drop: float = 0.0,
                 fim_rate: float = 0.0):
        slots = list(styles) if styles is not None else [-1] * len(pieces)
        kept = [i for i, p in enumerate(pieces) if len(p) > 1]
        if not kept:
            raise ValueError("no pieces to draw windows from")
        self.pieces, self.slots = [pieces[i] for i in kept], [slots[i] for i in kept]
        self.length, self.augment, self.seed = length, augment, seed
        self.style_drop, self.fim_rate = style_drop, fim_rate
        sizes = np.array([len(p) for p in self.pieces], dtype=np.float64)
        self.weights = sizes / sizes.sum()

    def batch(self, step: int, batch_size: int, rank: int = 0) -> np.ndarray:
        """(batch_size, length + 1) int64 array; `rank` gives each DDP process its own windows."""
        rng = np.random.default_rng([self.seed, step, rank])
        return np.stack([self._window(rng) for _ in range(batch_size)])

    def _window(self, rng: np.random.Generator) -> np.ndarray:
        index = rng.choice(len(self.pieces), p=self.weights)
        piece = self.pieces[index]
        span = self.length + 1
        raw_span = span + span // 4 + 8 if self.augment else span
        start = int(rng.integers(0, max(1, len(piece) - raw_span + 1)))
        window = np.asarray(piece[start : start + raw_span], dtype=np.int64)
        if self.augment:
            window = transpose_ids(window, int(rng.integers(TRANSPOSE_RANGE[0],
                                                            TRANSPOSE_RANGE[1] + 1)))
            window = stretch_ids(window, float(rng.choice(STRETCH_FACTORS)))
        if self.slots[index] >= 0 and rng.random() >= self.style_drop:
            window = with_style(window, self.slots[index])
        window = window[:span]
        if self.fim_rate > 0 and rng.random() < self.fim_rate:
            window = random_fim(window, rng)[:span]  # the end of the middle may be cut off
        if len(window) < span:
            window = np.concatenate([window, np.full(span - len(window), PAD_ID)])
        return window


__all__ = ["END_ID", "PAD_ID", "Piece", "TokenWindows", "find_midi_files", "has_token_cache",
           "load_split", "preprocess_folder", "split_of", "stretch_ids", "transpose_ids"]
