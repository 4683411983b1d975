#!/usr/bin/env python3
"""Time the batched MI engine, in each precision, against one-pair-at-a-time training.

The layer-wise MI analysis estimates MI for every (utterance, layer) pair: 1000
utterances x 12 layers in the paper. This benchmark builds synthetic features of the
recipe's shapes (per utterance: X of n frames and the layers' outputs, n uniform in
[min_frames, max_frames]; each layer is X mixed with noise at a layer-dependent
correlation) and times, in one process on one device:

1. the one-pair-at-a-time loop (``analysis.mi.estimate_mi``: a fresh critic, Adam,
   anomaly detection off) on ``loop_pairs`` random pairs, float32; its time is
   extrapolated linearly to all pairs (the script says so in the table);
2. the batched engine (``analysis.engine.estimate_mi_batched``) on all pairs, once per
   precision asked (float32; on CUDA also tf32 and bf16);
3. on CUDA, optionally, the dataset-level curve estimators (``gcmi``, ``pooled-critic``
   of :mod:`analysis.curve`) on the same features, for their cost beside the engine's.

For the engine it reports seconds, the speed-up over the loop, the achieved TFLOP/s
(the recipe's arithmetic with the shared first-layer projection, real frames only,
:func:`training_flops`) and its fraction of the card's peak for that precision, and
the largest difference of each precision's estimates to the float32 ones. It also
states the floor set by the optimizer alone: Adam reads and writes every parameter at
every step (:func:`optimizer_bytes`), at the card's memory bandwidth.

Usage:
    python bench/bench_mine.py --out docs/bench/mine_h200.md   # the paper's recipe on the GPU
    python bench/bench_mine.py --cpu --out mine_cpu.md         # the mini recipe's stage-13 shapes, CPU
    python bench/bench_mine.py --profile prof/ --out t.md      # + one epoch's kernels per precision
"""

import argparse
import json
import math
import os
import platform
import sys
import time
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from analysis.engine import PRECISIONS, estimate_mi_batched  # noqa: E402
from analysis.mi import MIOptions, estimate_mi  # noqa: E402

# The paper's recipe at its shapes, and stage 13 of the mini recipe (conf/presets.sh:
# 100 utterances, a 4-block 144-d ConBiMamba, --max_frames 64 --mine_batch_size 64
# --epochs 20 --lr 1e-3).
PAPER = dict(utterances=1000, layers=12, dim=768, min_frames=300, max_frames=600, epochs=100, batch_size=128,
             lr=1e-4, loop_pairs=6)
CPU = dict(utterances=100, layers=4, dim=144, min_frames=48, max_frames=64, epochs=20, batch_size=64, lr=1e-3,
           loop_pairs=8)
# Dense peaks of the H100/H200 SXM datasheet (TFLOP/s) and the H200's HBM3e bandwidth.
PEAK_TFLOPS = {"float32": 67.0, "tf32": 495.0, "bf16": 990.0}
HBM_BYTES_PER_S = {"H200": 4.8e12, "H100": 3.35e12}
# Fused Adam per parameter and step: reads param, grad, exp_avg, exp_avg_sq; writes three (float32).
ADAM_BYTES_PER_PARAM = 28


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true",
                        help=f"the mini recipe's stage-13 shapes on the CPU ({CPU}); explicit options override")
    for name, help_text in (("utterances", "utterances"), ("layers", "layers per utterance"),
                            ("dim", "feature dimension of X and of each layer"),
                            ("min_frames", "shortest utterance in frames"), ("max_frames", "longest utterance"),
                            ("epochs", "MINE epochs"), ("batch_size", "MINE batch size"),
                            ("loop_pairs", "pairs timed one at a time, then extrapolated")):
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=None,
                            help=f"{help_text} (default {PAPER[name]}, --cpu {CPU[name]})")
    parser.add_argument("--lr", type=float, default=None, help=f"Adam learning rate (default {PAPER['lr']})")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=None,
                        help="engine precisions to time (default: all on CUDA, float32 on CPU)")
    parser.add_argument("--curve-estimators", nargs="*", default=None,
                        help="dataset-level estimators to time too (default on CUDA: gcmi pooled-critic)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cpu with --cpu, else cuda if available)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic features and of MINE")
    parser.add_argument("--out", default=None, help="write the table here (markdown) and the raw numbers beside "
                                                    "it (.json)")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="also write, per precision, the operators and kernels of one training epoch in steady "
                             "state (torch.profiler) into DIR")
    args = parser.parse_args(argv)
    preset = CPU if args.cpu else PAPER
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.min_frames < 2 or args.max_frames < args.min_frames:
        parser.error("need 2 <= --min-frames <= --max-frames")
    if min(args.loop_pairs, args.utterances, args.layers, args.epochs) < 1:
        parser.error("--utterances, --layers, --epochs and --loop-pairs must be >= 1")
    cuda = torch.cuda.is_available() and not args.cpu
    args.device = torch.device(args.device or ("cuda" if cuda else "cpu"))
    if args.precisions is None:
        args.precisions = list(PRECISIONS) if args.device.type == "cuda" else ["float32"]
    if args.curve_estimators is None:
        args.curve_estimators = ["gcmi", "pooled-critic"] if args.device.type == "cuda" else []
    return args


