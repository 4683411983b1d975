"""Mamba-1 selective scan: a pure-PyTorch implementation, Triton kernels and mamba_ssm's.

The selective state-space recurrence of Mamba-1, for every batch item ``b``, channel
``d`` and state index ``n``::

    h[t] = exp(delta[t] * A[d, n]) * h[t - 1] + delta[t] * B[b, n, t] * u[t]
    y[t] = sum_n C[b, n, t] * h[t] + D[d] * u[t]
    y[t] = y[t] * silu(z[t])                       (when ``z`` is given)

with ``h[-1] = 0``. :func:`selective_scan` has the semantics of mamba_ssm's
``selective_scan_fn`` (input-dependent ``B`` and ``C`` of shape ``(B, N, L)``, or
``(B, G, N, L)``: channel group ``g`` of ``D / G`` channels uses ``B[:, g]``), and two
options of its own: ``lengths`` (frames past a sequence's length never enter a state,
their outputs are 0) and ``reverse`` (a channel group reads each sequence backwards
within its own length, and its outputs are written back in input order).

Three backends compute it:

* ``"torch"``: a chunked parallel scan written in PyTorch, with a hand-written
  backward pass (:mod:`espnet_mamba.nn.torch_scan`); runs anywhere.
* ``"triton"``: Triton kernels (:mod:`espnet_mamba.nn.triton_scan`), compiled just
  in time on a CUDA device; ``lengths`` and ``reverse`` act inside the kernels. On
  the CPU they run only through Triton's interpreter (``TRITON_INTERPRET=1`` set
  before Triton is imported), which is how the tests exercise them.
* ``"cuda"``: mamba_ssm's fused kernel, used when ``mamba_ssm`` imports.

The torch and cuda backends reach ``lengths`` and ``reverse`` by reordering the time
axis with gathers (each sequence's frames first, in reading order) around the plain
scan.

``"auto"`` and the environment variable ``MAMBA_MI_SCAN_BACKEND`` that overrides it
are resolved by :mod:`espnet_mamba.nn.scan_backends`; its names are importable from
here too.
"""

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from espnet_mamba.nn.scan_backends import (
    BACKEND_ENV_VAR,
    BACKENDS,
    _cuda_selective_scan_fn,
    cuda_scan_available,
    resolve_backend,
    triton_interpreter_enabled,
    triton_module,
    triton_scan_available,
)
from espnet_mamba.nn.torch_scan import torch_selective_scan

