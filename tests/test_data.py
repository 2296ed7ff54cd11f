"""Preprocessor (folder -> tokens.bin + manifest), its cache and CLI; windows and augmentation."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import Track, arrays_to_tuples, write_midi
from hypothesis import given, settings
from hypothesis import strategies as st

from musicgpt import cli
from musicgpt.data import (
    STRETCH_FACTORS,
    TokenWindows,
    find_midi_files,
    has_token_cache,
    load_split,
    preprocess_folder,
    split_of,
    stretch_ids,
    transpose_ids,
)
from musicgpt.events import (
    Note,
    grammar_errors,
    ids_to_arrays,
    ids_to_seconds,
    notes_to_ids,
    wrap_piece,
)
from musicgpt.midi_io import CODEC_VERSION
from musicgpt.pipeline import midi_file_to_ids, read_midi_piece
from musicgpt.vocab import (
    PAD_ID,
    START_ID,
    TIME_SHIFT_OFFSET,
    VELOCITY_OFFSET,
    VOCAB_SIZE,
    VOCAB_VERSION,
)

GOOD = ["a.mid", "sub/b.MIDI", "sub/deeper/c.Mid", "d.midi"]
BAD = {
    "zero.mid": "empty",
    "random.mid": "not a Standard MIDI File",
    "truncated.mid": "truncated",
    "header.mid": "unreadable",
    "silent.mid": "no notes",
    "drums.mid": "only drum notes",
}


def scale(first_pitch: int, n: int = 12) -> list[tuple]:
    return [(first_pitch + i, 60 + i, i * 0.2, i * 0.2 + 0.3) for i in range(n)]


def make_folder(root: Path) -> Path:
    """Four good files in nested folders with mixed-case suffixes, six bad ones, one text file."""
    for i, name in enumerate(GOOD):
        write_midi(root / name, scale(48 + 3 * i, 8 + 4 * i))
    (root / "zero.mid").write_bytes(b"")
    (root / "random.mid").write_bytes(np.random.default_rng(0).bytes(700))
    write_midi(root / "whole.tmp", scale(40, 30))
    (root / "truncated.mid").write_bytes((root / "whole.tmp").read_bytes()[:200])
    header = bytearray((root / "a.mid").read_bytes())
    header[9] = 7  # format 7 does not exist
    (root / "header.mid").write_bytes(bytes(header))
    write_midi(root / "silent.mid", [Track([])])
    write_midi(root / "drums.mid", [Track([(36, 100, 0.0, 0.1)], channel=9)])
    (root / "notes.txt").write_text("not music")
    return root


@pytest.fixture()
def folder(tmp_path) -> Path:
    return make_folder(tmp_path / "midi")


def test_find_midi_files_is_recursive_and_ignores_case(folder):
    found = {p.relative_to(folder).as_posix() for p in find_midi_files(folder)}
    assert found == set(GOOD) | set(BAD)


def test_preprocess_writes_tokens_manifest_and_report(folder, tmp_path):
    out = tmp_path / "out"
    manifest = preprocess_folder(folder, out, workers=1, progress=False)
    assert manifest["vocab_version"] == VOCAB_VERSION
    assert sorted(p["path"] for p in manifest["pieces"]) == sorted(GOOD)
    tokens = np.fromfile(out / "tokens.bin", dtype=np.uint16)
    assert len(tokens) == manifest["tokens"] == sum(p["tokens"] for p in manifest["pieces"])
    for piece in manifest["pieces"]:
        source = folder / piece["path"]
        ids = tokens[piece["offset"] : piece["offset"] + piece["tokens"]]
        assert np.array_equal(ids, midi_file_to_ids(source, wrap=True))
        assert piece["sha1"] == hashlib.sha1(source.read_bytes()).hexdigest()
        assert piece["seconds"] == pytest.approx(ids_to_seconds(ids), abs=0.01)
        assert piece["split"] == split_of(piece["path"])
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["pieces"] == manifest["pieces"]
    assert not list(out.glob("*.tmp"))


def test_bad_files_are_skipped_with_their_reasons(folder, tmp_path):
    out = tmp_path / "out"
    manifest = preprocess_folder(folder, out, workers=1, progress=False)
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert reasons.keys() == BAD.keys()
    for name, reason in BAD.items():
        assert reason in reasons[name]
    report = json.loads((out / "report.json").read_text())
    assert {s["path"]: s["reason"] for s in report["skipped"]} == reasons


def test_evaluation_reads_a_folder_as_the_preprocessor_does(folder, tmp_path):
    from musicgpt.evaluation import read_midi_folder

    manifest = preprocess_folder(folder, tmp_path / "out", workers=1, progress=False)
    names, _, skipped = read_midi_folder(folder)
    assert sorted(names) == sorted(p["path"] for p in manifest["pieces"])
    assert ({s["path"]: s["reason"] for s in skipped}
            == {s["path"]: s["reason"] for s in manifest["skipped"]})


def test_read_midi_piece_gives_ids_or_a_reason_never_both(folder):
    good = read_midi_piece(folder / "a.mid")
    assert good.reason is None and np.array_equal(good.ids, midi_file_to_ids(folder / "a.mid",
                                                                              wrap=True))
    assert good.sha1 == hashlib.sha1((folder / "a.mid").read_bytes()).hexdigest()
    assert read_midi_piece(folder / "silent.mid").ids is None
    missing = read_midi_piece(folder / "gone.mid")
    assert missing.sha1 == "" and missing.ids is None and "cannot read file" in missing.reason


def test_has_token_cache_once_preprocessed(folder, tmp_path):
    assert not has_token_cache(tmp_path / "out")
    preprocess_folder(folder, tmp_path / "out", workers=1, progress=False)
    assert has_token_cache(tmp_path / "out")


def test_second_run_reuses_the_cache_and_gives_identical_tokens(folder, tmp_path):
    out = tmp_path / "out"
    first = preprocess_folder(folder, out, workers=1, progress=False)
    tokens = (out / "tokens.bin").read_bytes()
    assert first["reused"] == 0
    second = preprocess_folder(folder, out, workers=1, progress=False)
    assert second["reused"] == len(GOOD) + len(BAD)
    assert second["pieces"] == first["pieces"]
    assert len(second["skipped"]) == len(BAD)
    assert (out / "tokens.bin").read_bytes() == tokens


def test_a_changed_file_is_re_encoded_and_the_rest_reused(folder, tmp_path):
    out = tmp_path / "out"
    preprocess_folder(folder, out, workers=1, progress=False)
    changed = folder / "sub" / "b.MIDI"
    write_midi(changed, scale(70, 3))
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    manifest = preprocess_folder(folder, out, workers=1, progress=False)
    assert manifest["reused"] == len(GOOD) + len(BAD) - 1
    piece = next(p for p in manifest["pieces"] if p["path"] == "sub/b.MIDI")
    assert piece["sha1"] == hashlib.sha1(changed.read_bytes()).hexdigest()
    tokens = np.fromfile(out / "tokens.bin", dtype=np.uint16)
    ids = tokens[piece["offset"] : piece["offset"] + piece["tokens"]]
    assert np.array_equal(ids, midi_file_to_ids(changed, wrap=True))
    for other in manifest["pieces"]:
        start = other["offset"]
        assert tokens[start] == START_ID and len(ids_to_arrays(tokens[start:start + 50])) > 0


def test_a_deleted_file_leaves_the_manifest(folder, tmp_path):
    out = tmp_path / "out"
    preprocess_folder(folder, out, workers=1, progress=False)
    (folder / "d.midi").unlink()
    manifest = preprocess_folder(folder, out, workers=1, progress=False)
    assert sorted(p["path"] for p in manifest["pieces"]) == sorted(set(GOOD) - {"d.midi"})


@pytest.mark.parametrize("field", ["vocab_version", "codec_version"])
def test_another_vocabulary_or_codec_version_is_not_reused(folder, tmp_path, field):
    out = tmp_path / "out"
    preprocess_folder(folder, out, workers=1, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["codec_version"] == CODEC_VERSION
    (out / "manifest.json").write_text(json.dumps({**manifest, field: -1}))
    again = preprocess_folder(folder, out, workers=1, progress=False)
    assert again["reused"] == 0 and len(again["skipped"]) == len(BAD)


def test_parallel_and_serial_runs_write_the_same_bytes(folder, tmp_path):
    preprocess_folder(folder, tmp_path / "one", workers=1, progress=False)
    preprocess_folder(folder, tmp_path / "two", workers=2, progress=False)
    for name in ("tokens.bin", "report.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_split_is_deterministic_and_about_5_percent():
    keys = [f"composer_{i}/piece_{i * 7}.mid" for i in range(4000)]
    splits = [split_of(k) for k in keys]
    assert splits == [split_of(k) for k in keys]
    assert set(splits) == {"train", "val"}
    assert 0.03 < splits.count("val") / len(keys) < 0.07


def test_index_csv_keeps_a_piece_group_in_one_split(tmp_path):
    root = tmp_path / "midi"
    names = [f"take_{i}.mid" for i in range(6)]
    for i, name in enumerate(names):
        write_midi(root / name, scale(50 + i, 4))
    group = next(f"group_{i}" for i in range(1000) if split_of(f"group_{i}") == "val")
    rows = ["file,piece_group"] + [f"{name},{group}" for name in names]
    (root / "index.csv").write_text("\n".join(rows) + "\n")
    manifest = preprocess_folder(root, tmp_path / "out", workers=1, progress=False)
    assert {p["split"] for p in manifest["pieces"]} == {"val"}
    assert len(load_split(tmp_path / "out", "val")) == len(names)
    assert load_split(tmp_path / "out", "train") == []


def test_load_split_returns_the_pieces_as_uint16(folder, tmp_path):
    manifest = preprocess_folder(folder, tmp_path / "out", workers=1, progress=False)
    pieces = load_split(tmp_path / "out", "train") + load_split(tmp_path / "out", "val")
    assert len(pieces) == len(manifest["pieces"])
    assert all(p.dtype == np.uint16 and p[0] == START_ID for p in pieces)


def test_missing_folder_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        preprocess_folder(tmp_path / "nowhere", tmp_path / "out", workers=1, progress=False)


def test_cli_preprocess_prints_a_summary_and_the_skipped_files(folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["preprocess", "--midi-dir", str(folder), "--out", str(out), "--workers", "1",
            "--no-progress"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert f"{len(GOOD)} pieces" in text and "0 reused" in text
    assert all(f"skipped {name}" in text for name in BAD)
    assert cli.main(argv) == 0
    assert f"{len(GOOD) + len(BAD)} reused" in capsys.readouterr().out


def test_console_script_fails_in_one_line_on_a_missing_folder(tmp_path):
    exe = shutil.which("musicgpt")
    command = [exe] if exe else [sys.executable, "-c", "import sys; from musicgpt.cli import "
                                 "main; sys.exit(main())"]
    result = subprocess.run(command + ["preprocess", "--midi-dir", str(tmp_path / "none"),
                                       "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not found" in result.stderr
    assert "Traceback" not in result.stderr


# --- windows --------------------------------------------------------------------------------

def piece_of(n_notes: int, first_pitch: int = 40) -> np.ndarray:
    notes = [Note(first_pitch + i % 40, 30 + i % 90, i * 0.13, i * 0.13 + 0.4)
             for i in range(n_notes)]
    return wrap_piece(notes_to_ids(notes))


def test_a_piece_shorter_than_the_window_is_used_and_padded():
    short = piece_of(3)
    windows = TokenWindows([short], length=64, seed=1)
    batch = windows.batch(step=0, batch_size=2)
    assert batch.shape == (2, 65) and batch.dtype == np.int64
    for row in batch:
        assert np.array_equal(row[: len(short)], short)
        assert (row[len(short):] == PAD_ID).all()


def test_a_short_file_from_the_preprocessor_reaches_the_windows(tmp_path):
    write_midi(tmp_path / "midi" / "tiny.mid", [(60, 80, 0.0, 0.5)])
    preprocess_folder(tmp_path / "midi", tmp_path / "out", workers=1, progress=False)
    pieces = load_split(tmp_path / "out", "train") + load_split(tmp_path / "out", "val")
    row = TokenWindows(pieces, length=256).batch(step=3, batch_size=1)[0]
    assert list(row[:6]) == list(pieces[0]) and (row[len(pieces[0]):] == PAD_ID).all()


@pytest.mark.parametrize("augment", [False, True])
def test_windows_are_a_function_of_seed_and_step(augment):
    pieces = [piece_of(300), piece_of(50, 60), piece_of(5)]
    windows = TokenWindows(pieces, length=128, augment=augment, seed=7)
    first = windows.batch(step=5, batch_size=8)
    assert first.shape == (8, 129)
    assert ((first >= 0) & (first < VOCAB_SIZE)).all()
    again = TokenWindows(pieces, length=128, augment=augment, seed=7).batch(step=5, batch_size=8)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, windows.batch(step=6, batch_size=8))
    assert not np.array_equal(first, windows.batch(step=5, batch_size=8, rank=1))
    other_seed = TokenWindows(pieces, length=128, augment=augment, seed=8)
    assert not np.array_equal(first, other_seed.batch(step=5, batch_size=8))


def test_windows_without_augmentation_are_slices_of_a_piece():
    piece = piece_of(400)
    for row in TokenWindows([piece], length=100, seed=3).batch(step=0, batch_size=4):
        starts = [i for i in range(len(piece) - 100) if np.array_equal(piece[i:i + 101], row)]
        assert starts


def test_windows_refuse_an_empty_piece_list():
    with pytest.raises(ValueError):
        TokenWindows([np.zeros(1, np.uint16)], length=8)


# --- augmentation ---------------------------------------------------------------------------

note_lists = st.lists(
    st.tuples(st.integers(0, 127), st.integers(1, 127), st.integers(0, 3000),
              st.integers(1, 300)),
    min_size=1, max_size=50,
).map(lambda rows: [Note(p, v, s / 100, (s + d) / 100) for p, v, s, d in rows])
SEEDED = settings(derandomize=True, deadline=None, max_examples=100)


@SEEDED
@given(note_lists, st.integers(-3, 3))
def test_transpose_shifts_notes_and_drops_those_leaving_the_keyboard(notes, semitones):
    ids = wrap_piece(notes_to_ids(notes))
    moved = transpose_ids(ids, semitones)
    expected = [(p + semitones, v, s, e) for p, v, s, e in arrays_to_tuples(ids_to_arrays(ids))
                if 0 <= p + semitones < 128]
    assert arrays_to_tuples(ids_to_arrays(moved)) == sorted(expected, key=lambda n: (n[2], n[0]))
    assert grammar_errors(moved) == []
    is_note = ids < TIME_SHIFT_OFFSET
    assert np.array_equal(moved[moved >= TIME_SHIFT_OFFSET], ids[~is_note])
    assert (len(ids) - len(moved)) % 2 == 0


def test_transpose_by_zero_is_the_identity():
    ids = piece_of(40)
    assert np.array_equal(transpose_ids(ids, 0), ids)


@SEEDED
@given(note_lists, st.sampled_from(STRETCH_FACTORS))
def test_stretch_scales_time_and_keeps_every_other_event_in_order(notes, factor):
    ids = wrap_piece(notes_to_ids(notes)).astype(np.int64)
    stretched = stretch_ids(ids, factor)
    is_shift = (ids >= TIME_SHIFT_OFFSET) & (ids < VELOCITY_OFFSET)
    new_is_shift = (stretched >= TIME_SHIFT_OFFSET) & (stretched < VELOCITY_OFFSET)
    assert np.array_equal(stretched[~new_is_shift], ids[~is_shift])
    steps = np.where(is_shift, ids - TIME_SHIFT_OFFSET + 1, 0)
    new_steps = np.where(new_is_shift, stretched - TIME_SHIFT_OFFSET + 1, 0)
    assert new_steps.sum() == round(steps.sum() * factor)
    # each event lands on its scaled, re-quantised time
    old_times = (np.cumsum(steps) - steps)[~is_shift]
    new_times = (np.cumsum(new_steps) - new_steps)[~new_is_shift]
    assert np.array_equal(new_times, np.rint(old_times * factor).astype(np.int64))
    assert grammar_errors(stretched) == []


def test_stretch_by_one_is_the_identity_and_long_gaps_stay_split():
    ids = wrap_piece(notes_to_ids([Note(60, 80, 0.0, 0.1), Note(62, 80, 2.5, 2.6)]))
    assert np.array_equal(stretch_ids(ids, 1.0), ids)
    stretched = stretch_ids(ids, 1.05)
    shifts = stretched[(stretched >= TIME_SHIFT_OFFSET) & (stretched < VELOCITY_OFFSET)]
    # events at steps 10, 250, 260 move to 10 (10.5 rounds to even), 262 and 273
    assert list(shifts - TIME_SHIFT_OFFSET + 1) == [10, 100, 100, 52, 11]


# --- the cache is committed as a whole; disk errors; folders without MIDI (issue 12) ---------

def _changed(path: Path, first_pitch: int) -> None:
    write_midi(path, scale(first_pitch, 6))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))


def _assert_cache_matches_the_files(folder: Path, out: Path) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    tokens = np.fromfile(out / "tokens.bin", dtype=np.uint16)
    for piece in manifest["pieces"]:
        ids = tokens[piece["offset"] : piece["offset"] + piece["tokens"]]
        assert np.array_equal(ids, midi_file_to_ids(folder / piece["path"], wrap=True))


def test_a_kill_between_the_renames_is_detected_and_nothing_wrong_is_reused(folder, tmp_path,
                                                                            monkeypatch):
    from musicgpt import data

    out = tmp_path / "out"
    preprocess_folder(folder, out, workers=1, progress=False)
    _changed(folder / "a.mid", 80)  # the new tokens.bin differs from the old one
    real_replace = os.replace

    def killed_after_tokens(src, dst):
        real_replace(src, dst)
        if Path(dst).name == "tokens.bin":
            raise KeyboardInterrupt  # the process dies with tokens.bin new, manifest.json old

    monkeypatch.setattr(data.os, "replace", killed_after_tokens)
    with pytest.raises(KeyboardInterrupt):
        preprocess_folder(folder, out, workers=1, progress=False)
    monkeypatch.undo()
    with pytest.raises(data.TokenCacheError, match="inconsistent"):
        load_split(out, "train")
    again = preprocess_folder(folder, out, workers=1, progress=False)
    assert again["reused"] == 0  # an inconsistent cache is not trusted at all
    _assert_cache_matches_the_files(folder, out)
    assert len(load_split(out, "train") + load_split(out, "val")) == len(GOOD)


def test_tokens_of_the_same_size_but_other_bytes_are_detected(folder, tmp_path):
    from musicgpt.data import TokenCacheError

    out = tmp_path / "out"
    preprocess_folder(folder, out, workers=1, progress=False)
    tokens = np.fromfile(out / "tokens.bin", dtype=np.uint16)
    tokens[5] = (int(tokens[5]) + 1) % 256
    tokens.tofile(out / "tokens.bin")
    with pytest.raises(TokenCacheError, match="sha1"):
        load_split(out, "train")
    assert preprocess_folder(folder, out, workers=1, progress=False)["reused"] == 0
    _assert_cache_matches_the_files(folder, out)


@pytest.mark.parametrize("error", [28, 30], ids=["disk_full", "read_only"])
def test_a_failed_write_is_one_line_and_keeps_the_previous_cache(folder, tmp_path, monkeypatch,
                                                                 capsys, error):
    out = tmp_path / "out"
    preprocess_folder(folder, out, workers=1, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _changed(folder / "a.mid", 80)
    real_write = Path.write_bytes

    def fail_on_the_report(self, data):
        if self.name == "report.json.tmp":
            real_write(self, data[:10])  # part written, then the disk says no
            raise OSError(error, os.strerror(error))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", fail_on_the_report)
    argv = ["preprocess", "--midi-dir", str(folder), "--out", str(out), "--workers", "1",
            "--no-progress"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"musicgpt: error: cannot write {out / 'report.json'}: {os.strerror(error)}"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no .tmp, nothing changed


def test_a_folder_without_midi_files_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "midi" / "sub").mkdir(parents=True)
    (tmp_path / "midi" / "sub" / "notes.txt").write_text("not music")
    argv = ["preprocess", "--midi-dir", str(tmp_path / "midi"), "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"no .mid or .midi files in {tmp_path / 'midi'}" in err[0], err
    assert not (tmp_path / "out").exists()


def test_symlinked_folders_are_followed_once(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write_midi(elsewhere / "x.mid", scale(60, 4))
    root = tmp_path / "midi"
    write_midi(root / "a.mid", scale(50, 4))
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)  # must not recurse forever
    found = [p.relative_to(root).as_posix() for p in find_midi_files(root)]
    assert found == ["a.mid", "linked/x.mid"]


@pytest.mark.parametrize("argv", [["preprocess", "--midi-dir", "{midi}", "--out", "{out}"],
                                  ["preprocess", "--help"], ["generate", "--help"]],
                         ids=["preprocess", "preprocess_help", "generate_help"])
def test_commands_that_need_no_model_leave_torch_out(tmp_path, argv):
    midi = tmp_path / "midi"
    midi.mkdir()
    write_midi(midi / "a.mid", [(60, 80, 0.0, 0.5), (64, 80, 0.5, 1.0)])
    args = [a.format(midi=midi, out=tmp_path / "out") for a in argv] + ["--no-progress"] * (
        "--help" not in argv)
    code = ("import sys; from musicgpt.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "sys.exit(3 if 'torch' in sys.modules else 0)")
    for _ in range(2 if "--help" not in argv else 1):  # a first run and a rerun on the cache
        result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr or "torch was imported"
