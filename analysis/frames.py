"""Frame matrices of MI problems: validation and per-utterance standardization.

Shared by the one-pair reference (:mod:`analysis.mi`) and the batched engine
(:mod:`analysis.engine`), so both see the same inputs.
"""

import math
from typing import Union

import numpy as np
import torch

__all__ = ["ArrayLike", "as_frames", "standardize_frames", "standardize_segments"]

ArrayLike = Union[np.ndarray, torch.Tensor]

# Columns whose standard deviation is below this multiple of eps(dtype) times the
# column's RMS are treated as constant (their rounding noise is not amplified).
_CONSTANT_TOL = 16.0


def as_frames(a: ArrayLike, name: str, check_finite: bool = True) -> torch.Tensor:
    """Validates one frame matrix and returns it as a tensor ``(n, d)`` (no copy if possible).

    Args:
        a: ``(n, d)`` numpy array or tensor; a 1-D ``(n,)`` input is read as ``(n, 1)``.
        name: Used in error messages.
        check_finite: Reject NaN and infinite values.

    Raises:
        ValueError: Wrong number of dimensions, no feature dimension, or
            non-finite values.
    """
    t = torch.as_tensor(a).detach()  # data, not a graph to differentiate through
    if t.dim() == 1:
        t = t.unsqueeze(1)
    if t.dim() != 2:
        raise ValueError(f"{name} must be (frames, dims), got shape {tuple(t.shape)}")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has no feature dimension (shape {tuple(t.shape)})")
    if t.is_complex():
        raise ValueError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if check_finite and t.is_floating_point():
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise ValueError(f"{name} contains NaN or infinite values ({bad} entries)")
    return t


def _scale(std: torch.Tensor, rms: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The divisor of each column: its std, or inf for a constant column (which becomes 0)."""
    constant = std <= _CONSTANT_TOL * torch.finfo(dtype).eps * rms
    return torch.where(constant, torch.full_like(std, math.inf), std)


def standardize_frames(a: torch.Tensor) -> torch.Tensor:
    """Z-scores every column of ``a`` ``(n, d)`` over its rows; constant columns become 0.

    Statistics are computed in float64 and the result is cast back to ``a.dtype``.
    """
    a64 = a.double()
    mean = a64.mean(0, keepdim=True)
    centered = a64 - mean
    std = centered.pow(2).mean(0, keepdim=True).sqrt()
    rms = a64.pow(2).mean(0, keepdim=True).sqrt()
    return (centered / _scale(std, rms, a.dtype)).to(a.dtype)


def standardize_segments(bank: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Z-scores each segment's columns in place; ``bank`` ``(rows, d)`` holds segments of
    ``lengths`` ``(S,)`` rows back to back.

    Same arithmetic as :func:`standardize_frames` (float64 statistics, population
    std, constant columns to 0), done for all segments at once in blocks of rows.
    """
    segments = lengths.numel()
    seg = torch.repeat_interleave(torch.arange(segments, device=bank.device), lengths)
    count = lengths.to(torch.float64).unsqueeze(1)
    d = bank.shape[1]
    block = max(1, (1 << 24) // max(d, 1))  # rows per float64 temporary
    mean = torch.zeros(segments, d, dtype=torch.float64, device=bank.device)
    for s in range(0, bank.shape[0], block):
        mean.index_add_(0, seg[s:s + block], bank[s:s + block].double())
    mean /= count
    var = torch.zeros_like(mean)
    square = torch.zeros_like(mean)
    for s in range(0, bank.shape[0], block):
        rows = bank[s:s + block].double()
        var.index_add_(0, seg[s:s + block], (rows - mean[seg[s:s + block]]).pow(2))
        square.index_add_(0, seg[s:s + block], rows.pow(2))
    scale = _scale((var / count).sqrt(), (square / count).sqrt(), bank.dtype)
    for s in range(0, bank.shape[0], block):
        idx = seg[s:s + block]
        bank[s:s + block] = ((bank[s:s + block].double() - mean[idx]) / scale[idx]).to(bank.dtype)
    return bank