def synthetic_features(args, device):
    """Per utterance: X ``(n, dim)`` and ``layers`` outputs ``(n, dim)`` correlated with X.

    Returns:
        ``xs, ys`` (one pair per (utterance, layer); an utterance's X is one tensor) and
        the frames per utterance.
    """
    gen = torch.Generator(device=device).manual_seed(args.seed)
    cpu_gen = torch.Generator().manual_seed(args.seed)
    lengths = torch.randint(args.min_frames, args.max_frames + 1, (args.utterances,), generator=cpu_gen).tolist()
    rho = 0.3 + 0.6 * np.linspace(-1.0, 1.0, args.layers) ** 2  # falls then rises, as in the paper's figures
    xs, ys = [], []
    for n in lengths:
        x = torch.randn(n, args.dim, generator=gen, device=device)
        for r in rho:
            noise = torch.randn(n, args.dim, generator=gen, device=device)
            xs.append(x)  # the same tensor for every layer: stored once by the engine
            ys.append(float(r) * x + math.sqrt(1.0 - float(r) ** 2) * noise)
    return xs, ys, lengths


def training_flops(frames: Sequence[int], dx: int, dy: int, hidden: Sequence[int], epochs: int) -> float:
    """Floating-point operations of training critics on pairs of ``frames`` frames each.

    Per frame and epoch: the first layer projects x and y once (joint and marginal rows
    share it), ``2 (dx + dy) H1``, and its weight gradients cost as much again; each
    later layer (H_l -> H_l+1, the last to 1) runs on the joint and the marginal row,
    forward, input gradient and weight gradient: ``3 * 2 * 2 H_l H_l+1``. Rows of a
    partial last batch and the final evaluation are not counted.
    """
    sizes = list(hidden) + [1]
    per_row = 4 * (dx + dy) * sizes[0] + 12 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return float(per_row) * epochs * float(sum(frames))


def optimizer_bytes(frames: Sequence[int], dx: int, dy: int, hidden: Sequence[int], epochs: int,
                    batch_size: int) -> float:
    """Bytes fused Adam moves: every parameter of a critic at each of its steps."""
    sizes = [dx + dy] + list(hidden) + [1]
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    steps = epochs * sum(math.ceil(n / batch_size) for n in frames)
    return float(ADAM_BYTES_PER_PARAM) * params * steps


