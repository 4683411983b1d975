"""One model's measurement in ``analysis/run_mine.py``: features, curves, calibrations, files.

:func:`measure_model` reads (or extracts and caches) a model's features, estimates each
curve the run asks for (:mod:`analysis.curve`; per-utterance estimates are saved as
they come, so an interrupted run resumes), calibrates the main and the paper's
estimator at the model's shapes (:mod:`analysis.calibration`, cached by those shapes),
and writes the model's result files (:mod:`analysis.report`).
"""

import json
import logging
import math
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from analysis import features, report
from analysis.calibration import calibrate
from analysis.curve import PER_UTTERANCE_ESTIMATORS, LayerPairs, curve_from_values, get_estimator
from analysis.engine import estimate_mi_batched
from analysis.progress import Progress
from analysis.rng import derive_seed
from analysis.run_config import RunConfig, digest, options_identity
from espnet_mamba.io import atomic_write_text

__all__ = ["measure_model", "store_pairs"]

logger = logging.getLogger("run_mine")

_ESTIMATE_FORMAT = 1
_CALIBRATION_FORMAT = 1


def _features(entry, utterances, cfg: RunConfig) -> features.FeatureStore:
    """The model's feature cache: reused when its identity matches, else (re)extracted."""
    identity = {
        "model": entry.name,
        "kind": entry.kind,
        "extractor_version": features.EXTRACTORS[entry.kind].version if entry.kind in features.EXTRACTORS else None,
        "config": features.file_digest(entry.config_path),
        "checkpoint": features.file_digest(entry.checkpoint),
        "utterances": digest(list(utterances)),
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

    The cache pairs X with each layer's frame rate (:mod:`analysis.pairing`); layers
    that share one paired X share one list of it (estimators prepare it once).
    """
    layer_names = list(store.meta["layer_names"])[1:]
    x_lists: Dict[tuple, List[torch.Tensor]] = {}

    def layer(i: int):
        ts = [torch.from_numpy(np.array(store.get(utt, i + 1)[:max_frames])) for utt in store.utt_ids]
        key = tuple(store.x_index(utt, i + 1) for utt in store.utt_ids)
        if key not in x_lists:
            x_lists.clear()
            x_lists[key] = [torch.from_numpy(np.array(store.get(utt, k)[:max_frames]))
                            for utt, k in zip(store.utt_ids, key)]
        return x_lists[key], ts

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
        "features": digest(store.meta.get("identity")),
        "estimator": estimator,
        "options": options_identity(cfg.mine),
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
        "options": options_identity(cfg.options(estimator)), "verdict": verdict, "test": test, "rows": rows,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _calibration(store: features.FeatureStore, estimator: str, cfg: RunConfig) -> dict:
    """The calibration of ``estimator`` at the shapes of the model's features (the frames
    of its first layer, its X and T dimensions), cached by those shapes."""
    first = store.utt_ids[0]
    n_layers = len(store.meta["layer_names"]) - 1
    frames = [int(store.get(utt, 1)[:cfg.max_frames].shape[0]) for utt in store.utt_ids]
    x_dim = int(store.get(first, store.x_index(first, 1)).shape[1])
    t_dims = [int(store.get(first, i).shape[1]) for i in range(1, n_layers + 1)]
    identity = {
        "format": _CALIBRATION_FORMAT, "estimator": estimator, "options": options_identity(cfg.options(estimator)),
        "frames": frames, "x_dim": x_dim, "t_dims": t_dims, "seed": cfg.seed, "n_boot": cfg.n_boot,
    }
    path = cfg.out_dir / "calibration" / f"{estimator}_{digest(identity)}.json"
    saved = _load_saved(path, identity, "calibration")
    if saved is not None:
        return saved["result"]
    start = time.perf_counter()
    result = calibrate(get_estimator(estimator), cfg.options(estimator), frames, x_dim, t_dims,
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
                curve["calibration"] = _calibration(store, estimator, cfg)
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
