"""A pooled neural-critic MI of one layer, trained and valued on different utterances.

The cross-check of the Gaussian-copula estimate, of another kind: a non-linear
statistics network (an MLP, as MINE's) scores pairs, and the value is the
Donsker-Varadhan (DV) lower bound ``mean T(x, t) - log mean exp T(x, t')`` on frames of
utterances it never saw. An MLP on the raw ``cat(x, t)`` of hundreds of dimensions
memorises a few thousand frames and reads less than zero on held-out ones, so the
critic reads a low-dimensional view instead (as in MI on learned low-dimensional
embeddings, Gowri et al. 2024):

1. the utterances are split (seeded) into a training half and an evaluation half,
   and the training half again into fitting and validation utterances;
2. every dimension becomes rank-based normal scores over the pooled frames (MI is
   unchanged by such monotone maps), and the ``components`` leading canonical pairs
   of the fitting frames (ridge CCA) give the view ``(u, v)``;
3. the MLP on ``cat(u, v)`` is trained with the DV objective on the fitting frames,
   keeping the epoch whose DV bound on the validation frames is highest (the critics
   of all layers that share one X train side by side, as one batched network);
4. the bound is valued on the evaluation half, in ``groups`` groups of utterances
   (the units of the intervals), with the marginal scores clipped as in SMILE.

The canonical directions are linear, but the dependence the critic scores within
them need not be. Like every DV bound the value cannot certify much more than the log
of the frames it is valued on, so it saturates on layers of high MI: it is meant for
the shape of the curve, not its level.
"""

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from analysis.gaussian_mi import canonical_directions, normal_scores
from espnet_mamba.io import check_int

__all__ = ["PooledCriticOptions", "pooled_critic_group_estimates"]


