"""Layer-wise mutual-information analysis.

- :mod:`analysis.curve`: ``estimate_layer_curve``, a model's MI curve from its
  features ``[X, T_1, ..., T_L]`` per utterance, with the table of curve estimators
  (``gcmi``, the calibrated default; ``pooled-critic``; the per-utterance ones below).
- :mod:`analysis.gaussian_mi`, :mod:`analysis.pooled_critic`: the two dataset-level
  estimators; :mod:`analysis.ladders` and :mod:`analysis.calibration`: synthetic
  features of known MI matched to a model's shapes, and how an estimator reads them.
- :mod:`analysis.mi`: MI estimators for one pair of frame sequences
  (``estimate_mi``; MINE as in the paper, MINE with EMA gradient correction,
  NWJ, InfoNCE, SMILE) and their options (``MIOptions``).
- :mod:`analysis.engine`: ``estimate_mi_batched``, many (utterance, layer)
  problems trained at once as one stacked network, with the same results.
- :mod:`analysis.stats`: means, bootstrap intervals over utterances, the
  "falls" / "falls then rises" verdict, and the log n ceiling flag.

Only torch and numpy are needed.
"""

from analysis.calibration import Calibration, calibrate
from analysis.curve import CURVE_ESTIMATORS, DEFAULT_ESTIMATOR, LayerCurve, estimate_layer_curve
from analysis.engine import BatchedMIResult, estimate_mi_batched
from analysis.mi import ESTIMATORS, MIOptions, estimate_mi
from analysis.rng import derive_seed
from analysis.stats import (
    LayerSummary,
    TrendVerdict,
    bootstrap_ci,
    near_log_n,
    summarize_layers,
    trend_verdict,
)

__all__ = [
    "CURVE_ESTIMATORS",
    "DEFAULT_ESTIMATOR",
    "ESTIMATORS",
    "BatchedMIResult",
    "Calibration",
    "LayerCurve",
    "LayerSummary",
    "MIOptions",
    "TrendVerdict",
    "bootstrap_ci",
    "calibrate",
    "derive_seed",
    "estimate_layer_curve",
    "estimate_mi",
    "estimate_mi_batched",
    "near_log_n",
    "summarize_layers",
    "trend_verdict",
]
