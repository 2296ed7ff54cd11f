"""Loss curve PNG from a training run's metrics.jsonl (for the model card).

    python benchmarks/plot_training.py runs/default/metrics.jsonl [runs/more/metrics.jsonl ...] \
        --out docs/loss_curve.png

Several logs are joined end to end: a run continued from another's weights (fresh optimizer)
counts its steps from 0, so each log's steps are shifted past the previous log's last step, and
a dashed line marks where each continuation starts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    """Rows of the log; a resumed run appends again from its checkpoint step, so keep the last."""
    by_step: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_step[row["step"]] = {**by_step.get(row["step"], {}), **row}
    return [by_step[s] for s in sorted(by_step)]


def chain(logs: list[list[dict]]) -> tuple[list[dict], list[int]]:
    """Rows of several logs end to end, and the steps where each later log starts."""
    rows, starts, offset = [], [], 0
    for i, log in enumerate(logs):
        if i:
            starts.append(offset)
        rows += [{**row, "step": row["step"] + offset} for row in log]
        offset = rows[-1]["step"] if rows else offset
    return rows, starts


def plot(rows: list[dict], out: Path, title: str, starts: list[int] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    loss = [r["loss"] for r in rows]
    smooth, acc = [], None
    for value in loss:  # exponential moving average, like the progress bar shows
        acc = value if acc is None else 0.95 * acc + 0.05 * value
        smooth.append(acc)
    val = [(r["step"], r["val_nll"]) for r in rows if "val_nll" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(steps, loss, color="#bbbbbb", linewidth=0.6, label="train loss (per step)")
    ax.plot(steps, smooth, color="#1f77b4", label="train loss (EMA)")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", color="#d62728", label="validation NLL")
    for start in starts:
        ax.axvline(start, color="#555555", linestyle="--", linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    ax.set_ylim(bottom=min(loss + [v for _, v in val]) - 0.1, top=min(6.0, max(loss) + 0.1))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", type=Path, nargs="+", help="metrics.jsonl, in training order")
    parser.add_argument("--out", type=Path, default=Path("docs/loss_curve.png"))
    parser.add_argument("--title", default="musicgpt default model")
    args = parser.parse_args()
    rows, starts = chain([read_metrics(path) for path in args.metrics])
    plot(rows, args.out, args.title, starts)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
