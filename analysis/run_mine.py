#!/usr/bin/env python3
"""Layer-wise mutual information I(X; T_i) of every trained model under ``exp/`` (stage 13).

Usage::

    python analysis/run_mine.py exp/                      # all models, 1000 utterances
    python analysis/run_mine.py exp/ --n_utts 100 --models 'asr_*'
    python analysis/run_mine.py exp/ --estimator mine     # the paper's measurement as the main curve

For each model found under ``exp/`` (see :mod:`analysis.discover`), the script

1. draws ``--n_utts`` utterances (seeded) from the recipe's dev/test ``wav.scp``
   (``data/dev_clean``, ``data/test_clean`` beside ``exp/``) or ``--wav_scp``;
2. extracts X (the input of the first encoder layer) and T_i (each layer's output)
   of every utterance without padding frames (:mod:`analysis.features`) into a
   feature cache (one file per model, reused while the checkpoint, config and
   utterance list are unchanged);
3. estimates the curve three ways (:mod:`analysis.curve`): with ``--estimator``
   (default ``gcmi``, the calibrated dataset-level estimate), with
   ``--paper_estimator`` (default ``mine``, the paper's per-utterance recipe; finished
   estimates are saved as they come, so an interrupted run resumes where it stopped),
   and with ``--cross_check`` (default ``pooled-critic``, a neural estimate of
   another kind, compared on the shape);
4. calibrates the first two at the model's own shapes (:mod:`analysis.calibration`:
   synthetic ladders of known MI with its dimensions, frame counts and utterances);
5. writes ``<out>/<model>.csv`` (the main curve), ``<model>.<estimator>.csv`` (the
   others), ``<model>.json`` (all of it), plots, and a summary (``RESULTS.md``,
   ``summary.json``) with each verdict, its calibration and the cross-check.

A model that cannot be measured (missing or unreadable checkpoint or config,
NaN/inf features ...) is reported and skipped; the others are still written. The
exit status is 1 when no model could be measured, 2 for invalid options, and 3
when another run holds the output directory.
"""

import argparse
import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from analysis import discover, features, plots, report
from analysis.calibration import calibrate
from analysis.curve import (
    CROSS_CHECK_ESTIMATOR,
    CURVE_ESTIMATORS,
    DEFAULT_ESTIMATOR,
    PAPER_ESTIMATOR,
    PER_UTTERANCE_ESTIMATORS,
    LayerPairs,
    curve_from_values,
    get_estimator,
)
from analysis.engine import estimate_mi_batched
from analysis.gaussian_mi import GaussianCopulaOptions
from analysis.mi import MIOptions
from analysis.pooled_critic import PooledCriticOptions
from analysis.progress import Progress
from analysis.rng import derive_seed
from espnet_mamba.io import atomic_write_text

__all__ = ["RunConfig", "config_from_args", "get_parser", "main", "measure_model", "run"]

logger = logging.getLogger("run_mine")

_ESTIMATE_FORMAT = 1
_CALIBRATION_FORMAT = 1
EXIT_NO_MODEL, EXIT_BAD_OPTIONS, EXIT_LOCKED = 1, 2, 3


# ----------------------------------------------------------------------- options
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


