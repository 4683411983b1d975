#!/usr/bin/env python3
"""Layer-wise mutual information I(X; T_i) of every trained model under ``exp/`` (stage 13).

Usage::

    python analysis/run_mine.py exp/                      # all models, 1000 utterances
    python analysis/run_mine.py exp/ --n_utts 100 --epochs 20 --models 'asr_*'

For each model found under ``exp/`` (see :mod:`analysis.discover`), the script

1. draws ``--n_utts`` utterances (seeded) from the recipe's dev/test ``wav.scp``
   (``data/dev_clean``, ``data/test_clean`` beside ``exp/``) or ``--wav_scp``;
2. extracts X (the input of the first encoder layer) and T_i (each layer's output)
   of every utterance without padding frames (:mod:`analysis.features`) into a
   feature cache (one file per model, reused while the checkpoint, config and
   utterance list are unchanged);
3. estimates I(X; T_i) per utterance and layer with MINE (the paper's recipe:
   ``analysis.mi.MIOptions`` defaults) through the batched engine, saving finished
   estimates as it goes so an interrupted run resumes where it stopped;
4. writes ``<out>/<model>.csv`` and ``.json`` (per layer: mean MI, std, 95 %
   bootstrap CI, utterances, mean log n, near-log-n count), plots
   (``<out>/plots/*.png|pdf``, one per model and one per paper comparison), and a
   summary (``<out>/RESULTS.md``, ``summary.json``) with a one-line verdict per
   model ("falls", "falls then rises" or "unclear", and the test that decided it).

A model that cannot be measured (missing or unreadable checkpoint or config,
NaN/inf features ...) is reported and skipped; the others are still written. The
exit status is 1 when no model could be measured.
"""

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from analysis import discover, features, plots, report
from analysis._rng import derive_seed
from analysis.engine import estimate_mi_batched
from analysis.mi import ESTIMATORS, MIOptions, resolve_device

__all__ = ["get_parser", "main", "measure_model", "run"]

logger = logging.getLogger("run_mine")

_ESTIMATE_FORMAT = 1


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


def get_parser() -> argparse.ArgumentParser:
    """The command-line options (each shown with its default by ``--help``)."""
    parser = argparse.ArgumentParser(
        description="Layer-wise MI I(X; T_i) of every trained model under exp/ (MINE, paper defaults).",
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
                       help="seed of the utterance draw, of MINE and of the bootstrap")
    group = parser.add_argument_group("features")
    group.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    group.add_argument("--batch_size", type=_positive_int, default=8,
                       help="utterances per forward pass of feature extraction (padding-safe models)")
    group.add_argument("--max_frames", type=_positive_int, default=None,
                       help="use at most this many frames of each utterance (default: all)")
    group.add_argument("--cache_dtype", choices=("float16", "float32"), default="float16",
                       help="precision of the feature cache")
    group = parser.add_argument_group("MI estimation (defaults: the paper's MINE recipe)")
    group.add_argument("--estimator", choices=ESTIMATORS, default="mine", help="MI estimator")
    group.add_argument("--epochs", type=_positive_int, default=MIOptions.epochs, help="training epochs per estimate")
    group.add_argument("--lr", type=float, default=MIOptions.lr, help="Adam learning rate of the critic")
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
    group.add_argument("--near_log_n_margin", type=float, default=0.5,
                       help="an estimate within this many nats of log(frames) is flagged")
    group.add_argument("--no_plots", action="store_true", help="do not draw figures")
    group.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                       help="progress bars (auto: on an interactive terminal)")
    group.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _mi_options(args) -> MIOptions:
    return MIOptions(
        hidden=tuple(args.hidden),
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.mine_batch_size,
        standardize=not args.no_standardize,
        seed=args.seed,
        device=str(resolve_device(args.device)),
    )


def _options_identity(opts: MIOptions) -> dict:
    values = dataclasses.asdict(opts)
    values.pop("device")  # the same estimate on any device
    values["dtype"] = str(values["dtype"])
    values["hidden"] = list(values["hidden"])
    values["adam_betas"] = list(values["adam_betas"])
    return values


def _digest(value) -> str:
    return hashlib.blake2b(json.dumps(value, sort_keys=True).encode("utf-8"), digest_size=16).hexdigest()