@dataclass(frozen=True)
class PooledCriticOptions:
    """Options of the pooled critic.

    Attributes:
        components: Canonical pairs the critic reads (at most min(dx, dt)).
        ridge: Ridge of the CCA (on unit-variance normal scores).
        hidden: Hidden sizes of the MLP critic (ReLU).
        lr: Adam learning rate.
        epochs: At most this many passes over the fitting frames.
        batch_size: Frames per mini-batch.
        max_frames: At most this many frames (drawn at random) for fitting, for
            validation and per evaluation group.
        groups: Evaluation groups of held-out utterances (units of the intervals).
        clip: Scores of marginal pairs are clipped to ``[-clip, clip]`` in the reported
            bound (SMILE, Song and Ermon 2020): a little bias for much less variance.
        min_utterances: Fewer utterances than this raise ``ValueError``.
    """

    components: int = 16
    ridge: float = 1e-3
    hidden: Tuple[int, ...] = (64, 64)
    lr: float = 1e-3
    epochs: int = 30
    batch_size: int = 256
    max_frames: int = 20000
    groups: int = 5
    clip: float = 5.0
    min_utterances: int = 8

    def __post_init__(self) -> None:
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise ValueError(f"hidden must be positive sizes, got {self.hidden!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not self.clip > 0:
            raise ValueError(f"clip must be > 0, got {self.clip!r}")
        if not (math.isfinite(self.ridge) and self.ridge >= 0):
            raise ValueError(f"ridge must be a finite number >= 0, got {self.ridge!r}")
        for name in ("components", "epochs", "max_frames", "groups"):
            check_int(name, getattr(self, name))
        check_int("batch_size", self.batch_size, 2)
        check_int("min_utterances", self.min_utterances, 8)


class _StackedCritics(nn.Module):
    """L independent MLP critics ``(2k -> hidden -> 1)`` evaluated together with batched products.

    Each has the initialisation of ``nn.Linear`` (uniform in +-1/sqrt(fan_in)).
    """

    def __init__(self, n_critics: int, d_in: int, hidden: Sequence[int], generator: torch.Generator) -> None:
        super().__init__()
        sizes = [d_in, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter((torch.rand(n_critics, fan_in, fan_out, generator=generator) * 2 - 1)
                                             * bound))
            self.biases.append(nn.Parameter((torch.rand(n_critics, 1, fan_out, generator=generator) * 2 - 1) * bound))

    def forward(self, view: torch.Tensor) -> torch.Tensor:
        """Scores ``(L, n)`` of views ``(L, n, d_in)``."""
        h = view
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if k < len(self.weights) - 1:
                h = torch.relu(h)
        return h.squeeze(2)


def _dv_bounds(critics: _StackedCritics, view: torch.Tensor, k: int, perm: torch.Tensor,
               clip: float = math.inf) -> torch.Tensor:
    """DV bound ``(L,)`` of views ``cat(u, v)`` ``(L, n, 2k)``; marginal pairs u with ``v[perm]``,
    their scores clipped to ``[-clip, clip]`` (SMILE's variance control)."""
    joint = critics(view)
    marginal = critics(torch.cat([view[:, :, :k], view[:, perm, k:]], dim=2)).clamp(-clip, clip)
    return joint.mean(1) - (torch.logsumexp(marginal, 1) - math.log(marginal.shape[1]))


class _Frames:
    """Normal scores of the pooled X frames and the rows of each utterance."""

    def __init__(self, xs, device) -> None:
        lengths = [int(x.shape[0]) for x in xs]
        self.starts = np.concatenate([[0], np.cumsum(lengths)])
        self.x = normal_scores(torch.cat([torch.as_tensor(x) for x in xs]).to(device))

    def rows(self, utts, limit: int, generator: torch.Generator) -> torch.Tensor:
        rows = torch.cat([torch.arange(self.starts[u], self.starts[u + 1]) for u in utts])
        if rows.numel() > limit:
            rows = rows[torch.randperm(rows.numel(), generator=generator)[:limit]]
        return rows.to(self.x.device)


def pooled_critic_group_estimates(
    xs: Sequence[torch.Tensor],
    layers: Sequence[Sequence[torch.Tensor]],
    options: PooledCriticOptions = PooledCriticOptions(),
    seed: int = 0,
    device=None,
) -> np.ndarray:
    """Held-out DV bounds of layers that share one X, one row per evaluation group.

    Args:
        xs: Per utterance, X frames ``(n_u, dx)``.
        layers: Per layer, per utterance, T frames ``(n_u, dt_i)``, row-aligned with ``xs``.
        options: See :class:`PooledCriticOptions`.
        seed: Seed of the splits, the initialisation, the shuffles and the permutations.
        device: Where to train (default: the device of ``xs[0]``).

    Returns:
        ``(G, L)`` values in nats.

    Raises:
        ValueError: Too few utterances, or X and T frames that do not pair.
    """
    opts = options or PooledCriticOptions()
    if len(xs) < opts.min_utterances:
        raise ValueError(f"{len(xs)} utterances is fewer than the {opts.min_utterances} this estimator needs")
    for i, ts in enumerate(layers):
        if len(ts) != len(xs) or any(x.shape[0] != t.shape[0] for x, t in zip(xs, ts)):
            raise ValueError(f"layer {i}: T frames do not pair with X frames utterance by utterance")
    device = torch.device(device) if device is not None else torch.as_tensor(xs[0]).device
    generator = torch.Generator().manual_seed(seed)
    order = np.random.default_rng(seed).permutation(len(xs))
    half = len(xs) // 2
    n_valid = max(1, half // 5)
    fit_utts, valid_utts = order[: half - n_valid], order[half - n_valid: half]
    groups = np.array_split(order[half:], min(opts.groups, len(xs) - half))
    frames = _Frames(xs, device)
    rows = [frames.rows(utts, opts.max_frames, generator) for utts in (fit_utts, valid_utts, *groups)]
    k = min([opts.components, frames.x.shape[1]] + [int(ts[0].shape[1]) for ts in layers])
    fit_view, valid_view, *eval_views = _canonical_views(frames, layers, rows, k, opts.ridge, device)
    critics = _train_critics(fit_view, valid_view, k, opts, generator, device)
    with torch.no_grad():
        values = []
        for view in eval_views:
            perm = torch.randperm(view.shape[1], generator=generator).to(device)
            values.append(_dv_bounds(critics, view, k, perm, opts.clip).cpu().numpy())
    return np.stack(values).astype(np.float64)


def _canonical_views(frames: _Frames, layers, rows: Sequence[torch.Tensor], k: int, ridge: float,
                     device) -> List[torch.Tensor]:
    """Per set of ``rows``, the views ``cat(u, v)`` ``(L, n, 2k)`` of all layers: the ``k``
    leading canonical pairs of X and each layer's T, fitted on the first set."""
    fit = rows[0]
    views = []  # per layer, per set of rows: (n, 2k)
    for ts in layers:
        t = normal_scores(torch.cat([torch.as_tensor(t) for t in ts]).to(device))
        dx = frames.x.shape[1]
        cov = torch.cov(torch.cat([frames.x[fit], t[fit]], dim=1).T)
        a, b, _ = canonical_directions(cov[:dx, :dx], cov[dx:, dx:], cov[:dx, dx:], ridge)
        a, b = a[:, :k], b[:, :k]
        views.append([torch.cat([frames.x[r] @ a, t[r] @ b], dim=1).float() for r in rows])
    return [torch.stack(parts) for parts in zip(*views)]


def _train_critics(fit_view: torch.Tensor, valid_view: torch.Tensor, k: int, opts: PooledCriticOptions,
                   generator: torch.Generator, device) -> _StackedCritics:
    """The L critics trained with the DV objective on ``fit_view`` ``(L, n, 2k)``, each
    holding the parameters of its epoch of best DV bound on ``valid_view``."""
    critics = _StackedCritics(fit_view.shape[0], 2 * k, opts.hidden, generator).to(device)
    optimizer = torch.optim.Adam(critics.parameters(), lr=opts.lr)
    valid_perm = torch.randperm(valid_view.shape[1], generator=generator).to(device)
    best = torch.full((fit_view.shape[0],), -math.inf, device=device)
    best_params = [p.detach().clone() for p in critics.parameters()]
    n, batch = fit_view.shape[1], min(opts.batch_size, fit_view.shape[1])
    for _ in range(opts.epochs):
        shuffle = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n - batch + 1, batch):
            idx = shuffle[start:start + batch]
            perm = torch.randperm(batch, generator=generator).to(device)
            loss = -_dv_bounds(critics, fit_view[:, idx], k, perm).sum()  # independent critics
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():  # keep each critic's epoch of best validation bound
            score = _dv_bounds(critics, valid_view, k, valid_perm, opts.clip)
            improved = score > best
            best = torch.where(improved, score, best)
            for kept, p in zip(best_params, critics.parameters()):
                kept[improved] = p[improved]
    with torch.no_grad():
        for kept, p in zip(best_params, critics.parameters()):
            p.copy_(kept)
    return critics
