"""The torch backend of the selective scan: a chunked parallel scan in plain PyTorch.

Each step multiplies by a decay ``a = exp(delta * A)`` in ``(0, 1]``, so the scan runs
in linear space (no ``exp(-cumsum)`` factors, which overflow on long inputs). A Python
loop runs over chunks of T frames (T adapts to the tensor sizes; no loop over frames);
within a chunk an odd-even recursive-doubling scan takes ``log2(T)`` vectorised steps
with linear work. The autograd function keeps its inputs and the state entering each
chunk, and recomputes the rest in its hand-written backward pass, whose adjoint is the
same scan run in reverse time. :func:`espnet_mamba.nn.selective_scan.selective_scan`
chooses between this and the other backends.
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["torch_selective_scan"]

# Target size (elements) of the (B, D, T, N) chunk tensors.
# CPU: small enough to stay in cache. CUDA: large enough to amortise kernel
# launches (128 MiB per float32 tensor; a few such tensors live at once).
_CHUNK_ELEMENTS = 1 << 18
_CHUNK_ELEMENTS_CUDA = 1 << 25


def torch_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """The scan with ``(B, D, L)`` inputs (mamba_ssm's semantics, no lengths or reversal):
    ordinary autograd around the recurrence core."""
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
