"""Training loop: Config + token streams -> checkpoints, validation NLL, resume, DDP.

Every batch is a pure function of (seed, step, rank), so the data position in a checkpoint is just
the step, and a resumed run sees exactly the batches an uninterrupted run would have seen.
What it trains on (pieces, style table, windows) comes from training_data.py; ranks, agreement
between them and the stop signal from distributed.py.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import (
    CheckpointError,
    checkpoint_dir,
    has_weights,
    load_training_state,
    load_weights,
    restore_optimizer,
    save_checkpoint,
)
from .config import Config
from .data import TokenWindows
from .device import pick_device
from .distributed import Dist, StopFlag, agree, any_rank, env_rank, init_distributed
from .files import writing
from .layers import Linear
from .locks import folder_lock
from .model import GPT
from .run_folder import RunExistsError, append_jsonl, check_run_folder, trim_metrics  # noqa: F401
from .schedule import TrainClock, learning_rate_at  # noqa: F401 (re-exported)
from .training_data import (
    labelled_style_names,
    make_windows,
    prepare_data,
    run_styles,
    style_slots,  # noqa: F401 (re-exported: tests/test_finetune.py)
)
from .vocab import PAD_ID


def make_optimizer(model: GPT, config: Config) -> torch.optim.AdamW:
    """AdamW with weight decay on the Linear matrices only (none on norms, biases, embeddings).

    Decided by module type, not by name, so tables added later (relative-position embeddings)
    land on the no-decay side.
    """
    decay_ids = {id(m.weight) for m in model.modules() if isinstance(m, Linear)}
    decay = [p for p in model.parameters() if id(p) in decay_ids]
    no_decay = [p for p in model.parameters() if id(p) not in decay_ids]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.beta1, config.beta2))


def token_loss(logits: torch.Tensor, targets: torch.Tensor,
               reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits (B, T, V) against targets (B, T) in fp32, PAD targets skipped.

    The one loss of training and validation, so both score the same tokens the same way (fp32
    even under bf16 autocast: the softmax over the vocabulary loses too much in bf16).
    """
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                                             targets.reshape(-1), ignore_index=PAD_ID,
                                             reduction=reduction)


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
        total += token_loss(logits, y, reduction="sum").item()
        count += int((y != PAD_ID).sum())
    model.train()
    return total / max(count, 1)


def bf16_autocast(device: torch.device, enabled: bool):
    """bf16 autocast where the hardware runs it natively (CUDA with bf16, CPUs with AVX512-BF16
    or AMX), else None: on other CPUs bf16 is emulated and slower than fp32."""
    if not enabled:
        return None
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and _cpu_has_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return None


def _cpu_has_bf16() -> bool:
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((check and check()) or (amx and amx()))


@dataclass
class _Run:
    """What every step needs: model (plain and as trained: DDP and/or compiled), data, places."""

    config: Config
    model: GPT
    train_model: torch.nn.Module  # the model, or its DDP wrapper
    step_fn: torch.nn.Module  # train_model, or its torch.compile'd form
    optimizer: torch.optim.Optimizer
    device: torch.device
    dist: Dist
    autocast: object
    train_windows: TokenWindows
    val_windows: TokenWindows
    out_dir: Path
    ckpt: Path
    clock: TrainClock
    info: dict  # what state.json tells about the run: files, data styles, init_from
    best_val: float = float("inf")
    last_val: float | None = None

    @property
    def best(self) -> Path:
        """Where the weights of the best validation NLL so far are kept."""
        return self.out_dir / "best"


