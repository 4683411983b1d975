"""The options of ``analysis/run_mine.py``: the command line and the validated run config.

:func:`get_parser` declares the options (``--help`` shows each default);
:func:`config_from_args` checks them all before any work and returns a
:class:`RunConfig`, the one object the rest of the run reads.
"""

import argparse
import dataclasses
import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch

from analysis import discover
from analysis.curve import (
    CROSS_CHECK_ESTIMATOR,
    CURVE_ESTIMATORS,
    DEFAULT_ESTIMATOR,
    PAPER_ESTIMATOR,
    PER_UTTERANCE_ESTIMATORS,
)
from analysis.gaussian_mi import GaussianCopulaOptions
from analysis.mi import MIOptions
from analysis.pooled_critic import PooledCriticOptions
from espnet_mamba.io import parse_device

__all__ = ["RunConfig", "config_from_args", "digest", "get_parser", "options_identity"]


def _hidden(text: str) -> Tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden must be comma-separated integers, got {text!r}")
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"--hidden sizes must be positive, got {text!r}")
    return sizes


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _optional(choices: Sequence[str]):
    def parse(text: str) -> Optional[str]:
        if text == "none":
            return None
        if text not in choices:
            raise argparse.ArgumentTypeError(f"choose one of {sorted(choices)} or none, got {text!r}")
        return text

    return parse


