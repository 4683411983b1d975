"""Neural mutual-information estimators for one pair of frame sequences.

``estimate_mi(x, y)`` estimates I(X; Y) in nats from n paired samples (the frames of
one utterance): row i of x ``(n, dx)`` and row i of y ``(n, dy)`` are drawn from the
joint distribution. A statistics network (critic) T(x, y) is trained on the frames
and a variational lower bound is evaluated with it.

Estimators (``estimator=``; each one's training loss and reported bound are written
once, in :mod:`analysis.bounds`, and shared with the batched engine):

- ``"mine"``: MINE (Belghazi et al., 2018) as used by the paper: the biased
  Donsker-Varadhan (DV) bound ``mean T(x, y) - log mean exp T(x, y')`` is maximized
  directly; y' is y shuffled, so (x, y') is a sample of the product of marginals.
- ``"mine-ema"``: MINE with Belghazi's bias-corrected gradient: the denominator
  ``mean exp T(x, y')`` of the DV gradient is replaced by an exponential moving
  average over mini-batches (``MIOptions.ema_alpha``). Reported value: the DV bound.
- ``"nwj"``: the f-divergence bound of Nguyen, Wainwright and Jordan,
  ``mean T(x, y) - mean exp(T(x, y') - 1)``, trained and reported.
- ``"infonce"``: InfoNCE (van den Oord et al., 2018). Each mini-batch of b frames
  scores all b x b pairs; the bound ``mean_i [T(x_i, y_i) - log sum_j exp T(x_i, y_j)]
  + log b`` can never exceed log b.
- ``"smile"``: SMILE (Song and Ermon, 2020): the critic is trained with the
  Jensen-Shannon f-GAN objective; the reported value is the DV bound with
  ``exp T(x, y')`` clipped to ``[exp(-tau), exp(tau)]`` (``MIOptions.smile_clip``).

Training recipe (the defaults reproduce the paper's MINE setup): critic = MLP on
``cat(x, y)`` with hidden sizes 100, 100 and ReLU, Adam with learning rate 1e-4,
100 epochs over the frames in shuffled mini-batches of 128; marginal samples pair
each x of a mini-batch with the y of another frame of the same mini-batch (a random
permutation). The reported estimate is one evaluation of the estimator's bound on
all n frames: for DV, NWJ and SMILE the joint term uses every frame and the marginal
term pairs frame i with frame pi(i) for one random permutation pi of the frames;
for InfoNCE the frames are split by pi into blocks of ``batch_size`` frames, the
bound is evaluated in each block and averaged with weights proportional to block
size (so the value stays below log(batch_size)).

Departures from the authors' code (all deliberate):

- Each (x, y) pair gets a freshly initialized critic and optimizer.
- Utterances with fewer frames than ``batch_size`` are trained with one batch of
  all n frames per epoch (the authors' loop trained nothing on them). Fewer than
  ``min_frames`` frames raise ``ValueError``.
- Padding frames are never data: callers pass each utterance at its true length.
- ``standardize=True`` (default) z-scores every dimension of x and of y over the
  utterance's frames before training; the authors used raw features. MI is
  invariant to such invertible per-dimension maps, but the critic trains much
  better on inputs of unit scale.
- Training always runs with autograd anomaly detection off.
- All randomness is a function of ``(seed, n)`` (see :mod:`analysis.rng`): the
  same inputs and options give the same estimate on any device, alone or inside
  the batched engine (``analysis.engine.estimate_mi_batched``).

This module is the plain one-pair-at-a-time implementation (``torch.nn`` modules and
``torch.optim.Adam``); it is the reference the batched engine is tested against.
"""

import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from analysis.bounds import ESTIMATORS, Bound, make_bound
from analysis.frames import ArrayLike, as_frames, standardize_frames
from analysis.rng import ProblemRandom
from espnet_mamba.io import check_int

__all__ = [
    "ESTIMATORS",
    "MIOptions",
    "StatisticsNetwork",
    "estimate_mi",
    "resolve_device",
    "resolve_options",
]


