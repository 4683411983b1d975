"""Statistics over utterances for layer-wise MI curves.

Inputs are per-utterance estimates: a vector ``(U,)`` for one layer or a matrix
``(U, L)`` (utterances x layers). Confidence intervals come from a seeded
percentile bootstrap over utterances; for a matrix the same resampled utterances
are used for every layer, which keeps the within-utterance correlation between
layers (the layer-to-layer differences are much more precise than each layer's
level).

``trend_verdict`` classifies a curve as "falls", "falls then rises" or "unclear"
and says which test decided it; ``near_log_n`` flags estimates that no
distribution-free lower bound could certify from n frames (McAllester and Stratos,
2020: such bounds cannot exceed about log n nats).
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from espnet_mamba.io import check_int

__all__ = [
    "LayerSummary",
    "TrendVerdict",
    "bootstrap_ci",
    "bootstrap_means",
    "near_log_n",
    "spearman",
    "summarize_layers",
    "trend_verdict",
]


def _as_matrix(values, name: str = "values") -> np.ndarray:
    """``(U,)`` or ``(U, L)`` finite values as a float64 matrix ``(U, L)``."""
    a = np.asarray(values, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must be (utterances,) or (utterances, layers) and non-empty, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values; drop skipped utterances first")
    return a


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def bootstrap_means(values, n_boot: int = 10000, seed: int = 0) -> np.ndarray:
    """Means of ``n_boot`` bootstrap resamples of the utterances (rows).

    Args:
        values: ``(U,)`` or ``(U, L)``.
        n_boot: Number of resamples.
        seed: Seed of numpy's generator.

    Returns:
        ``(n_boot, L)`` column means of each resample.
    """
    a = _as_matrix(values)
    check_int("n_boot", n_boot)
    u = a.shape[0]
    rng = np.random.default_rng(seed)
    # Multinomial counts per utterance: same distribution as drawing U rows with
    # replacement, without the (n_boot, U, L) array.
    counts = rng.multinomial(u, np.full(u, 1.0 / u), size=n_boot)  # (n_boot, U)
    return counts @ a / u


def bootstrap_ci(values, level: float = 0.95, n_boot: int = 10000, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap confidence interval of the mean over utterances.

    Args:
        values: ``(U,)`` or ``(U, L)`` per-utterance values.
        level: Coverage, e.g. 0.95.
        n_boot: Bootstrap resamples.
        seed: Seed; the same seed gives the same interval.

    Returns:
        (low, high), each ``(L,)`` (``(1,)`` for a vector input).
    """
    _check_level(level)
    means = bootstrap_means(values, n_boot, seed)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail], axis=0)
    return low, high


@dataclass(frozen=True)
class LayerSummary:
    """Per-layer summary over utterances.

    Attributes:
        mean: ``(L,)`` mean over utterances.
        std: ``(L,)`` standard deviation over utterances (ddof=1; 0 for one utterance).
        ci_low: ``(L,)`` lower end of the bootstrap interval of the mean.
        ci_high: ``(L,)`` upper end.
        n: Number of utterances.
        level: Interval coverage.
    """

    mean: np.ndarray
    std: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    n: int
    level: float


def summarize_layers(values, level: float = 0.95, n_boot: int = 10000, seed: int = 0) -> LayerSummary:
    """Mean, std and bootstrap CI of each layer over utterances.

    Args:
        values: ``(U, L)`` per-utterance estimates (or ``(U,)`` for one layer).
        level: CI coverage.
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.
    """
    a = _as_matrix(values)
    low, high = bootstrap_ci(a, level, n_boot, seed)
    std = a.std(axis=0, ddof=1) if a.shape[0] > 1 else np.zeros(a.shape[1])
    return LayerSummary(mean=a.mean(axis=0), std=std, ci_low=low, ci_high=high, n=a.shape[0], level=level)


def near_log_n(estimates, n_frames, margin: float = 0.5) -> np.ndarray:
    """Flags estimates within ``margin`` nats of log(n) or above.

    From n samples no distribution-free high-confidence lower bound on MI can
    exceed about log n (McAllester and Stratos, 2020), so such an estimate says
    "at least about log n", not a value. NaN estimates are not flagged.

    Args:
        estimates: ``(K,)`` estimates in nats.
        n_frames: ``(K,)`` frames each estimate used.
        margin: Nats below log(n) from which to flag.

    Returns:
        ``(K,)`` bool.
    """
    e = np.asarray(estimates, dtype=np.float64)
    n = np.asarray(n_frames, dtype=np.float64)
    if e.shape != n.shape:
        raise ValueError(f"estimates and n_frames must have the same shape, got {e.shape} and {n.shape}")
    if (n < 1).any():
        raise ValueError("n_frames must be >= 1")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    with np.errstate(invalid="ignore"):
        return e >= np.log(n) - margin


