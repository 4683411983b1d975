"""Dataset-level Gaussian-copula MI of one layer, estimated on held-out utterances.

The quantity: I(X; T) of the frames pooled over all utterances (each frame one sample
of the joint distribution), under a Gaussian-copula model (Ince et al., 2017): every
dimension of X and of T is first mapped to normal scores by its rank over the pooled
frames (so any monotone per-dimension warp of the features leaves the estimate
unchanged), and the MI of the normal scores is the Gaussian one,

    I = -1/2 sum_k log(1 - rho_k^2),

with rho_k the canonical correlations between the X and T normal scores (CCA, the
measure of Pasad et al. 2021 turned into nats). It equals I(X; T) when the dependence
is Gaussian after per-dimension monotone maps; otherwise it measures the part carried
by linear correlation of the normal scores, usually less than the true MI.

Estimating it without the optimism of in-sample CCA (spurious canonical correlations
of d-dimensional noise add about ``dx * dt / (2 n)`` nats): the utterances are split
into K folds. For each fold, the canonical directions are fitted on the other folds
(ridge-regularised covariances), and the correlations rho_k are those of the projected
features *on the held-out fold*. A fold's estimate is therefore an honest, slightly
conservative, reading of how much linearly decodable shared information generalises to
unseen utterances. The K fold estimates are the units of the report's confidence
intervals and verdict (as utterances are for the per-utterance estimators).

Everything runs in float64; the frames of one layer must fit in memory (on the
device given).
"""

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from espnet_mamba.io import check_int

__all__ = [
    "GaussianCopulaOptions",
    "HeldOutGaussianCopula",
    "canonical_directions",
    "fold_assignment",
    "gaussian_copula_fold_estimates",
    "normal_scores",
]

# Canonical correlations are capped here so that identical features give a large,
# finite value (about 14 nats per shared dimension) instead of infinity.
_MAX_RHO = 1.0 - 1e-12


@dataclass(frozen=True)
class GaussianCopulaOptions:
    """Options of the held-out Gaussian-copula estimator.

    Attributes:
        folds: Number of utterance folds K (at most the number of utterances).
        ridge: Added to the diagonal of the (unit-variance) normal-score covariances
            before the canonical directions are fitted.
        min_utterances: Fewer utterances than this raise ``ValueError``.
    """

    folds: int = 10
    ridge: float = 1e-3
    min_utterances: int = 4

    def __post_init__(self) -> None:
        check_int("folds", self.folds, 2)
        if not (isinstance(self.ridge, (int, float)) and math.isfinite(self.ridge) and self.ridge >= 0):
            raise ValueError(f"ridge must be a finite number >= 0, got {self.ridge!r}")
        check_int("min_utterances", self.min_utterances, 2)


def normal_scores(a: torch.Tensor) -> torch.Tensor:
    """Per-column rank-based normal scores of ``a`` ``(n, d)``, float64.

    Row r of column j becomes ``Phi^-1((rank + 0.5) / n)``; ties are ranked in order
    of appearance (a stable sort), so the result is deterministic.
    """
    columns = a.T.contiguous()
    order = torch.argsort(columns, dim=1, stable=True)
    ranks = torch.empty_like(order)
    positions = torch.arange(a.shape[0], device=a.device).expand_as(order)
    ranks.scatter_(1, order, positions)
    return torch.special.ndtri((ranks.T.double() + 0.5) / a.shape[0])


def fold_assignment(n_utts: int, folds: int, seed: int) -> np.ndarray:
    """Fold index ``(n_utts,)`` of each utterance: a seeded permutation dealt round-robin."""
    order = np.random.default_rng(seed).permutation(n_utts)
    assignment = np.empty(n_utts, dtype=np.int64)
    assignment[order] = np.arange(n_utts) % folds
    return assignment


def _check_frames(name: str, frames: Sequence[torch.Tensor]) -> None:
    dims = {int(a.shape[1]) if a.dim() == 2 else -1 for a in frames}
    if -1 in dims:
        raise ValueError(f"{name} frames must be (frames, dims) matrices")
    if len(dims) != 1:
        raise ValueError(f"{name} frames have different dimensions across utterances: {sorted(dims)}")


class _FoldMoments:
    """Frame counts ``(K,)``, sums and cross products ``(K, da, db)`` of a and b per fold.

    The rows of ``a`` and ``b`` are ordered fold by fold; ``bounds`` holds the K + 1
    row offsets of the folds.
    """

    def __init__(self, a: torch.Tensor, b: torch.Tensor, bounds: Sequence[int]) -> None:
        folds = [slice(bounds[k], bounds[k + 1]) for k in range(len(bounds) - 1)]
        self.counts = torch.tensor([float(f.stop - f.start) for f in folds], dtype=a.dtype, device=a.device)
        self.sum_a = torch.stack([a[f].sum(0) for f in folds])
        self.sum_b = torch.stack([b[f].sum(0) for f in folds])
        self.products = torch.stack([a[f].T @ b[f] for f in folds])

    def held_out(self):
        """Covariances ``(K, da, db)`` of the training folds and of the held-out fold."""
        def cov(count, sum_a, sum_b, product):
            count = count.view(-1, 1)
            return product / count.unsqueeze(2) - (sum_a / count).unsqueeze(2) * (sum_b / count).unsqueeze(1)

        test = cov(self.counts, self.sum_a, self.sum_b, self.products)
        train = cov(self.counts.sum() - self.counts, self.sum_a.sum(0) - self.sum_a,
                    self.sum_b.sum(0) - self.sum_b, self.products.sum(0) - self.products)
        return train, test


