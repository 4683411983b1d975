"""How far to trust an estimator at one model's shapes: its reading of known ladders.

For a model measured with estimator E, :func:`calibrate` builds the synthetic ladders
of :func:`analysis.ladders.matched_ladders` with that model's X dimension, T
dimensions, frame counts and number of utterances (a "falls then rises" ladder and a
"falls" ladder with AR(1) frames and warped features), plus one independent layer
(true MI 0), runs E on them with the same options, and reports:

- the Spearman rank correlation of E's layer means with the true MI, per ladder;
- whether E's verdict names each ladder's true shape;
- the range of MI it resolves: from the lowest true MI whose interval clears the
  independent layer's, up to the highest true MI below which its means still rise
  with the truth from there (on every ladder);
- ``trustworthy``: every ladder ranked with Spearman >= ``min_spearman`` and named
  correctly. A model verdict from an estimator that is not trustworthy at that
  model's shapes is reported as such.
"""

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from analysis import stats
from analysis.curve import CurveEstimator, LayerCurve, LayerPairs, curve_from_values
from analysis.ladders import Ladder, matched_ladders

__all__ = ["MIN_SPEARMAN", "Calibration", "LadderReading", "calibrate", "ladder_pairs"]

MIN_SPEARMAN = 0.9


def ladder_pairs(ladder: Ladder, device=None, null_layer: bool = True) -> LayerPairs:
    """The ladder's layers as :class:`LayerPairs` (generated on ``device`` when asked for);
    with ``null_layer`` one more layer, independent of X, is appended."""
    true_mi = list(ladder.true_mi) + ([0.0] if null_layer else [])
    t_dims = list(ladder.t_dims) + ([ladder.t_dims[-1]] if null_layer else [])
    full = Ladder(ladder.name, ladder.shape, tuple(true_mi), ladder.frames, ladder.x_dim, tuple(t_dims),
                  ladder.ar, ladder.warp, ladder.seed)
    latent = full.x_latent(device)
    xs = full.observe_x(latent)
    utt_ids = [f"ladder{u:05d}" for u in range(len(ladder.frames))]
    return LayerPairs(full.n_layers, lambda i: (xs, full.layer(i, latent)), utt_ids)


@dataclass
class LadderReading:
    """One ladder as an estimator read it."""

    ladder: Ladder
    curve: LayerCurve
    null_mean: float
    null_high: float
    spearman: float

    @property
    def verdict_ok(self) -> bool:
        return self.curve.verdict == self.ladder.shape

    def resolvable_from(self) -> float:
        """Lowest true MI whose interval lies above the independent layer's (inf if none)."""
        above = np.asarray(self.ladder.true_mi)[self.curve.ci_low > self.null_high]
        return float(above.min()) if above.size else math.inf

    def rising_up_to(self, start: float) -> float:
        """Largest true MI up to which, from ``start`` on, the layer means rise with the truth."""
        order = np.argsort(self.ladder.true_mi)
        true = np.asarray(self.ladder.true_mi)[order]
        means = self.curve.means[order]
        first = int(np.searchsorted(true, start))
        if first >= len(true):
            return -math.inf
        top = true[first]
        for k in range(first + 1, len(true)):
            if means[k] <= means[k - 1]:
                break
            top = true[k]
        return float(top)


@dataclass
class Calibration:
    """An estimator's readings of the ladders matched to one model."""

    estimator: str
    readings: List[LadderReading]
    min_spearman: float = MIN_SPEARMAN

    @property
    def spearman(self) -> float:
        return min(r.spearman for r in self.readings)

    @property
    def verdicts_ok(self) -> int:
        return sum(r.verdict_ok for r in self.readings)

    @property
    def resolvable(self) -> Tuple[float, float]:
        """``(low, high)`` nats: every ladder tells its layers from independence from ``low``
        on, and its means rise with the truth from there up to ``high`` (low > high: none)."""
        low = max(r.resolvable_from() for r in self.readings)
        return low, min(r.rising_up_to(low) for r in self.readings)

    @property
    def trustworthy(self) -> bool:
        return self.spearman >= self.min_spearman and self.verdicts_ok == len(self.readings)

    def summary(self) -> str:
        low, high = self.resolvable
        span = f"{low:.2g}-{high:.2g} nats" if low <= high else "none"
        return (f"at this model's shapes {self.estimator} ranks known layers with Spearman {self.spearman:.2f} "
                f"(worst of {len(self.readings)} ladders), names {self.verdicts_ok}/{len(self.readings)} shapes, "
                f"resolves {span}: {'trustworthy' if self.trustworthy else 'NOT trustworthy'}")

    def to_json(self) -> dict:
        low, high = self.resolvable
        return {
            "estimator": self.estimator,
            "spearman": self.spearman,
            "verdicts_ok": self.verdicts_ok,
            "ladders": len(self.readings),
            "resolvable_nats": [low if math.isfinite(low) else None, high],
            "trustworthy": self.trustworthy,
            "min_spearman": self.min_spearman,
            "readings": [{
                "ladder": r.ladder.name, "shape": r.ladder.shape, "verdict": r.curve.verdict,
                "spearman": r.spearman, "true_mi": list(map(float, r.ladder.true_mi)),
                "mean": r.curve.means.tolist(), "ci_low": r.curve.ci_low.tolist(),
                "ci_high": r.curve.ci_high.tolist(), "null_mean": r.null_mean, "null_high": r.null_high,
            } for r in self.readings],
        }


def calibrate(
    estimator: CurveEstimator,
    options,
    frames: Sequence[int],
    x_dim: int,
    t_dims: Sequence[int],
    *,
    seed: int = 0,
    device=None,
    n_boot: int = 1000,
    ladders: Optional[Sequence[Ladder]] = None,
) -> Calibration:
    """Runs ``estimator`` with ``options`` on the ladders matched to these shapes.

    Args:
        estimator: A row of :data:`analysis.curve.CURVE_ESTIMATORS`.
        options: Its options (those used on the model).
        frames: Frames of each of the model's utterances (after any ``max_frames``).
        x_dim: Dimension of the model's X.
        t_dims: Dimension of each of its layers (at least 3 layers).
        seed: Seed of the ladders, of the estimator and of the bootstrap.
        device: Where to generate and estimate.
        n_boot: Bootstrap resamples.
        ladders: Other ladders than the matched ones.
    """
    if ladders is None:
        ladders = matched_ladders(frames, x_dim, t_dims, seed=seed)
    readings = []
    for ladder in ladders:
        values = estimator.values(ladder_pairs(ladder, device), options, seed, device)
        null = values[:, -1]
        curve = curve_from_values(values[:, :-1], estimator, [f"L{i + 1}" for i in range(ladder.n_layers)],
                                  seed=seed, n_boot=n_boot)
        null = null[np.isfinite(null)]
        null_high = float(stats.bootstrap_ci(null, n_boot=n_boot, seed=seed)[1][0]) if null.size > 1 else math.nan
        rho = stats.spearman(ladder.true_mi, curve.means)
        readings.append(LadderReading(ladder, curve, float(np.mean(null)) if null.size else math.nan, null_high, rho))
    return Calibration(estimator.name, readings)
