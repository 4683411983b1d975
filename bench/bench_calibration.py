#!/usr/bin/env python3
"""How faithfully each curve estimator reads known layer-wise MI at a model's shapes.

Builds the synthetic ladders of :mod:`analysis.ladders` (768-d X and T, 300-600
frames per utterance, 1000 utterances x 12 layers by default: the paper's shapes;
true MI 0.1-40 nats, in a "falls then rises" and a "falls" shape, each with
independent Gaussian frames and with AR(1) frames and warped features) and runs every
estimator asked for on them, as ``analysis/run_mine.py`` does on a model. For each
(estimator, ladder) it prints and saves: the Spearman rank correlation of the layer
means with the truth, the verdict against the true shape, the largest error in nats
where the truth is below log of the pooled frames, and the seconds taken (ladder
generation excluded).

Usage:
    python bench/bench_calibration.py --out docs/bench/calibration_h200.md            # GPU, paper shapes
    python bench/bench_calibration.py --utts 100 --dim 256 --frames 32 64 --out c.md  # mini shapes, CPU
"""

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from analysis import stats  # noqa: E402
from analysis.calibration import ladder_pairs  # noqa: E402
from analysis.curve import curve_from_values, get_estimator  # noqa: E402
from analysis.ladders import Ladder, ladder_values  # noqa: E402
from espnet_mamba.io import atomic_write_text  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utts", type=int, default=1000, help="utterances")
    parser.add_argument("--layers", type=int, default=12, help="layers T_1..T_L")
    parser.add_argument("--dim", type=int, default=768, help="dimension of X and of every T_i")
    parser.add_argument("--frames", type=int, nargs=2, default=(300, 600), metavar=("MIN", "MAX"),
                        help="frames per utterance, uniform in [MIN, MAX]")
    parser.add_argument("--low", type=float, default=0.1, help="lowest true MI (nats)")
    parser.add_argument("--high", type=float, default=40.0, help="highest true MI (nats)")
    parser.add_argument("--estimators", nargs="+", default=["gcmi", "mine", "pooled-critic"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n_boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="markdown table; a .json beside it")
    return parser


def ladders(args):
    frames = tuple(int(n) for n in np.random.default_rng(args.seed).integers(args.frames[0], args.frames[1] + 1,
                                                                              args.utts))
    out = []
    for shape in ("falls then rises", "falls"):
        true_mi = tuple(ladder_values(args.layers, shape, args.low, args.high))
        for ar, warp in ((0.0, False), (0.9, True)):
            name = shape + (", AR(1) 0.9, warped" if warp else ", Gaussian")
            out.append(Ladder(name, shape, true_mi, frames, args.dim, (args.dim,) * args.layers, ar, warp, args.seed))
    return out


def write(args, rows, device) -> None:
    """The table so far (markdown) and the rows (json beside it)."""
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    lines = ["# Calibration: curve estimators on ladders of known MI", "",
             f"- card: {card}; torch {torch.__version__}; date {time.strftime('%Y-%m-%d')}",
             f"- shapes: {args.utts} utterances x {args.layers} layers, {args.dim}-d X and T, "
             f"{args.frames[0]}-{args.frames[1]} frames; true MI {args.low}-{args.high} nats",
             f"- command: python bench/bench_calibration.py {' '.join(sys.argv[1:])}", "",
             "| ladder | estimator | Spearman | verdict | max error below log n (nats) | seconds |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['ladder']} | {r['estimator']} | {r['spearman']:.3f} | {r['verdict']}"
                     f"{'' if r['verdict_ok'] else ' (wrong)'} | {r['max_error_below_log_n']:.2f} | "
                     f"{r['seconds']:.1f} |")
    lines += ["", "Layer means (nats):", ""]
    for r in rows:
        lines.append(f"- {r['ladder']}, {r['estimator']}: true "
                     + ", ".join(f"{v:.2g}" for v in r["true_mi"]) + "; estimated "
                     + ", ".join(f"{v:.3g}" for v in r["means"]))
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out, text)
    atomic_write_text(os.path.splitext(args.out)[0] + ".json", json.dumps({"args": vars(args), "rows": rows},
                                                                          indent=2, default=str))


def main() -> None:
    args = get_parser().parse_args()
    device = torch.device(args.device)
    rows = []
    for ladder in ladders(args):
        pairs = ladder_pairs(ladder, device, null_layer=False)
        log_n = math.log(sum(ladder.frames))
        for name in args.estimators:
            estimator = get_estimator(name)
            options = estimator.options(**({"device": str(device)} if name not in ("gcmi", "pooled-critic") else {}))
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            values = estimator.values(pairs, options, args.seed, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            curve = curve_from_values(values, estimator, [f"L{i + 1}" for i in range(ladder.n_layers)],
                                      seed=args.seed, n_boot=args.n_boot)
            true = np.asarray(ladder.true_mi)
            below = true < log_n
            rows.append({
                "ladder": ladder.name, "estimator": name, "spearman": stats.spearman(true, curve.means),
                "verdict": curve.verdict, "true_shape": ladder.shape, "verdict_ok": curve.verdict == ladder.shape,
                "max_error_below_log_n": float(np.max(np.abs(curve.means[below] - true[below]))),
                "seconds": seconds, "true_mi": true.tolist(), "means": curve.means.tolist(),
            })
            print(f"{ladder.name:36s} {name:14s} spearman {rows[-1]['spearman']:.3f} verdict "
                  f"{curve.verdict:17s} ({'ok' if rows[-1]['verdict_ok'] else 'WRONG'}) {seconds:7.1f} s", flush=True)
            write(args, rows, device)
if __name__ == "__main__":
    main()
