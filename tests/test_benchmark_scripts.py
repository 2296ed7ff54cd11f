"""The music-speed benchmark runs end to end on a tiny checkpoint and its figures add up."""

from __future__ import annotations

import json
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
