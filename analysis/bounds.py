"""The estimator table: each MI estimator's training loss and reported bound, written once.

An estimator is a small object (:class:`Bound`) built from :class:`analysis.mi.MIOptions`
by :func:`make_bound`. Its methods work on the critic's scores of K problems at once,
with a mask of valid rows, so the batched engine (:mod:`analysis.engine`) calls them
on padded stacks and the one-pair reference (:mod:`analysis.mi`) on K = 1 with an
all-valid mask:

- dual bounds (``pairwise = False``): ``t_joint`` ``(K, R)`` holds T(x_i, y_i) and
  ``t_marg`` ``(K, R)`` holds T(x_i, y_pi(i)), a sample of the product of marginals;
- pairwise bounds (``pairwise = True``, InfoNCE): ``scores`` ``(K, R, R)`` holds
  T(x_i, y_j) for every pair of rows of a mini-batch.

``valid`` ``(K, R)`` marks real rows and ``count`` ``(K,)`` (float) counts them.
``loss`` returns the per-problem training loss ``(K,)`` (minimized; the sum over
problems is differentiated) and the estimator's state after the step;
``value`` returns the reported bound ``(K,)`` in nats.

Names, as in ``ESTIMATORS``: "mine" (Donsker-Varadhan, the paper's), "mine-ema"
(DV with Belghazi's moving-average gradient), "nwj", "infonce", "smile".
"""

import math
from typing import Dict, Optional, Tuple, Type

import torch
from torch.nn import functional as F

__all__ = [
    "Bound",
    "BOUNDS",
    "ESTIMATORS",
    "check_estimator",
    "make_bound",
    "masked_log_mean_exp",
    "masked_mean",
]

State = Optional[Tuple[torch.Tensor, ...]]


