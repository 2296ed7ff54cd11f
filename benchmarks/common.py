"""Shared set-up for the model benchmarks: the benchmark config, our model and a Hugging Face GPT-2
computing the same function, interleaved timing, and peak memory measured in a child process.

Peak memory: torch allocates outside Python's allocator, so tracemalloc sees nothing. Each side is
run in its own child process (`python benchmarks/X.py --side NAME ... --memory`) that reads its
resident set after set-up (imports, weights), resets the high-water mark (`clear_refs`), runs the
workload and reads the mark again (`VmHWM` in /proc/self/status): the table gives that peak and
its growth over the set-up. (getrusage's ru_maxrss would not do: Linux carries the parent's
high-water mark across fork and exec, and it would include set-up transients such as copying
weights into the peer model.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from musicgpt.config import Config
from musicgpt.model import GPT
from musicgpt.vocab import PAD_ID, START_ID, VOCAB_SIZE, is_event

REPO = Path(__file__).resolve().parents[1]

# Issue 3's benchmark shape: 6 layers x 512 wide x 8 heads, context 2048, vocab 391, fp32.
BENCH_CONFIG = Config(n_layer=6, n_head=8, n_embd=512, block_size=2048, dropout=0.0)


def our_model(config: Config = BENCH_CONFIG, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(config).eval()


def hf_model_from(model: GPT, *, dropout: float = 0.0, attn_implementation: str = "sdpa"):
    """A transformers GPT2LMHeadModel with our weights copied in (same layout: W is (in, out))."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    hf_config = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                           n_layer=c.n_layer, n_head=c.n_head, resid_pdrop=dropout,
                           embd_pdrop=dropout, attn_pdrop=dropout, activation_function="gelu_new",
                           bos_token_id=START_ID, eos_token_id=None, pad_token_id=PAD_ID,
                           attn_implementation=attn_implementation)
    hf = GPT2LMHeadModel(hf_config)
    ours = model.state_dict()
    renamed = {"transformer." + k.replace("blocks.", "h."): v for k, v in ours.items()}
    renamed["lm_head.weight"] = ours["wte.weight"]
    missing, unexpected = hf.load_state_dict(renamed, strict=False)
    missing = [k for k in missing if not k.endswith(".attn.bias") and "masked_bias" not in k]
    if missing or unexpected:
        raise RuntimeError(f"weight copy failed: missing {missing}, unexpected {unexpected}")
    return hf.eval()


def random_music_ids(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Random ids of music events (notes, shifts, velocities; no specials), the same per seed."""
    music = torch.from_numpy(np.flatnonzero(is_event(np.arange(VOCAB_SIZE))))
    return music[torch.randint(0, len(music), shape, generator=torch.Generator().manual_seed(seed))]


def max_logit_difference(ours: GPT, hf, length: int = 64) -> float:
    """Both models on the same random ids: the largest |logit difference| (should be ~1e-5)."""
    idx = random_music_ids((2, length))
    with torch.no_grad():
        hf_logits = hf(idx, attention_mask=torch.ones_like(idx)).logits
        return float((ours(idx) - hf_logits).abs().max())


def interleaved(sides: dict[str, Callable[[], object]], repeats: int) -> dict[str, Timing]:
    """Median wall and CPU seconds per side, running the sides in turn so load hits both alike.

    On a machine shared with other jobs, wall time measures the scheduler as much as the code;
    with one torch thread, process CPU time is the work done and stays put under load.
    """
    walls: dict[str, list[float]] = {name: [] for name in sides}
    cpus: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            cpus[name].append(time.process_time() - cpu)
            walls[name].append(time.perf_counter() - wall)
    return {name: Timing(statistics.median(walls[name]), statistics.median(cpus[name]))
            for name in sides}


@dataclass(frozen=True)
class Timing:
    wall_s: float
    cpu_s: float


def maxrss_mb() -> float:
    """Peak resident memory of this process so far, in MB (VmHWM; ru_maxrss off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def add_side_arguments(parser, default_side: str) -> None:
    """`--threads`, `--no-memory`, and the hidden flags a one-side memory child is run with."""
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--side", default=default_side, help=argparse.SUPPRESS)


def side_peak_memory(script: str | Path, side: str, threads: int | None, *flags: str) -> dict:
    """`peak_memory_in_child` for one side, with `--side` and `--threads` passed on."""
    child = ["--side", side, *flags] + (["--threads", str(threads)] if threads else [])
    return peak_memory_in_child(script, child)


def peak_memory_in_child(script: str | Path, args: list[str]) -> dict:
    """Run `python script *args --memory` and parse its last line (a JSON dict)."""
    out = subprocess.run([sys.executable, str(script), *args, "--memory"], cwd=REPO,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def reset_peak_memory() -> float:
    """Forget the set-up's peak (Linux: clear_refs 5 resets VmHWM); returns the RSS now, MB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return maxrss_mb()


def report_memory(setup_mb: float) -> None:
    """The child side of `peak_memory_in_child`: print RSS after set-up and the peak, as JSON."""
    peak = maxrss_mb()
    print(json.dumps({"setup_mb": round(setup_mb, 1), "peak_mb": round(peak, 1),
                      "growth_mb": round(peak - setup_mb, 1)}))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"