def train(config: Config, out_dir: str | Path, *, midi_dir: str | Path | None = None,
          data_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
          stop_after: int | None = None, style_names: dict[str, str] | None = None,
          overwrite: bool = False, init_from: str | Path | None = None) -> dict:
    """Train `config` and write checkpoints to `out_dir`/checkpoint; returns the last metrics.
    Each validation NLL better than the run's best so far also saves the weights to
    `out_dir`/best. With `config.max_minutes`, the run is planned and stopped on time.

    A checkpoint already in `out_dir` is continued with `resume` or replaced with `overwrite`;
    with neither, RunExistsError before anything is read or written.

    Without styles in `config`, each piece's style label (data.piece_styles) gets a STYLE token,
    named by `style_names` (label -> readable name) where given.

    `init_from` (a checkpoint folder) fine-tunes: the model starts from its weights (`config`
    must have its architecture: finetune.finetune_config), and the pieces' labels take free
    style slots beside the source's (finetune.add_styles); a piece without a label is labelled
    with the MIDI folder's name.

    `stop_after` ends the run early at that step (with a checkpoint), as an interruption would.
    SIGINT and SIGTERM end the run at the next step boundary, also with a checkpoint.
    """
    check_run_folder(out_dir, resume, overwrite)
    lock = folder_lock(out_dir, "train.py") if env_rank() == 0 else nullcontext()
    with lock:
        return _train(config, Path(out_dir), midi_dir, data_dir, resume, progress, stop_after,
                      style_names, init_from)


def _train(config: Config, out_dir: Path, midi_dir, data_dir, resume: bool, progress: bool,
           stop_after: int | None, style_names: dict[str, str] | None, init_from) -> dict:
    """`train` once the run folder is checked and locked."""
    run = _setup(config, Path(out_dir), midi_dir, data_dir, progress, style_names, init_from)
    start_step = _resume(run) if resume else 0
    config, clock = run.config, run.clock  # the clock as _resume restored it
    if run.dist.main:
        trim_metrics(run.out_dir / "metrics.jsonl", start_step)
    last_step = config.max_steps if stop_after is None else min(stop_after, config.max_steps)
    bar = _progress_bar(config, start_step, progress and run.dist.main)
    metrics: dict = {"step": start_step}
    tick, step = time.perf_counter(), start_step
    with StopFlag() as stop:
        while step < last_step and not any_rank(stop.raised, run.dist):
            warmup = int(agree(clock.warmup_steps(config), run.dist))
            lr = learning_rate_at(step, config, agree(clock.progress(step, config), run.dist),
                                  warmup)
            loss = _train_step(run, step, lr)
            step += 1
            clock.step_done()
            _check_finite(loss, step, run)
            timed_out = clock.timed and any_rank(clock.out_of_time(), run.dist)
            tokens = _tokens_per_step(config, run.dist) * (step - start_step)
            metrics = {"step": step, "loss": round(loss, 4), "lr": lr,
                       "tokens_per_s": round(tokens / (time.perf_counter() - tick), 1)}
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
            bar.update()
            at_eval = step % config.eval_interval == 0 or step == config.max_steps or timed_out
            improved = False
            if at_eval and run.dist.main:
                metrics["val_nll"] = run.last_val = _validate(run)
                improved = run.last_val < run.best_val
                run.best_val = min(run.best_val, run.last_val)
                bar.write(f"step {step}: train loss {loss:.4f}, "
                          f"val NLL {metrics['val_nll']:.4f} nats/token")
            if run.dist.main:
                append_jsonl(run.out_dir / "metrics.jsonl",
                             {**metrics, "time": round(time.time(), 1)})
                if step % config.ckpt_interval == 0 or at_eval:
                    _save(run, step)
                if improved:  # after the checkpoint --resume needs
                    save_checkpoint(run.model, run.best, state=_state(run, step))
            if timed_out:
                break
    bar.close()
    _finish(run, step, start_step, interrupted=stop.raised)
    return {**metrics, "best_val_nll": run.best_val if math.isfinite(run.best_val) else None,
            "checkpoint": str(run.ckpt),
            **({"best_checkpoint": str(run.best)} if math.isfinite(run.best_val) else {}),
            **({"minutes": round(clock.spent_s / 60, 2)} if clock.timed else {}),
            **({"interrupted_by": stop.signum} if stop.raised else {})}


def _validate(run: _Run) -> float:
    return round(evaluate_nll(run.model, run.val_windows, run.config, run.device, run.autocast),
                 4)


