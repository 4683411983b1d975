"""Per-layer statistics, trend verdicts and the result files of the MI analysis.

For one model, the per-utterance estimates form a matrix ``(U, L)`` (utterances x
layers T_1..T_L; NaN where an utterance was too short). :func:`summarize_layers`
reduces it to one row per layer::

    layer, index, mean_mi, std_mi, ci_low, ci_high, n_utts, mean_log_n, near_log_n

(MI in nats; ``std_mi`` over utterances; ``ci_*`` a 95 % bootstrap interval of the
mean over utterances; ``mean_log_n`` the mean of log(frames) of the utterances, the
most nats a distribution-free lower bound can certify; ``near_log_n`` how many
utterance estimates are within a margin of their log n.) The statistics and the
verdict come from :mod:`analysis.stats`.

:func:`write_model_results` writes ``<model>.csv`` and ``<model>.json``;
:func:`write_summary` writes ``RESULTS.md`` and ``summary.json``. Every file is
written atomically (a temporary file, then a rename).
"""

import csv
import datetime
import io
import json
import math
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from analysis import stats

__all__ = [
    "CSV_COLUMNS",
    "atomic_write_text",
    "model_file_stem",
    "summarize_layers",
    "trend",
    "write_model_results",
    "write_summary",
]

CSV_COLUMNS = (
    "layer", "index", "mean_mi", "std_mi", "ci_low", "ci_high", "n_utts", "mean_log_n", "near_log_n",
)


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` through ``path.tmp`` and a rename (never a partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def model_file_stem(name: str) -> str:
    """A file name for a model name (``asr_x`` or ``sub/dir`` -> ``sub__dir``)."""
    stem = name.replace("/", "__")
    return re.sub(r"[^A-Za-z0-9._+-]", "_", stem) or "model"


def summarize_layers(
    estimates: np.ndarray,
    n_frames: np.ndarray,
    layer_names: Sequence[str],
    seed: int = 0,
    n_boot: int = 1000,
    near_margin: float = 0.5,
) -> List[dict]:
    """One row per layer (see the module docstring).

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
        row = {"layer": name, "index": j + 1, "n_utts": int(ok.sum())}
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


def write_model_results(out_dir, model: dict, rows: List[dict]) -> Tuple[Path, Path]:
    """``<out>/<stem>.csv`` (one row per layer) and ``<out>/<stem>.json`` (rows + metadata).

    Args:
        out_dir: Output directory.
        model: Metadata: at least ``name``; also kind, checkpoint, verdict, test,
            x_description, options ... (written into the JSON as is).
        rows: From :func:`summarize_layers`.

    Returns:
        The CSV and JSON paths.
    """
    out_dir = Path(out_dir)
    stem = model_file_stem(model["name"])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(row[k]) if isinstance(row[k], float) else row[k]) for k in CSV_COLUMNS})
    csv_path, json_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.json"
    atomic_write_text(csv_path, buffer.getvalue())
    payload = dict(model)
    payload["layers"] = rows
    atomic_write_text(json_path, json.dumps(_jsonable(payload), indent=2) + "\n")
    return csv_path, json_path


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


def write_summary(out_dir, models: List[dict], skipped: List[dict], settings: dict,
                  figures: Sequence[Path] = ()) -> Tuple[Path, Path]:
    """``RESULTS.md`` (markdown tables) and ``summary.json`` in ``out_dir``.

    Args:
        out_dir: Output directory.
        models: Metadata of each measured model, with ``rows`` (layer rows).
        skipped: ``{"name", "reason"}`` of each model that was not measured.
        settings: Options of the run (estimator, N, seed ...).
        figures: Plot files written (listed in the summary).
    """
    out_dir = Path(out_dir)
    env = _environment()
    lines = ["# Layer-wise mutual information I(X; T_i)", ""]
    lines.append(
        f"- estimator: {settings.get('estimator')} ({settings.get('options_text', '')}); "
        f"utterances: {settings.get('n_utts_used')} (asked {settings.get('n_utts')}, seed {settings.get('seed')})"
    )
    lines.append(f"- audio: {', '.join(str(p) for p in settings.get('wav_scps', []))}")
    lines.append("- environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    lines.append("")
    lines.append("## Verdicts")
    lines.append("")
    lines.append("| model | kind | layers | utts | verdict | deciding test |")
    lines.append("|---|---|---|---|---|---|")
    for m in models:
        lines.append(
            f"| {m['name']} | {m.get('kind', '')} | {len(m['rows'])} | {m.get('n_utts', '')} | "
            f"{m['verdict']} | {m['test']} |"
        )
    if not models:
        lines.append("| (none) | | | | | |")
    for m in models:
        lines += ["", f"## {m['name']}", "", f"X: {m.get('x_description', '')}", ""]
        lines.append("| layer | mean MI (nats) | std | 95% CI | utts | mean log n | near log n |")
        lines.append("|---|---|---|---|---|---|---|")
        for r in m["rows"]:
            lines.append(
                f"| {r['layer']} | {_format(r['mean_mi'])} | {_format(r['std_mi'])} | "
                f"[{_format(r['ci_low'])}, {_format(r['ci_high'])}] | {r['n_utts']} | "
                f"{_format(r['mean_log_n'], 3)} | {r['near_log_n']} |"
            )
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
