"""What fill-in-the-middle training and style tokens buy, measured on validation music.

    python benchmarks/fim_style.py --data-dir TOKENS --fim RUN_A/checkpoint \
        [--plain RUN_B/checkpoint] [--spans 200] [--samples-per-style 20] [--json-out F]

Both checkpoints must come from the same data, steps and seed, `--plain` with fim_rate 0.
Printed, each on the validation split:
1. Middle NLL: random spans of 1-4 s in validation pieces; the true middle's NLL (nats/token)
   given prefix and suffix in the FIM order, against given the same prefix tokens only
   (left-to-right), same model, same spans, same middle tokens; and given a longer prefix that
   also takes the suffix's room in the context.
2. Left-to-right NLL of the FIM model against the plain model: fixed validation windows, style
   token in front as in training, music tokens scored (the cost of FIM training).
3. Style: the same windows with the right style token against none (FIM model), and for
   `--samples-per-style` 30 s samples per style, the overlap of their music statistics with each
   style's validation excerpts: a style works when its samples overlap its own style's music
   more than the other's; and the share of each style's samples whose statistics lie nearest
   their own style's validation centroid (stats.nearest_set_shares).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from musicgpt import stats
from musicgpt.checkpoint import load_model_from_checkpoint
from musicgpt.data import TokenWindows, load_split, piece_styles, with_style
from musicgpt.events import ids_to_arrays
from musicgpt.fim import cut_at_steps
from musicgpt.infilling import continuation_prompt, fim_prompt
from musicgpt.sampling import SamplingSettings, generate
from musicgpt.vocab import FILL_MIDDLE_ID, START_ID, is_event, shift_steps, style_id

FEATURES = ("note_density_per_s", "pitch_range_semitones", "pitch_class_entropy_bits",
            "mean_polyphony", "mean_ioi_s")


@torch.no_grad()
def continuation_nll(model, prompt: np.ndarray, target: np.ndarray) -> float:
    """Summed NLL (nats) of `target` following `prompt`, one forward pass."""
    seq = torch.from_numpy(np.concatenate([prompt, target]).astype(np.int64))[None]
    logits = model(seq[:, :-1]).float()[0, len(prompt) - 1 :]
    return float(F.cross_entropy(logits, seq[0, len(prompt) :], reduction="sum"))


def middle_nll(model, pieces, styles_of, n_spans: int, seed: int) -> dict:
    """Mean NLL per middle token, FIM order vs prefix only, over the same random spans."""
    rng = np.random.default_rng(seed)
    block = model.config.block_size
    fim_total = l2r_total = longest_total = count = 0.0
    spans = 0
    while spans < n_spans:
        i = int(rng.integers(len(pieces)))
        piece = np.asarray(pieces[i], dtype=np.int64)
        if styles_of[i] >= 0:
            piece = with_style(piece, styles_of[i])
        total = int(shift_steps(piece).sum())
        gap = int(rng.integers(100, 401))
        if total < gap + 200:
            continue
        t1 = int(rng.integers(100, total - gap))
        cut = cut_at_steps(piece, t1, t1 + gap)
        budget = len(cut.middle) + 1
        if not 0 < len(cut.middle) <= block // 2:
            continue
        fim = fim_prompt(cut, block, budget)
        # the same prefix tokens without the suffix: only the suffix differs between the two
        n_prefix = len(fim) - int(np.flatnonzero(fim == FILL_MIDDLE_ID)[0]) - 2
        l2r = np.concatenate([cut.header, cut.prefix[len(cut.prefix) - n_prefix :]])
        longest = continuation_prompt(cut, block, budget)  # all the room for the prefix
        longest_total += continuation_nll(model, longest, cut.middle)
        fim_total += continuation_nll(model, fim, cut.middle)
        l2r_total += continuation_nll(model, l2r, cut.middle)
        count += len(cut.middle)
        spans += 1
    return {"spans": spans, "middle_tokens": int(count), "fim_nll": fim_total / count,
            "left_to_right_nll": l2r_total / count,
            "left_to_right_longer_prefix_nll": longest_total / count}


@torch.no_grad()
def window_nll(model, windows: TokenWindows, batches: int, batch_size: int) -> float:
    """Mean NLL over the music targets of fixed windows (style tokens and PAD not scored)."""
    total = count = 0.0
    for step in range(batches):
        batch = torch.from_numpy(windows.batch(step, batch_size))
        logits = model(batch[:, :-1]).float()
        target = batch[:, 1:]
        scored = torch.from_numpy(is_event(target.numpy()))
        nll = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        total += float(nll[scored].sum())
        count += int(scored.sum())
    return total / count


def style_samples(model, slot: int | None, n: int, seconds: float, seed: int,
                  guidance: float | None = None) -> list:
    primer = [START_ID] if slot is None else [START_ID, style_id(slot)]
    config = model.config
    settings = SamplingSettings.from_config(config, style_guidance=guidance)
    rows = generate(model, primer, max_new_tokens=int(seconds * 100), max_seconds=seconds,
                    num_samples=n, settings=settings, seed=seed)
    return [stats.excerpt(ids_to_arrays(r), seconds) for r in rows]


def nearest_style(made: dict[str, list], real: dict[str, list]) -> dict:
    """Share of each style's samples nearest to their own style's validation centroid, the same
    for the validation excerpts themselves (what the test can tell apart at best), and means."""
    def means(pieces) -> dict:
        return {name: round(float(np.mean([stats.piece_features(n)[name] for n in pieces])), 3)
                for name in FEATURES}

    return {"samples": stats.nearest_set_shares(made, real),
            "validation": stats.nearest_set_shares(real, real),
            "means": {f"{kind} {name}": means(pieces)
                      for kind, group in (("samples", made), ("val", real))
                      for name, pieces in group.items()}}


def mean_overlap(a, b) -> tuple[float, dict]:
    comparison = stats.compare_sets(a, b)
    per = {name: round(comparison[name]["overlap"], 3) for name in FEATURES}
    return float(np.mean(list(per.values()))), per


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--fim", required=True, help="checkpoint trained with FIM and styles")
    parser.add_argument("--plain", help="same run with fim_rate 0 (for the cost of FIM)")
    parser.add_argument("--spans", type=int, default=200)
    parser.add_argument("--windows", type=int, default=40, help="validation batches of 8")
    parser.add_argument("--samples-per-style", type=int, default=20, help="0 = skip the samples")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--style-guidance", type=float,
                        help="for the style samples (default: the checkpoint's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = load_model_from_checkpoint(args.fim)
    config = model.config
    val = load_split(args.data_dir, "val")
    labels = piece_styles(args.data_dir, "val")
    sources = config.style_sources or config.styles
    slots = [sources.index(label) if label in sources else -1 for label in labels]
    report: dict = {"fim_checkpoint": args.fim, "config": config.short(),
                    "fim_rate": config.fim_rate, "styles": list(config.styles)}

    report["middle"] = middle_nll(model, val, slots, args.spans, seed=0)
    m = report["middle"]
    print(f"1. middle NLL over {m['spans']} spans ({m['middle_tokens']} tokens): prefix+suffix "
          f"{m['fim_nll']:.4f}, the same prefix only {m['left_to_right_nll']:.4f} nats/token "
          f"({100 * (m['fim_nll'] / m['left_to_right_nll'] - 1):+.1f}%); prefix only, given "
          f"the suffix's room too: {m['left_to_right_longer_prefix_nll']:.4f}")

    styled = TokenWindows(val, config.block_size, seed=7, styles=slots)
    bare = TokenWindows(val, config.block_size, seed=7)
    report["l2r_nll_fim_model"] = window_nll(model, styled, args.windows, 8)
    line = f"2. left-to-right NLL: FIM model {report['l2r_nll_fim_model']:.4f}"
    if args.plain:
        plain = load_model_from_checkpoint(args.plain)
        report["l2r_nll_plain_model"] = window_nll(plain, styled, args.windows, 8)
        cost = report["l2r_nll_fim_model"] / report["l2r_nll_plain_model"] - 1
        report["fim_cost"] = cost
        line += f", plain model {report['l2r_nll_plain_model']:.4f} (FIM costs {100 * cost:+.2f}%)"
    print(line)

    report["nll_with_style"] = report["l2r_nll_fim_model"]
    report["nll_without_style"] = window_nll(model, bare, args.windows, 8)
    print(f"3. NLL with the right style token {report['nll_with_style']:.4f}, without "
          f"{report['nll_without_style']:.4f}")
    real = {name: [stats.excerpt(ids_to_arrays(p), args.seconds)
                   for p, s in zip(val, slots, strict=True) if s == slot]
            for slot, name in enumerate(config.styles)}
    report["style_overlaps"], made_by_style = {}, {}
    for slot, name in enumerate(config.styles if args.samples_per_style else ()):
        made = made_by_style[name] = style_samples(model, slot, args.samples_per_style,
                                                   args.seconds, slot, args.style_guidance)
        row = {}
        for other in config.styles:
            row[other], per = mean_overlap(made, real[other])
            row[f"{other}_features"] = per
        report["style_overlaps"][name] = row
        print(f"   samples with style {name!r}: mean overlap with "
              + ", ".join(f"{other} val {row[other]:.3f}" for other in config.styles)
              + "  " + json.dumps({o: row[f"{o}_features"] for o in config.styles}))
    if made_by_style:
        nearest = report["nearest_style"] = nearest_style(made_by_style, real)
        print("   nearest style centroid (5 features, z-scored): own style for "
              + ", ".join(f"{100 * share:.0f}% of {name} samples"
                          for name, share in nearest["samples"].items())
              + "; for " + ", ".join(f"{100 * share:.0f}% of {name} validation excerpts"
                                    for name, share in nearest["validation"].items()))
        for label, means in nearest["means"].items():
            print(f"   mean {label}: {json.dumps(means)}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