def timed(fn: Callable, device: torch.device):
    """``(seconds, fn())`` with the device synchronized around the call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    value = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, value


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")


def _card(name: str) -> Optional[str]:
    return next((card for card in HBM_BYTES_PER_S if card in name), None)


def run(args, engine: Callable = estimate_mi_batched) -> Dict:
    """Times the loop and ``engine`` in each precision; returns the raw numbers."""
    device = args.device
    options = MIOptions(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=device)
    xs, ys, lengths = synthetic_features(args, device)
    pairs = len(ys)
    frames = [n for n in lengths for _ in range(args.layers)]
    flops = training_flops(frames, args.dim, args.dim, options.hidden, args.epochs)
    adam_bytes = optimizer_bytes(frames, args.dim, args.dim, options.hidden, args.epochs, args.batch_size)

    # Warm-up (CUDA context, kernels, autocast), not timed.
    estimate_mi(xs[0][:32], ys[0][:32], "mine", options, epochs=1)
    for precision in args.precisions:
        engine(xs[:2], ys[:2], options=options, epochs=1, progress=False, precision=precision)

    rng = np.random.default_rng(args.seed)
    subset = sorted(rng.choice(pairs, size=min(args.loop_pairs, pairs), replace=False).tolist())
    loop_seconds, loop_values = timed(lambda: [estimate_mi(xs[k], ys[k], "mine", options) for k in subset], device)
    loop_total = loop_seconds / len(subset) * pairs
    print(json.dumps({"loop_pairs": len(subset), "loop_seconds": loop_seconds}), flush=True)
    result = dict(device=device_name(device), torch=torch.__version__, python=platform.python_version(),
                  shapes={k: getattr(args, k) for k in PAPER}, pairs=pairs, frame_pairs=sum(frames),
                  training_flops=flops, adam_bytes=adam_bytes, loop_pairs=len(subset), loop_seconds=loop_seconds,
                  loop_extrapolated_seconds=loop_total, engine={}, curves={})
    reference = None
    for precision in args.precisions:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        seconds, out = timed(lambda: engine(xs, ys, options=options, progress=False, precision=precision), device)
        estimates = out.estimates
        if reference is None:
            reference = estimates
            result["loop_vs_engine_max_abs"] = float(np.max(np.abs(np.array(loop_values) - estimates[subset])))
        result["engine"][precision] = dict(
            seconds=seconds, tflops=flops / seconds / 1e12, speedup=loop_total / seconds,
            mean_estimate=float(np.nanmean(estimates)),
            max_abs_vs_float32=float(np.max(np.abs(estimates - reference))),
            mean_abs_vs_float32=float(np.mean(np.abs(estimates - reference))))
        print(json.dumps({"engine": precision, **result["engine"][precision]}), flush=True)  # kept if a later step fails
    for name in args.curve_estimators:
        result["curves"][name] = _time_curve(name, xs, ys, lengths, args, device)
        print(json.dumps({"curve": name, **result["curves"][name]}), flush=True)
    return result


def _time_curve(name: str, xs, ys, lengths, args, device) -> Dict:
    """Seconds of one dataset-level curve estimator on the same features (or why it failed)."""
    from analysis.curve import estimate_layer_curve

    utterances = [[xs[u * args.layers]] + ys[u * args.layers:(u + 1) * args.layers] for u in range(len(lengths))]
    try:
        seconds, curve = timed(lambda: estimate_layer_curve(utterances, name, seed=args.seed, device=device), device)
    except Exception as e:  # the bench reports it and times the rest
        return dict(error=f"{type(e).__name__}: {e}")
    return dict(seconds=seconds, means=[float(v) for v in np.asarray(curve.means)])


def _device_times(xs, ys, options: MIOptions, precision: str, epochs: int):
    """Wall seconds of one engine call of ``epochs`` epochs under torch.profiler, its device
    time per operator and kernel name (microseconds; CPU time where there is no device), and
    the names that are kernels."""
    device = torch.device(options.device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        estimate_mi_batched(xs, ys, options=options, epochs=epochs, progress=False, precision=precision)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    attribute = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = prof.key_averages()
    kernels = {e.key for e in events if e.device_type == torch.autograd.DeviceType.CUDA}
    return wall, {e.key: getattr(e, attribute) for e in events}, kernels


def profile_engine(xs, ys, options: MIOptions, precision: str, path: str, rows: int = 30) -> None:
    """Writes what one training epoch costs in steady state to ``path``: the differences of a
    4-epoch and a 2-epoch engine call (torch.profiler), halved, so that set-up and the final
    evaluation cancel; per operator and kernel, by device time (CPU time on a CPU)."""
    wall_2, times_2, kernels_2 = _device_times(xs, ys, options, precision, 2)
    wall_4, times_4, kernels_4 = _device_times(xs, ys, options, precision, 4)
    per_epoch = {k: (times_4.get(k, 0.0) - times_2.get(k, 0.0)) / 2 for k in set(times_2) | set(times_4)}
    kernels = {k: v for k, v in per_epoch.items() if k in kernels_2 | kernels_4}
    with open(path, "w") as f:
        f.write(f"{precision}: one training epoch in steady state = (4-epoch call - 2-epoch call) / 2\n")
        f.write(f"wall {(wall_4 - wall_2) / 2 * 1e3:.1f} ms per epoch under the profiler")
        if options.device.type == "cuda":
            f.write(f"; device time of the kernels {sum(kernels.values()) / 1e3:.1f} ms")
        f.write("\n\n| operator or kernel | ms per epoch |\n|---|---|\n")
        for name, us in sorted(per_epoch.items(), key=lambda kv: -kv[1])[:rows]:
            f.write(f"| {name[:100]} | {us / 1e3:.2f} |\n")


def table(result: Dict) -> str:
    """The markdown table of :func:`run`'s numbers."""
    name = result["device"]
    card = _card(name)
    s = result["shapes"]
    lines = [
        f"# MINE benchmark ({name})",
        "",
        f"- data: synthetic, {s['utterances']} utterances x {s['layers']} layers = {result['pairs']} pairs; "
        f"{s['dim']}-d X and layer features; {s['min_frames']}-{s['max_frames']} frames per utterance "
        f"({result['frame_pairs']} frame pairs in all)",
        f"- recipe: mine, critic MLP (100, 100), Adam lr {s['lr']}, {s['epochs']} epochs, batch {s['batch_size']}",
        f"- torch {result['torch']}, python {result['python']}",
        f"- work: {result['training_flops'] / 1e12:.1f} TFLOP of training (shared first-layer projection, real "
        f"frames); fused Adam moves {result['adam_bytes'] / 1e12:.1f} TB",
    ]
    if card:
        bandwidth = HBM_BYTES_PER_S[card]
        lines.append(f"- floors on the {card} (datasheet): arithmetic {result['training_flops'] / 67e12:.1f} s at "
                     f"67 TFLOP/s fp32, {result['training_flops'] / 495e12:.2f} s at 495 TF32, "
                     f"{result['training_flops'] / 990e12:.2f} s at 990 bf16; Adam's traffic alone "
                     f"{result['adam_bytes'] / bandwidth:.1f} s at {bandwidth / 1e12:.2f} TB/s (float32 weights "
                     "and optimizer state in every precision)")
    lines.append(f"- one-pair loop: {result['loop_pairs']} random pairs timed ({result['loop_seconds']:.2f} s), "
                 f"extrapolated linearly to {result['pairs']}; its estimates differ from the float32 engine's by "
                 f"up to {result.get('loop_vs_engine_max_abs', float('nan')):.2e} nats (same seeds; float32 rounding "
                 "amplified by the Adam steps)")
    header = ("method", "seconds", "speed-up vs loop", "TFLOP/s", "of peak", "max abs diff to float32",
              "mean estimate")
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
              f"| one pair at a time, float32 (extrapolated) | {result['loop_extrapolated_seconds']:.1f} | 1x | "
              f"{result['training_flops'] / result['loop_extrapolated_seconds'] / 1e12:.3g} | | | |"]
    for precision, row in result["engine"].items():
        peak = f"{row['tflops'] / PEAK_TFLOPS[precision]:.1%} of {PEAK_TFLOPS[precision]:.0f}" if card else "n/a"
        lines.append(f"| batched engine, {precision} | {row['seconds']:.2f} | {row['speedup']:.0f}x | "
                     f"{row['tflops']:.3g} | {peak} | {row['max_abs_vs_float32']:.2e} nats "
                     f"(mean {row['mean_abs_vs_float32']:.1e}) | {row['mean_estimate']:.4f} |")
    for estimator, row in result["curves"].items():
        cell = f"{row['seconds']:.2f}" if "seconds" in row else row["error"]
        lines.append(f"| curve estimator {estimator} (all layers, pooled) | {cell} | | | | | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        xs, ys, _ = synthetic_features(args, args.device)
        options = MIOptions(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                            device=args.device)
        for precision in args.precisions:
            profile_engine(xs, ys, options, precision, os.path.join(args.profile, f"mine_{precision}.txt"))
    text = table(result)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