class TrainingDiverged(ValueError):
    """The loss or the weights stopped being finite numbers; nothing of that step is saved."""


def _check_finite(loss: float, step: int, run: _Run) -> None:
    """Stop at the first non-finite loss: the weights are unusable from there on, and the last
    good checkpoint stays as it was."""
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"training diverged at step {step}: the loss is {loss} (try a lower "
            f"--learning-rate); {_kept(run)}")


def _kept(run: _Run) -> str:
    if has_weights(run.ckpt):
        return f"the last good checkpoint is kept in {run.ckpt}"
    return "nothing was saved"


def _setup(config: Config, out_dir: Path, midi_dir, data_dir, progress: bool,
           style_names: dict[str, str] | None = None, init_from=None) -> _Run:
    """Device, process group, data, model, optimizer, DDP and compile wrappers, autocast."""
    data_dir = Path(data_dir or out_dir / "data")
    device = pick_device(config.device)
    dist = init_distributed(device)
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if dist.main:  # rank 0 preprocesses (cached); the others wait, then read its output
        data = prepare_data(midi_dir, data_dir, progress=progress)
    if dist.world > 1:
        torch.distributed.barrier()
        if not dist.main:
            data = prepare_data(None, data_dir, progress=False)
    log = print if dist.main else lambda _: None
    config, data = run_styles(config, data, data_dir, style_names, init_from, log)
    torch.manual_seed(config.seed)  # same initial weights on every rank (DDP also broadcasts)
    model = GPT(config).to(device)
    if init_from is not None:
        load_weights(model, init_from, device)
        log(f"fine-tuning from {init_from}")
    train_model = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    bf16 = bf16_autocast(device, config.bf16)
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    if dist.main:
        styles = f", styles: {', '.join(config.styles)}" if config.styles else ""
        fim = f", FIM rate {config.fim_rate}" if config.has_fim and config.fim_rate else ""
        print(f"model: {config.short()}, {model.num_params():,} parameters, device {device}"
              f"{', bf16 autocast' if bf16 else ', fp32'}, {dist.world} process(es){fim}{styles}")
    train_windows, val_windows = make_windows(config, data)
    info = {"files": len(data.train) + (len(data.val) if data.val is not data.train else 0),
            "data_styles": sorted(set(labelled_style_names(config, data.train_styles))),
            **({"init_from": str(init_from)} if init_from is not None else {})}
    return _Run(config, model, train_model,
                torch.compile(train_model) if config.compile else train_model,
                make_optimizer(model, config), device, dist, bf16 or nullcontext(),
                train_windows, val_windows, out_dir, out_dir / "checkpoint",
                TrainClock(config.max_minutes * 60), info)


def _train_step(run: _Run, step: int, lr: float) -> float:
    """One optimizer step at learning rate `lr` (grad_accum micro-batches, clipping); the mean
    training loss."""
    config = run.config
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    loss_sum = 0.0
    for micro in range(config.grad_accum):
        batch = run.train_windows.batch(step * config.grad_accum + micro, config.batch_size,
                                        run.dist.rank)
        batch = torch.from_numpy(batch).to(run.device)
        last = micro == config.grad_accum - 1
        sync = nullcontext() if last or run.dist.world == 1 else run.train_model.no_sync()
        with sync:
            with run.autocast:
                logits = run.step_fn(batch[:, :-1])
            loss = token_loss(logits, batch[:, 1:])
            (loss / config.grad_accum).backward()
        loss_sum += loss.item() / config.grad_accum
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss_sum


def _tokens_per_step(config: Config, dist: Dist) -> int:
    return config.batch_size * config.block_size * config.grad_accum * dist.world


def _progress_bar(config: Config, start_step: int, enabled: bool):
    """tqdm over steps: its ETA comes from the step rate; loss and tokens/s go in the postfix."""
    from tqdm import tqdm

    total = None if config.max_minutes else config.max_steps  # a timed run: steps unknown
    return tqdm(total=total, initial=start_step, disable=not enabled, unit="step",
                dynamic_ncols=True)


