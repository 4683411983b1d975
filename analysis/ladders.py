"""Synthetic layer stacks with known mutual information ("ladders").

A ladder imitates a model's features: the same X dimension, the same T dimension per
layer, the same frame count per utterance and the same number of utterances, but with
a known I(X_t; T_i,t) per layer. For layer i with target MI I_i, k_i dimensions of T_i
copy k_i dimensions of X with correlation rho_i and noise, the remaining dimensions are
independent noise, and the whole of T_i is rotated by a random orthogonal matrix::

    T_i = [rho_i X[:, S_i] + sqrt(1 - rho_i^2) E_i,  E'_i] Q_i
    I(X; T_i) = -(k_i / 2) log(1 - rho_i^2)               (exact, per frame)

X itself is rotated as well. Options make the ladder harder in the ways real features
are: ``ar`` gives every latent sequence AR(1) correlation in time (the MI per frame is
unchanged, the effective sample size falls), and ``warp`` applies a monotone
non-linear map to every dimension of X and T after the rotation (an invertible map,
so the MI is unchanged, but the features are no longer Gaussian).

Ladder shapes: :func:`ladder_values` gives geometric "falls then rises" and "falls"
profiles between a low and a high MI.
"""

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch

__all__ = ["LADDER_SHAPES", "Ladder", "ladder_values", "matched_ladders"]

LADDER_SHAPES = ("falls then rises", "falls")

# At most this much MI per shared dimension (rho about 0.93) while dimensions last.
_MI_PER_DIM = 1.0


def ladder_values(n_layers: int, shape: str, low: float, high: float) -> np.ndarray:
    """Known MI per layer ``(n_layers,)``, geometric between ``low`` and ``high`` nats.

    "falls then rises": from ``high`` down to ``low`` at two thirds of the depth, then up
    to ``sqrt(low * high)`` at the last layer. "falls": from ``high`` down to ``low``.
    """
    if shape not in LADDER_SHAPES:
        raise ValueError(f"unknown ladder shape {shape!r}; choose one of {list(LADDER_SHAPES)}")
    if n_layers < 3:
        raise ValueError(f"a ladder needs at least 3 layers, got {n_layers}")
    if not 0 < low < high:
        raise ValueError(f"need 0 < low < high, got low={low}, high={high}")
    log_low, log_high = math.log(low), math.log(high)
    if shape == "falls":
        return np.exp(np.linspace(log_high, log_low, n_layers))
    turn = max(1, min(n_layers - 2, round(2 * (n_layers - 1) / 3)))
    down = np.linspace(log_high, log_low, turn + 1)
    up = np.linspace(log_low, 0.5 * (log_low + log_high), n_layers - turn)[1:]
    return np.exp(np.concatenate([down, up]))


def _warp(a: torch.Tensor) -> torch.Tensor:
    """A strictly increasing, non-linear, heavy-tailed map applied elementwise."""
    return torch.sinh(a) + 0.5 * a


def _ar1(e: torch.Tensor, phi: float, block: int = 64) -> torch.Tensor:
    """Stationary AR(1) in time of white noise ``e`` ``(U, n, d)``: ``a[t] = phi a[t-1] + sqrt(1-phi^2) e[t]``.

    Blocks of ``block`` frames are filtered by one lower-triangular matrix product each,
    carrying the last state from block to block; ``a[0] = e[0]``.
    """
    steps = torch.arange(block, device=e.device, dtype=torch.float64)
    lags = steps.unsqueeze(1) - steps.unsqueeze(0)
    filt = torch.where(lags >= 0, phi ** lags.clamp_min(0), torch.zeros_like(lags))
    filt = (filt * math.sqrt(1.0 - phi ** 2)).to(e.dtype)
    carry_gain = (phi ** (steps + 1)).to(e.dtype).view(1, -1, 1)
    out = torch.empty_like(e)
    out[:, 0] = e[:, 0]
    carry = e[:, 0]
    for start in range(1, e.shape[1], block):
        chunk = e[:, start:start + block]
        m = chunk.shape[1]
        filtered = torch.einsum("ts,usd->utd", filt[:m, :m], chunk) + carry_gain[:, :m] * carry.unsqueeze(1)
        out[:, start:start + m] = filtered
        carry = filtered[:, -1]
    return out