__all__ = [
    "BACKEND_ENV_VAR",
    "BACKENDS",
    "cuda_scan_available",
    "resolve_backend",
    "reverse_index",
    "selective_scan",
    "selective_scan_reference",
    "triton_interpreter_enabled",
    "triton_scan_available",
]


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    lengths: Optional[torch.Tensor] = None,
    reverse: Union[bool, Sequence[bool]] = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Mamba-1 selective scan (semantics of mamba_ssm's ``selective_scan_fn``).

    Args:
        u: Input, ``(B, D, L)``.
        delta: Step sizes before bias and softplus, ``(B, D, L)``.
        A: State matrix (diagonal, real; negative for a stable system), ``(D, N)``.
        B: Input-dependent input matrix, ``(B, N, L)`` or ``(B, G, N, L)`` (channel
            group ``g``, channels ``g * D / G`` to ``(g + 1) * D / G - 1``, uses
            ``B[:, g]``).
        C: Input-dependent output matrix, shaped as ``B``.
        D: Optional skip connection, ``(D,)``.
        z: Optional gate, ``(B, D, L)``; the output is multiplied by ``silu(z)``.
        delta_bias: Optional bias added to ``delta``, ``(D,)``.
        delta_softplus: Apply softplus to ``delta`` (after the bias).
        lengths: Optional valid lengths ``(B,)`` (integers in ``[0, L]``): frames
            ``t >= lengths[b]`` never enter a state and their outputs are 0.
        reverse: Read each sequence backwards within its length: one bool for all
            channels, or one per channel group. Outputs stay in input order.
        backend: ``"auto"``, ``"torch"``, ``"cuda"`` or ``"triton"`` (see the module
            docstring).

    Returns:
        y: ``(B, D, L)`` in the dtype of ``u``. The state is float32 (float64 when
        an input is float64).

    Raises:
        ValueError: Inconsistent shapes, options or an unknown backend.
    """
    groups = _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    reverse = _check_options(u, groups, lengths, reverse)
    backend = resolve_backend(backend, u.device)
    if backend == "triton":
        bits = sum(1 << g for g, flag in enumerate(reverse) if flag)
        return triton_module().triton_selective_scan(
            u, delta, A, _grouped(B), _grouped(C), D, z, delta_bias, delta_softplus,
            lengths=lengths, reverse_bits=bits,
        )
    plain = lengths is None and not any(reverse)
    if backend == "cuda" and plain:  # mamba_ssm's kernel takes grouped B and C itself
        return _cuda_selective_scan_fn(
            u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
        )
    if backend == "torch" and plain and groups == 1:
        return torch_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    scan = _cuda_selective_scan_fn if backend == "cuda" else torch_selective_scan
    return _scan_in_reading_order(
        scan, u, delta, A, _grouped(B), _grouped(C), D, z, delta_bias, delta_softplus,
        lengths, reverse,
    )


def reverse_index(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """Time index ``(B, L)`` of the in-length reversal: ``lengths[b] - 1 - t`` where
    ``t < lengths[b]``, else ``t``. It is its own inverse."""
    t = torch.arange(length, device=lengths.device)
    lengths = lengths.unsqueeze(1)
    return torch.where(t < lengths, lengths - 1 - t, t)


def _grouped(mat: torch.Tensor) -> torch.Tensor:
    """``(B, N, L)`` -> ``(B, 1, N, L)``; a ``(B, G, N, L)`` matrix as it is."""
    return mat.unsqueeze(1) if mat.dim() == 3 else mat


def _scan_in_reading_order(
    scan, u, delta, A, B, C, D, z, delta_bias, delta_softplus, lengths, reverse
):
    """``lengths`` and ``reverse`` around a plain scan: per channel group, the frames
    are gathered into reading order (each sequence's own frames first, backwards for a
    reversed group), scanned, gathered back, and the padding outputs set to 0.

    ``scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)`` takes ``(B, N, L)``
    matrices; B and C here are ``(B, G, N, L)``.
    """
    batch, dim, length = u.shape
    groups = B.shape[1]
    group_dim = dim // groups
    full = torch.full((batch,), length, device=u.device, dtype=torch.long)
    lengths = full if lengths is None else lengths.to(u.device, torch.long)
    order = reverse_index(lengths, length)  # the reading order of a reversed group
    outputs = []
    for g in range(groups):
        channels = slice(g * group_dim, (g + 1) * group_dim)

        def reorder(x, index=order if reverse[g] else None):
            """``(B, K, L)`` in reading order (the reversal is its own inverse)."""
            if index is None:
                return x
            return x.gather(2, index[:, None, :].expand(-1, x.shape[1], -1))

        def part(vec):
            return None if vec is None else vec[channels]

        y = scan(
            reorder(u[:, channels]),
            reorder(delta[:, channels]),
            A[channels],
            reorder(B[:, g]),
            reorder(C[:, g]),
            part(D),
            None if z is None else reorder(z[:, channels]),
            part(delta_bias),
            delta_softplus,
        )
        outputs.append(reorder(y))
    y = outputs[0] if groups == 1 else torch.cat(outputs, dim=1)
    pad = torch.arange(length, device=u.device)[None, :] >= lengths[:, None]
    return y.masked_fill(pad[:, None, :], 0.0)


def selective_scan_reference(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, lengths=None,
    reverse=False,
) -> torch.Tensor:
    """Sequential, frame-by-frame selective scan (slow; for tests).

    Computes in the dtype of ``u`` (pass float64 tensors for a high-precision
    reference). Arguments and shapes as in :func:`selective_scan`; with ``lengths``,
    grouped ``B``/``C`` or ``reverse``, one sequence and channel group at a time,
    visiting its frames in reading order.

    Returns:
        y: ``(B, D, L)``.
    """
    groups = _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    reverse = _check_options(u, groups, lengths, reverse)
    dtype = u.dtype
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    A, B, C = A.to(dtype), _grouped(B).to(dtype), _grouped(C).to(dtype)
    batch, dim, length = u.shape
    if lengths is None and groups == 1 and not reverse[0]:
        y = _reference_recurrence(u, delta, A, B[:, 0], C[:, 0])
    else:
        y = u.new_zeros(u.shape)
        group_dim = dim // groups
        for b in range(batch):
            n = length if lengths is None else int(lengths[b])
            for g in range(groups):
                frames = list(range(n))
                if reverse[g]:
                    frames.reverse()
                ch = slice(g * group_dim, (g + 1) * group_dim)
                y[b : b + 1, ch, frames] = _reference_recurrence(
                    u[b : b + 1, ch][..., frames],
                    delta[b : b + 1, ch][..., frames],
                    A[ch],
                    B[b : b + 1, g][..., frames],
                    C[b : b + 1, g][..., frames],
                )
    if D is not None:
        y = y + D.to(dtype)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(dtype))
    if lengths is not None:
        pad = torch.arange(length, device=u.device)[None, :] >= lengths.to(u.device)[:, None]
        y = y.masked_fill(pad[:, None, :], 0.0)
    return y


def _reference_recurrence(u, delta, A, B, C):
    """``sum_n C[t] * h[t]`` of the recurrence, one frame at a time: ``(B, D, L)``."""
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # (B, D, N)
    ys = []
    for t in range(u.shape[2]):
        decay = torch.exp(delta[:, :, t, None] * A)  # (B, D, N)
        drive = (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        h = decay * h + drive
        ys.append((h * C[:, None, :, t]).sum(-1))  # (B, D)
    return torch.stack(ys, dim=-1) if ys else u.new_zeros(u.shape)


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> int:
    """Raises ValueError unless the selective-scan arguments have matching shapes.

    Returns:
        The number of channel groups G (1 for ``(B, N, L)`` matrices).
    """
    if u.dim() != 3:
        raise ValueError(f"u must be (B, D, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(
            f"delta must have the shape of u {tuple(u.shape)}, got {tuple(delta.shape)}"
        )
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (D={dim}, N), got shape {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("complex A is not supported")
    n_state = A.shape[1]
    groups = B.shape[1] if B.dim() == 4 else 1
    if groups < 1 or dim % groups != 0:
        raise ValueError(
            f"B must be (B, N, L) or (B, G, N, L) with D={dim} divisible by G, "
            f"got shape {tuple(B.shape)}"
        )
    if B.dim() == 4:
        expected, dims = (batch, groups, n_state, length), "BGNL"
    else:
        expected, dims = (batch, n_state, length), "BNL"
    for name, mat in (("B", B), ("C", C)):
        if tuple(mat.shape) != expected:
            shape = ", ".join(f"{k}={v}" for k, v in zip(dims, expected))
            raise ValueError(f"{name} must be ({shape}), got shape {tuple(mat.shape)}")
    for name, vec in (("D", D), ("delta_bias", delta_bias)):
        if vec is not None and tuple(vec.shape) != (dim,):
            raise ValueError(f"{name} must be (D={dim},), got shape {tuple(vec.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(
            f"z must have the shape of u {tuple(u.shape)}, got {tuple(z.shape)}"
        )
    return groups


def _check_options(u, groups, lengths, reverse) -> tuple:
    """Checks ``lengths`` and ``reverse``; returns ``reverse`` as one bool per group.

    The values of ``lengths`` are checked only on the CPU (reading GPU values would
    stall the host).
    """
    batch, _, length = u.shape
    if lengths is not None:
        integer = not (lengths.dtype.is_floating_point or lengths.dtype == torch.bool)
        if lengths.shape != (batch,) or not integer:
            raise ValueError(
                f"lengths must be an integer tensor of shape ({batch},), got "
                f"{lengths.dtype} of shape {tuple(lengths.shape)}"
            )
        if lengths.device.type == "cpu" and batch > 0:
            if int(lengths.min()) < 0 or int(lengths.max()) > length:
                raise ValueError(f"lengths must lie in [0, {length}], got {lengths.tolist()}")
    if isinstance(reverse, bool):
        flags = (reverse,) * groups
    else:
        flags = tuple(bool(r) for r in reverse)
    if len(flags) != groups:
        raise ValueError(
            f"reverse must be a bool or {groups} bools (one per group), got {reverse!r}"
        )
    return flags