def _average_ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of ``a``, ties given the mean of the ranks they span."""
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts + 1) / 2)[inverse]


def spearman(a, b) -> float:
    """Spearman rank correlation of two vectors (average ranks for ties; 0 if one is constant)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"need two vectors of one length >= 2, got shapes {a.shape} and {b.shape}")
    ra, rb = _average_ranks(a) - (len(a) - 1) / 2, _average_ranks(b) - (len(b) - 1) / 2
    denominator = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else 0.0


@dataclass(frozen=True)
class TrendVerdict:
    """Outcome of ``trend_verdict``.

    Attributes:
        verdict: "falls", "falls then rises" or "unclear".
        rule: The test that decided it, in words, with the numbers.
        min_layer: Index (0-based) of the layer with the lowest mean.
        fall: ``mean[0] - mean[min_layer]``.
        rise: ``mean[-1] - mean[min_layer]``.
        drop: ``mean[0] - mean[-1]``.
        turn_layer: The interior layer that showed a significant fall and rise
            (the lowest such layer mean), or None.
        fall_low: Lower confidence bound of the fall to ``turn_layer`` (to
            ``min_layer`` when there is none); None for the means-only rule.
        rise_low: Same for the rise.
        drop_low: Lower confidence bound of the drop.
    """

    verdict: str
    rule: str
    min_layer: int
    fall: float
    rise: float
    drop: float
    turn_layer: Optional[int] = None
    fall_low: Optional[float] = None
    rise_low: Optional[float] = None
    drop_low: Optional[float] = None


def _where(i: int, last: int) -> str:
    return "interior" if 0 < i < last else "an end"


