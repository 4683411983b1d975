"""Layer-wise mutual-information analysis.

- :mod:`analysis.mi`: MI estimators for one pair of frame sequences
  (``estimate_mi``; MINE as in the paper, MINE with EMA gradient correction,
  NWJ, InfoNCE, SMILE) and their options (``MIOptions``).
- :mod:`analysis.engine`: ``estimate_mi_batched``, many (utterance, layer)
  problems trained at once as one stacked network, with the same results.
- :mod:`analysis.stats`: means, bootstrap intervals over utterances, the
  "falls" / "falls then rises" verdict, and the log n ceiling flag.

Only torch and numpy are needed.
"""

from analysis._rng import derive_seed
from analysis.engine import BatchedMIResult, estimate_mi_batched
from analysis.mi import ESTIMATORS, MIOptions, estimate_mi
from analysis.stats import (
    LayerSummary,
    TrendVerdict,
    bootstrap_ci,
    near_log_n,
    summarize_layers,
    trend_verdict,
)

__all__ = [
    "ESTIMATORS",
    "BatchedMIResult",
    "LayerSummary",
    "MIOptions",
    "TrendVerdict",
    "bootstrap_ci",
    "derive_seed",
    "estimate_mi",
    "estimate_mi_batched",
    "near_log_n",
    "summarize_layers",
    "trend_verdict",
]
