"""Mamba-1 selective scan as Triton kernels (forward and backward).

The recurrence is that of :mod:`espnet_mamba.nn.selective_scan`; here each program
owns ``BLOCK_D`` channels of one batch item and walks the time axis in chunks of
``BLOCK_T`` frames. Within a chunk the decays ``a = exp(delta * A)`` and inputs
``b = delta * u * B`` form a ``(BLOCK_D, N, BLOCK_T)`` tile whose states come from
one associative scan of the affine maps ``h -> a * h + b`` along time, with the
state entering the chunk applied afterwards (``h = A_cum * h_in + B_cum``). The
state is float32 for float32, bfloat16 and float16 inputs (float64 for float64 inputs,
which the tests use to check the kernels' logic to rounding level).

Two options act inside the kernels, without copies:

* ``lengths`` ``(batch,)``: frames ``t >= lengths[b]`` never enter a state; the
  outputs and gradients there are 0.
* per channel group ``g``, ``reverse``: the group reads each sequence backwards
  within its own length (logical frame ``t`` is stored at ``lengths[b] - 1 - t``),
  and writes its outputs back at the same stored positions. ``B`` and ``C`` may
  carry a group axis ``(batch, G, N, L)``: channel group ``g`` (``D / G``
  channels) uses ``B[:, g]`` and ``C[:, g]``. A bidirectional layer stacks its two
  directions as two groups and runs both in one launch.

The forward pass keeps the ``(batch, D, chunks, N)`` states entering each chunk;
the backward pass walks the chunks from last to first, recomputes the states of a
chunk from its checkpoint, and runs the adjoint recurrence
``g_h[t] = C[t] * g_y[t] + a[t + 1] * g_h[t + 1]`` as a reverse associative scan.
Gradients of ``A``, ``D``, ``delta_bias`` (summed over batch and time) and of
``B``, ``C`` (summed over channels) are accumulated with atomic adds in the state's
dtype.

This module imports Triton; :mod:`espnet_mamba.nn.selective_scan` imports it only
when the Triton backend is first used (so that ``TRITON_INTERPRET=1``, which runs
the kernels on the CPU, can still be set before).
"""

import os
from typing import Optional

import torch
import triton
import triton.language as tl

__all__ = ["stored_frame", "triton_selective_scan", "TL_DTYPES"]

# Frames per chunk; also the spacing of the saved states. With the tile sizes and
# warps below, the fastest of a sweep on an H200 (docs/benchmarks.md).
_BLOCK_T = 16
# Elements of one (BLOCK_D, BLOCK_N, BLOCK_T) tile and warps per program, for the
# forward and the backward kernel.
_TILE_FWD = 1024
_TILE_BWD = 2048
_WARPS_FWD = 2
_WARPS_BWD = 2
# Triton dtype of each state (accumulator) dtype.
TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


@triton.jit
def _compose(a_first, b_first, a_second, b_second):
    """The affine map ``h -> a_second * (a_first * h + b_first) + b_second``."""
    return a_second * a_first, a_second * b_first + b_second


