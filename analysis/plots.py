"""Figures of the MI analysis in the paper's style: log MI per layer.

Each curve is log10 of the mean MI estimate (nats) over utterances against the
layer index 1..N (T_1..T_N; X itself is not plotted), with the 95 % bootstrap
interval as a band. A log needs positive values: a mean (or interval end) at or
below ``floor`` nats is drawn at the floor with a hollow marker. For a model with
an S3PRL upstream under a downstream encoder, a dotted line marks where the
upstream's layers end.

:func:`comparisons` groups the measured models into the paper's figures:

- ``decoder`` (Fig. 3): ASR models of one encoder type with and without a
  decoder (``decoder_<encoder>`` when several encoder types are present);
- ``label_layer_<family>[_<encoder>]``: HuBERT label layer 6 vs 9, per family and
  encoder type;
- ``downstream_<pretrained model>`` (Figs. 5-6): a pretrained model fine-tuned
  alone vs under a downstream encoder, paired by the pretrained model they were
  built on (else by label layer, ``downstream_L<k>``, else all in one figure);
- ``ssamba_size`` (Fig. 4): SSAMBA tiny vs base.

A comparison is drawn only when both sides exist.
"""

import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from espnet_mamba.io import atomic_write

__all__ = ["FLOOR", "comparisons", "plot_calibration", "plot_curves", "plot_model"]

FLOOR = 1e-3  # nats; the lowest value a log-scale curve shows


def _label(model: dict) -> str:
    tags = model.get("tags", {})
    parts = [model["name"]]
    family = tags.get("family")
    if family == "asr" and "decoder" in tags:
        parts.append("+ Decoder" if tags["decoder"] else "- Decoder")
    elif family == "upstream+downstream":
        parts.append(f"+ {tags.get('encoder', 'downstream')}")
    return " ".join(parts) + f" [{model.get('verdict', '')}]"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw_curve(ax, rows: Sequence[dict], color: str, label: str, boundary, floor: float) -> None:
    """log10 of the layer means with the interval as a band; values at or below ``floor`` hollow."""
    index = np.array([r["index"] for r in rows], dtype=float)
    mean = np.array([r["mean_mi"] for r in rows], dtype=float)
    low = np.array([r["ci_low"] for r in rows], dtype=float)
    high = np.array([r["ci_high"] for r in rows], dtype=float)
    shown, band_low, band_high = (np.log10(np.clip(np.nan_to_num(v, nan=floor), floor, None))
                                  for v in (mean, low, high))
    ax.plot(index, shown, "-", color=color, label=label)
    clipped = ~(mean > floor)
    ax.plot(index[~clipped], shown[~clipped], "o", color=color, markersize=4)
    if clipped.any():
        ax.plot(index[clipped], shown[clipped], "o", markerfacecolor="none", color=color, markersize=5)
    ax.fill_between(index, band_low, band_high, color=color, alpha=0.2, linewidth=0)
    if boundary:
        ax.axvline(boundary + 0.5, color=color, linestyle=":", linewidth=1)


def _layer_axis(ax, rows_list: Sequence[Sequence[dict]]) -> None:
    max_layers = max(len(rows) for rows in rows_list)
    tick_labels: Dict[int, str] = {}
    for rows in rows_list:
        for r in rows:
            tick_labels.setdefault(int(r["index"]), str(r["layer"]))
    step = max(1, math.ceil(max_layers / 12))
    ticks = list(range(1, max_layers + 1, step))
    ax.set_xticks(ticks)
    ax.set_xticklabels([tick_labels.get(t, str(t)) for t in ticks])
    ax.set_xlabel("layer i")
    ax.grid(True, alpha=0.3)


def _save(fig, path_stem) -> List[Path]:
    """``<path_stem>.png`` and ``.pdf``, each written atomically."""
    path_stem = Path(path_stem)
    written = []
    for suffix in (".png", ".pdf"):
        target = path_stem.with_name(path_stem.name + suffix)
        with atomic_write(target, "wb") as f:
            fig.savefig(f, format=suffix[1:], dpi=150)
        written.append(target)
    _pyplot().close(fig)
    return written


def plot_curves(models: Sequence[dict], path_stem, title: str = "", floor: float = FLOOR) -> List[Path]:
    """Draw one figure with the main curve of each model; write ``<path_stem>.png`` and ``.pdf``.

    Args:
        models: Each with ``name``, ``rows`` (from :mod:`analysis.report`), optionally
            ``verdict``, ``tags``, ``boundary``.
        path_stem: Output path without suffix.
        title: Figure title.
        floor: Smallest value drawn (nats).

    Returns:
        The written files.

    Raises:
        ValueError: No model, or ``floor <= 0``.
    """
    if not models:
        raise ValueError("plot_curves needs at least one model")
    if not floor > 0:
        raise ValueError(f"floor must be > 0, got {floor}")
    fig, ax = _pyplot().subplots(figsize=(6.4, 4.0))
    for k, model in enumerate(models):
        _draw_curve(ax, model["rows"], f"C{k % 10}", _label(model), model.get("boundary"), floor)
    _layer_axis(ax, [m["rows"] for m in models])
    ax.set_ylabel(r"$\log_{10} I(X; T_i)$ (nats)")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, path_stem)


