"""The music-speed benchmark runs end to end on a tiny checkpoint and its figures add up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_music_speed_reports_each_weight_mode(tiny_checkpoint, tmp_path):
    out = tmp_path / "speed.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_music_speed.py"),
                           "--checkpoint", str(tiny_checkpoint), "--pieces", "2", "--seconds", "1",
                           "--threads", "1", "--json-out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    modes = json.loads(out.read_text())["modes"]
    assert set(modes) == {"float32", "int8"}
    for name, t in modes.items():
        assert t["tokens"] > 0 and t["wall_s"] > 0
        assert t["music_s_per_s"] == t["music_s"] / t["wall_s"]
        assert f"| {name} | {t['music_s_per_s']:.1f} |" in done.stdout


def test_bench_threads_reports_both_policies_idle_and_loaded(tiny_checkpoint, tmp_path):
    # `--load sleep`: the other process sleeps, so this checks the plumbing without a busy loop
    out = tmp_path / "threads.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_threads.py"),
                           "--checkpoint", str(tiny_checkpoint), "--seconds", "1", "--repeats",
                           "1", "--batches", "1", "2", "--load", "sleep", "--json-out", str(out)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["batch"], r["policy"]) for r in rows] == [
        (1, "old (all threads)"), (1, "new"), (2, "old (all threads)"), (2, "new")]
    for r in rows:
        assert r["idle_ms"] > 0 and r["slowdown"] == r["loaded_ms"] / r["idle_ms"]
        assert f"| {r['batch']} | {r['policy']} | {r['threads']} |" in done.stdout


def test_bench_generate_engine_prints_old_vs_new_in_one_run(tiny_checkpoint):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_generate.py"),
                           "--engine", "--checkpoint", str(tiny_checkpoint), "--new-tokens", "20",
                           "--repeats", "1", "--batch-sizes", "1", "2", "--logit-tokens", "30",
                           "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| int8 |")]
    assert len(rows) == 3  # batches 1 and 2, and batch 1 with 3 candidates
    assert "512-token primer to first new token" in done.stdout
    line = done.stdout.split("float32: max |logit difference| from eager over 30 steps: ")[1]
    differences = [float(part.split()[1].rstrip(",")) for part in line.split(", ")[:2]]
    assert max(differences) < 1e-4  # FastStep and the kernel


def test_bench_duet_replays_calls_and_reports_latency_and_keys(tiny_checkpoint, tmp_path):
    from helpers import write_midi

    from musicgpt.data import split_of

    groups = [g for g in (f"pop909:{i}" for i in range(500)) if split_of(g) == "val"][:1]
    groups += [g for g in (f"asap:{i}" for i in range(500)) if split_of(g) == "val"][:1]
    rows = ["file,source,piece_group"]
    for group in groups:
        source = group.split(":")[0]
        scale = [60, 62, 64, 65, 67, 69, 71, 72]
        notes = [(scale[i % 8], 80, 0.25 * i, 0.25 * i + 0.2) for i in range(240)]  # 60 s
        write_midi(tmp_path / source / "a.mid", notes)
        rows.append(f"{source}/a.mid,{source},{group}")
    (tmp_path / "index.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "duet.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "duet.py"), "--midi-dir",
                           str(tmp_path), "--files", "2", "--phrases", "2", "--checkpoint",
                           str(tiny_checkpoint), "--dtype", "float32", "--json-out", str(out)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["summary"]["turns"] == len(result["turns"]) == 4
    assert all(t["phrase_key"] == "C major" and t["latency_ms"] > 0 for t in result["turns"])
    assert f"| median | {result['summary']['latency_ms']['median']:.1f} |" in done.stdout