@dataclass(frozen=True)
class MIOptions:
    """Hyper-parameters of an MI estimate. The defaults are the paper's MINE recipe.

    Attributes:
        hidden: Hidden layer sizes of the statistics network, an MLP on
            ``cat(x, y)`` with ReLU after each hidden layer and a scalar output.
        lr: Adam learning rate.
        epochs: Passes over the utterance's frames.
        batch_size: Frames per mini-batch (the last batch of an epoch holds the
            remaining ``n mod batch_size`` frames). An utterance with fewer frames
            than this is trained with one batch of all its frames.
        standardize: Z-score each dimension of x and of y over the utterance's
            frames before training (population standard deviation; constant
            dimensions become 0). A departure from the authors, who used raw
            features; it does not change the true MI.
        seed: Seed of the critic's initialization, the frame shuffles, the
            marginal permutations and the evaluation permutation.
        device: Torch device; None means "cuda" when available, else "cpu".
        dtype: torch.float32 or torch.float64 for the critic and the features.
        min_frames: Fewer frames than this raise ``ValueError`` (at least 2: one
            frame has no marginal sample).
        ema_alpha: "mine-ema" only: weight of the newest mini-batch in the moving
            average of ``mean exp T(x, y')`` (Belghazi et al. use 0.01).
        smile_clip: "smile" only: tau; critic values on marginal samples are
            clipped to ``[-tau, tau]`` in the reported DV bound.
        adam_betas: Adam's (beta1, beta2) (PyTorch defaults, as the authors).
        adam_eps: Adam's epsilon (PyTorch default).
    """

    hidden: Tuple[int, ...] = (100, 100)
    lr: float = 1e-4
    epochs: int = 100
    batch_size: int = 128
    standardize: bool = True
    seed: int = 0
    device: Optional[Union[str, torch.device]] = None
    dtype: torch.dtype = torch.float32
    min_frames: int = 2
    ema_alpha: float = 0.01
    smile_clip: float = 5.0
    adam_betas: Tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8

    def __post_init__(self) -> None:
        hidden = tuple(self.hidden)
        if not hidden or any(not isinstance(h, (int, np.integer)) or h < 1 for h in hidden):
            raise ValueError(f"hidden must be a non-empty sequence of positive ints, got {self.hidden!r}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in hidden))
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        check_int("epochs", self.epochs)
        check_int("batch_size", self.batch_size, 2)
        check_int("seed", self.seed, 0)
        if self.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {self.dtype}")
        check_int("min_frames", self.min_frames, 2)
        if not 0.0 < self.ema_alpha <= 1.0:
            raise ValueError(f"ema_alpha must be in (0, 1], got {self.ema_alpha}")
        if not self.smile_clip > 0:
            raise ValueError(f"smile_clip must be > 0, got {self.smile_clip}")
        beta1, beta2 = self.adam_betas
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"adam_betas must be in [0, 1), got {self.adam_betas}")
        if not self.adam_eps > 0:
            raise ValueError(f"adam_eps must be > 0, got {self.adam_eps}")


