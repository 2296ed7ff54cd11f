"""Absolute vs relative attention on the real corpus: same budget, data, seed, and steps or time.

    python benchmarks/compare_attention.py --data-dir /tmp/cache --out /tmp/compare_attention
        [--n-layer 2 --n-embd 128 --n-head 2 --block-size 512 --batch-size 8 --steps 200
         --eval-batches 20 --gen-tokens 2048 --gen-samples 4 --top-p 0.95 --threads 1
         --minutes M --json-out FILE]

Equal steps (default) asks which variant learns more per update; `--minutes M` asks which is
better for the same training time: each variant first times a few of its own training steps, then
trains for as many steps as fit in M minutes (its cosine schedule ends there). Relative attention
costs more per step on CPU, so equal time gives it fewer steps.

For each variant: train with `musicgpt.training.train` (a finished run in --out is reused), then
1. validation NLL (nats/token) over `--eval-batches` fixed windows of the val split, the same
   windows for both, overall and by position in the window (does a variant use far context?);
2. generate `--gen-tokens` tokens past the training context (the sampler slides: it re-prefills
   the most recent 3/4 of the context each time the cache is full), `--gen-samples` rows, same
   seed, `--top-p`; music statistics (musicgpt.stats) of the first and the last `block_size`
   tokens of each row, faults over the whole row, and each variant's overlap with real music
   (val excerpts of the same length; 1 = same distribution).
Budgets match when n_layer == n_head: the relative model drops the absolute one's position table
(block_size x n_embd) and adds one (block_size x head_dim) distance table per layer.
Two runs are reported in MODEL_CARD.md: the defaults (equal steps; 50-60 min per variant on 2 busy
shared cores) and `--n-layer 4 --n-embd 256 --n-head 4 --minutes 25 --top-p 1.0` (equal time).
Both ran the two variants in parallel processes, one thread each (`--variants absolute` /
`--variants relative`, then a run with both reuses their result.json and prints the tables).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from musicgpt import stats
from musicgpt.checkpoint import load_model_from_checkpoint
from musicgpt.config import Config
from musicgpt.data import TokenWindows, load_split
from musicgpt.events import grammar_errors, ids_to_arrays
from musicgpt.model import GPT
from musicgpt.sampling import SamplingSettings, generate
from musicgpt.training import token_loss, train
from musicgpt.vocab import PAD_ID

VARIANTS = ("absolute", "relative")
POSITION_BUCKETS = 4


def variant_config(args: argparse.Namespace, attention: str, steps: int) -> Config:
    return Config(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                  block_size=args.block_size, attention=attention, batch_size=args.batch_size,
                  max_steps=steps, warmup_steps=max(1, min(200, steps // 10)),
                  eval_interval=max(1, steps // 4), eval_batches=args.eval_batches // 2,
                  ckpt_interval=max(1, steps // 4), seed=args.seed, device="cpu")


def seconds_per_step(config: Config, data_dir: str, steps: int = 4) -> float:
    """Median wall time of a training step (forward, backward, AdamW) on real windows."""
    torch.manual_seed(config.seed)
    model = GPT(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    windows = TokenWindows(load_split(data_dir, "train"), config.block_size, seed=config.seed)
    times = []
    for step in range(steps + 1):  # the first step warms up and is not counted
        batch = torch.from_numpy(windows.batch(step, config.batch_size))
        start = time.perf_counter()
        token_loss(model(batch[:, :-1]), batch[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def variant_steps(args: argparse.Namespace, attention: str) -> tuple[int, float | None]:
    """`--steps`, or with `--minutes` as many steps as fit that wall time (and the step time)."""
    if not args.minutes:
        return args.steps, None
    step_s = seconds_per_step(variant_config(args, attention, args.steps), args.data_dir)
    return max(10, int(args.minutes * 60 / step_s)), step_s


def train_variant(config: Config, out_dir: Path, data_dir: str) -> dict:
    """Train (or reuse a finished run in `out_dir`); the last metrics line plus wall time."""
    log = out_dir / "metrics.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    if lines and json.loads(lines[-1])["step"] >= config.max_steps:
        last = json.loads(lines[-1])
        return {**last, "train_s": last.get("train_s"), "reused": True}
    if out_dir.exists():
        raise SystemExit(f"{out_dir} holds an unfinished run; remove it or pick another --out")
    start = time.perf_counter()
    metrics = train(config, out_dir, data_dir=data_dir, progress=False)
    seconds = time.perf_counter() - start
    with log.open("a") as handle:
        handle.write(json.dumps({"step": metrics["step"], "train_s": round(seconds, 1)}) + "\n")
    return {**metrics, "train_s": round(seconds, 1), "reused": False}


@torch.no_grad()
def nll_by_position(model: GPT, windows: TokenWindows, batches: int, batch_size: int) -> dict:
    """Mean NLL (nats/token) overall and in POSITION_BUCKETS equal slices of the window."""
    total = torch.zeros(model.config.block_size, dtype=torch.float64)
    count = torch.zeros(model.config.block_size, dtype=torch.float64)
    for step in range(batches):
        batch = torch.from_numpy(windows.batch(step, batch_size))
        x, y = batch[:, :-1], batch[:, 1:]
        loss = F.cross_entropy(model(x).transpose(1, 2), y, ignore_index=PAD_ID, reduction="none")
        total += loss.sum(0).double()
        count += (y != PAD_ID).sum(0).double()
    slices = zip(total.chunk(POSITION_BUCKETS), count.chunk(POSITION_BUCKETS), strict=True)
    return {"nll": float(total.sum() / count.sum()),
            "nll_by_position": [float(t.sum() / c.sum()) for t, c in slices]}


def segment_stats(rows: list[np.ndarray], block_size: int) -> dict:
    """Mean features of the first and the last `block_size` tokens, faults over whole rows."""
    out = {}
    for name, cut in (("first_context", slice(0, block_size)), ("last_context",
                                                                 slice(-block_size, None))):
        feats = [stats.piece_features(ids_to_arrays(r[cut])) for r in rows]
        out[name] = {k: float(np.mean([f[k] for f in feats])) for k in feats[0]}
    whole = [ids_to_arrays(r) for r in rows]
    out["tokens"] = float(np.mean([len(r) for r in rows]))
    out["seconds"] = float(np.mean([n.end_step.max() / stats.STEPS_PER_S if len(n) else 0.0
                                    for n in whole]))
    out["stuck_notes"] = sum(stats.stuck_notes(n) for n in whole)
    out["long_silences"] = sum(stats.long_silences(n) for n in whole)
    out["grammar_errors"] = sum(len(grammar_errors(r)) for r in rows)
    return out


def generation_report(model: GPT, args: argparse.Namespace, val_pieces) -> dict:
    start = time.perf_counter()
    rows = generate(model, None, max_new_tokens=args.gen_tokens, num_samples=args.gen_samples,
                    settings=SamplingSettings(top_p=args.top_p), seed=args.seed)
    seconds = time.perf_counter() - start
    report = segment_stats(rows, model.config.block_size)
    report["tokens_per_s"] = sum(len(r) - 1 for r in rows) / seconds
    whole = [ids_to_arrays(r) for r in rows]
    real = [stats.excerpt(ids_to_arrays(p), report["seconds"]) for p in val_pieces]
    comparison = stats.compare_sets(whole, real)
    report["overlap_with_val"] = {k: v["overlap"] for k, v in comparison.items()}
    return report


def run_variant(attention: str, args: argparse.Namespace, val_pieces) -> dict:
    """Train, evaluate and sample one variant; a result.json made with the same flags is reused
    (so the two variants can run in parallel processes and a last run prints both)."""
    out_dir = Path(args.out) / attention
    saved = out_dir / "result.json"
    flags = {k: v for k, v in vars(args).items() if k not in ("variants", "json_out", "threads")}
    if saved.is_file() and json.loads(saved.read_text()).get("flags") == flags:
        return json.loads(saved.read_text())["result"]
    steps, step_s = variant_steps(args, attention)
    config = variant_config(args, attention, steps)
    trained = train_variant(config, out_dir, args.data_dir)
    model = load_model_from_checkpoint(out_dir / "checkpoint")
    windows = TokenWindows(val_pieces, config.block_size, seed=args.seed + 1)
    result = {"params": model.num_params(), "steps": config.max_steps,
              "calibrated_step_s": step_s, "train": trained,
              **nll_by_position(model, windows, args.eval_batches, config.batch_size)}
    result["generation"] = generation_report(model, args, val_pieces)
    print(f"{attention}: {json.dumps(result)}", file=sys.stderr, flush=True)
    tmp = saved.with_suffix(".tmp")
    tmp.write_text(json.dumps({"flags": flags, "result": result}, indent=1))
    tmp.replace(saved)
    return result


def val_reference(val_pieces, block_size: int) -> dict:
    """Mean features of real music: the first `block_size` tokens of each val piece."""
    feats = [stats.piece_features(ids_to_arrays(p[:block_size])) for p in val_pieces]
    return {k: float(np.mean([f[k] for f in feats])) for k in feats[0]}


def print_report(results: dict, reference: dict, args: argparse.Namespace) -> None:
    budget = (f"{args.minutes:g} min of training each" if args.minutes
              else f"{args.steps} steps each")
    print(f"\n{args.n_layer} layers x {args.n_embd} wide x {args.n_head} heads, context "
          f"{args.block_size}, batch {args.batch_size}, {budget}, seed {args.seed}, "
          f"{torch.get_num_threads()} thread(s)\n")
    print("| variant | params | steps | train s | train tok/s | val NLL | NLL by window quarter |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        quarters = " / ".join(f"{x:.3f}" for x in r["nll_by_position"])
        print(f"| {name} | {r['params']:,} | {r['steps']} | {r['train'].get('train_s')} | "
              f"{r['train'].get('tokens_per_s', '?')} | {r['nll']:.4f} | {quarters} |")
    names = list(results)
    print(f"\nGeneration, {args.gen_samples} x {args.gen_tokens} tokens; features of the first and "
          f"last {args.block_size} tokens (val: first {args.block_size} tokens of each val piece)")
    print("| feature | " + " | ".join(f"{n} first | {n} last" for n in names) + " | val |")
    print("|---" * (2 * len(names) + 2) + "|")
    for feature, real in reference.items():
        cells = " | ".join(f"{results[n]['generation'][seg][feature]:.2f}" for n in names
                           for seg in ("first_context", "last_context"))
        print(f"| {feature} | {cells} | {real:.2f} |")
    print("\n| whole rows | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for key in ("tokens", "seconds", "stuck_notes", "long_silences", "grammar_errors",
                "tokens_per_s"):
        print(f"| {key} | " + " | ".join(f"{results[n]['generation'][key]:.1f}" for n in names)
              + " |")
    for key in results[names[0]]["generation"]["overlap_with_val"]:
        print(f"| overlap with val: {key} | " + " | ".join(
            f"{results[n]['generation']['overlap_with_val'][key]:.3f}" for n in names) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="/tmp/cache", help="preprocessed corpus")
    parser.add_argument("--out", default="/tmp/compare_attention", help="runs go in OUT/<variant>")
    for flag, default in (("n-layer", 2), ("n-embd", 128), ("n-head", 2), ("block-size", 512),
                          ("batch-size", 8), ("steps", 200), ("eval-batches", 20),
                          ("gen-tokens", 2048), ("gen-samples", 4), ("seed", 1337),
                          ("threads", 1)):
        parser.add_argument(f"--{flag}", type=int, default=default, help=f"default {default}")
    parser.add_argument("--minutes", type=float, default=None,
                        help="equal wall time instead of equal steps: each variant trains for "
                             "as many steps as its measured step time fits in this many minutes")
    parser.add_argument("--top-p", type=float, default=0.95,
                        help="sampling for the generation check (0.95, as in the first run; "
                             "1 = off, the sampler's default now)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--json-out", help="write all figures as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    val_pieces = load_split(args.data_dir, "val")
    if not val_pieces:
        raise SystemExit(f"no validation pieces in {args.data_dir}")
    results = {name: run_variant(name, args, val_pieces) for name in args.variants}
    reference = val_reference(val_pieces, args.block_size)
    print_report(results, reference, args)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"args": vars(args), "results": results,
                                                   "val_reference": reference}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