class _Bar:
    """A tqdm bar when wanted, else nothing."""

    def __init__(self, total: int, desc: str, enabled: bool, unit: str) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False)
            except ImportError:
                self.bar = None

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------- per model
def _features(entry, utterances, args, out_dir: Path, device, show_bar: bool) -> features.FeatureStore:
    """The model's feature cache: reused when its identity matches, else (re)extracted."""
    identity = {
        "model": entry.name,
        "kind": entry.kind,
        "extractor_version": features.EXTRACTORS[entry.kind].version if entry.kind in features.EXTRACTORS else None,
        "config": features.file_digest(entry.config_path),
        "checkpoint": features.file_digest(entry.checkpoint),
        "utterances": _digest(list(utterances)),
        "max_frames": args.max_frames,
        "cache_dtype": args.cache_dtype,
    }
    path = out_dir / "cache" / f"{report.model_file_stem(entry.name)}.features"
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
    extractor = features.build_extractor(entry, device)
    bar = _Bar(len(utterances), f"features {entry.name}", show_bar, "utt")
    try:
        store = features.extract_features(
            extractor, utterances, path, {"identity": identity}, entry.recipe_root,
            batch_size=args.batch_size, max_frames=args.max_frames, cache_dtype=args.cache_dtype,
            progress=bar.update,
        )
    finally:
        bar.close()
    logger.info("%s: features of %d utterances extracted in %.1f s (%s)", entry.name, len(utterances),
                time.perf_counter() - start, path)
    return store


def _load_estimates(path: Path, identity: dict) -> Dict[str, Dict[str, list]]:
    if not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        logger.warning("%s: unreadable estimates (%s); starting over", path, e)
        return {}
    if saved.get("format") != _ESTIMATE_FORMAT or saved.get("identity") != identity:
        logger.info("%s: estimates were made with other features or options; starting over", path)
        return {}
    return saved.get("values", {})


def _problem_pair(store: features.FeatureStore, utt: str, layer: int, max_frames: Optional[int], x_cache: dict):
    """``(x, y)`` tensors of one (utterance, layer) problem, in the cache's precision (the
    engine converts them chunk by chunk); x is one object for all layers of an utterance
    with the same frame count, so the engine stores it once."""
    y = store.get(utt, layer)
    key = (utt, y.shape[0])
    if key not in x_cache:
        x = features.align_frames(torch.from_numpy(np.array(store.get(utt, 0))), y.shape[0])
        x_cache[key] = x[:max_frames] if max_frames is not None else x
    y = torch.from_numpy(np.array(y[:max_frames] if max_frames is not None else y))
    return x_cache[key], y


def _estimate(entry, store, args, opts: MIOptions, out_dir: Path, show_bar: bool):
    """Per-utterance estimates ``(U, L)`` and frames ``(U, L)``, resuming from saved ones."""
    layer_names = list(store.meta["layer_names"])[1:]
    identity = {
        "features": _digest(store.meta.get("identity")),
        "estimator": args.estimator,
        "options": _options_identity(opts),
        "max_frames": args.max_frames,
    }
    path = out_dir / "estimates" / f"{report.model_file_stem(entry.name)}.json"
    values = _load_estimates(path, identity)
    pending = [(utt, j) for utt in store.utt_ids for j in range(len(layer_names))
               if layer_names[j] not in values.get(utt, {})]
    done = len(store.utt_ids) * len(layer_names) - len(pending)
    if done:
        logger.info("%s: %d of %d estimates already done; %d to go", entry.name, done, done + len(pending),
                    len(pending))
    bar = _Bar(len(pending), f"MI {entry.name}", show_bar, "est")
    engine_progress = None if args.progress == "auto" else args.progress == "on"
    try:
        for start in range(0, len(pending), args.problems_per_call):
            call = pending[start:start + args.problems_per_call]
            x_cache: dict = {}
            pairs = [_problem_pair(store, utt, j + 1, args.max_frames, x_cache) for utt, j in call]
            result = estimate_mi_batched(
                [p[0] for p in pairs], [p[1] for p in pairs],
                estimator=args.estimator, options=opts,
                seeds=[derive_seed(args.seed, utt) for utt, _ in call],
                on_short="skip",
                max_pairs_per_chunk=args.max_pairs_per_chunk,
                memory_budget_bytes=None if args.memory_budget_mb is None else args.memory_budget_mb * 2 ** 20,
                progress=engine_progress,
            )
            for (utt, j), value, n in zip(call, result.estimates, result.n_frames):
                value = float(value)
                values.setdefault(utt, {})[layer_names[j]] = [None if math.isnan(value) else value, int(n)]
            report.atomic_write_text(path, json.dumps(
                {"format": _ESTIMATE_FORMAT, "model": entry.name, "identity": identity, "values": values}))
            bar.update(len(call))
    finally:
        bar.close()
    estimates = np.full((len(store.utt_ids), len(layer_names)), np.nan)
    frames = np.zeros_like(estimates)
    for i, utt in enumerate(store.utt_ids):
        for j, name in enumerate(layer_names):
            value, n = values[utt][name]
            estimates[i, j] = np.nan if value is None else value
            frames[i, j] = n
    return estimates, frames, layer_names