def _device(text: Optional[str]) -> torch.device:
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as e:
        raise ValueError(f"--device {text!r}: {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {text}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Validates the parsed options before any work.

    Raises:
        ValueError: An option is invalid (the message names it).
    """
    out_dir = args.out if args.out is not None else args.exp_dir / "mi"
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir}: exists and is not a directory")
    device = _device(args.device)
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


def _options_identity(opts) -> dict:
    values = dataclasses.asdict(opts)
    values.pop("device", None)  # the same estimate on any device
    return json.loads(json.dumps(values, default=str))


def _digest(value) -> str:
    return hashlib.blake2b(json.dumps(value, sort_keys=True, default=str).encode("utf-8"),
                           digest_size=16).hexdigest()


class OutputLock:
    """An exclusive lock on ``<out>/.run_mine.lock`` for the length of a run.

    Raises:
        BlockingIOError: Another process holds it (the message names its pid).
    """

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / ".run_mine.lock"
        self.file = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise BlockingIOError(f"{out_dir} is in use by another run_mine (pid {holder}); wait for it to "
                                  "finish or give another --out") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()

    def release(self) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


# ------------------------------------------------------------------- per model
def _features(entry, utterances, cfg: RunConfig) -> features.FeatureStore:
    """The model's feature cache: reused when its identity matches, else (re)extracted."""
    identity = {
        "model": entry.name,
        "kind": entry.kind,
        "extractor_version": features.EXTRACTORS[entry.kind].version if entry.kind in features.EXTRACTORS else None,
        "config": features.file_digest(entry.config_path),
        "checkpoint": features.file_digest(entry.checkpoint),
        "utterances": _digest(list(utterances)),
        "max_frames": cfg.max_frames,
        "cache_dtype": cfg.cache_dtype,
    }
    path = cfg.out_dir / "cache" / f"{report.model_file_stem(entry.name)}.features"
    if path.exists():
        try:
            store = features.FeatureStore(path)
            if store.meta.get("identity") == identity:
                logger.info("%s: reusing cached features %s", entry.name, path)
                return store
            logger.info("%s: cached features are stale (checkpoint, config or utterances changed): re-extracting",
                        entry.name)
        except (ValueError, OSError, KeyError) as e:
            logger.warning("%s: unreadable feature cache %s (%s): re-extracting", entry.name, path, e)
    start = time.perf_counter()
    extractor = features.build_extractor(entry, cfg.device)
    with Progress(len(utterances), f"features {entry.name}", "utt", cfg.show_bar) as bar:
        store = features.extract_features(
            extractor, utterances, path, {"identity": identity}, entry.recipe_root,
            batch_size=cfg.batch_size, max_frames=cfg.max_frames, cache_dtype=cfg.cache_dtype,
            progress=bar.update,
        )
    logger.info("%s: features of %d utterances extracted in %.1f s (%s)", entry.name, len(utterances),
                time.perf_counter() - start, path)
    return store


def store_pairs(store: features.FeatureStore, max_frames: Optional[int]) -> LayerPairs:
    """The (X, T_i) frames of every layer of a feature cache, in the cache's precision.

    X is paired with each layer's frame rate by :func:`analysis.features.align_frames`,
    then both are cut to ``max_frames``; layers at one frame rate share one X list
    (estimators prepare it once).
    """
    layer_names = list(store.meta["layer_names"])[1:]
    x_by_frames: Dict[tuple, List[torch.Tensor]] = {}

    def layer(i: int):
        full = [store.get(utt, i + 1) for utt in store.utt_ids]
        ts = [torch.from_numpy(np.array(t[:max_frames])) for t in full]
        key = tuple(int(t.shape[0]) for t in full)
        if key not in x_by_frames:
            x_by_frames.clear()
            x_by_frames[key] = [features.align_frames(torch.from_numpy(np.array(store.get(utt, 0))), n)[:max_frames]
                                for utt, n in zip(store.utt_ids, key)]
        return x_by_frames[key], ts

    return LayerPairs(len(layer_names), layer, store.utt_ids, layer_names)


def _load_saved(path: Path, identity: dict, what: str) -> Optional[dict]:
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        logger.warning("%s: unreadable %s (%s); starting over", path, what, e)
        return None
    if saved.get("identity") != identity:
        logger.info("%s: %s were made with other features or options; starting over", path, what)
        return None
    return saved


def _per_utterance_estimates(entry, store, pairs: LayerPairs, estimator: str, cfg: RunConfig):
    """Per-utterance estimates ``(U, L)`` and frames ``(U, L)``, resuming from saved ones."""
    layer_names = pairs.layer_names
    identity = {
        "format": _ESTIMATE_FORMAT,
        "features": _digest(store.meta.get("identity")),
        "estimator": estimator,
        "options": _options_identity(cfg.mine),
        "max_frames": cfg.max_frames,
    }
    path = cfg.out_dir / "estimates" / f"{report.model_file_stem(entry.name)}.{estimator}.json"
    values = (_load_saved(path, identity, "estimates") or {}).get("values", {})
    pending = [(utt, j) for utt in store.utt_ids for j in range(len(layer_names))
               if layer_names[j] not in values.get(utt, {})]
    done = len(store.utt_ids) * len(layer_names) - len(pending)
    if done:
        logger.info("%s: %d of %d %s estimates already done; %d to go", entry.name, done, done + len(pending),
                    estimator, len(pending))
    row_of = {utt: u for u, utt in enumerate(store.utt_ids)}
    engine_progress = None if cfg.progress == "auto" else cfg.progress == "on"
    with Progress(len(pending), f"{estimator} {entry.name}", "est", cfg.show_bar) as bar:
        for start in range(0, len(pending), cfg.problems_per_call):
            call = pending[start:start + cfg.problems_per_call]
            xs, ys = [], []
            for j in sorted({j for _, j in call}):
                layer_x, layer_t = pairs.layer(j)
                for utt, jj in call:
                    if jj == j:
                        xs.append(layer_x[row_of[utt]])
                        ys.append(layer_t[row_of[utt]])
            call = sorted(call, key=lambda p: p[1])
            result = estimate_mi_batched(
                xs, ys, estimator=estimator, options=cfg.mine,
                seeds=[derive_seed(cfg.seed, utt) for utt, _ in call],
                on_short="skip",
                max_pairs_per_chunk=cfg.max_pairs_per_chunk,
                memory_budget_bytes=None if cfg.memory_budget_mb is None else cfg.memory_budget_mb * 2 ** 20,
                progress=engine_progress,
            )
            for (utt, j), value, n in zip(call, result.estimates, result.n_frames):
                value = float(value)
                values.setdefault(utt, {})[layer_names[j]] = [None if math.isnan(value) else value, int(n)]
            atomic_write_text(path, json.dumps({"model": entry.name, "identity": identity, "values": values}))
            bar.update(len(call))
    estimates = np.full((len(store.utt_ids), len(layer_names)), np.nan)
    frames = np.zeros_like(estimates)
    for i, utt in enumerate(store.utt_ids):
        for j, name in enumerate(layer_names):
            value, n = values[utt][name]
            estimates[i, j] = np.nan if value is None else value
            frames[i, j] = n
    return estimates, frames


def _curve(entry, store, pairs: LayerPairs, role: str, estimator: str, cfg: RunConfig) -> dict:
    """One curve of a model: rows (CSV columns), verdict, test and what it estimates."""
    row = get_estimator(estimator)
    start = time.perf_counter()
    if estimator in PER_UTTERANCE_ESTIMATORS:
        estimates, frames = _per_utterance_estimates(entry, store, pairs, estimator, cfg)
        if not np.isfinite(estimates).any():
            raise features.ExtractionError(f"model {entry.name}: no utterance gave a {estimator} estimate "
                                           "(all too short?)")
        rows = report.layer_rows(estimates, frames, pairs.layer_names, seed=cfg.seed, n_boot=cfg.n_boot,
                                 near_margin=cfg.near_log_n_margin)
        verdict, test = report.trend(estimates, pairs.layer_names, seed=cfg.seed, n_boot=cfg.n_boot)
        n_units = int(np.isfinite(estimates).all(axis=1).sum())
    else:
        values = row.values(pairs, cfg.options(estimator), cfg.seed, cfg.device)
        curve = curve_from_values(values, row, pairs.layer_names, seed=cfg.seed, n_boot=cfg.n_boot)
        frames_per_unit = sum(int(x.shape[0]) for x in pairs.layer(0)[0]) / max(1, values.shape[0])
        rows = report.curve_rows(curve, n_utts=len(store.utt_ids), frames_per_unit=frames_per_unit)
        verdict, test = curve.verdict, curve.test
        n_units = curve.n_units
    return {
        "role": role, "estimator": estimator, "quantity": row.quantity, "unit": row.unit, "n_units": n_units,
        "options": _options_identity(cfg.options(estimator)), "verdict": verdict, "test": test, "rows": rows,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _calibration(pairs: LayerPairs, estimator: str, cfg: RunConfig) -> dict:
    """The calibration of ``estimator`` at the shapes of ``pairs``, cached by those shapes."""
    xs, ts0 = pairs.layer(0)
    frames = [int(x.shape[0]) for x in xs]
    t_dims = [int(pairs.layer(i)[1][0].shape[1]) for i in range(pairs.n_layers)]
    identity = {
        "format": _CALIBRATION_FORMAT, "estimator": estimator, "options": _options_identity(cfg.options(estimator)),
        "frames": frames, "x_dim": int(xs[0].shape[1]), "t_dims": t_dims, "seed": cfg.seed, "n_boot": cfg.n_boot,
    }
    path = cfg.out_dir / "calibration" / f"{estimator}_{_digest(identity)}.json"
    saved = _load_saved(path, identity, "calibration")
    if saved is not None:
        return saved["result"]
    start = time.perf_counter()
    result = calibrate(get_estimator(estimator), cfg.options(estimator), frames, identity["x_dim"], t_dims,
                       seed=cfg.seed, device=cfg.device, n_boot=cfg.n_boot)
    payload = dict(result.to_json(), summary=result.summary(), seconds=round(time.perf_counter() - start, 2))
    atomic_write_text(path, json.dumps({"identity": identity, "result": payload}))
    return payload


def measure_model(entry, utterances, cfg: RunConfig) -> dict:
    """Features, curves, calibrations and result files of one model; returns its summary."""
    start = time.perf_counter()
    store = _features(entry, utterances, cfg)
    pairs = store_pairs(store, cfg.max_frames)
    curves, not_estimated = [], []
    for role, estimator in cfg.curves:
        try:
            curve = _curve(entry, store, pairs, role, estimator, cfg)
            if cfg.calibrate and role != "cross-check" and len(pairs.layer_names) >= 3:
                curve["calibration"] = _calibration(pairs, estimator, cfg)
        except ValueError as e:  # too few utterances or frames for this estimator
            if role == "main":
                raise features.ExtractionError(f"model {entry.name}: {estimator}: {e}") from e
            logger.warning("%s: no %s curve (%s): %s", entry.name, role, estimator, e)
            not_estimated.append({"role": role, "estimator": estimator, "reason": str(e)})
            continue
        curves.append(curve)
    main = curves[0]
    tags = dict(entry.tags)
    if str(tags.get("family", "")).startswith("upstream"):
        # What the model really is: an upstream with or without downstream blocks.
        tags["family"] = "upstream+downstream" if store.meta.get("boundary") else "upstream"
    summary = {
        "name": entry.name,
        "kind": entry.kind,
        "tags": tags,
        "config": entry.config_path,
        "checkpoint": entry.checkpoint,
        "x_description": store.meta.get("x_description", ""),
        "boundary": store.meta.get("boundary"),
        "n_utts": main["n_units"] if main["estimator"] in PER_UTTERANCE_ESTIMATORS else len(store.utt_ids),
        "n_utts_drawn": len(store.utt_ids),
        "estimator": main["estimator"],
        "options": main["options"],
        "max_frames": cfg.max_frames,
        "seed": cfg.seed,
        "verdict": main["verdict"],
        "test": main["test"],
        "curves": curves,
        "curves_not_estimated": not_estimated,
        "cross_check": report.cross_check(curves),
        "seconds": round(time.perf_counter() - start, 2),
    }
    report.write_model_results(cfg.out_dir, summary)
    summary["rows"] = main["rows"]
    return summary


# ------------------------------------------------------------------------ main
def _draw_utterances(cfg: RunConfig, measurable, skipped) -> List[Tuple[str, str]]:
    if not measurable:
        return []
    try:
        utterances = discover.select_utterances(list(cfg.wav_scps), cfg.n_utts, cfg.seed)
    except (OSError, ValueError) as e:
        if not cfg.wav_scps:
            e = f"no evaluation data: none of data/{{{','.join(discover.DEFAULT_EVAL_SETS)}}}/wav.scp " \
                f"next to {cfg.exp_dir}; give --wav_scp"
        logger.error("%s", e)
        skipped += [{"name": m.name, "reason": f"no utterances: {e}"} for m in measurable]
        measurable.clear()
        return []
    if len(utterances) < cfg.n_utts:
        logger.warning("only %d utterances available (asked for %d): using all of them", len(utterances),
                       cfg.n_utts)
    return utterances


def run(cfg: RunConfig) -> int:
    """Runs the analysis; returns the exit status."""
    try:
        entries = discover.discover_models(cfg.exp_dir, cfg.models, exclude=[cfg.out_dir])
    except FileNotFoundError as e:
        logger.error("%s", e)
        return EXIT_NO_MODEL
    candidates = [e for e in entries if e.kind is not None]
    for e in entries:
        if e.kind is None:
            logger.info("%s: %s", e.name, e.problem)
    skipped = [{"name": e.name, "reason": e.problem} for e in candidates if not e.ok]
    measurable = [e for e in candidates if e.ok]
    if not candidates:
        logger.error("%s: no trained models found%s", cfg.exp_dir, f" matching {list(cfg.models)}" if cfg.models else "")
    utterances = _draw_utterances(cfg, measurable, skipped)
    settings = {
        "exp_dir": cfg.exp_dir, "out": cfg.out_dir, "estimator": cfg.curves[0][1],
        "curves": [{"role": role, "estimator": name, "quantity": get_estimator(name).quantity}
                   for role, name in cfg.curves],
        "calibrate": cfg.calibrate, "n_utts": cfg.n_utts, "seed": cfg.seed, "max_frames": cfg.max_frames,
        "wav_scps": list(cfg.wav_scps), "n_utts_used": len(utterances),
        "options_text": report.options_text(cfg),
    }
    measured = []
    for k, entry in enumerate(measurable, start=1):
        logger.info("[%d/%d] %s (%s): %s", k, len(measurable), entry.name, entry.kind, entry.checkpoint)
        try:
            summary = measure_model(entry, utterances, cfg)
        except features.ExtractionError as e:
            logger.error("%s: skipped: %s", entry.name, e)
            skipped.append({"name": entry.name, "reason": str(e)})
            continue
        except Exception as e:  # one model's failure must not stop the others
            logger.exception("%s: skipped after an unexpected error", entry.name)
            skipped.append({"name": entry.name, "reason": f"{type(e).__name__}: {e}"})
            continue
        measured.append(summary)
        logger.info("%s: %s (%s)", entry.name, summary["verdict"], summary["test"])
    figures = []
    if cfg.plots and measured:
        plot_dir = cfg.out_dir / "plots"
        for m in measured:
            stem = report.model_file_stem(m["name"])
            figures += plots.plot_model(m, plot_dir, stem)
            if any("calibration" in c for c in m["curves"]):
                figures += plots.plot_calibration(m, plot_dir / f"{stem}_calibration")
        for name, title, members in plots.comparisons(measured):
            figures += plots.plot_curves(members, plot_dir / f"compare_{name}", title=title)
    md_path, _ = report.write_summary(cfg.out_dir, measured, skipped, settings, figures)
    for m in measured:
        print(f"{m['name']}: {m['verdict']} ({m['test']})")
    for s in skipped:
        print(f"{s['name']}: not measured: {s['reason']}")
    logger.info("summary: %s", md_path)
    if not measured:
        logger.error("no model could be measured")
        return EXIT_NO_MODEL
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s",
        force=True,  # ESPnet configures the root logger on import
    )
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return EXIT_BAD_OPTIONS
    try:
        lock = OutputLock(cfg.out_dir)
    except BlockingIOError as e:
        logger.error("%s", e)
        return EXIT_LOCKED
    try:
        return run(cfg)
    finally:
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