@triton.jit
def _softplus(x):
    """``log(1 + exp(x))``, and ``x`` itself above 20 (as torch's softplus)."""
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def stored_frame(t, seq_len, reverse):
    """Stored time index of logical frame ``t`` (reversed within ``seq_len`` when
    ``reverse``; frames past ``seq_len`` keep their index)."""
    return tl.where((t < seq_len) & (reverse != 0), seq_len - 1 - t, t)


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, len_ptr, y_ptr, h_ptr,
    stride_u_b, stride_u_d, stride_u_t,
    stride_delta_b, stride_delta_d, stride_delta_t,
    stride_z_b, stride_z_d, stride_z_t,
    stride_B_b, stride_B_g, stride_B_n, stride_B_t,
    stride_C_b, stride_C_g, stride_C_n, stride_C_t,
    stride_A_d, stride_A_n,
    dim, group_dim, n_state, length, n_chunks, reverse_bits,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_LENGTHS: tl.constexpr, SAVE_STATES: tl.constexpr,
    ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Grid ``(cdiv(group_dim, BLOCK_D), batch, groups)``. Writes ``y`` ``(batch, D, L)``
    (contiguous) and, with ``SAVE_STATES``, the state entering every chunk,
    ``h`` ``(batch, D, n_chunks, N)`` (contiguous, in the state's dtype ``ACC``)."""
    pid_d, pid_b, pid_g = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    d_in_group = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = d_in_group < group_dim
    d = pid_g * group_dim + d_in_group
    n = tl.arange(0, BLOCK_N)
    mask_n = n < n_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + d[:, None] * stride_A_d + n[None, :] * stride_A_n, mask=mask_dn, other=0.0)
    A_log2 = A.to(ACC) * 1.4426950408889634  # exp(x * A) = exp2(x * A * log2(e))
    if HAS_D:
        D = tl.load(D_ptr + d, mask=mask_d, other=0.0).to(ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=mask_d, other=0.0).to(ACC)
    if HAS_LENGTHS:
        seq_len = tl.load(len_ptr + pid_b).to(tl.int32)
    else:
        seq_len = length
    reverse = (reverse_bits >> pid_g) & 1
    u_rows = u_ptr + pid_b * stride_u_b + d[:, None] * stride_u_d
    delta_rows = delta_ptr + pid_b * stride_delta_b + d[:, None] * stride_delta_d
    z_rows = z_ptr + pid_b * stride_z_b + d[:, None] * stride_z_d
    y_rows = y_ptr + (pid_b * dim + d[:, None]) * length
    B_rows = B_ptr + pid_b * stride_B_b + pid_g * stride_B_g + n[:, None] * stride_B_n
    C_rows = C_ptr + pid_b * stride_C_b + pid_g * stride_C_g + n[:, None] * stride_C_n
    h_rows = h_ptr + (pid_b * dim + d[:, None]) * n_chunks * n_state + n[None, :]
    is_last = (tl.arange(0, BLOCK_T) == BLOCK_T - 1)[None, None, :]

    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    for chunk in range(n_chunks):
        if SAVE_STATES:
            tl.store(h_rows + chunk * n_state, h, mask=mask_dn)
        t = chunk * BLOCK_T + tl.arange(0, BLOCK_T)
        valid = t < seq_len
        stored = stored_frame(t, seq_len, reverse)
        mask_dv = mask_d[:, None] & valid[None, :]
        mask_nv = mask_n[:, None] & valid[None, :]
        u = tl.load(u_rows + stored[None, :] * stride_u_t, mask=mask_dv, other=0.0).to(ACC)
        dt = tl.load(delta_rows + stored[None, :] * stride_delta_t, mask=mask_dv, other=0.0).to(ACC)
        if HAS_BIAS:
            dt += bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(mask_dv, dt, 0.0)  # padding: decay 1, input 0
        B = tl.load(B_rows + stored[None, :] * stride_B_t, mask=mask_nv, other=0.0).to(ACC)
        C = tl.load(C_rows + stored[None, :] * stride_C_t, mask=mask_nv, other=0.0).to(ACC)
        a = tl.exp2(dt[:, None, :] * A_log2[:, :, None])  # (BLOCK_D, BLOCK_N, BLOCK_T)
        b = (dt * u)[:, None, :] * B[None, :, :]
        a_cum, b_cum = tl.associative_scan((a, b), axis=2, combine_fn=_compose)
        states = a_cum * h[:, :, None] + b_cum
        y = tl.sum(states * C[None, :, :], axis=1)  # (BLOCK_D, BLOCK_T)
        if HAS_D:
            y += D[:, None] * u
        if HAS_Z:
            z = tl.load(z_rows + stored[None, :] * stride_z_t, mask=mask_dv, other=0.0).to(ACC)
            y *= z * tl.sigmoid(z)
        y = tl.where(mask_dv, y, 0.0)
        tl.store(y_rows + stored[None, :], y.to(y_ptr.dtype.element_ty),
                 mask=mask_d[:, None] & (t < length)[None, :])
        h = tl.sum(tl.where(is_last, states, 0.0), axis=2)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, len_ptr, h_ptr, gy_ptr,
    gu_ptr, gdelta_ptr, gz_ptr, gA_ptr, gB_ptr, gC_ptr, gD_ptr, gbias_ptr,
    stride_u_b, stride_u_d, stride_u_t,
    stride_delta_b, stride_delta_d, stride_delta_t,
    stride_z_b, stride_z_d, stride_z_t,
    stride_B_b, stride_B_g, stride_B_n, stride_B_t,
    stride_C_b, stride_C_g, stride_C_n, stride_C_t,
    stride_A_d, stride_A_n,
    stride_gy_b, stride_gy_d, stride_gy_t,
    dim, group_dim, n_state, length, n_chunks, reverse_bits,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Grid as the forward kernel's. Writes ``gu``, ``gdelta``, ``gz`` ``(batch, D, L)``
    (contiguous) and adds into the ``ACC`` buffers ``gA`` ``(D, N)``, ``gB``, ``gC``
    ``(batch, G, N, L)``, ``gD``, ``gbias`` ``(D,)`` (all contiguous)."""
    pid_d, pid_b, pid_g = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    groups = dim // group_dim
    d_in_group = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = d_in_group < group_dim
    d = pid_g * group_dim + d_in_group
    n = tl.arange(0, BLOCK_N)
    mask_n = n < n_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + d[:, None] * stride_A_d + n[None, :] * stride_A_n, mask=mask_dn, other=0.0)
    A = A.to(ACC)
    A_log2 = A * 1.4426950408889634
    if HAS_D:
        D = tl.load(D_ptr + d, mask=mask_d, other=0.0).to(ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=mask_d, other=0.0).to(ACC)
    if HAS_LENGTHS:
        seq_len = tl.load(len_ptr + pid_b).to(tl.int32)
    else:
        seq_len = length
    reverse = (reverse_bits >> pid_g) & 1
    u_rows = u_ptr + pid_b * stride_u_b + d[:, None] * stride_u_d
    delta_rows = delta_ptr + pid_b * stride_delta_b + d[:, None] * stride_delta_d
    z_rows = z_ptr + pid_b * stride_z_b + d[:, None] * stride_z_d
    gy_rows = gy_ptr + pid_b * stride_gy_b + d[:, None] * stride_gy_d
    out_rows = (pid_b * dim + d[:, None]) * length  # offsets of gu, gdelta, gz rows
    B_rows = B_ptr + pid_b * stride_B_b + pid_g * stride_B_g + n[:, None] * stride_B_n
    C_rows = C_ptr + pid_b * stride_C_b + pid_g * stride_C_g + n[:, None] * stride_C_n
    gBC_rows = ((pid_b * groups + pid_g) * n_state + n[:, None]) * length
    h_rows = h_ptr + (pid_b * dim + d[:, None]) * n_chunks * n_state + n[None, :]
    is_first = (tl.arange(0, BLOCK_T) == 0)[None, None, :]

    g_carry = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)  # g_h at the next chunk's start
    gA = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    gD = tl.zeros((BLOCK_D,), dtype=ACC)
    gbias = tl.zeros((BLOCK_D,), dtype=ACC)
    for step in range(n_chunks):
        chunk = n_chunks - 1 - step
        t = chunk * BLOCK_T + tl.arange(0, BLOCK_T)
        valid = t < seq_len
        stored = stored_frame(t, seq_len, reverse)
        mask_dv = mask_d[:, None] & valid[None, :]
        mask_nv = mask_n[:, None] & valid[None, :]
        # The frame after each one: its decay carries the adjoint backwards.
        valid_next = (t + 1) < seq_len
        stored_next = stored_frame(t + 1, seq_len, reverse)
        mask_dv_next = mask_d[:, None] & valid_next[None, :]

        u = tl.load(u_rows + stored[None, :] * stride_u_t, mask=mask_dv, other=0.0).to(ACC)
        dt_in = tl.load(delta_rows + stored[None, :] * stride_delta_t, mask=mask_dv, other=0.0)
        dt_in = dt_in.to(ACC)
        dt_next = tl.load(delta_rows + stored_next[None, :] * stride_delta_t, mask=mask_dv_next,
                          other=0.0).to(ACC)
        if HAS_BIAS:
            dt_in += bias[:, None]
            dt_next += bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt_in)
            dt_next = _softplus(dt_next)
        else:
            dt = dt_in
        dt = tl.where(mask_dv, dt, 0.0)
        dt_next = tl.where(mask_dv_next, dt_next, 0.0)
        B = tl.load(B_rows + stored[None, :] * stride_B_t, mask=mask_nv, other=0.0).to(ACC)
        C = tl.load(C_rows + stored[None, :] * stride_C_t, mask=mask_nv, other=0.0).to(ACC)
        gy = tl.load(gy_rows + stored[None, :] * stride_gy_t, mask=mask_dv, other=0.0).to(ACC)

        # States of the chunk, recomputed from the saved state entering it.
        h_in = tl.load(h_rows + chunk * n_state, mask=mask_dn, other=0.0)
        a = tl.exp2(dt[:, None, :] * A_log2[:, :, None])
        b = (dt * u)[:, None, :] * B[None, :, :]
        a_cum, b_cum = tl.associative_scan((a, b), axis=2, combine_fn=_compose)
        states = a_cum * h_in[:, :, None] + b_cum

        if HAS_Z:
            z = tl.load(z_rows + stored[None, :] * stride_z_t, mask=mask_dv, other=0.0).to(ACC)
            y = tl.sum(states * C[None, :, :], axis=1)
            if HAS_D:
                y += D[:, None] * u
            sig = tl.sigmoid(z)
            gz = gy * y * sig * (1.0 + z * (1.0 - sig))
            tl.store(gz_ptr + out_rows + stored[None, :], gz.to(gz_ptr.dtype.element_ty),
                     mask=mask_d[:, None] & (t < length)[None, :])
            g = gy * z * sig  # gradient of the ungated output
        else:
            g = gy

        # Adjoint states: g_h[t] = C[t] * g[t] + a[t + 1] * g_h[t + 1], a reverse scan.
        a_next = tl.exp2(dt_next[:, None, :] * A_log2[:, :, None])
        adj_a, adj_b = tl.associative_scan(
            (a_next, g[:, None, :] * C[None, :, :]), axis=2, combine_fn=_compose, reverse=True
        )
        g_h = adj_b + adj_a * g_carry[:, :, None]
        g_carry = tl.sum(tl.where(is_first, g_h, 0.0), axis=2)

        # d(loss)/d(delta * A)[t] = g_h[t] * a[t] * h[t - 1], and a[t] * h[t - 1] = h[t] - b[t].
        q = g_h * (states - b)
        s = tl.sum(g_h * B[None, :, :], axis=1)  # (BLOCK_D, BLOCK_T)
        gdt = tl.sum(q * A[:, :, None], axis=1) + s * u
        gu = s * dt
        if HAS_D:
            gu += g * D[:, None]
            gD += tl.sum(g * u, axis=1)
        gA += tl.sum(q * dt[:, None, :], axis=2)
        gB = tl.sum(g_h * (dt * u)[:, None, :], axis=0)  # (BLOCK_N, BLOCK_T)
        gC = tl.sum(states * g[:, None, :], axis=0)
        tl.atomic_add(gB_ptr + gBC_rows + stored[None, :], gB, mask=mask_nv)
        tl.atomic_add(gC_ptr + gBC_rows + stored[None, :], gC, mask=mask_nv)
        if SOFTPLUS:
            gdt *= tl.sigmoid(dt_in)
        gdt = tl.where(mask_dv, gdt, 0.0)
        if HAS_BIAS:
            gbias += tl.sum(gdt, axis=1)
        mask_out = mask_d[:, None] & (t < length)[None, :]
        tl.store(gu_ptr + out_rows + stored[None, :], gu.to(gu_ptr.dtype.element_ty), mask=mask_out)
        tl.store(gdelta_ptr + out_rows + stored[None, :], gdt.to(gdelta_ptr.dtype.element_ty),
                 mask=mask_out)

    tl.atomic_add(gA_ptr + d[:, None] * n_state + n[None, :], gA, mask=mask_dn)
    if HAS_D:
        tl.atomic_add(gD_ptr + d, gD, mask=mask_d)
    if HAS_BIAS:
        tl.atomic_add(gbias_ptr + d, gbias, mask=mask_d)


def _block_sizes(group_dim: int, n_state: int, tile: int):
    """``(BLOCK_D, BLOCK_N)`` for tiles of about ``tile`` elements."""
    block_n = triton.next_power_of_2(n_state)
    block_d = max(1, min(triton.next_power_of_2(group_dim), tile // (block_n * _BLOCK_T)))
    return block_d, block_n


class _TritonSelectiveScan(torch.autograd.Function):
    """``(u, delta, A, B, C, D, z, delta_bias) -> y`` on the Triton kernels.

    ``B`` and ``C`` are ``(batch, G, N, L)``; ``D``, ``z``, ``delta_bias`` and
    ``lengths`` may be None; ``reverse_bits`` has bit ``g`` set for each group that
    reads backwards.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, lengths, reverse_bits):
        batch, dim, length = u.shape
        groups, n_state = B.shape[1], B.shape[2]
        group_dim = dim // groups
        n_chunks = triton.cdiv(length, _BLOCK_T)
        save = any(ctx.needs_input_grad[:8])
        acc = _accumulator_dtype(u, delta, A, B, C)
        y = torch.empty(batch, dim, length, device=u.device, dtype=u.dtype)
        states = torch.empty(
            (batch, dim, n_chunks, n_state) if save else (1,), device=u.device, dtype=acc
        )
        if length > 0 and batch > 0:
            block_d, block_n = _block_sizes(group_dim, n_state, _TILE_FWD)
            grid = (triton.cdiv(group_dim, block_d), batch, groups)
            _scan_fwd_kernel[grid](
                u, delta, A, B, C, _or(D, u), _or(z, u), _or(delta_bias, u), _or(lengths, u),
                y, states,
                *u.stride(), *delta.stride(), *_or(z, u).stride(),
                *B.stride(), *C.stride(), *A.stride(),
                dim, group_dim, n_state, length, _loop_bound(n_chunks), reverse_bits,
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=delta_softplus, HAS_LENGTHS=lengths is not None, SAVE_STATES=save,
                ACC=TL_DTYPES[acc], BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_T=_BLOCK_T,
                num_warps=_WARPS_FWD,
            )
        if save:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, lengths, states)
            ctx.options = (delta_softplus, reverse_bits)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        u, delta, A, B, C, D, z, delta_bias, lengths, states = ctx.saved_tensors
        delta_softplus, reverse_bits = ctx.options
        batch, dim, length = u.shape
        groups, n_state = B.shape[1], B.shape[2]
        group_dim = dim // groups
        n_chunks = triton.cdiv(length, _BLOCK_T)
        grad_u = torch.empty(batch, dim, length, device=u.device, dtype=u.dtype)
        grad_delta = torch.empty(batch, dim, length, device=u.device, dtype=delta.dtype)
        grad_z = None if z is None else torch.empty(batch, dim, length, device=u.device, dtype=z.dtype)
        acc = dict(device=u.device, dtype=states.dtype)
        grad_A = torch.zeros(dim, n_state, **acc)
        grad_B = torch.zeros(batch, groups, n_state, length, **acc)
        grad_C = torch.zeros(batch, groups, n_state, length, **acc)
        grad_D = None if D is None else torch.zeros(dim, **acc)
        grad_bias = None if delta_bias is None else torch.zeros(dim, **acc)
        if length > 0 and batch > 0:
            block_d, block_n = _block_sizes(group_dim, n_state, _TILE_BWD)
            grid = (triton.cdiv(group_dim, block_d), batch, groups)
            _scan_bwd_kernel[grid](
                u, delta, A, B, C, _or(D, u), _or(z, u), _or(delta_bias, u), _or(lengths, u),
                states, grad_y,
                grad_u, grad_delta, _or(grad_z, u), grad_A, grad_B, grad_C,
                _or(grad_D, grad_A), _or(grad_bias, grad_A),
                *u.stride(), *delta.stride(), *_or(z, u).stride(),
                *B.stride(), *C.stride(), *A.stride(), *grad_y.stride(),
                dim, group_dim, n_state, length, _loop_bound(n_chunks), reverse_bits,
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=delta_softplus, HAS_LENGTHS=lengths is not None,
                ACC=TL_DTYPES[states.dtype], BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_T=_BLOCK_T,
                num_warps=_WARPS_BWD,
            )
        return (
            grad_u,
            grad_delta,
            grad_A.to(A.dtype),
            grad_B.to(B.dtype),
            grad_C.to(C.dtype),
            None if D is None else grad_D.to(D.dtype),
            grad_z,
            None if delta_bias is None else grad_bias.to(delta_bias.dtype),
            None,
            None,
            None,
        )