def plot_model(model: dict, out_dir, stem: str, floor: float = FLOOR) -> List[Path]:
    """Every curve of one model, a panel each (own scale): ``<out_dir>/<stem>.png`` and ``.pdf``."""
    curves = model.get("curves") or [dict(model, estimator=model.get("estimator", ""), role="main")]
    fig, axes = _pyplot().subplots(1, len(curves), figsize=(4.2 * len(curves), 3.6), squeeze=False)
    for k, (ax, curve) in enumerate(zip(axes[0], curves)):
        _draw_curve(ax, curve["rows"], f"C{k % 10}", curve["verdict"], model.get("boundary"), floor)
        _layer_axis(ax, [curve["rows"]])
        ax.set_title(f"{curve['estimator']} ({curve['role']})", fontsize=9)
        ax.legend(fontsize=7, loc="best")
    axes[0][0].set_ylabel(r"$\log_{10} I(X; T_i)$ (nats)")
    fig.suptitle(model["name"], fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(out_dir) / stem)


def plot_calibration(model: dict, path_stem, floor: float = FLOOR) -> List[Path]:
    """Estimated against true MI on the calibration ladders, a panel per calibrated curve."""
    curves = [c for c in model["curves"] if "calibration" in c]
    if not curves:
        raise ValueError(f"{model['name']}: no calibrated curve")
    fig, axes = _pyplot().subplots(1, len(curves), figsize=(4.2 * len(curves), 3.8), squeeze=False)
    for ax, curve in zip(axes[0], curves):
        calibration = curve["calibration"]
        top = floor
        for k, reading in enumerate(calibration["readings"]):
            true = np.asarray(reading["true_mi"], dtype=float)
            mean = np.clip(np.asarray(reading["mean"], dtype=float), floor, None)
            low = np.clip(np.asarray(reading["ci_low"], dtype=float), floor, None)
            high = np.clip(np.asarray(reading["ci_high"], dtype=float), floor, None)
            ax.errorbar(true, mean, yerr=[mean - low, high - mean], fmt="o", markersize=3, color=f"C{k}",
                        label=f"{reading['ladder']} (rho {reading['spearman']:.2f}, {reading['verdict']})")
            top = max(top, true.max(), high.max())
        ax.plot([floor, top], [floor, top], "k--", linewidth=0.8, label="estimate = truth")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("true I(X; T_i) (nats)")
        ax.set_title(f"{curve['estimator']}: {'trustworthy' if calibration['trustworthy'] else 'not trustworthy'}",
                     fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, loc="upper left")
    axes[0][0].set_ylabel("estimated (nats)")
    fig.suptitle(f"{model['name']}: calibration at its shapes", fontsize=10)
    fig.tight_layout()
    return _save(fig, path_stem)


def comparisons(models: Sequence[dict]) -> List[Tuple[str, str, List[dict]]]:
    """The paper's comparison figures that the measured models allow.

    Returns:
        ``[(figure name, title, models), ...]``.
    """
    out = []
    by_family: Dict[str, List[dict]] = {}
    for m in models:
        by_family.setdefault(m.get("tags", {}).get("family"), []).append(m)

    asr = by_family.get("asr", [])
    encoders = sorted({str(m["tags"].get("encoder")) for m in asr})
    for encoder in encoders:
        same = [m for m in asr if str(m["tags"].get("encoder")) == encoder]
        with_dec = [m for m in same if m["tags"].get("decoder") is True]
        without = [m for m in same if m["tags"].get("decoder") is False]
        if with_dec and without:
            name = "decoder" if len(encoders) == 1 else f"decoder_{encoder}"
            out.append((name, f"{encoder}: with vs without decoder (Fig. 3)", with_dec + without))

    for family in ("ssl", "upstream", "upstream+downstream"):
        # Same family and same kind of encoder (Mamba-HuBERT vs HuBERT), label layer 6 vs 9.
        kinds: Dict[str, List[dict]] = {}
        for m in by_family.get(family, []):
            kind = m["tags"].get("pretrained_encoder") or m["tags"].get("encoder")
            kinds.setdefault(str(kind), []).append(m)
        for kind, members in sorted(kinds.items()):
            layers = {m["tags"].get("label_layer") for m in members}
            if 6 in layers and 9 in layers:
                chosen = [m for m in members if m["tags"].get("label_layer") in (6, 9)]
                name = "label_layer_" + family.replace("+", "_") + ("" if len(kinds) == 1 else f"_{kind}")
                out.append((name, f"Label layer 6 vs 9 ({family}, {kind})", chosen))

    alone = by_family.get("upstream", [])
    stacked = by_family.get("upstream+downstream", [])
    if alone and stacked:
        pairs = []
        # Pair the models built on the same pretrained model, else on the same label layer.
        for key in ("pretrained", "label_layer"):
            values = sorted({m["tags"].get(key) for m in alone + stacked} - {None}, key=str)
            for value in values:
                a = [m for m in alone if m["tags"].get(key) == value]
                b = [m for m in stacked if m["tags"].get(key) == value]
                if a and b:
                    label = f"L{value}" if key == "label_layer" else str(value)
                    pairs.append((f"downstream_{label}", f"{label}: alone vs + downstream (Figs. 5-6)", a + b))
            if pairs:
                break
        out += pairs or [("downstream", "Upstream alone vs + downstream (Figs. 5-6)", alone + stacked)]

    ssamba = by_family.get("ssamba", [])
    sizes = {m["tags"].get("size") for m in ssamba}
    if "tiny" in sizes and "base" in sizes:
        chosen = [m for m in ssamba if m["tags"].get("size") in ("tiny", "base")]
        out.append(("ssamba_size", "SSAMBA tiny vs base (Fig. 4)", chosen))
    return out