def trend_verdict(
    values,
    ci: Optional[Tuple[np.ndarray, np.ndarray]] = None,
    *,
    level: float = 0.95,
    n_boot: int = 4000,
    seed: int = 0,
    rel_tol: float = 0.02,
) -> TrendVerdict:
    """Classifies a layer curve as "falls", "falls then rises" or "unclear".

    With m the layer means (L layers, first 0, last L-1):

    - "falls then rises" if some interior layer i has both a significant fall
      ``m[0] - m[i] > 0`` and a significant rise ``m[L-1] - m[i] > 0``;
    - otherwise "falls" if the first-to-last drop ``m[0] - m[L-1] > 0`` is
      significant;
    - otherwise "unclear" (flat, rising, or too noisy).

    "Significant" depends on the input:

    - ``values`` ``(U, L)`` per-utterance estimates (preferred): one-sided paired
      percentile bootstrap over utterances (``n_boot`` resamples, seeded; every
      resample keeps each utterance's whole curve). The drop is significant when
      its ``level`` lower confidence bound is > 0. For the turn, each of the L-2
      interior layers is tried with a Bonferroni-corrected bound (one-sided
      ``1 - (1 - level) / (L - 2)``), so searching for the best layer keeps the
      false-positive rate of "falls then rises" at most ``1 - level``.
    - ``values`` ``(L,)`` means with ``ci=(low, high)`` (e.g. from
      ``summarize_layers``): intervals must not overlap: fall if
      ``low[0] > high[i]``, rise if ``low[L-1] > high[i]``, drop if
      ``low[0] > high[L-1]``.
    - ``values`` ``(L,)`` means alone: a difference counts when it exceeds
      ``rel_tol`` times the mean absolute level (no uncertainty; only for
      noiseless curves).

    The test is applied to the values as given (pass log MI to judge the log
    curve the paper plots).

    Args:
        values: ``(U, L)`` per-utterance values or ``(L,)`` layer means; L >= 3.
        ci: ``(low, high)``, each ``(L,)``, for a vector input.
        level: Confidence level of the tests.
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.
        rel_tol: Threshold of the means-only rule.

    Returns:
        TrendVerdict.
    """
    a = np.asarray(values, dtype=np.float64)
    _check_level(level)
    if a.ndim not in (1, 2) or a.shape[-1] < 3:
        raise ValueError(f"values must be (layers,) or (utterances, layers) with >= 3 layers, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("values contains NaN or infinite values; drop skipped utterances first")
    if a.ndim == 2 and ci is not None:
        raise ValueError("ci is only used with a vector of layer means")
    means = a.mean(axis=0) if a.ndim == 2 else a
    last = len(means) - 1
    i_min = int(np.argmin(means))
    shape = (i_min, float(means[0] - means[i_min]), float(means[last] - means[i_min]), float(means[0] - means[last]))
    if a.ndim == 2:
        return _bootstrap_verdict(a, means, shape, level, n_boot, seed)
    if ci is not None:
        return _interval_verdict(means, shape, ci)
    return _means_verdict(means, shape, rel_tol)


def _bootstrap_verdict(a: np.ndarray, means: np.ndarray, shape: Tuple[int, float, float, float], level: float,
                       n_boot: int, seed: int) -> TrendVerdict:
    """:func:`trend_verdict` of per-utterance values ``a`` ``(U, L)`` by the paired bootstrap;
    ``shape`` is ``(min_layer, fall, rise, drop)`` of the layer means ``(L,)``."""
    if a.shape[0] < 2:
        raise ValueError("need at least 2 utterances for the bootstrap")
    i_min, last, interior = shape[0], len(means) - 1, np.arange(1, len(means) - 1)
    boot = bootstrap_means(a, n_boot, seed)  # (n_boot, L)
    alpha = 1.0 - level
    corrected = 100.0 * alpha / len(interior)
    fall_lows = np.percentile(boot[:, [0]] - boot[:, interior], corrected, axis=0)
    rise_lows = np.percentile(boot[:, [last]] - boot[:, interior], corrected, axis=0)
    drop_low = float(np.percentile(boot[:, 0] - boot[:, last], 100.0 * alpha))
    passing = interior[(fall_lows > 0) & (rise_lows > 0)]
    turn = int(passing[np.argmin(means[passing])]) if len(passing) else None
    shown = turn if turn is not None else (i_min if 0 < i_min < last else int(interior[np.argmin(means[1:last])]))
    fall_low, rise_low = float(fall_lows[shown - 1]), float(rise_lows[shown - 1])
    verdict = "falls then rises" if turn is not None else ("falls" if drop_low > 0 else "unclear")
    rule = (f"paired bootstrap over {a.shape[0]} utterances ({n_boot} resamples): lowest mean at layer "
            f"{i_min} ({_where(i_min, last)}); turn at an interior layer needs fall and rise lower bounds "
            f"> 0 at {1 - alpha / len(interior):.4g} (Bonferroni over {len(interior)} layers): "
            + (f"passed at layer {turn}" if turn is not None else "no layer passed")
            + f" (layer {shown}: fall >= {fall_low:.4g}, rise >= {rise_low:.4g}); "
            f"first-to-last drop >= {drop_low:.4g} at {level:.0%}")
    return TrendVerdict(verdict, rule, *shape, turn, fall_low, rise_low, drop_low)


def _interval_verdict(means: np.ndarray, shape: Tuple[int, float, float, float], ci) -> TrendVerdict:
    """:func:`trend_verdict` of the layer means ``(L,)`` by non-overlapping intervals ``ci``."""
    i_min, last, interior = shape[0], len(means) - 1, np.arange(1, len(means) - 1)
    low, high = (np.asarray(c, dtype=np.float64) for c in ci)
    if low.shape != means.shape or high.shape != means.shape:
        raise ValueError(f"ci must be (low, high) of shape {means.shape}")
    fall_gaps = low[0] - high[interior]
    rise_gaps = low[last] - high[interior]
    drop_low = float(low[0] - high[last])
    passing = interior[(fall_gaps > 0) & (rise_gaps > 0)]
    turn = int(passing[np.argmin(means[passing])]) if len(passing) else None
    shown = turn if turn is not None else int(interior[np.argmin(means[1:last])])
    fall_low, rise_low = float(fall_gaps[shown - 1]), float(rise_gaps[shown - 1])
    verdict = "falls then rises" if turn is not None else ("falls" if drop_low > 0 else "unclear")
    rule = (f"non-overlapping intervals: lowest mean at layer {i_min} ({_where(i_min, last)}); turn "
            + (f"at layer {turn}" if turn is not None else "at no interior layer")
            + f" (layer {shown}: low[0] - high = {fall_low:.4g}, low[-1] - high = {rise_low:.4g}); "
            f"first-to-last low[0] - high[-1] = {drop_low:.4g} (significant if > 0)")
    return TrendVerdict(verdict, rule, *shape, turn, fall_low, rise_low, drop_low)


def _means_verdict(means: np.ndarray, shape: Tuple[int, float, float, float], rel_tol: float) -> TrendVerdict:
    """:func:`trend_verdict` of the layer means ``(L,)`` alone, against ``rel_tol``."""
    i_min, fall, rise, drop = shape
    last = len(means) - 1
    if rel_tol < 0:
        raise ValueError(f"rel_tol must be >= 0, got {rel_tol}")
    tol = rel_tol * float(np.mean(np.abs(means)))
    turn = i_min if (0 < i_min < last and fall > tol and rise > tol) else None
    verdict = "falls then rises" if turn is not None else ("falls" if drop > tol else "unclear")
    rule = (f"means only (no uncertainty): lowest mean at layer {i_min} ({_where(i_min, last)}); "
            f"fall {fall:.4g}, rise {rise:.4g}, first-to-last drop {drop:.4g} against threshold {tol:.4g} "
            f"({rel_tol:g} x mean |level|)")
    return TrendVerdict(verdict, rule, *shape, turn)
