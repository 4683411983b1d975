"""Mamba-1 selective scan: a pure-PyTorch implementation and an optional CUDA path.

The selective state-space recurrence of Mamba-1, for every batch item ``b``, channel
``d`` and state index ``n``::

    h[t] = exp(delta[t] * A[d, n]) * h[t - 1] + delta[t] * B[b, n, t] * u[t]
    y[t] = sum_n C[b, n, t] * h[t] + D[d] * u[t]
    y[t] = y[t] * silu(z[t])                       (when ``z`` is given)

with ``h[-1] = 0``. :func:`selective_scan` has the semantics of mamba_ssm's
``selective_scan_fn`` (input-dependent ``B`` and ``C`` of shape ``(B, N, L)``).

Two backends compute it:

* ``"torch"``: a chunked parallel scan written in PyTorch. Each step multiplies by
  a decay ``a = exp(delta * A)`` in ``(0, 1]``, so the scan runs in linear space
  (no ``exp(-cumsum)`` factors, which overflow on long inputs). A Python loop runs
  over chunks of T frames (T adapts to the tensor sizes; no loop over frames);
  within a chunk an odd-even recursive-doubling scan takes ``log2(T)`` vectorised
  steps with linear work. The autograd function keeps its inputs and the state
  entering each chunk, and recomputes the rest in its hand-written backward pass,
  whose adjoint is the same scan run in reverse time.
* ``"cuda"``: mamba_ssm's fused kernel, used when ``mamba_ssm`` imports.

``"auto"`` picks ``"cuda"`` when the kernel is importable and the tensors are on a
CUDA device, else ``"torch"``. The environment variable ``MAMBA_MI_SCAN_BACKEND``
(``torch``, ``cuda`` or ``auto``) overrides what ``"auto"`` resolves to, so one
setting forces a path for every layer that was built with ``backend="auto"``.
"""

import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

try:  # Optional fused CUDA kernel.
    from mamba_ssm.ops.selective_scan_interface import (
        selective_scan_fn as _cuda_selective_scan_fn,
    )

    _CUDA_IMPORT_ERROR = None
except Exception as error:  # noqa: BLE001 - any failure only disables the optional path
    # Not installed, or installed without its compiled extension (ImportError), or
    # broken against this torch/triton (other errors): the torch backend remains.
    _cuda_selective_scan_fn = None
    _CUDA_IMPORT_ERROR = f"{type(error).__name__}: {error}"

__all__ = [
    "BACKEND_ENV_VAR",
    "BACKENDS",
    "cuda_scan_available",
    "resolve_backend",
    "selective_scan",
    "selective_scan_reference",
]

BACKEND_ENV_VAR = "MAMBA_MI_SCAN_BACKEND"
BACKENDS = ("auto", "torch", "cuda")

# Target size (elements) of the (B, D, T, N) chunk tensors of the torch backend.
# CPU: small enough to stay in cache. CUDA: large enough to amortise kernel
# launches (128 MiB per float32 tensor; a few such tensors live at once).
_CHUNK_ELEMENTS = 1 << 18
_CHUNK_ELEMENTS_CUDA = 1 << 25


def cuda_scan_available() -> bool:
    """Returns whether mamba_ssm's fused selective-scan kernel imported."""
    return _cuda_selective_scan_fn is not None


