"""The layer-wise MI curve of one model: one entry point, one table of estimators.

``estimate_layer_curve(utterances)`` turns the features of a model, one item per
utterance holding ``[X, T_1, ..., T_L]`` frame matrices, into a :class:`LayerCurve`:
per-layer means with confidence intervals, and a verdict ("falls", "falls then
rises", "unclear"). Every estimator produces a matrix of values ``(units, L)``; the
units are what the intervals and the verdict's paired bootstrap resample:

| name | quantity | units |
|---|---|---|
| ``gcmi`` (default) | dataset-level Gaussian-copula MI of the pooled frames, on held-out utterances (:mod:`analysis.gaussian_mi`) | utterance folds |
| ``pooled-critic`` | dataset-level DV lower bound of an MLP critic, trained and evaluated on different utterances (:mod:`analysis.pooled_critic`) | groups of held-out utterances |
| ``mine`` (the paper's), ``mine-ema``, ``nwj``, ``infonce``, ``smile`` | per-utterance lower bounds, each utterance its own critic, valued on its own frames (:mod:`analysis.mi`) | utterances |

``gcmi`` is the default because it is the one whose layer means follow the known MI
of synthetic ladders at the shapes of real models (docs/benchmarks.md, "Calibration");
``mine`` reproduces the paper's measurement; ``pooled-critic`` is the cross-check of
another kind (non-linear), see :mod:`analysis.calibration` for both uses.
"""

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from analysis import stats
from analysis.engine import estimate_mi_batched
from analysis.gaussian_mi import GaussianCopulaOptions, HeldOutGaussianCopula
from analysis.mi import ESTIMATORS, MIOptions
from analysis.pooled_critic import PooledCriticOptions, pooled_critic_group_estimates
from analysis.rng import derive_seed

__all__ = [
    "CROSS_CHECK_ESTIMATOR",
    "CURVE_ESTIMATORS",
    "DEFAULT_ESTIMATOR",
    "PAPER_ESTIMATOR",
    "CurveEstimator",
    "LayerCurve",
    "LayerPairs",
    "curve_from_values",
    "estimate_layer_curve",
    "get_estimator",
]

DEFAULT_ESTIMATOR = "gcmi"
PAPER_ESTIMATOR = "mine"
CROSS_CHECK_ESTIMATOR = "pooled-critic"
PER_UTTERANCE_ESTIMATORS = ESTIMATORS

# One layer's frames: per utterance, X ``(n_u, dx)`` and T ``(n_u, dt)``, row-aligned.
Pairs = Tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]


class LayerPairs:
    """The (X, T_i) frames of every layer of one model, produced a layer at a time.

    Args:
        n_layers: L.
        layer: ``layer(i)`` -> ``(xs, ts)`` of layer i (0-based), each a list over
            utterances of row-aligned frame matrices.
        utt_ids: Names of the utterances (seeds of the per-utterance estimators).
        layer_names: Names of the L layers.
    """

    def __init__(self, n_layers: int, layer: Callable[[int], Pairs], utt_ids: Sequence[str],
                 layer_names: Optional[Sequence[str]] = None) -> None:
        self.n_layers = int(n_layers)
        self.layer = layer
        self.utt_ids = list(utt_ids)
        self.layer_names = list(layer_names) if layer_names is not None else [f"T{i + 1}" for i in range(n_layers)]
        if len(self.layer_names) != self.n_layers:
            raise ValueError(f"{len(self.layer_names)} layer names for {self.n_layers} layers")


@dataclass(frozen=True)
class CurveEstimator:
    """One row of the estimator table.

    Attributes:
        name: What users type (``--estimator``).
        quantity: What the number estimates, in words.
        unit: What the rows of its value matrix are.
        options_type: Dataclass of its options.
        values: ``values(pairs, options, seed, device)`` -> ``(units, L)``.
    """

    name: str
    quantity: str
    unit: str
    options_type: type
    values: Callable

    def options(self, **overrides):
        """Its options with ``overrides``; unknown names raise ValueError."""
        fields = set(self.options_type.__dataclass_fields__)
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} of estimator {self.name!r}; valid: {sorted(fields)}")
        return self.options_type(**overrides)


def _gcmi_values(pairs: LayerPairs, options: GaussianCopulaOptions, seed: int, device) -> np.ndarray:
    columns = []
    fitted: Dict[int, HeldOutGaussianCopula] = {}
    for i in range(pairs.n_layers):
        xs, ts = pairs.layer(i)
        if id(xs) not in fitted:  # layers that share one X share its normal scores and folds
            fitted = {id(xs): HeldOutGaussianCopula(xs, options, seed, device)}
        columns.append(fitted[id(xs)].estimate(ts))
    return np.stack(columns, axis=1)