def _accumulator_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when an input is float64, else float32: the dtype of the state."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _loop_bound(count: int):
    """A loop count for a kernel argument: the int itself when compiled (one kernel for
    every length); under ``TRITON_INTERPRET=1`` a ``tl.constexpr``, since the
    interpreter wraps an int argument in a one-element array, which ``range()``
    rejects with numpy 2."""
    return tl.constexpr(count) if os.environ.get("TRITON_INTERPRET", "0") == "1" else count


def _or(tensor: Optional[torch.Tensor], placeholder: torch.Tensor) -> torch.Tensor:
    """``tensor``, or ``placeholder`` for an absent optional one (its kernel argument is
    never read then)."""
    return placeholder if tensor is None else tensor


def triton_selective_scan(
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
    reverse_bits: int = 0,
) -> torch.Tensor:
    """The selective scan on the Triton kernels (arguments checked by the caller).

    Args:
        u, delta, z: ``(batch, D, L)``, float32, bfloat16, float16 or float64, any strides.
        A: ``(D, N)``. B, C: ``(batch, G, N, L)`` with ``D % G == 0``.
        D, delta_bias: ``(D,)`` or None.
        delta_softplus: Apply softplus to ``delta + delta_bias``.
        lengths: ``(batch,)`` integer tensor, or None (all L).
        reverse_bits: Bit ``g`` set: channel group ``g`` reads each sequence backwards
            within its length.

    Returns:
        y: ``(batch, D, L)`` contiguous, in the dtype of ``u``.
    """
    if lengths is not None:
        lengths = lengths.to(device=u.device, dtype=torch.int32, non_blocking=True).contiguous()
    return _TritonSelectiveScan.apply(
        u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), lengths, int(reverse_bits)
    )
