"""Per-layer rows, trend verdicts and the result files of the MI analysis.

Every curve of a model becomes one row per layer::

    estimator, layer, index, mean_mi, std_mi, ci_low, ci_high, n_utts, n_units, mean_log_n, near_log_n

(MI in nats; ``std_mi`` over the estimator's units - utterances for the per-utterance
estimators, folds or groups of utterances for the pooled ones; ``ci_*`` a 95 %
bootstrap interval of the mean over those units; ``mean_log_n`` the mean of
log(frames) per unit, the most nats a distribution-free lower bound can certify;
``near_log_n`` how many per-utterance estimates are within a margin of their log n,
0 for pooled estimators.) :func:`layer_rows` builds them from per-utterance
estimates ``(U, L)``, :func:`curve_rows` from a pooled :class:`analysis.curve.LayerCurve`;
the statistics and the verdict come from :mod:`analysis.stats`.

:func:`write_model_results` writes ``<model>.csv`` (the main curve),
``<model>.<estimator>.csv`` (the others) and ``<model>.json``; :func:`write_summary`
writes ``RESULTS.md`` and ``summary.json``, with each verdict beside its calibration
and the cross-check. Every file is written atomically.
"""

import csv
import datetime
import io
import json
import math
import platform
import re
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from analysis import stats
from espnet_mamba.io import atomic_write_text

__all__ = [
    "CSV_COLUMNS",
    "cross_check",
    "curve_rows",
    "layer_rows",
    "model_file_stem",
    "options_text",
    "trend",
    "write_model_results",
    "write_summary",
]

CSV_COLUMNS = (
    "estimator", "layer", "index", "mean_mi", "std_mi", "ci_low", "ci_high", "n_utts", "n_units", "mean_log_n",
    "near_log_n",
)


def model_file_stem(name: str) -> str:
    """A file name for a model name (``asr_x`` or ``sub/dir`` -> ``sub__dir``)."""
    stem = name.replace("/", "__")
    return re.sub(r"[^A-Za-z0-9._+-]", "_", stem) or "model"


def layer_rows(
    estimates: np.ndarray,
    n_frames: np.ndarray,
    layer_names: Sequence[str],
    seed: int = 0,
    n_boot: int = 1000,
    near_margin: float = 0.5,
) -> List[dict]:
    """One row per layer of per-utterance estimates (see the module docstring).

    Args:
        estimates: ``(U, L)`` per-utterance MI estimates in nats; NaN = missing.
        n_frames: ``(U, L)`` frames of each estimate's problem.
        layer_names: L names (T_1..T_L).
        seed: Seed of the bootstrap.
        n_boot: Bootstrap resamples.
        near_margin: Margin (nats) of the "near log n" flag.

    Raises:
        ValueError: Shapes disagree.
    """
    estimates = np.asarray(estimates, dtype=np.float64)
    n_frames = np.asarray(n_frames, dtype=np.float64)
    if estimates.ndim != 2 or estimates.shape != n_frames.shape or estimates.shape[1] != len(layer_names):
        raise ValueError(
            f"estimates {estimates.shape}, n_frames {n_frames.shape} and {len(layer_names)} layer names disagree"
        )
    rows = []
    for j, name in enumerate(layer_names):
        ok = np.isfinite(estimates[:, j])
        values = estimates[ok, j]
        frames = n_frames[ok, j]
        row = {"layer": name, "index": j + 1, "n_utts": int(ok.sum()), "n_units": int(ok.sum())}
        if values.size:
            summary = stats.summarize_layers(values, level=0.95, n_boot=n_boot, seed=seed + j)
            row.update(
                mean_mi=float(summary.mean[0]),
                std_mi=float(summary.std[0]),
                ci_low=float(summary.ci_low[0]),
                ci_high=float(summary.ci_high[0]),
                mean_log_n=float(np.log(frames).mean()),
                near_log_n=int(np.sum(stats.near_log_n(values, frames, margin=near_margin))),
            )
        else:
            row.update(mean_mi=math.nan, std_mi=math.nan, ci_low=math.nan, ci_high=math.nan,
                       mean_log_n=math.nan, near_log_n=0)
        rows.append(row)
    return rows


def curve_rows(curve, n_utts: int, frames_per_unit: float) -> List[dict]:
    """One row per layer of a pooled curve (units: folds or groups of utterances).

    Args:
        curve: An :class:`analysis.curve.LayerCurve`.
        n_utts: Utterances the curve was estimated on.
        frames_per_unit: Mean frames per unit (its log is ``mean_log_n``).
    """
    complete = curve.values[np.isfinite(curve.values).all(axis=1)]
    std = complete.std(axis=0, ddof=1) if complete.shape[0] > 1 else np.full(complete.shape[1], math.nan)
    return [{
        "layer": name, "index": j + 1, "mean_mi": float(curve.means[j]), "std_mi": float(std[j]),
        "ci_low": float(curve.ci_low[j]), "ci_high": float(curve.ci_high[j]), "n_utts": int(n_utts),
        "n_units": int(complete.shape[0]), "mean_log_n": float(math.log(max(frames_per_unit, 1.0))),
        "near_log_n": 0,
    } for j, name in enumerate(curve.layer_names)]


