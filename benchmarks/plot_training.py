"""Loss curve PNG from a training run's metrics.jsonl (for the model card).

    python benchmarks/plot_training.py runs/default/metrics.jsonl --out docs/loss_curve.png
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


def plot(rows: list[dict], out: Path, title: str) -> None:
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
    parser.add_argument("metrics", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/loss_curve.png"))
    parser.add_argument("--title", default="musicgpt default model")
    args = parser.parse_args()
    plot(read_metrics(args.metrics), args.out, args.title)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
