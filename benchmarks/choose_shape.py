"""Which model shape reaches the lowest validation NLL in a fixed training time?

    python benchmarks/choose_shape.py --data-dir TOKENS --out DIR --minutes 15 \
        --shape 4x256x4 [--shape 6x384x6 --shape 4x256x4:relative] [--no-bf16] [--json-out F]

A shape is LAYERSxWIDTHxHEADS with an optional ":relative" (default absolute attention). Each
shape first times a few of its own training steps (bf16 autocast where the CPU has it, unless
`--no-bf16`), then trains as many steps as fit in `--minutes` with its cosine schedule ending
there, on the same data, batch and seed as the others; then its NLL over the same fixed
validation windows is printed. Run one process per shape side by side (`--shape` once each, same
`--out`) so they share the machine alike; a last call with every `--shape` reuses the finished
runs and prints the table. Runs use the full training configuration of the default model
(FIM rate, styles, augmentation), so what is compared is what the full run would train.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from musicgpt.checkpoint import load_model_from_checkpoint
from musicgpt.config import Config
from musicgpt.data import TokenWindows, load_split, piece_styles
from musicgpt.model import GPT
from musicgpt.training import (
    bf16_autocast,
    evaluate_nll,
    make_optimizer,
    style_slots,
    token_loss,
    train,
)

STYLE_NAMES = {"asap": "classical", "pop909": "pop"}


def shape_config(shape: str, args: argparse.Namespace, steps: int) -> Config:
    dims, _, attention = shape.partition(":")
    n_layer, n_embd, n_head = (int(x) for x in dims.split("x"))
    return Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, attention=attention or "absolute",
                  block_size=args.block_size, batch_size=args.batch_size, max_steps=steps,
                  warmup_steps=max(1, min(200, steps // 10)), eval_interval=max(1, steps // 4),
                  eval_batches=10, ckpt_interval=max(1, steps // 4), seed=args.seed,
                  bf16=args.bf16, learning_rate=args.learning_rate)


def seconds_per_step(config: Config, data_dir: str, steps: int = 5) -> float:
    """Median wall time of a training step on real windows, with the run's autocast."""
    torch.manual_seed(config.seed)
    model = GPT(config).train()
    optimizer = make_optimizer(model, config)
    windows = TokenWindows(load_split(data_dir, "train"), config.block_size, seed=config.seed)
    autocast = bf16_autocast(torch.device("cpu"), config.bf16) or nullcontext()
    times = []
    for step in range(steps + 1):  # the first step warms up
        batch = torch.from_numpy(windows.batch(step, config.batch_size))
        start = time.perf_counter()
        with autocast:
            logits = model(batch[:, :-1])
        token_loss(logits, batch[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def run_shape(shape: str, args: argparse.Namespace) -> dict:
    out = Path(args.out) / shape.replace(":", "_")
    saved = out / "result.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    step_s = seconds_per_step(shape_config(shape, args, 100), args.data_dir)
    steps = max(20, int(args.minutes * 60 / step_s))
    config = shape_config(shape, args, steps)
    start = time.perf_counter()
    train(config, out, data_dir=args.data_dir, progress=False, style_names=STYLE_NAMES)
    train_s = time.perf_counter() - start
    model = load_model_from_checkpoint(out / "checkpoint")
    config = model.config
    val = load_split(args.data_dir, "val")
    windows = TokenWindows(val, config.block_size, seed=args.seed + 1,
                           styles=style_slots(config, piece_styles(args.data_dir, "val")))
    nll = evaluate_nll(model, windows, config.replace(eval_batches=args.eval_batches),
                       torch.device("cpu"), nullcontext())
    result = {"shape": shape, "params": model.num_params(), "calibrated_step_s": step_s,
              "steps": steps, "train_s": round(train_s, 1),
              "tokens": steps * config.batch_size * config.block_size, "val_nll": nll,
              "bf16": config.bf16}
    saved.write_text(json.dumps(result, indent=1))
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--shape", action="append", required=True)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--eval-batches", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = [run_shape(shape, args) for shape in args.shape]
    print(f"\n{args.minutes:g} min each, batch {args.batch_size} x {args.block_size}, "
          f"{args.threads} thread(s), bf16 {args.bf16}\n")
    print("| shape | params | s/step | steps | tokens | val NLL |\n|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['shape']} | {r['params']:,} | {r['calibrated_step_s']:.2f} | {r['steps']} | "
              f"{r['tokens'] / 1e6:.2f} M | {r['val_nll']:.4f} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