def _orthogonal(d: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


@dataclass(frozen=True)
class Ladder:
    """A synthetic stack of layers with known MI, matched to a model's shapes.

    Attributes:
        name: What it is, e.g. "falls then rises, AR(1) 0.9, warped".
        shape: One of :data:`LADDER_SHAPES` (the verdict a faithful estimator gives).
        true_mi: ``(L,)`` nats.
        frames: Frames of each utterance.
        x_dim: Dimension of X.
        t_dims: Dimension of each T_i.
        ar: AR(1) coefficient of the latent sequences in time (0: independent frames).
        warp: Whether every dimension goes through a monotone non-linear map.
        seed: Seed of everything random.
    """

    name: str
    shape: str
    true_mi: tuple
    frames: tuple
    x_dim: int
    t_dims: tuple
    ar: float = 0.0
    warp: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.true_mi) != len(self.t_dims):
            raise ValueError(f"{len(self.true_mi)} MI values for {len(self.t_dims)} layers")
        if not 0.0 <= self.ar < 1.0:
            raise ValueError(f"ar must be in [0, 1), got {self.ar}")

    @property
    def n_layers(self) -> int:
        return len(self.true_mi)

    def _latent(self, n_dims: int, stream: int, device) -> List[torch.Tensor]:
        """Per utterance, unit-variance latent frames ``(n_u, n_dims)`` (AR(1) in time if asked)."""
        device = torch.device(device if device is not None else "cpu")
        generator = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + stream)
        e = torch.randn(len(self.frames), max(self.frames), n_dims, generator=generator, device=device)
        if self.ar > 0:
            e = _ar1(e, self.ar)
        return [e[u, :n] for u, n in enumerate(self.frames)]

    def x_latent(self, device=None) -> List[torch.Tensor]:
        """The unrotated X of each utterance (what T's shared dimensions copy)."""
        return self._latent(self.x_dim, 0, device)

    def observe_x(self, latent: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """X as an estimator sees it: rotated (and warped)."""
        q = _orthogonal(self.x_dim, torch.Generator().manual_seed(self.seed * 1_000_003 + 999_983)).float()
        return [self._finish(x @ q.to(x.device)) for x in latent]

    def layer(self, i: int, x_latent: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """T_i of each utterance ``(n_u, t_dims[i])``."""
        d = self.t_dims[i]
        mi = float(self.true_mi[i])
        k = int(min(self.x_dim, d, max(1, math.ceil(mi / _MI_PER_DIM))))
        rho = math.sqrt(-math.expm1(-2.0 * mi / k))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + 1000 + i)
        shared = torch.randperm(self.x_dim, generator=generator)[:k]
        q = _orthogonal(d, generator).float()
        noise = self._latent(d, 2000 + i, x_latent[0].device)
        out = []
        for x, e in zip(x_latent, noise):
            latent = e.clone()
            latent[:, :k] = rho * x[:, shared] + math.sqrt(1.0 - rho ** 2) * e[:, :k]
            out.append(self._finish(latent @ q.to(x.device)))
        return out

    def _finish(self, a: torch.Tensor) -> torch.Tensor:
        return _warp(a) if self.warp else a


def matched_ladders(
    frames: Sequence[int],
    x_dim: int,
    t_dims: Sequence[int],
    *,
    low: float = 0.1,
    high: Optional[float] = None,
    seed: int = 0,
) -> List[Ladder]:
    """The calibration set for a model: both shapes, the hard one AR(1) and warped.

    ``high`` defaults to ``max(40, 3 log(total frames))`` nats, well above the log n
    ceiling of any lower bound on the pooled frames.
    """
    frames = tuple(int(n) for n in frames)
    if high is None:
        high = max(40.0, 3.0 * math.log(max(2, sum(frames))))
    n_layers = len(t_dims)
    out = []
    for shape, ar, warp in (("falls then rises", 0.0, False), ("falls", 0.9, True)):
        name = shape + (f", AR(1) {ar:g}" if ar else "") + (", warped" if warp else "")
        out.append(Ladder(name, shape, tuple(ladder_values(n_layers, shape, low, high)), frames, int(x_dim),
                          tuple(int(d) for d in t_dims), ar, warp, seed))
    return out