def _critic_values(pairs: LayerPairs, options: PooledCriticOptions, seed: int, device) -> np.ndarray:
    by_x: Dict[int, Tuple[Sequence[torch.Tensor], List[int], List[Sequence[torch.Tensor]]]] = {}
    for i in range(pairs.n_layers):
        xs, ts = pairs.layer(i)
        _, indices, layers = by_x.setdefault(id(xs), (xs, [], []))
        indices.append(i)
        layers.append(ts)
    columns: Dict[int, np.ndarray] = {}
    for xs, indices, layers in by_x.values():  # the critics of layers sharing one X train together
        values = pooled_critic_group_estimates(xs, layers, options, seed, device)
        columns.update({i: values[:, j] for j, i in enumerate(indices)})
    return np.stack([columns[i] for i in range(pairs.n_layers)], axis=1)


def _per_utterance(name: str) -> Callable:
    def values(pairs: LayerPairs, options: MIOptions, seed: int, device) -> np.ndarray:
        seeds = [derive_seed(seed, utt) for utt in pairs.utt_ids]
        columns = []
        for i in range(pairs.n_layers):
            xs, ts = pairs.layer(i)
            result = estimate_mi_batched(list(xs), list(ts), estimator=name, options=options, seeds=seeds,
                                         on_short="skip", progress=False)
            columns.append(np.asarray(result.estimates, dtype=np.float64))
        return np.stack(columns, axis=1)

    return values


def _table() -> Dict[str, CurveEstimator]:
    table = {
        "gcmi": CurveEstimator(
            "gcmi", "dataset-level I(X; T_i) of the pooled frames under a Gaussian copula, on held-out "
            "utterances (not a bound; exact for Gaussian dependence after monotone per-dimension maps)",
            "utterance folds", GaussianCopulaOptions, _gcmi_values),
        "pooled-critic": CurveEstimator(
            "pooled-critic", "dataset-level Donsker-Varadhan lower bound of an MLP critic trained on half of "
            "the utterances and valued on the other half", "groups of held-out utterances",
            PooledCriticOptions, _critic_values),
    }
    for name in PER_UTTERANCE_ESTIMATORS:
        paper = " (the paper's recipe)" if name == PAPER_ESTIMATOR else ""
        table[name] = CurveEstimator(
            name, f"per-utterance {name} lower bound valued on the frames its critic was trained on, averaged "
            f"over utterances{paper}", "utterances", MIOptions, _per_utterance(name))
    return table


CURVE_ESTIMATORS: Dict[str, CurveEstimator] = _table()


def get_estimator(name: Optional[str]) -> CurveEstimator:
    """The table row of ``name`` (None: the default); unknown names raise ValueError."""
    name = DEFAULT_ESTIMATOR if name is None else name
    if name not in CURVE_ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose one of {sorted(CURVE_ESTIMATORS)}")
    return CURVE_ESTIMATORS[name]


@dataclass
class LayerCurve:
    """A model's layer-wise MI curve.

    Attributes:
        estimator: Its name; ``quantity`` and ``unit`` say what it estimates and what
            the rows of ``values`` are.
        layer_names: ``(L,)``.
        values: ``(units, L)`` estimates in nats (rows with a NaN are left out of the
            statistics).
        means, ci_low, ci_high: ``(L,)`` layer means and their bootstrap interval.
        verdict: "falls", "falls then rises" or "unclear"; ``test`` the rule that decided.
    """

    estimator: str
    quantity: str
    unit: str
    layer_names: List[str]
    values: np.ndarray
    means: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    verdict: str
    test: str

    @property
    def n_units(self) -> int:
        return int(np.isfinite(self.values).all(axis=1).sum())