def resolve_options(options: Optional[MIOptions] = None, **overrides) -> MIOptions:
    """``options`` (or the defaults) with some fields replaced.

    Raises:
        ValueError: An override names no field of MIOptions, or a value is invalid.
    """
    names = {f.name for f in dataclasses.fields(MIOptions)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown MI option(s) {unknown}; valid: {sorted(names)}")
    if options is None:
        return MIOptions(**overrides)
    if not isinstance(options, MIOptions):
        raise ValueError(f"options must be an MIOptions, got {type(options).__name__}")
    return dataclasses.replace(options, **overrides) if overrides else options


def resolve_device(device: Optional[Union[str, torch.device]]) -> torch.device:
    """``device``, or cuda when available else cpu."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class StatisticsNetwork(nn.Module):
    """The critic T(x, y): an MLP on ``cat(x, y)`` with ReLU hidden layers and a scalar output.

    Args:
        x_dim: dx.
        y_dim: dy.
        hidden: Hidden layer sizes.
    """

    def __init__(self, x_dim: int, y_dim: int, hidden: Tuple[int, ...] = (100, 100)) -> None:
        super().__init__()
        sizes = [x_dim + y_dim, *hidden]
        layers = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], 1))
        self.net = nn.Sequential(*layers)

    def linears(self):
        """The linear layers, first to last."""
        return [m for m in self.net if isinstance(m, nn.Linear)]

    @torch.no_grad()
    def reset_from(self, rng: ProblemRandom) -> None:
        """Initializes the weights from problem 0 of ``rng`` (as the batched engine does)."""
        for layer, linear in enumerate(self.linears()):
            weight, bias = rng.init_linear(layer, linear.in_features, linear.out_features)
            linear.weight.copy_(weight[0])
            linear.bias.copy_(bias[0])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scores ``(...)`` of x ``(..., dx)`` and y ``(..., dy)``."""
        return self.net(torch.cat([x, y], dim=-1)).squeeze(-1)


def _pair_scores(net: StatisticsNetwork, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """All pairs: ``S[0, i, j] = T(x_i, y_j)``, shape ``(1, b, b)``."""
    b = x.shape[0]
    return net(x.unsqueeze(1).expand(b, b, x.shape[1]), y.unsqueeze(0).expand(b, b, y.shape[1])).unsqueeze(0)


def _scores(bound: Bound, net: StatisticsNetwork, x: torch.Tensor, y: torch.Tensor, partner: torch.Tensor):
    """The critic's scores of one batch in the form ``bound`` takes (see :mod:`analysis.bounds`)."""
    if bound.pairwise:
        return (_pair_scores(net, x, y),)
    return net(x, y).unsqueeze(0), net(x, y[partner]).unsqueeze(0)


def _all_valid(n: int, dtype: torch.dtype, device: torch.device):
    """The mask ``(1, n)`` and count ``(1,)`` of a batch of n real rows."""
    return torch.ones(1, n, dtype=torch.bool, device=device), torch.full((1,), float(n), dtype=dtype, device=device)


def _evaluate(bound: Bound, net, x, y, perm, batch_size) -> float:
    """The estimator's bound on all frames (see the module docstring)."""
    n = x.shape[0]
    if bound.pairwise:
        total = 0.0
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            valid, count = _all_valid(len(idx), x.dtype, x.device)
            total += float(bound.block_sum(*_scores(bound, net, x[idx], y[idx], None), valid, count)[0])
        return total / n
    valid, count = _all_valid(n, x.dtype, x.device)
    return float(bound.value(*_scores(bound, net, x, y, perm), valid, count)[0])


def _prepare_pair(x: ArrayLike, y: ArrayLike, opts: MIOptions, device: torch.device):
    """Validates a pair and returns ``(x, y)`` on ``device`` in ``opts.dtype``, standardized if asked."""
    xt = as_frames(x, "x")
    yt = as_frames(y, "y")
    if xt.shape[0] != yt.shape[0]:
        raise ValueError(
            f"x and y must have the same number of frames (rows): x has {xt.shape[0]}, y has {yt.shape[0]}"
        )
    n = xt.shape[0]
    if n < opts.min_frames:
        raise ValueError(f"too few frames to estimate MI: {n} < min_frames={opts.min_frames}")
    if opts.epochs * n >= 2 ** 32:
        raise ValueError(f"epochs * frames must be < 2**32, got {opts.epochs} * {n}")
    xt = xt.to(device=device, dtype=opts.dtype)
    yt = yt.to(device=device, dtype=opts.dtype)
    if opts.standardize:
        xt, yt = standardize_frames(xt), standardize_frames(yt)
    return xt, yt


def estimate_mi(
    x: ArrayLike,
    y: ArrayLike,
    estimator: str = "mine",
    options: Optional[MIOptions] = None,
    **overrides,
) -> float:
    """Estimates I(X; Y) in nats from paired frames, training a fresh critic.

    Args:
        x: ``(n, dx)`` frames (numpy or torch; ``(n,)`` is read as ``(n, 1)``).
        y: ``(n, dy)`` frames; row i pairs with row i of x.
        estimator: One of ``ESTIMATORS``.
        options: Hyper-parameters (default: the paper's MINE recipe).
        **overrides: Fields of MIOptions replacing those of ``options``, e.g.
            ``estimate_mi(x, y, epochs=20, lr=1e-3)``.

    Returns:
        The estimate in nats (may be negative for weakly dependent data; DV, NWJ
        and SMILE values are not capped, InfoNCE values are below log(batch_size)).

    Raises:
        ValueError: Unknown estimator or option, x and y with different numbers
            of frames, fewer than ``min_frames`` frames, or NaN/inf in the data.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(500, 2, generator=g)
        >>> y = x + 0.5 * torch.randn(500, 2, generator=g)
        >>> mi = estimate_mi(x, y, epochs=20, lr=1e-3)  # true value 1.61 nats
    """
    opts = resolve_options(options, **overrides)
    bound = make_bound(estimator, opts)
    device = resolve_device(opts.device)
    x, y = _prepare_pair(x, y, opts, device)
    n = x.shape[0]
    b = opts.batch_size
    rng = ProblemRandom([opts.seed], [n], n, device)
    net = StatisticsNetwork(x.shape[1], y.shape[1], opts.hidden).to(device=device, dtype=opts.dtype)
    net.reset_from(rng)
    optimizer = torch.optim.Adam(net.parameters(), lr=opts.lr, betas=opts.adam_betas, eps=opts.adam_eps)
    state = bound.initial_state(1, opts.dtype, device)
    with torch.autograd.set_detect_anomaly(False):
        for epoch in range(opts.epochs):
            order, partner = rng.epoch(epoch, b)
            order, partner = order[0], partner[0]
            for start in range(0, n, b):
                idx = order[start:start + b]
                local_partner = partner[start:start + b] - start
                valid, count = _all_valid(len(idx), opts.dtype, device)
                scores = _scores(bound, net, x[idx], y[idx], local_partner)
                loss, state = bound.loss(*scores, valid, count, state)
                optimizer.zero_grad(set_to_none=True)
                loss.sum().backward()
                optimizer.step()
        with torch.no_grad():
            return _evaluate(bound, net, x, y, rng.eval_permutation()[0], b)
