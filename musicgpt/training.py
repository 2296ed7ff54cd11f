"""Training loop: Config + token streams -> checkpoints, validation NLL, resume, DDP.

Every batch is a pure function of (seed, step, rank), so the data position in a checkpoint is just
the step, and a resumed run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_training_state, restore_optimizer, save_checkpoint
from .config import Config
from .data import TokenWindows, load_split, preprocess_folder
from .model import GPT
from .vocab import PAD_ID


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def learning_rate_at(step: int, config: Config) -> float:
    """Linear warm-up, then cosine decay to min_learning_rate at max_steps."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.min_learning_rate + cosine * (config.learning_rate - config.min_learning_rate)


def make_optimizer(model: GPT, config: Config) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (no decay on norms, biases, embeddings)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("w")]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or n.startswith("w")]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.beta1, config.beta2),
                             fused=False)


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: torch.device) -> _Dist:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _Dist()
    import torch.distributed as dist

    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size())


class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop checkpoints at the next step boundary and returns."""

    def __init__(self) -> None:
        self.raised = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.raised = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


@torch.no_grad()
def evaluate_nll(model: GPT, windows: TokenWindows, config: Config, device: torch.device,
                 autocast) -> float:
    """Mean NLL in nats per token over `eval_batches` fixed validation windows."""
    model.eval()
    total, count = 0.0, 0
    for step in range(config.eval_batches):
        batch = torch.from_numpy(windows.batch(step, config.batch_size)).to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        with autocast:
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                                                 y.reshape(-1), ignore_index=PAD_ID,
                                                 reduction="sum")
        total += loss.item()
        count += int((y != PAD_ID).sum())
    model.train()
    return total / max(count, 1)


def prepare_data(midi_dir: str | Path | None, data_dir: str | Path,
                 progress: bool = True) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if midi_dir is not None:
        manifest = preprocess_folder(midi_dir, data_dir, progress=progress)
        if progress and manifest["skipped"]:
            print(f"skipped {len(manifest['skipped'])} file(s); reasons in {data_dir}/report.json")
    train, val = load_split(data_dir, "train"), load_split(data_dir, "val")
    if not train:
        raise ValueError(f"no training pieces in {data_dir}")
    return train, val or train


def train(config: Config, out_dir: str | Path, *, midi_dir: str | Path | None = None,
          data_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
          stop_after: int | None = None) -> dict:
    """Train `config` and write checkpoints to `out_dir`; returns the last metrics.

    `stop_after` ends the run early at that step (with a checkpoint), as an interruption would.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    data_dir = Path(data_dir or out_dir / "data")
    device = pick_device(config.device)
    dist = _init_distributed(device)
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.rank % torch.cuda.device_count())
    train_pieces, val_pieces = prepare_data(midi_dir if dist.main else None, data_dir,
                                            progress and dist.main) if dist.main else (None, None)
    if dist.world > 1:
        torch.distributed.barrier()
        if not dist.main:
            train_pieces, val_pieces = prepare_data(None, data_dir, False)
    train_windows = TokenWindows(train_pieces, config.block_size, augment=config.augment,
                                 seed=config.seed)
    val_windows = TokenWindows(val_pieces, config.block_size, seed=config.seed + 1)

    torch.manual_seed(config.seed + dist.rank)
    model = GPT(config).to(device)
    optimizer = make_optimizer(model, config)
    start_step, best_val = 0, float("inf")
    ckpt = out_dir / "checkpoint"
    if resume and (ckpt / "state.json").is_file():
        start_step, best_val = _resume(model, optimizer, ckpt, config, device)
    elif resume and dist.main:
        print(f"no checkpoint in {ckpt}; starting from scratch")
    train_model = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                              else None)
    step_fn = torch.compile(train_model) if config.compile else train_model
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()
    log_path = out_dir / "metrics.jsonl"
    out_dir.mkdir(parents=True, exist_ok=True)
    if dist.main:
        print(f"model: {config.short()}, {model.num_params():,} parameters, device {device}")

    tokens_per_step = config.batch_size * config.block_size * config.grad_accum * dist.world
    last_stop = config.max_steps if stop_after is None else min(stop_after, config.max_steps)
    bar = tqdm(total=config.max_steps, initial=start_step, disable=not (progress and dist.main),
               unit="step", dynamic_ncols=True)
    metrics: dict = {"step": start_step}
    model.train()
    tick, step = time.perf_counter(), start_step
    with _StopFlag() as stop:
        while step < last_stop and not stop.raised:
            lr = learning_rate_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for micro in range(config.grad_accum):
                batch = train_windows.batch(step * config.grad_accum + micro, config.batch_size,
                                            dist.rank)
                batch = torch.from_numpy(batch).to(device)
                sync = (nullcontext() if micro == config.grad_accum - 1 or dist.world == 1
                        else train_model.no_sync())
                with sync, autocast:
                    logits = step_fn(batch[:, :-1])
                    loss = torch.nn.functional.cross_entropy(
                        logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1),
                        ignore_index=PAD_ID)
                (loss / config.grad_accum).backward()
                loss_sum += loss.item() / config.grad_accum
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            elapsed = time.perf_counter() - tick
            metrics = {"step": step, "loss": round(loss_sum, 4), "lr": lr,
                       "tokens_per_s": round(tokens_per_step * (step - start_step) / elapsed, 1)}
            bar.set_postfix(loss=f"{loss_sum:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
            bar.update()
            at_eval = step % config.eval_interval == 0 or step == config.max_steps
            if at_eval:
                metrics["val_nll"] = round(evaluate_nll(model, val_windows, config, device,
                                                        autocast), 4)
                best_val = min(best_val, metrics["val_nll"])
                bar.write(f"step {step}: train loss {loss_sum:.4f}, "
                          f"val NLL {metrics['val_nll']:.4f} nats/token")
            if dist.main:
                with log_path.open("a") as log:
                    log.write(json.dumps({**metrics, "time": round(time.time(), 1)}) + "\n")
            if dist.main and (step % config.ckpt_interval == 0 or at_eval):
                _save(model, optimizer, ckpt, step, best_val)
    bar.close()
    if dist.main and step > start_step:
        _save(model, optimizer, ckpt, step, best_val)
        if stop.raised:
            print(f"interrupted: checkpoint at step {step} in {ckpt}; continue with --resume")
    if dist.world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return {**metrics, "best_val_nll": best_val, "checkpoint": str(ckpt)}


def _save(model: GPT, optimizer, ckpt: Path, step: int, best_val: float) -> None:
    rng = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["rng.cuda"] = torch.cuda.get_rng_state()
    save_checkpoint(model, ckpt, optimizer=optimizer,
                    state={"step": step, "best_val_nll": best_val if math.isfinite(best_val)
                           else None}, extra_tensors=rng)


def _resume(model: GPT, optimizer, ckpt: Path, config: Config, device) -> tuple[int, float]:
    from safetensors.torch import load_model

    state, tensors = load_training_state(ckpt)
    load_model(model, str(ckpt / "model.safetensors"), device=str(device))
    restore_optimizer(optimizer, state["optimizer"], {k: v.to(device) for k, v in tensors.items()
                                                      if k.startswith("optim.")})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    print(f"resumed from step {state['step']} ({ckpt})")
    best = state.get("best_val_nll")
    return int(state["step"]), float(best) if best is not None else float("inf")