def curve_from_values(values: np.ndarray, estimator: CurveEstimator, layer_names: Sequence[str], *,
                      seed: int = 0, n_boot: int = 1000) -> LayerCurve:
    """Means, bootstrap intervals and verdict of a ``(units, L)`` value matrix.

    Raises:
        ValueError: Fewer than 2 complete rows (no interval can be formed).
    """
    values = np.asarray(values, dtype=np.float64)
    complete = values[np.isfinite(values).all(axis=1)]
    if complete.shape[0] < 2:
        raise ValueError(f"{estimator.name}: {complete.shape[0]} complete {estimator.unit} (need at least 2)")
    summary = stats.summarize_layers(complete, n_boot=n_boot, seed=seed)
    if len(layer_names) >= 3:
        trend = stats.trend_verdict(complete, n_boot=n_boot, seed=seed)
        verdict, test = trend.verdict, trend.rule
    else:
        verdict, test = "unclear", f"{len(layer_names)} layers: a shape needs at least 3"
    return LayerCurve(estimator.name, estimator.quantity, estimator.unit, list(layer_names), values,
                      summary.mean, summary.ci_low, summary.ci_high, verdict, test)


def utterance_pairs(utterances: Sequence[Sequence], utt_ids: Optional[Sequence[str]] = None) -> LayerPairs:
    """:class:`LayerPairs` of in-memory features: per utterance ``[X, T_1, ..., T_L]``.

    Each T_i must have the frame count of X, or X is paired with it by
    :func:`analysis.pairing.align_frames` (a downstream at a lower frame rate).

    Raises:
        ValueError: Utterances with different numbers of layers, or fewer than 2 matrices.
    """
    from analysis.pairing import align_frames

    utterances = [[torch.as_tensor(np.asarray(a)) if not torch.is_tensor(a) else a for a in u] for u in utterances]
    if not utterances:
        raise ValueError("no utterances")
    counts = {len(u) for u in utterances}
    if len(counts) != 1 or min(counts) < 2:
        raise ValueError(f"every utterance must hold [X, T_1, ..., T_L] with the same L >= 1; got lengths "
                         f"{sorted(counts)}")
    n_layers = counts.pop() - 1
    ids = list(utt_ids) if utt_ids is not None else [f"utt{u}" for u in range(len(utterances))]

    shared_x = [u[0] for u in utterances]

    def layer(i: int) -> Pairs:
        ts = [u[i + 1] for u in utterances]
        if all(x.shape[0] == t.shape[0] for x, t in zip(shared_x, ts)):
            return shared_x, ts  # one X object: estimators reuse its preparation
        return [x if x.shape[0] == t.shape[0] else align_frames(x, t.shape[0]) for x, t in zip(shared_x, ts)], ts

    return LayerPairs(n_layers, layer, ids)


def estimate_layer_curve(
    utterances: Sequence[Sequence],
    estimator: Optional[str] = None,
    *,
    seed: int = 0,
    device=None,
    n_boot: int = 1000,
    layer_names: Optional[Sequence[str]] = None,
    **options,
) -> LayerCurve:
    """The layer-wise MI curve of features ``[X, T_1, ..., T_L]`` per utterance.

    Args:
        utterances: One item per utterance: ``[X, T_1, ..., T_L]``, arrays or tensors
            ``(n_u, d)`` (what the extractors of :mod:`analysis.features` return).
        estimator: A name of :data:`CURVE_ESTIMATORS`; None is the calibrated default
            (``gcmi``).
        seed: Seed of folds, critics and the bootstrap.
        device: Torch device (default: the features' own).
        n_boot: Bootstrap resamples of the intervals and the verdict.
        layer_names: Names of T_1..T_L (default ``T1..TL``).
        **options: Fields of the estimator's options (e.g. ``folds=5`` for ``gcmi``,
            ``epochs=20`` for ``mine``).

    Returns:
        :class:`LayerCurve`.

    Raises:
        ValueError: Unknown estimator or option, too few utterances or frames, NaN/inf
            features, or dimensions that differ between utterances of one layer.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = [torch.randn(200, 8, generator=g) for _ in range(20)]
        >>> utts = [[xu, xu + 0.1 * torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g)]
        ...         for xu in x]
        >>> curve = estimate_layer_curve(utts)  # T1 shares ~18 nats with X, T2 none
    """
    table_row = get_estimator(estimator)
    opts = table_row.options(**options)
    for u, items in enumerate(utterances):
        for j, a in enumerate(items):
            t = torch.as_tensor(np.asarray(a)) if not torch.is_tensor(a) else a
            if t.dim() != 2:
                raise ValueError(f"utterance {u}, matrix {j}: expected (frames, dims), got shape {tuple(t.shape)}")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"utterance {u}, matrix {j}: features contain NaN or infinite values")
    pairs = utterance_pairs(utterances)
    names = list(layer_names) if layer_names is not None else pairs.layer_names
    values = table_row.values(pairs, opts, seed, device)
    return curve_from_values(values, table_row, names, seed=seed, n_boot=n_boot)