def measure_model(entry, utterances, args, out_dir: Path, device, show_bar: bool) -> dict:
    """Features, estimates, statistics and result files of one model; returns its summary."""
    start = time.perf_counter()
    store = _features(entry, utterances, args, out_dir, device, show_bar)
    opts = _mi_options(args)
    estimates, frames, layer_names = _estimate(entry, store, args, opts, out_dir, show_bar)
    if not np.isfinite(estimates).any():
        raise features.ExtractionError(f"model {entry.name}: no utterance gave an estimate (all too short?)")
    rows = report.summarize_layers(estimates, frames, layer_names, seed=args.seed, n_boot=args.n_boot,
                                   near_margin=args.near_log_n_margin)
    verdict, test = report.trend(estimates, layer_names, seed=args.seed, n_boot=args.n_boot)
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
        "n_utts": int(np.isfinite(estimates).all(axis=1).sum()),
        "n_utts_drawn": len(store.utt_ids),
        "estimator": args.estimator,
        "options": _options_identity(opts),
        "max_frames": args.max_frames,
        "seed": args.seed,
        "verdict": verdict,
        "test": test,
        "seconds": round(time.perf_counter() - start, 2),
    }
    report.write_model_results(out_dir, summary, rows)
    summary["rows"] = rows
    return summary


# ------------------------------------------------------------------------ main
def run(args) -> int:
    """Runs the analysis for parsed ``args``; returns the exit status."""
    exp_dir: Path = args.exp_dir
    out_dir: Path = args.out if args.out is not None else exp_dir / "mi"
    show_bar = sys.stderr.isatty() if args.progress == "auto" else args.progress == "on"
    try:
        entries = discover.discover_models(exp_dir, args.models, exclude=[out_dir])
    except FileNotFoundError as e:
        logger.error("%s", e)
        return 1
    candidates = [e for e in entries if e.kind is not None]
    for e in entries:
        if e.kind is None:
            logger.info("%s: %s", e.name, e.problem)
    skipped = [{"name": e.name, "reason": e.problem} for e in candidates if not e.ok]
    measurable = [e for e in candidates if e.ok]
    settings = {
        "exp_dir": exp_dir, "out": out_dir, "estimator": args.estimator, "n_utts": args.n_utts,
        "seed": args.seed, "max_frames": args.max_frames,
        "options_text": f"epochs {args.epochs}, lr {args.lr}, batch {args.mine_batch_size}, "
                        f"hidden {','.join(map(str, args.hidden))}, "
                        f"{'raw' if args.no_standardize else 'standardized'} features",
    }
    if not candidates:
        logger.error("%s: no trained models found%s", exp_dir,
                     f" matching {args.models}" if args.models else "")
    wav_scps = list(args.wav_scp) if args.wav_scp else discover.default_wav_scps(exp_dir)
    settings["wav_scps"] = wav_scps
    utterances: List[Tuple[str, str]] = []
    if measurable:
        try:
            utterances = discover.select_utterances(wav_scps, args.n_utts, args.seed)
        except (OSError, ValueError) as e:
            if not wav_scps:
                e = f"no evaluation data: none of data/{{{','.join(discover.DEFAULT_EVAL_SETS)}}}/wav.scp " \
                    f"next to {exp_dir}; give --wav_scp"
            logger.error("%s", e)
            skipped += [{"name": m.name, "reason": f"no utterances: {e}"} for m in measurable]
            measurable = []
    if utterances and len(utterances) < args.n_utts:
        logger.warning("only %d utterances available (asked for %d): using all of them", len(utterances),
                       args.n_utts)
    settings["n_utts_used"] = len(utterances)
    device = resolve_device(args.device)
    measured = []
    for k, entry in enumerate(measurable, start=1):
        logger.info("[%d/%d] %s (%s): %s", k, len(measurable), entry.name, entry.kind, entry.checkpoint)
        try:
            summary = measure_model(entry, utterances, args, out_dir, device, show_bar)
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
    if not args.no_plots and measured:
        plot_dir = out_dir / "plots"
        for m in measured:
            figures += plots.plot_model(m, plot_dir, report.model_file_stem(m["name"]))
        for name, title, members in plots.comparisons(measured):
            figures += plots.plot_curves(members, plot_dir / f"compare_{name}", title=title)
    md_path, _ = report.write_summary(out_dir, measured, skipped, settings, figures)
    for m in measured:
        print(f"{m['name']}: {m['verdict']} ({m['test']})")
    for s in skipped:
        print(f"{s['name']}: not measured: {s['reason']}")
    logger.info("summary: %s", md_path)
    if not measured:
        logger.error("no model could be measured")
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s",
        force=True,  # ESPnet configures the root logger on import
    )
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
