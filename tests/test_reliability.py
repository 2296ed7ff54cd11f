"""Issue 23, the second reliability pass: results are never NaN passed off as music, memory is
bounded before work, writers do not clash. (Bad command lines are in test_bad_inputs.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import huge_gap_midi_bytes, write_midi

from musicgpt.cli import main, train_main
from musicgpt.data import preprocess_folder, split_of
from musicgpt.events import NoteGrammar, grammar_errors
from musicgpt.locks import LOCK_NAME
from musicgpt.sampling import SamplingSettings, generate
from musicgpt.scoring import draw_scores
from musicgpt.vocab import PAD_ID, START_ID, VOCAB_SIZE, note_on_id

REPO = Path(__file__).resolve().parents[1]
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def midi_folder(tmp_path_factory) -> Path:
    """One short training-split piece."""
    folder = tmp_path_factory.mktemp("midi")
    name = next(f"piece_{i}.mid" for i in range(100) if split_of(f"piece_{i}.mid") == "train")
    write_midi(folder / name, [(60 + i % 12, 80, i * 0.25, i * 0.25 + 0.5) for i in range(40)])
    return folder


@pytest.fixture(scope="module")
def tokens_dir(midi_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokens")
    preprocess_folder(midi_folder, out, workers=1, progress=False)
    return out


@pytest.mark.parametrize("temperature", [1e-3, 1e-6, 1e-30, 1e30])
def test_any_temperature_keeps_the_grammar(tiny_model, temperature):
    settings = SamplingSettings(temperature=temperature)
    rows = generate(tiny_model, None, max_new_tokens=120, num_samples=2, settings=settings,
                    seed=1)
    assert [grammar_errors(row) for row in rows] == [[], []]


@pytest.mark.parametrize("temperature", [1e-6, 1e30])
def test_any_temperature_keeps_the_grammar_when_infilling(make_tiny_model, temperature):
    from musicgpt.infilling import infill
    from musicgpt.vocab import gap_to_shift_ids, velocity_id

    model = make_tiny_model(block_size=256)
    notes = [velocity_id(20)]
    for pitch in range(60, 72):
        notes += [note_on_id(pitch), *gap_to_shift_ids(50), pitch + 128]
    result = infill(model, np.array(notes), 1.0, 2.0, num_samples=2,
                    settings=SamplingSettings(temperature=temperature), seed=3)
    assert [grammar_errors(piece) for piece in result.pieces] == [[], []]


def test_a_tiny_temperature_draws_the_likeliest_allowed_token():
    grammar = NoteGrammar(1, VOCAB_SIZE, styles=False)
    grammar.observe(np.array([START_ID]))
    logits = np.full((1, VOCAB_SIZE), -5.0, dtype=np.float32)
    logits[0, PAD_ID] = 30.0  # the model wants an event the grammar never allows
    logits[0, note_on_id(64)] = 1.0  # the likeliest allowed one
    scores = draw_scores(logits, grammar.allowed, SamplingSettings(temperature=1e-5))
    assert not np.isnan(scores).any() and np.isfinite(scores).any()
    assert int(scores.argmax()) == note_on_id(64) and np.isfinite(scores).sum() == 1


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 0.0, -1.0])
def test_a_temperature_that_is_not_a_finite_positive_number_is_refused(value):
    with pytest.raises(ValueError, match="temperature"):
        SamplingSettings(temperature=value)


# --- one writer per folder ---------------------------------------------------------------------

HOLD = ("import sys, time; from musicgpt.locks import folder_lock\n"
        "with folder_lock(sys.argv[1], 'holder test'):\n"
        "    print('held', flush=True); time.sleep(120)")


def _holder(folder: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=CHILD_ENV,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


@pytest.mark.parametrize("command", ["train", "preprocess"])
def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_ones_lock_is_taken(
        tokens_dir, midi_folder, tmp_path, capsys, command):
    out = tmp_path / "out"
    argv = (["--preset", "tiny", "--data-dir", str(tokens_dir), "--out", str(out),
             "--no-progress", "--max-steps", "1"] if command == "train" else
            ["preprocess", "--midi-dir", str(midi_folder), "--out", str(out), "--no-progress"])
    run = (lambda: train_main(argv)) if command == "train" else (lambda: main(argv))
    holder = _holder(out)
    try:
        assert run() == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"in use by pid {holder.pid} (holder test" in err[0], err
    finally:
        holder.kill()  # as kill -9: the lock file stays, naming a dead process
        holder.wait()
    assert (out / LOCK_NAME).is_file()
    assert run() == 0
    assert not (out / LOCK_NAME).exists()


# --- outputs ------------------------------------------------------------------------------------

@pytest.mark.skipif(not Path("/dev/null").is_char_device(), reason="no /dev/null device")
def test_a_device_is_refused_as_an_output_without_touching_it():
    from musicgpt.cli_checks import UserError, out_midi_files

    with pytest.raises(UserError, match="/dev/null is a device, not a regular file"):
        out_midi_files("--out", [Path("/dev/null")])


def test_a_symlinked_output_writes_its_target_and_stays_a_link(tiny_checkpoint, tmp_path):
    target, link = tmp_path / "real" / "piece.mid", tmp_path / "link.mid"
    target.parent.mkdir()
    link.symlink_to(target)
    argv = ["generate", "--checkpoint", str(tiny_checkpoint), "--out", str(link), "--seconds",
            "1", "--no-progress", "--seed", "1"]
    assert main(argv) == 0
    assert link.is_symlink() and target.read_bytes().startswith(b"MThd")
    assert main(argv) == 0  # an existing MIDI file is replaced, through the link again
    assert link.is_symlink() and sorted(p.name for p in target.parent.iterdir()) == ["piece.mid"]


# --- memory is bounded before work --------------------------------------------------------------

# The child's own high-water mark (VmHWM): on Linux ru_maxrss carries over the RSS of the parent
# at fork across exec, so it would count the pytest process (over 1 GB late in a full run).
PEAK = ("import resource, sys; from musicgpt.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "try:\n"
        "    status = open('/proc/self/status').read().split('VmHWM:')[1]\n"
        "    peak = int(status.split()[0]) * 1024\n"
        "except (OSError, IndexError):\n"
        "    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "print('peak', peak); sys.exit(code)")


def _peak_run(argv: list[str]) -> tuple[int, int, str]:
    """(exit status, peak bytes, stderr) of the CLI in a fresh process."""
    done = subprocess.run([sys.executable, "-c", PEAK, *argv], env=CHILD_ENV,
                          capture_output=True, text=True, timeout=300)
    peak = next(int(line.split()[1]) for line in done.stdout.splitlines()
                if line.startswith("peak "))
    return done.returncode, peak, done.stderr


def test_a_few_bytes_of_huge_gaps_cost_little_memory_as_primer_and_as_infill_input(
        tiny_checkpoint, tmp_path):
    gaps = tmp_path / "gaps.mid"
    gaps.write_bytes(huge_gap_midi_bytes())
    code, peak, err = _peak_run(["generate", "--checkpoint", str(tiny_checkpoint), "--primer",
                                 str(gaps), "--out", str(tmp_path / "o.mid"), "--seconds", "1",
                                 "--no-progress"])
    assert code == 0 and peak < 2**30, (peak, err)  # the primer's first 10 s: C4
    code, peak, err = _peak_run(["infill", "--checkpoint", str(tiny_checkpoint), "--midi",
                                 str(gaps), "--start", "0", "--end", "1", "--out",
                                 str(tmp_path / "f.mid"), "--no-progress"])
    assert code == 2 and peak < 2**30, (peak, err)
    assert err.strip().splitlines() == [f"musicgpt: error: bad MIDI file {gaps}: too long: "
                                        f"{err.split('too long: ')[1].split(' of music')[0]} "
                                        f"of music (the limit is 3 h)"]


def test_an_upload_of_huge_gaps_is_refused_before_it_is_encoded():
    from musicgpt.studio import UploadError, upload_to_ids

    with pytest.raises(UploadError, match="lasts .* minutes; the limit is 10 minutes"):
        upload_to_ids(huge_gap_midi_bytes(), "gaps.mid")


def test_a_file_over_the_size_limit_is_skipped_and_the_folder_goes_on(midi_folder, tmp_path):
    from musicgpt.pipeline import MAX_MIDI_BYTES

    folder = tmp_path / "midi"
    folder.mkdir()
    for source in midi_folder.iterdir():
        (folder / source.name).write_bytes(source.read_bytes())
    with (folder / "huge.mid").open("wb") as huge:  # sparse: 5 GB that take no disk
        huge.truncate(5 * 2**30)
    manifest = preprocess_folder(folder, tmp_path / "tokens", workers=1, progress=False)
    assert len(manifest["pieces"]) == 1
    assert [s["path"] for s in manifest["skipped"]] == ["huge.mid"]
    assert manifest["skipped"][0]["reason"] == (f"too large: 5,120.0 MB (the limit is "
                                                f"{MAX_MIDI_BYTES // 2**20} MB)")


NESTED = "[" * 200_000 + "]" * 200_000


@pytest.mark.parametrize("where", ["config.json", "header"])
def test_json_nested_too_deeply_is_one_line_naming_the_file(tiny_checkpoint, tmp_path, capsys,
                                                            tokens_dir, where):
    run = tmp_path / "run"
    ckpt = run / "checkpoint"
    ckpt.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (ckpt / name).write_bytes((tiny_checkpoint / name).read_bytes())
    if where == "config.json":
        (ckpt / "config.json").write_text(NESTED)
    else:
        header = NESTED.encode()
        (ckpt / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    assert train_main(["--preset", "tiny", "--data-dir", str(tokens_dir), "--out", str(run),
                       "--resume", "--no-progress"]) == 2
    assert main(["generate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o.mid"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    name = "config.json" if where == "config.json" else "model.safetensors"
    assert len(err) == 2 and all(name in line and "nested too deeply" in line for line in err)


def test_style_guidance_counts_in_the_sampling_memory(monkeypatch, make_tiny_model):
    from musicgpt import cli_checks
    from musicgpt.cli_checks import UserError, sampling_memory

    config = make_tiny_model().config
    per_sample = cli_checks._sampling_bytes_per_sample(config)
    monkeypatch.setattr(cli_checks, "free_memory", lambda device: 100 * per_sample)
    sampling_memory(90, config, "cpu")
    with pytest.raises(UserError, match="style guidance counted"):
        sampling_memory(90, config, "cpu", guided=True)


def test_the_cgroup_limit_counts_in_the_free_memory(tmp_path):
    from musicgpt.cli_checks import cgroup_room

    (tmp_path / "memory.max").write_text("1000000\n")
    (tmp_path / "memory.current").write_text("400000\n")
    assert cgroup_room(tmp_path) == 600_000
    (tmp_path / "memory.max").write_text("max\n")
    assert cgroup_room(tmp_path) is None


ULIMIT = ("import resource, sys\n"
          "from musicgpt.cli import main\n"
          "from musicgpt.cli_checks import _status_bytes\n"
          "limit = _status_bytes('VmSize:') + 2**30\n"
          "resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
          "sys.exit(main(sys.argv[1:]))")


def test_the_address_space_ulimit_counts_in_the_sampling_memory(tiny_checkpoint, tmp_path):
    from musicgpt.cli_checks import _ram_available, _sampling_bytes_per_sample
    from musicgpt.config import preset

    n = 2 * 2**30 // _sampling_bytes_per_sample(preset("tiny"))  # ~2 GB: over the 1 GB left
    if (_ram_available() or 0) < 3 * 2**30:
        pytest.skip("too little RAM here to tell the ulimit from the RAM")
    done = subprocess.run([sys.executable, "-c", ULIMIT, "generate", "--checkpoint",
                           str(tiny_checkpoint), "--out", str(tmp_path / "o.mid"),
                           "--num-samples", str(n), "--no-progress"], env=CHILD_ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "would need about" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_preprocess_workers_are_capped_at_the_cores(tmp_path, monkeypatch):
    import os

    from musicgpt import data

    folder = tmp_path / "midi"
    for i in range(3):
        write_midi(folder / f"p{i}.mid", [(60 + i, 80, 0.0, 0.5), (64, 80, 0.5, 1.0)])
    asked = []

    class Pool(data.ProcessPoolExecutor):
        def __init__(self, workers):
            asked.append(workers)
            super().__init__(workers)

    monkeypatch.setattr(data, "ProcessPoolExecutor", Pool)
    preprocess_folder(folder, tmp_path / "tokens", workers=100_000, progress=False)
    assert all(workers <= min(os.cpu_count() or 1, 3) for workers in asked)



@pytest.mark.parametrize(("start", "end", "block_size", "words"), [
    (1.0, 1.001, 256, "the span 1..1.001 s is shorter than one 10 ms step"),
    (1.0, 2.0, 64, "this model's context (64 tokens) is too short to infill any span"),
])
def test_a_span_that_cannot_be_infilled_says_why_in_plain_words(start, end, block_size, words):
    from musicgpt.infilling import InfillError, check_span
    from musicgpt.vocab import gap_to_shift_ids

    ids = gap_to_shift_ids(1000)  # 10 s of silence
    with pytest.raises(InfillError) as caught:
        check_span(ids, start, end, block_size)
    assert str(caught.value) == words