def get_parser() -> argparse.ArgumentParser:
    """The command-line options (each shown with its default by ``--help``)."""
    parser = argparse.ArgumentParser(
        description="Layer-wise MI I(X; T_i) of every trained model under exp/: a calibrated estimate, "
                    "the paper's MINE curve beside it, and a cross-check.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("exp_dir", type=Path, help="experiment directory holding the trained models")
    group = parser.add_argument_group("selection")
    group.add_argument("--out", type=Path, default=None, help="output directory (default: <exp_dir>/mi)")
    group.add_argument("--models", action="append", default=None, metavar="GLOB",
                       help="measure only models whose name (path under exp/) matches; repeatable")
    group.add_argument("--wav_scp", action="append", type=Path, default=None,
                       help="utterances to draw from (repeatable; default: the recipe's "
                            "dump/raw or data/{dev_clean,test_clean}/wav.scp beside exp/)")
    group.add_argument("--n_utts", type=_positive_int, default=1000, help="utterances per model")
    group.add_argument("--seed", type=_non_negative_int, default=0,
                       help="seed of the utterance draw, of the estimators and of the bootstrap")
    group = parser.add_argument_group("features")
    group.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    group.add_argument("--batch_size", type=_positive_int, default=8,
                       help="utterances per forward pass of feature extraction (padding-safe models)")
    group.add_argument("--max_frames", type=_positive_int, default=None,
                       help="use at most this many frames of each utterance (default: all)")
    group.add_argument("--cache_dtype", choices=("float16", "float32"), default="float16",
                       help="precision of the feature cache")
    group = parser.add_argument_group("curves")
    group.add_argument("--estimator", choices=sorted(CURVE_ESTIMATORS), default=DEFAULT_ESTIMATOR,
                       help="the main curve (gcmi: calibrated, dataset-level; mine: the paper's)")
    group.add_argument("--paper_estimator", type=_optional(PER_UTTERANCE_ESTIMATORS), default=PAPER_ESTIMATOR,
                       help="per-utterance curve reported beside the main one (none: skip)")
    group.add_argument("--cross_check", type=_optional(sorted(CURVE_ESTIMATORS)), default=CROSS_CHECK_ESTIMATOR,
                       help="estimator of another kind whose verdict is compared (none: skip)")
    group.add_argument("--calibrate", choices=("on", "off"), default="on",
                       help="run the main and the paper curve's estimators on ladders of known MI "
                            "matched to each model's shapes")
    group = parser.add_argument_group("gcmi (held-out Gaussian-copula MI)")
    group.add_argument("--folds", type=_positive_int, default=GaussianCopulaOptions.folds,
                       help="utterance folds (the units of its intervals)")
    group.add_argument("--ridge", type=_non_negative_float, default=GaussianCopulaOptions.ridge,
                       help="ridge on the normal-score covariances")
    group = parser.add_argument_group("per-utterance estimators (defaults: the paper's MINE recipe)")
    group.add_argument("--epochs", type=_positive_int, default=MIOptions.epochs, help="training epochs per estimate")
    group.add_argument("--lr", type=_positive_float, default=MIOptions.lr, help="Adam learning rate of the critic")
    group.add_argument("--mine_batch_size", type=_positive_int, default=MIOptions.batch_size,
                       help="frames per critic mini-batch")
    group.add_argument("--hidden", type=_hidden, default=MIOptions.hidden, help="critic hidden sizes, e.g. 100,100")
    group.add_argument("--no_standardize", action="store_true",
                       help="train on raw features (default: z-score each dimension per utterance)")
    group.add_argument("--problems_per_call", type=_positive_int, default=2048,
                       help="(utterance, layer) estimates per engine call; finished calls are saved")
    group.add_argument("--max_pairs_per_chunk", type=_positive_int, default=None,
                       help="engine: at most this many problems train together")
    group.add_argument("--memory_budget_mb", type=_positive_int, default=None,
                       help="engine: memory per chunk (default: 60%% of free GPU memory, 2 GiB on CPU)")
    group = parser.add_argument_group("report")
    group.add_argument("--n_boot", type=_positive_int, default=1000, help="bootstrap resamples of the CI")
    group.add_argument("--near_log_n_margin", type=_non_negative_float, default=0.5,
                       help="a per-utterance estimate within this many nats of log(frames) is flagged")
    group.add_argument("--no_plots", action="store_true", help="do not draw figures")
    group.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                       help="progress bars (auto: on an interactive terminal)")
    group.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs, validated (built by :func:`config_from_args`)."""

    exp_dir: Path
    out_dir: Path
    models: Optional[Tuple[str, ...]]
    wav_scps: Tuple[Path, ...]
    n_utts: int
    seed: int
    device: torch.device
    batch_size: int
    max_frames: Optional[int]
    cache_dtype: str
    curves: Tuple[Tuple[str, str], ...]  # (role, estimator): "main", "paper", "cross-check"
    calibrate: bool
    gcmi: GaussianCopulaOptions
    critic: PooledCriticOptions
    mine: MIOptions
    problems_per_call: int
    max_pairs_per_chunk: Optional[int]
    memory_budget_mb: Optional[int]
    n_boot: int
    near_log_n_margin: float
    plots: bool
    progress: str

    def options(self, estimator: str):
        """The options object of ``estimator``."""
        if estimator == "gcmi":
            return self.gcmi
        if estimator == "pooled-critic":
            return self.critic
        return self.mine

    @property
    def show_bar(self) -> bool:
        return sys.stderr.isatty() if self.progress == "auto" else self.progress == "on"


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Validates the parsed options before any work.

    Raises:
        ValueError: An option is invalid (the message names it).
    """
    out_dir = args.out if args.out is not None else args.exp_dir / "mi"
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir}: exists and is not a directory")
    device = parse_device(args.device)
    curves = [("main", args.estimator)]
    if args.paper_estimator is not None and args.paper_estimator != args.estimator:
        curves.append(("paper", args.paper_estimator))
    if args.cross_check is not None and args.cross_check not in dict(curves).values():
        curves.append(("cross-check", args.cross_check))
    try:
        gcmi = GaussianCopulaOptions(folds=args.folds, ridge=args.ridge)
        mine = MIOptions(hidden=tuple(args.hidden), lr=args.lr, epochs=args.epochs, batch_size=args.mine_batch_size,
                         standardize=not args.no_standardize, seed=args.seed, device=str(device))
    except ValueError as e:
        raise ValueError(f"invalid estimator option: {e}") from e
    for path in args.wav_scp or ():
        if not path.is_file():
            raise ValueError(f"--wav_scp {path}: no such file")
    return RunConfig(
        exp_dir=args.exp_dir, out_dir=out_dir, models=tuple(args.models) if args.models else None,
        wav_scps=tuple(args.wav_scp) if args.wav_scp else tuple(discover.default_wav_scps(args.exp_dir)),
        n_utts=args.n_utts, seed=args.seed, device=device, batch_size=args.batch_size, max_frames=args.max_frames,
        cache_dtype=args.cache_dtype, curves=tuple(curves), calibrate=args.calibrate == "on", gcmi=gcmi,
        critic=PooledCriticOptions(), mine=mine, problems_per_call=args.problems_per_call,
        max_pairs_per_chunk=args.max_pairs_per_chunk, memory_budget_mb=args.memory_budget_mb, n_boot=args.n_boot,
        near_log_n_margin=args.near_log_n_margin, plots=not args.no_plots, progress=args.progress,
    )


def options_identity(opts) -> dict:
    values = dataclasses.asdict(opts)
    values.pop("device", None)  # the same estimate on any device
    return json.loads(json.dumps(values, default=str))


def digest(value) -> str:
    return hashlib.blake2b(json.dumps(value, sort_keys=True, default=str).encode("utf-8"),
                           digest_size=16).hexdigest()