def trend(estimates: np.ndarray, layer_names: Sequence[str], seed: int = 0,
          n_boot: int = 2000) -> Tuple[str, str]:
    """Verdict on the layer-wise curve: ``("falls" | "falls then rises" | "unclear", deciding test)``.

    :func:`analysis.stats.trend_verdict` on the per-utterance estimates (a paired
    bootstrap over utterances, see there for the rule). The test compares layer
    means, and log is monotone, so the verdict on the mean MI is also the verdict
    on the log-of-mean curve that the plots show.

    Args:
        estimates: ``(U, L)`` per-utterance estimates (NaN = missing); utterances
            with a missing layer are left out of the test.
        layer_names: L names, used in the test's description.
        seed: Bootstrap seed.
        n_boot: Bootstrap resamples.
    """
    estimates = np.asarray(estimates, dtype=np.float64)
    complete = estimates[np.isfinite(estimates).all(axis=1)]
    if estimates.shape[1] < 3:
        return "unclear", f"a trend needs at least 3 layers, the model has {estimates.shape[1]}"
    if complete.shape[0] < 2:
        return "unclear", f"a trend needs at least 2 utterances with every layer estimated, got {complete.shape[0]}"
    v = stats.trend_verdict(complete, level=0.95, n_boot=n_boot, seed=seed)
    # stats counts layers from 0; say which layer that is here.
    test = f"{v.rule} [layer 0 above is T_{layer_names[0]}]"
    return str(v.verdict), test