def _finish(run: _Run, step: int, start_step: int, interrupted: bool) -> None:
    if run.dist.main and step > start_step:
        _save(run, step)
        if math.isfinite(run.best_val) and not interrupted:
            print(f"best validation NLL {run.best_val:.4f}: {run.best}; last: {run.ckpt}")
        if interrupted:
            print(f"interrupted: checkpoint at step {step} in {run.ckpt}; continue with --resume")
    if run.dist.world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _save(run: _Run, step: int) -> None:
    _check_weights_finite(run, step)
    rng = {"rng.torch": torch.get_rng_state()}
    if run.device.type == "cuda":
        rng["rng.cuda"] = torch.cuda.get_rng_state(run.device)
    save_checkpoint(run.model, run.ckpt, optimizer=run.optimizer, state=_state(run, step),
                    extra_tensors=rng)


def _check_weights_finite(run: _Run, step: int) -> None:
    if not all(bool(torch.isfinite(p).all()) for p in run.model.parameters()):
        raise TrainingDiverged(f"training diverged by step {step}: the weights hold NaN or inf "
                               f"(try a lower --learning-rate); {_kept(run)}")


def _state(run: _Run, step: int) -> dict:
    """state.json's contents beside the optimizer: step, validation NLLs (best so far, last
    measured), training time, and what the run trained on (for the app's labels)."""
    best = run.best_val if math.isfinite(run.best_val) else None
    return {"step": step, "best_val_nll": best, "val_nll": run.last_val, **run.clock.state(),
            **run.info}


def _resume(run: _Run) -> int:
    """Load weights, optimizer moments, RNG, best validation NLL and training time from the
    run's checkpoint; returns its step.

    Weights that cannot be used are refused (CheckpointError); weights without a usable training
    state are kept: training continues from them with a fresh optimizer, counting from step 0.
    """
    ckpt = checkpoint_dir(run.ckpt)
    log = print if run.dist.main else (lambda _: None)
    load_weights(run.model, ckpt, run.device)
    try:
        step = _restore_training_state(run, ckpt)
    except (CheckpointError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        run.optimizer = make_optimizer(run.model, run.config)  # no half-restored moments
        run.best_val, run.last_val = float("inf"), None
        run.clock = TrainClock(run.config.max_minutes * 60)
        log(f"no usable training state in {ckpt} ({exc}); continuing from its weights with a "
            f"fresh optimizer, counting steps from 0")
        return 0
    if run.clock.timed and run.clock.spent_s >= run.clock.budget_s:
        raise ValueError(f"{ckpt / 'state.json'}: the run has trained "
                         f"{run.clock.spent_s / 60:.2f} minutes, and --max-minutes is "
                         f"{run.config.max_minutes:g}: nothing to train; give a larger "
                         f"--max-minutes")
    if step >= run.config.max_steps:
        raise ValueError(f"{ckpt / 'state.json'}: the checkpoint is at step {step:,}, and "
                         f"--max-steps is {run.config.max_steps:,}: nothing to train; give a "
                         f"larger --max-steps")
    log(f"resumed from step {step} ({ckpt})")
    return step


def _restore_training_state(run: _Run, ckpt: Path) -> int:
    """Restore the training state onto `run`; returns the step."""
    state, tensors = load_training_state(ckpt)
    restore_optimizer(run.optimizer, state["optimizer"],
                      {k: v.to(run.device) for k, v in tensors.items() if k.startswith("optim.")})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and run.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], run.device)
    best, last = state.get("best_val_nll"), state.get("val_nll")
    run.best_val = float(best) if best is not None else float("inf")
    run.last_val = float(last) if last is not None else None
    if "init_from" in state:  # the provenance of a fine-tuned run stays with it
        run.info.setdefault("init_from", state["init_from"])
    warm, warmup = state.get("warm_seconds"), state.get("warmup_steps")
    run.clock = TrainClock(run.config.max_minutes * 60, float(state.get("train_seconds", 0.0)),
                           float(warm) if warm is not None else None,
                           int(warmup) if warmup is not None else None)
    return int(state["step"])