def _inverse_cholesky(c: torch.Tensor, ridge: float) -> torch.Tensor:
    """``L^-1`` with ``L L^T = c + ridge I`` (a whitener), batched ``(K, d, d)``."""
    eye = torch.eye(c.shape[-1], dtype=c.dtype, device=c.device)
    jitter = max(ridge, 1e-10)
    factor, info = torch.linalg.cholesky_ex(c + jitter * eye)
    if bool((info > 0).any()):  # numerically singular: a little more ridge
        factor = torch.linalg.cholesky(c + (jitter + 1e-6) * eye)
    return torch.linalg.solve_triangular(factor, eye.expand_as(c), upper=False)


def canonical_directions(c_xx: torch.Tensor, c_tt: torch.Tensor, c_xt: torch.Tensor, ridge: float):
    """Ridge CCA of covariances ``(..., dx, dx)``, ``(..., dt, dt)``, ``(..., dx, dt)``.

    Returns:
        ``(a, b, rho)``: directions ``(..., dx, r)`` and ``(..., dt, r)``, r = min(dx, dt),
        with unit variance under the (ridged) covariances, and their canonical
        correlations ``(..., r)``, largest first.
    """
    wx = _inverse_cholesky(c_xx, ridge)
    wt = _inverse_cholesky(c_tt, ridge)
    u, rho, vh = torch.linalg.svd(wx @ c_xt @ wt.transpose(-1, -2), full_matrices=False)
    return wx.transpose(-1, -2) @ u, wt.transpose(-1, -2) @ vh.transpose(-1, -2), rho


class HeldOutGaussianCopula:
    """The held-out Gaussian-copula estimator for the layers that share one X.

    Normal scores, folds and the X side of the covariances are computed once; each
    :meth:`estimate` then scores one layer's T.

    Args:
        xs: Per utterance, X frames ``(n_u, dx)``.
        options: Folds and ridge (defaults: :class:`GaussianCopulaOptions`).
        seed: Seed of the fold assignment.
        device: Where to compute (default: the device of ``xs[0]``).

    Raises:
        ValueError: Fewer than ``options.min_utterances`` utterances, or X dimensions
            that differ between utterances.
    """

    def __init__(self, xs: Sequence[torch.Tensor], options: Optional[GaussianCopulaOptions] = None,
                 seed: int = 0, device: Optional[torch.device] = None) -> None:
        self.options = options or GaussianCopulaOptions()
        xs = [torch.as_tensor(x) for x in xs]
        if len(xs) < self.options.min_utterances:
            raise ValueError(f"{len(xs)} utterances is fewer than the {self.options.min_utterances} "
                             "this estimator needs")
        _check_frames("X", xs)
        self.device = torch.device(device) if device is not None else xs[0].device
        self.lengths = [int(x.shape[0]) for x in xs]
        self.folds = min(self.options.folds, len(xs))
        fold_of_utt = fold_assignment(len(xs), self.folds, seed)
        # Utterances ordered fold by fold, so that every fold is a block of rows.
        self.order = np.argsort(fold_of_utt, kind="stable")
        fold_frames = np.bincount(fold_of_utt, weights=self.lengths, minlength=self.folds).astype(int)
        self.bounds = np.concatenate([[0], np.cumsum(fold_frames)]).tolist()
        self.x = self._pooled_scores(xs)
        self.x_train, self.x_test = _FoldMoments(self.x, self.x, self.bounds).held_out()

    def _pooled_scores(self, frames: Sequence[torch.Tensor]) -> torch.Tensor:
        """Normal scores ``(sum n_u, d)`` of the pooled frames, rows in fold order."""
        return normal_scores(torch.cat([frames[u] for u in self.order]).to(self.device))

    def estimate(self, ts: Sequence[torch.Tensor]) -> np.ndarray:
        """Held-out MI ``(K,)`` in nats of one layer; ``ts`` row-aligned with the X given.

        Raises:
            ValueError: Another number of utterances or frames than X, or T dimensions
                that differ between utterances.
        """
        ts = [torch.as_tensor(t) for t in ts]
        if [int(t.shape[0]) for t in ts] != self.lengths:
            raise ValueError("T must have the same utterances and frame counts as X "
                             f"({len(ts)} utterances, {sum(int(t.shape[0]) for t in ts)} frames "
                             f"against {len(self.lengths)} and {sum(self.lengths)})")
        _check_frames("T", ts)
        t = self._pooled_scores(ts)
        tt_train, tt_test = _FoldMoments(t, t, self.bounds).held_out()
        xt_train, xt_test = _FoldMoments(self.x, t, self.bounds).held_out()
        a, b, _ = canonical_directions(self.x_train, tt_train, xt_train, self.options.ridge)  # (K, d, r)
        cross = ((xt_test @ b) * a).sum(1)
        var_x = ((self.x_test @ a) * a).sum(1)
        var_t = ((tt_test @ b) * b).sum(1)
        rho = cross / (var_x * var_t).clamp_min(1e-300).sqrt()
        rho = rho.clamp(0.0, _MAX_RHO)
        return (-0.5 * torch.log1p(-rho.square()).sum(1)).cpu().numpy()


def gaussian_copula_fold_estimates(
    xs: Sequence[torch.Tensor],
    ts: Sequence[torch.Tensor],
    options: Optional[GaussianCopulaOptions] = None,
    seed: int = 0,
    device: Optional[torch.device] = None,
) -> np.ndarray:
    """Held-out Gaussian-copula MI ``(K,)`` of one layer, K = min(options.folds, utterances).

    ``xs`` and ``ts``: per utterance, row-aligned frames ``(n_u, dx)`` and ``(n_u, dt)``.
    See :class:`HeldOutGaussianCopula`.
    """
    if len(xs) != len(ts):
        raise ValueError(f"got {len(xs)} X and {len(ts)} T utterances")
    return HeldOutGaussianCopula(xs, options, seed, device).estimate(ts)