def resolve_backend(backend: str, device: torch.device) -> str:
    """Resolves a backend name to ``"torch"`` or ``"cuda"``.

    Args:
        backend: ``"auto"``, ``"torch"`` or ``"cuda"``. ``"auto"`` follows the
            environment variable ``MAMBA_MI_SCAN_BACKEND`` when it is set, else it
            picks ``"cuda"`` when mamba_ssm imported and ``device`` is a CUDA device.
        device: Device of the tensors to scan.

    Returns:
        ``"torch"`` or ``"cuda"``.

    Raises:
        ValueError: Unknown backend name (argument or environment variable).
        RuntimeError: ``"cuda"`` requested but mamba_ssm is missing or the
            tensors are not on a CUDA device.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        forced = os.environ.get(BACKEND_ENV_VAR, "").strip().lower()
        if forced not in ("",) + BACKENDS:
            raise ValueError(
                f"environment variable {BACKEND_ENV_VAR} must be one of "
                f"{BACKENDS}, got {forced!r}"
            )
        backend = forced if forced else "auto"
    if backend == "auto":
        use_cuda = cuda_scan_available() and device.type == "cuda"
        return "cuda" if use_cuda else "torch"
    if backend == "cuda":
        if not cuda_scan_available():
            raise RuntimeError(
                "selective-scan backend 'cuda' needs mamba_ssm with its compiled "
                f"CUDA extension, which could not be imported ({_CUDA_IMPORT_ERROR})"
            )
        if device.type != "cuda":
            raise RuntimeError(
                f"selective-scan backend 'cuda' needs CUDA tensors, got {device}"
            )
    return backend


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
    backend: str = "auto",
) -> torch.Tensor:
    """Mamba-1 selective scan (semantics of mamba_ssm's ``selective_scan_fn``).

    Args:
        u: Input, ``(B, D, L)``.
        delta: Step sizes before bias and softplus, ``(B, D, L)``.
        A: State matrix (diagonal, real; negative for a stable system), ``(D, N)``.
        B: Input-dependent input matrix, ``(B, N, L)``.
        C: Input-dependent output matrix, ``(B, N, L)``.
        D: Optional skip connection, ``(D,)``.
        z: Optional gate, ``(B, D, L)``; the output is multiplied by ``silu(z)``.
        delta_bias: Optional bias added to ``delta``, ``(D,)``.
        delta_softplus: Apply softplus to ``delta`` (after the bias).
        backend: ``"auto"``, ``"torch"`` or ``"cuda"`` (see the module docstring).

    Returns:
        y: ``(B, D, L)`` in the dtype of ``u``. The torch backend computes in
        float32 (float64 when an input is float64).

    Raises:
        ValueError: Inconsistent shapes or an unknown backend.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    if resolve_backend(backend, u.device) == "cuda":
        return _cuda_selective_scan_fn(
            u, delta, A, B, C, D, z=z, delta_bias=delta_bias,
            delta_softplus=delta_softplus,
        )
    return _torch_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Sequential, frame-by-frame selective scan (slow; for tests).

    Computes in the dtype of ``u`` (pass float64 tensors for a high-precision
    reference). Arguments and shapes as in :func:`selective_scan`.

    Returns:
        y: ``(B, D, L)``.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    dtype = u.dtype
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    A, B, C = A.to(dtype), B.to(dtype), C.to(dtype)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # (B, D, N)
    ys = []
    for t in range(u.shape[2]):
        decay = torch.exp(delta[:, :, t, None] * A)  # (B, D, N)
        drive = (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        h = decay * h + drive
        ys.append((h * C[:, None, :, t]).sum(-1))  # (B, D)
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(u.shape)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    """Raises ValueError unless the selective-scan arguments have matching shapes."""
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
    for name, mat in (("B", B), ("C", C)):
        if tuple(mat.shape) != (batch, n_state, length):
            raise ValueError(
                f"{name} must be (B={batch}, N={n_state}, L={length}), "
                f"got shape {tuple(mat.shape)}"
            )
    for name, vec in (("D", D), ("delta_bias", delta_bias)):
        if vec is not None and tuple(vec.shape) != (dim,):
            raise ValueError(f"{name} must be (D={dim},), got shape {tuple(vec.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(
            f"z must have the shape of u {tuple(u.shape)}, got {tuple(z.shape)}"
        )


def _torch_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """The torch backend: ordinary autograd around the recurrence core."""
    dtype_in = u.dtype
    dtypes = (u.dtype, delta.dtype, A.dtype, B.dtype, C.dtype)
    compute = torch.float64 if torch.float64 in dtypes else torch.float32
    u_c = u.to(compute)
    delta = delta.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    y = _SelectiveScanCore.apply(
        u_c, delta, A.to(compute), B.to(compute), C.to(compute)
    )
    if D is not None:
        y = y + D.to(compute)[:, None] * u_c
    if z is not None:
        y = y * F.silu(z.to(compute))
    return y.to(dtype_in)


def _chunk_size(batch: int, dim: int, n_state: int, device: torch.device) -> int:
    """Frames per chunk: a power of two in ``[16, 1024]`` with chunk tensors
    ``(B, D, T, N)`` of about ``_CHUNK_ELEMENTS`` (``_CHUNK_ELEMENTS_CUDA`` on GPU)."""
    target = _CHUNK_ELEMENTS_CUDA if device.type == "cuda" else _CHUNK_ELEMENTS
    frames = max(1, target // max(1, batch * dim * n_state))
    return min(1024, max(16, 1 << (frames.bit_length() - 1)))


def _linear_scan(a: torch.Tensor, b: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Inclusive linear scan along dim -2.

    Forward: ``h[t] = a[t] * h[t - 1] + b[t]`` with ``h[-1] = 0``.
    Reverse: ``h[t] = a[t] * h[t + 1] + b[t]`` with ``h[T] = 0``.

    Odd-even recursive doubling, vectorised over everything but the recursion:
    neighbouring frames ``(s, s + 1)`` (in scan order) combine into one step of a
    sequence half as long (``a' = a[s + 1] * a[s]``, ``b' = a[s + 1] * b[s] + b[s + 1]``),
    whose scan gives the states of every second frame; one more step gives the
    others. The work is linear in T, the depth ``log2(T)``. Only products and sums
    of decays in ``(0, 1]`` are formed, so nothing overflows.

    Args:
        a: Decays, ``(..., T, N)``.
        b: Inputs, ``(..., T, N)``.
        reverse: Scan from the last frame to the first.

    Returns:
        h: ``(..., T, N)`` (``b`` itself when T is 1).
    """
    length = a.shape[-2]
    if length == 1:
        return b
    pairs = length // 2
    h = torch.empty_like(b)
    if not reverse:
        # Pairs (2k, 2k + 1); their scan gives the odd frames.
        first, second = slice(0, 2 * pairs, 2), slice(1, 2 * pairs, 2)
        a_first, a_second = a[..., first, :], a[..., second, :]
        h_pairs = _linear_scan(
            a_second * a_first, torch.addcmul(b[..., second, :], a_second, b[..., first, :])
        )
        h[..., second, :] = h_pairs
        h[..., 0, :] = b[..., 0, :]
        rest, rest_count, source_start = slice(2, length, 2), (length - 1) // 2, 0
    else:
        # Pairs (t + 1, t) in scan order, t = T % 2, T % 2 + 2, ...; their reverse
        # scan gives the frames t.
        odd = length % 2
        first, second = slice(odd + 1, length, 2), slice(odd, length - 1, 2)
        a_first, a_second = a[..., first, :], a[..., second, :]
        h_pairs = _linear_scan(
            a_second * a_first,
            torch.addcmul(b[..., second, :], a_second, b[..., first, :]),
            reverse=True,
        )
        h[..., second, :] = h_pairs
        h[..., -1, :] = b[..., -1, :]
        rest, rest_count, source_start = slice(1 - odd, length - 1, 2), pairs - 1 + odd, 1 - odd
    if rest_count > 0:  # the remaining frames are one step from a paired frame
        neighbour = h_pairs[..., source_start : source_start + rest_count, :]
        torch.addcmul(b[..., rest, :], a[..., rest, :], neighbour, out=h[..., rest, :])
    return h


class _SelectiveScanCore(torch.autograd.Function):
    """``(u, delta, A, B, C) -> y`` with ``y[t] = sum_n C[t, n] * h[t, n]``.

    The time axis is cut into chunks of T frames; within a chunk
    :func:`_linear_scan` computes the states, with the state entering the chunk
    folded into its first frame (``b[0] += a[0] * h_in``); a Python loop carries
    the state from chunk to chunk (``L / T`` iterations). Only ``(B, D, T, N)``
    tensors are built, never ``(B, D, L, N)``. For the backward pass the function
    saves its inputs and the ``(B, D, N)`` state entering each chunk, and
    recomputes the rest.
    All inputs share one floating dtype (float32 or float64).
    """

    @staticmethod
    def _chunk_inputs(u, delta, A, B_t, lo, hi):
        """Decays ``a`` and inputs ``b`` of frames ``lo:hi``, each ``(B, D, T, N)``."""
        delta_c = delta[:, :, lo:hi]
        a = torch.exp(delta_c[..., None] * A[:, None, :])
        b = (delta_c * u[:, :, lo:hi])[..., None] * B_t[:, :, lo:hi]
        return a, b

    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        batch, dim, length = u.shape
        chunk = _chunk_size(batch, dim, A.shape[1], u.device)
        B_t = B.transpose(1, 2)[:, None]  # (B, 1, L, N)
        C_t = C.transpose(1, 2)[:, None]
        y = u.new_empty(batch, dim, length)
        starts = list(range(0, length, chunk))
        h_in = u.new_zeros(len(starts), batch, dim, A.shape[1])  # state entering chunk
        h_last = u.new_zeros(batch, dim, A.shape[1])
        for i, lo in enumerate(starts):
            hi = min(lo + chunk, length)
            h_in[i] = h_last
            a, b = _SelectiveScanCore._chunk_inputs(u, delta, A, B_t, lo, hi)
            b[:, :, 0].addcmul_(a[:, :, 0], h_last)
            h = _linear_scan(a, b)
            y[:, :, lo:hi] = (h * C_t[:, :, lo:hi]).sum(-1)
            h_last = h[:, :, -1]
        ctx.chunk = chunk
        ctx.save_for_backward(u, delta, A, B, C, h_in)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        u, delta, A, B, C, h_in = ctx.saved_tensors
        length = u.shape[2]
        chunk = ctx.chunk
        grad_y = grad_y.to(u.dtype)
        B_t = B.transpose(1, 2)[:, None]  # (B, 1, L, N)
        C_t = C.transpose(1, 2)[:, None]
        grad_u = torch.empty_like(u)
        grad_delta = torch.empty_like(delta)
        grad_A = torch.zeros_like(A)
        grad_B_t = torch.empty_like(B_t[:, 0])  # (B, L, N)
        grad_C_t = torch.empty_like(C_t[:, 0])
        # Adjoint entering a chunk from the right: a[hi] * g_h[hi].
        g_right = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
        starts = list(range(0, length, chunk))
        for i in reversed(range(len(starts))):
            lo = starts[i]
            hi = min(lo + chunk, length)
            u_c, delta_c, gy = u[:, :, lo:hi], delta[:, :, lo:hi], grad_y[:, :, lo:hi]
            a, b = _SelectiveScanCore._chunk_inputs(u, delta, A, B_t, lo, hi)
            carried = a[:, :, 0] * h_in[i]  # a[lo] * h[lo - 1]
            b[:, :, 0] += carried
            h = _linear_scan(a, b)
            # Adjoint states, a reverse-time scan:
            # g_h[t] = C[t] * gy[t] + a[t + 1] * g_h[t + 1].
            a_next = torch.cat((a[:, :, 1:], torch.ones_like(a[:, :, :1])), dim=2)
            g_in = gy[..., None] * C_t[:, :, lo:hi]
            g_in[:, :, -1] += g_right
            g_h = _linear_scan(a_next, g_in, reverse=True)
            g_right = a[:, :, 0] * g_h[:, :, 0]
            # Through a[t] = exp(delta[t] * A): dL/da[t] * a[t] = g_h[t] * a[t] * h[t-1],
            # and a[t] * h[t-1] = h[t] - b[t] (b[lo] holds the carried state).
            decayed = h - b
            decayed[:, :, 0] = carried
            q = g_h * decayed
            del decayed
            s = (g_h * B_t[:, :, lo:hi]).sum(-1)  # dL/db[t] summed against B: (B, D, T)
            grad_delta[:, :, lo:hi] = (q * A[:, None, :]).sum(-1) + s * u_c
            grad_u[:, :, lo:hi] = s * delta_c
            grad_A += (q * delta_c[..., None]).sum((0, 2))
            grad_B_t[:, lo:hi] = (g_h * (delta_c * u_c)[..., None]).sum(1)
            grad_C_t[:, lo:hi] = (h * gy[..., None]).sum(1)
        return grad_u, grad_delta, grad_A, grad_B_t.transpose(1, 2), grad_C_t.transpose(1, 2)