def masked_mean(t: torch.Tensor, valid: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Mean over the valid entries of each row: ``t``, ``valid`` ``(K, R)``, ``count`` ``(K,)`` -> ``(K,)``."""
    return torch.where(valid, t, torch.zeros_like(t)).sum(1) / count


def masked_log_mean_exp(t: torch.Tensor, valid: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``log mean exp`` over the valid entries of each row -> ``(K,)``."""
    return torch.logsumexp(t.masked_fill(~valid, -math.inf), dim=1) - count.log()


class Bound:
    """One estimator: its training loss and its reported bound (see the module docstring)."""

    name = ""
    pairwise = False

    def initial_state(self, problems: int, dtype: torch.dtype, device: torch.device) -> State:
        """The state before the first step (None: the estimator keeps none)."""
        return None

    def loss(self, t_joint, t_marg, valid, count, state: State) -> Tuple[torch.Tensor, State]:
        raise NotImplementedError

    def value(self, t_joint, t_marg, valid, count) -> torch.Tensor:
        raise NotImplementedError


class DonskerVaradhan(Bound):
    """MINE as in the paper: the biased DV bound ``mean T_joint - log mean exp T_marg``, trained and reported."""

    name = "mine"

    def value(self, t_joint, t_marg, valid, count):
        return masked_mean(t_joint, valid, count) - masked_log_mean_exp(t_marg, valid, count)

    def loss(self, t_joint, t_marg, valid, count, state):
        return -self.value(t_joint, t_marg, valid, count), state


class MovingAverageDV(DonskerVaradhan):
    """MINE with Belghazi's bias-corrected gradient; reports the DV bound.

    The denominator ``mean exp T_marg`` of the DV gradient is replaced by its
    exponential moving average over mini-batches (weight ``alpha`` for the newest).
    State: ``(log of the average, steps taken)``, each ``(K,)``.
    """

    name = "mine-ema"

    def __init__(self, alpha: float) -> None:
        self.log_alpha = math.log(alpha)
        self.log_keep = math.log1p(-alpha) if alpha < 1 else -math.inf

    def initial_state(self, problems, dtype, device):
        return (torch.zeros(problems, dtype=dtype, device=device),
                torch.zeros(problems, dtype=torch.int64, device=device))

    def loss(self, t_joint, t_marg, valid, count, state):
        log_ema, steps = state
        lme = masked_log_mean_exp(t_marg, valid, count)
        blended = torch.logaddexp(log_ema + self.log_keep, lme.detach() + self.log_alpha)
        log_ema = torch.where(steps == 0, lme.detach(), blended)
        # Gradient: grad(mean T_joint) - grad(mean exp T_marg) / EMA(mean exp T_marg).
        loss = -(masked_mean(t_joint, valid, count) - torch.exp(lme - log_ema))
        return loss, (log_ema, steps + 1)


class NguyenWainwrightJordan(Bound):
    """NWJ: ``mean T_joint - mean exp(T_marg - 1)``, trained and reported."""

    name = "nwj"

    def value(self, t_joint, t_marg, valid, count):
        return masked_mean(t_joint, valid, count) - masked_mean(torch.exp(t_marg - 1.0), valid, count)

    def loss(self, t_joint, t_marg, valid, count, state):
        return -self.value(t_joint, t_marg, valid, count), state


class Smile(Bound):
    """SMILE: trained with the Jensen-Shannon f-GAN objective (optimal critic log p(x,y)/(p(x)p(y)));
    reports the DV bound with ``T_marg`` clipped to ``[-tau, tau]``."""

    name = "smile"

    def __init__(self, tau: float) -> None:
        self.tau = tau

    def value(self, t_joint, t_marg, valid, count):
        clipped = t_marg.clamp(-self.tau, self.tau)
        return masked_mean(t_joint, valid, count) - masked_log_mean_exp(clipped, valid, count)

    def loss(self, t_joint, t_marg, valid, count, state):
        loss = masked_mean(F.softplus(-t_joint), valid, count) + masked_mean(F.softplus(t_marg), valid, count)
        return loss, state


class InfoNCE(Bound):
    """InfoNCE over a block of R rows: ``mean_i [S_ii - log sum_j S_ij] + log R``
    (valid rows and columns only), never above log R."""

    name = "infonce"
    pairwise = True

    @staticmethod
    def _row_terms(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``S_ii - log sum_j S_ij`` ``(K, R)`` over valid columns; 0 on invalid rows."""
        lse = torch.logsumexp(scores.masked_fill(~valid[:, None, :], -math.inf), dim=2)
        return torch.where(valid, scores.diagonal(dim1=1, dim2=2) - lse, torch.zeros_like(lse))

    def block_sum(self, scores: torch.Tensor, valid: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """The block's bound times its size ``(K,)``: 0 for a block with no valid row.

        The bound on all frames is the size-weighted mean of the blocks' bounds.
        """
        log_size = torch.where(count > 0, count.clamp_min(1).log(), torch.zeros_like(count))
        return self._row_terms(scores, valid).sum(1) + count * log_size

    def value(self, scores, valid, count):
        return self.block_sum(scores, valid, count) / count

    def loss(self, scores, valid, count, state):
        return -(self._row_terms(scores, valid).sum(1) / count), state


BOUNDS: Dict[str, Type[Bound]] = {
    cls.name: cls for cls in (DonskerVaradhan, MovingAverageDV, NguyenWainwrightJordan, InfoNCE, Smile)
}
ESTIMATORS = tuple(BOUNDS)


def check_estimator(estimator: str) -> str:
    """Returns ``estimator`` or raises ValueError listing the valid names."""
    if estimator not in BOUNDS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {list(ESTIMATORS)}")
    return estimator


def make_bound(estimator: str, options) -> Bound:
    """The :class:`Bound` of ``estimator`` with its parameters from ``options`` (an MIOptions)."""
    check_estimator(estimator)
    if estimator == "mine-ema":
        return MovingAverageDV(options.ema_alpha)
    if estimator == "smile":
        return Smile(options.smile_clip)
    return BOUNDS[estimator]()
