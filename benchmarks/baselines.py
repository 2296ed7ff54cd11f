"""NLL table on the validation split: add-one unigram, Kneser-Ney n-grams, and the transformer.

    python benchmarks/baselines.py --data-dir /tmp/cache [--checkpoint runs/default/checkpoint]
        [--orders 2,3,4] [--max-val-tokens 300000] [--json-out nll.json]

Every model scores the same tokens (each val piece's tokens after START, END included), fitted on
the train split of the same preprocessed corpus. `--max-val-tokens` keeps whole val pieces, in
manifest order, until the budget is reached, and applies to every row, so the rows stay comparable.
The ratio row is transformer NLL / best n-gram NLL; the issue's target is at most 0.75.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from musicgpt.baselines import (
    fit_kneser_ney,
    fit_unigram,
    kneser_ney_nll,
    unigram_nll,
)
from musicgpt.data import load_split
from musicgpt.events import ids_to_seconds

ORDER_NAMES = {2: "bigram", 3: "trigram"}


def first_pieces(pieces: list, max_tokens: int | None) -> list:
    """Whole pieces from the front until their scored tokens reach `max_tokens` (None: all)."""
    if not max_tokens:
        return pieces
    kept, tokens = [], 0
    for piece in pieces:
        if tokens >= max_tokens:
            break
        kept.append(piece)
        tokens += len(piece) - 1
    return kept


def transformer_row(checkpoint: str, pieces: list, batch_size: int, threads: int) -> dict:
    import torch

    from musicgpt.checkpoint import load_model_from_checkpoint
    from musicgpt.evaluation import evaluate_pieces

    torch.set_num_threads(threads)
    model = load_model_from_checkpoint(checkpoint, "cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    result = evaluate_pieces(model, [p.astype("int64") for p in pieces], batch_size=batch_size)
    return {"model": f"transformer ({model.config.short()})", "total": result.nll_per_token
            * result.tokens, "tokens": result.tokens, "seconds_taken": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="preprocessed corpus (manifest.json)")
    parser.add_argument("--checkpoint", help="transformer checkpoint folder (optional)")
    parser.add_argument("--orders", default="2,3,4",
                        help="n-gram orders (default 2,3,4; '' for none)")
    parser.add_argument("--max-val-tokens", type=int, default=None,
                        help="score only the first val pieces up to this many tokens")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json-out", help="also write the table as JSON here")
    args = parser.parse_args(argv)

    train = load_split(args.data_dir, "train")
    val = first_pieces(load_split(args.data_dir, "val"), args.max_val_tokens)
    val_seconds = sum(ids_to_seconds(p) for p in val)
    print(f"train: {len(train)} pieces, {sum(len(p) - 1 for p in train):,} tokens; "
          f"val scored: {len(val)} pieces, {sum(len(p) - 1 for p in val):,} tokens, "
          f"{val_seconds / 3600:.2f} h" + (" (limited)" if args.max_val_tokens else ""))

    rows = []
    start = time.perf_counter()
    total, tokens = unigram_nll(fit_unigram(train), val)
    rows.append({"model": "unigram (add-one)", "total": total, "tokens": tokens,
                 "seconds_taken": time.perf_counter() - start})
    for order in (int(o) for o in args.orders.split(",") if o.strip()):
        start = time.perf_counter()
        model = fit_kneser_ney(train, order)
        total, tokens = kneser_ney_nll(model, val)
        name = ORDER_NAMES.get(order, f"{order}-gram")
        rows.append({"model": f"{name} (interpolated modified Kneser-Ney)", "total": total,
                     "tokens": tokens, "seconds_taken": time.perf_counter() - start})
        del model
    if args.checkpoint:
        rows.append(transformer_row(args.checkpoint, val, args.batch_size, args.threads))
    for row in rows:
        row["nll_per_token"] = row["total"] / row["tokens"]
        row["nll_per_second"] = row["total"] / val_seconds
    print_table(rows)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"val_pieces": len(val), "val_seconds":
                                                   val_seconds, "rows": rows}, indent=1))
    return 0


def print_table(rows: list[dict]) -> None:
    print("\n| model | nats/token | nats/second | tokens | time (s) |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['nll_per_token']:.4f} | {row['nll_per_second']:.3f} "
              f"| {row['tokens']:,} | {row['seconds_taken']:.1f} |")
    ngrams = [r for r in rows if "Kneser" in r["model"]]
    transformer = [r for r in rows if r["model"].startswith("transformer")]
    if ngrams and transformer:
        best = min(ngrams, key=lambda r: r["nll_per_token"])
        ratio = transformer[0]["nll_per_token"] / best["nll_per_token"]
        print(f"\ntransformer / best n-gram ({best['model'].split(' ')[0]}): {ratio:.3f} "
              f"({(1 - ratio) * 100:.1f}% lower; target: at least 25% lower)")


if __name__ == "__main__":
    sys.exit(main())