def _format(value, digits: int = 4) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def _csv_text(estimator: str, rows: List[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        row = dict(row, estimator=estimator)
        writer.writerow({k: (repr(row[k]) if isinstance(row[k], float) else row[k]) for k in CSV_COLUMNS})
    return buffer.getvalue()


def write_model_results(out_dir, model: dict) -> List[Path]:
    """``<out>/<stem>.csv`` (main curve), ``<stem>.<estimator>.csv`` (the others), ``<stem>.json``.

    Args:
        out_dir: Output directory.
        model: Metadata: ``name``, ``curves`` (each with ``estimator`` and ``rows``; the
            first is the main one), and whatever else (kind, checkpoint, verdict ...),
            written into the JSON as is; ``layers`` there are the main curve's rows.

    Returns:
        The paths written.
    """
    out_dir = Path(out_dir)
    stem = model_file_stem(model["name"])
    written = []
    for k, curve in enumerate(model["curves"]):
        path = out_dir / (f"{stem}.csv" if k == 0 else f"{stem}.{curve['estimator']}.csv")
        atomic_write_text(path, _csv_text(curve["estimator"], curve["rows"]))
        written.append(path)
    payload = dict(model)
    payload["layers"] = model["curves"][0]["rows"]
    json_path = out_dir / f"{stem}.json"
    atomic_write_text(json_path, json.dumps(_jsonable(payload), indent=2) + "\n")
    return written + [json_path]


def cross_check(curves: Sequence[dict]) -> Optional[dict]:
    """Whether the main curve and the cross-check name the same shape (None without one)."""
    other = [c for c in curves if c["role"] == "cross-check"]
    if not other:
        return None
    main, other = curves[0], other[0]
    return {"estimator": other["estimator"], "verdict": other["verdict"], "agrees": other["verdict"] == main["verdict"]}


def options_text(cfg) -> str:
    """The options of every estimator a run uses, in one line."""
    parts = []
    for role, name in cfg.curves:
        if name == "gcmi":
            parts.append(f"gcmi: {cfg.gcmi.folds} folds, ridge {cfg.gcmi.ridge:g}")
        elif name == "pooled-critic":
            c = cfg.critic
            parts.append(f"pooled-critic: MLP {','.join(map(str, c.hidden))} on {c.components} canonical pairs, "
                         f"{c.epochs} epochs, lr {c.lr:g}, at most {c.max_frames} training frames")
        else:
            m = cfg.mine
            parts.append(f"{name}: epochs {m.epochs}, lr {m.lr:g}, batch {m.batch_size}, hidden "
                         f"{','.join(map(str, m.hidden))}, {'standardized' if m.standardize else 'raw'} features")
    return "; ".join(parts)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _relative(path, base: Path) -> str:
    try:
        return Path(path).relative_to(base).as_posix()
    except ValueError:
        return str(path)


def _git_revision() -> Optional[str]:
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _environment() -> Dict[str, str]:
    import torch

    env = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    revision = _git_revision()
    if revision:
        env["git"] = revision
    return env


def _calibration_text(curve: dict) -> str:
    calibration = curve.get("calibration")
    if calibration is None:
        return "not calibrated"
    low, high = calibration["resolvable_nats"]
    span = f"{_format(low, 2)}-{_format(high, 2)} nats" if low is not None and low <= high else "none"
    verdict = "trustworthy" if calibration["trustworthy"] else "**not trustworthy**"
    return (f"Spearman {calibration['spearman']:.2f}, {calibration['verdicts_ok']}/{calibration['ladders']} "
            f"shapes named, resolves {span}: {verdict}")


def _verdict_text(curve: dict) -> str:
    calibration = curve.get("calibration")
    if calibration is not None and not calibration["trustworthy"]:
        return f"{curve['verdict']} (not trustworthy)"
    return curve["verdict"]


def _curve_by_role(model: dict, role: str) -> Optional[dict]:
    return next((c for c in model.get("curves", []) if c["role"] == role), None)


def write_summary(out_dir, models: List[dict], skipped: List[dict], settings: dict,
                  figures: Sequence[Path] = ()) -> Tuple[Path, Path]:
    """``RESULTS.md`` (markdown tables) and ``summary.json`` in ``out_dir``.

    Args:
        out_dir: Output directory.
        models: Metadata of each measured model, with ``curves`` (main first).
        skipped: ``{"name", "reason"}`` of each model that was not measured.
        settings: Options of the run (curves, N, seed ...).
        figures: Plot files written (listed in the summary).
    """
    out_dir = Path(out_dir)
    env = _environment()
    lines = ["# Layer-wise mutual information I(X; T_i)", ""]
    for curve in settings.get("curves", []):
        lines.append(f"- {curve['role']} curve: `{curve['estimator']}`, {curve['quantity']}")
    lines.append(f"- options: {settings.get('options_text', '')}")
    lines.append(f"- utterances: {settings.get('n_utts_used')} (asked {settings.get('n_utts')}, seed "
                 f"{settings.get('seed')}); audio: {', '.join(str(p) for p in settings.get('wav_scps', []))}")
    lines.append("- environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    lines += ["", "A verdict is only as good as its calibration: each estimator was also run on synthetic "
              "ladders of known MI matched to the model's shapes (dimensions, frames, utterances); a verdict "
              "whose estimator did not rank those ladders (Spearman >= 0.9) and name their shapes is marked "
              "not trustworthy.", ""]
    lines.append("## Verdicts")
    lines.append("")
    lines.append("| model | kind | checkpoint | layers | utts | verdict | calibration | paper's curve "
                 "| its calibration | cross-check |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for m in models:
        main, paper, check = m["curves"][0], _curve_by_role(m, "paper"), m.get("cross_check")
        check_text = "-" if check is None else (
            f"{check['estimator']}: {check['verdict']} ({'agrees' if check['agrees'] else 'DISAGREES'})")
        lines.append(
            f"| {m['name']} | {m.get('kind', '')} | {Path(str(m.get('checkpoint', ''))).name} | {len(main['rows'])} | "
            f"{m.get('n_utts_drawn', m.get('n_utts', ''))} | {main['estimator']}: {_verdict_text(main)} | "
            f"{_calibration_text(main)} | "
            + (f"{paper['estimator']}: {_verdict_text(paper)} | {_calibration_text(paper)}" if paper else "- | -")
            + f" | {check_text} |")
    if not models:
        lines.append("| (none) | | | | | | | | | |")
    for m in models:
        lines += ["", f"## {m['name']}", "", f"- kind: {m.get('kind', '')}; checkpoint: {m.get('checkpoint', '')}",
                  f"- X: {m.get('x_description', '')}"]
        for curve in m["curves"]:
            lines.append(f"- {curve['estimator']} ({curve['role']}): {curve['verdict']}; {curve['test']}")
            if "calibration" in curve:
                lines.append(f"  - calibration: {curve['calibration']['summary']}")
        for missing in m.get("curves_not_estimated", []):
            lines.append(f"- {missing['estimator']} ({missing['role']}): not estimated: {missing['reason']}")
        lines.append("")
        header = " | ".join(f"{c['estimator']} (nats) [95% CI]" for c in m["curves"])
        lines.append(f"| layer | {header} |")
        lines.append("|---" * (len(m["curves"]) + 1) + "|")
        for j, row in enumerate(m["curves"][0]["rows"]):
            cells = []
            for curve in m["curves"]:
                r = curve["rows"][j]
                cells.append(f"{_format(r['mean_mi'])} [{_format(r['ci_low'])}, {_format(r['ci_high'])}]")
            lines.append(f"| {row['layer']} | " + " | ".join(cells) + " |")
    if skipped:
        lines += ["", "## Not measured", ""]
        for s in skipped:
            lines.append(f"- {s['name']}: {s['reason']}")
    if figures:
        lines += ["", "## Figures", ""]
        for fig in figures:
            lines.append(f"- {_relative(fig, out_dir)}")
    md_path, json_path = out_dir / "RESULTS.md", out_dir / "summary.json"
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    payload = {"environment": env, "settings": settings, "models": models, "skipped": skipped,
               "figures": [_relative(f, out_dir) for f in figures]}
    atomic_write_text(json_path, json.dumps(_jsonable(payload), indent=2) + "\n")
    return md_path, json_path
