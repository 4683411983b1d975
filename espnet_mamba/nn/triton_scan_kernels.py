"""The Triton kernels of the selective scan (forward and backward) and their helpers.

The recurrence is that of :mod:`espnet_mamba.nn.selective_scan`; here each program
owns ``BLOCK_D`` channels of one batch item and walks the time axis in chunks of
``BLOCK_T`` frames. Within a chunk the decays ``a = exp(delta * A)`` and inputs
``b = delta * u * B`` form a ``(BLOCK_D, N, BLOCK_T)`` tile whose states come from
one associative scan of the affine maps ``h -> a * h + b`` along time, with the
state entering the chunk applied afterwards (``h = A_cum * h_in + B_cum``).

The forward kernel keeps the ``(batch, D, chunks, N)`` states entering each chunk;
the backward kernel walks the chunks from last to first, recomputes the states of a
chunk from its checkpoint, and runs the adjoint recurrence
``g_h[t] = C[t] * g_y[t] + a[t + 1] * g_h[t + 1]`` as a reverse associative scan.
Gradients of ``A``, ``D``, ``delta_bias`` (summed over batch and time) and of
``B``, ``C`` (summed over channels) are accumulated with atomic adds in the state's
dtype. :mod:`espnet_mamba.nn.triton_scan` launches them.
"""

import torch
import triton
import triton.language as tl

__all__ = ["TL_DTYPES", "scan_bwd_kernel", "scan_fwd_kernel", "stored_frame"]

# Triton dtype of each state (accumulator) dtype.
TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}
# Arguments that change with the sequence length: not specialized (Triton would
# otherwise compile a kernel per value class, e.g. per length modulo 16, mid-epoch).
_LENGTH_DEPENDENT = (
    "stride_u_b", "stride_u_d", "stride_delta_b", "stride_delta_d", "stride_z_b", "stride_z_d",
    "stride_B_b", "stride_B_g", "stride_B_n", "stride_C_b", "stride_C_g", "stride_C_n",
    "length", "n_chunks",
)
# log2(e): exp(x * A) = exp2(x * A * log2(e))
_LOG2E = tl.constexpr(1.4426950408889634)


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
def _program_channels(pid_g, group_dim, n_state, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Channels ``d`` ``(BLOCK_D,)`` of this program in channel group ``pid_g`` and state
    indices ``n`` ``(BLOCK_N,)``, with their masks."""
    d_in_group = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    return pid_g * group_dim + d_in_group, d_in_group < group_dim, n, n < n_state


@triton.jit
def _state_matrix(A_ptr, stride_A_d, stride_A_n, d, n, mask_dn, ACC: tl.constexpr):
    """``A`` ``(BLOCK_D, BLOCK_N)`` of this program's channels, in ``ACC``."""
    A = tl.load(A_ptr + d[:, None] * stride_A_d + n[None, :] * stride_A_n, mask=mask_dn, other=0.0)
    return A.to(ACC)


@triton.jit
def _sequence(len_ptr, pid_b, pid_g, length, reverse_bits, HAS_LENGTHS: tl.constexpr):
    """Length of sequence ``pid_b``, and whether channel group ``pid_g`` reads it backwards."""
    seq_len = tl.load(len_ptr + pid_b).to(tl.int32) if HAS_LENGTHS else length
    return seq_len, (reverse_bits >> pid_g) & 1


@triton.jit
def _frame_masks(t, seq_len, reverse, mask_d, mask_n):
    """Stored positions of the logical frames ``t`` ``(BLOCK_T,)``, and the masks of the
    valid ones, ``(BLOCK_D, BLOCK_T)`` and ``(BLOCK_N, BLOCK_T)``."""
    valid = t < seq_len
    stored = stored_frame(t, seq_len, reverse)
    return stored, mask_d[:, None] & valid[None, :], mask_n[:, None] & valid[None, :]


@triton.jit
def _load_frames(rows, stored, stride_t, mask, ACC: tl.constexpr):
    """``(R, BLOCK_T)`` values in ``ACC`` of rows of pointers ``(R, 1)`` at the stored
    frames ``stored`` ``(BLOCK_T,)``; 0 where ``mask`` is False."""
    return tl.load(rows + stored[None, :] * stride_t, mask=mask, other=0.0).to(ACC)


@triton.jit
def _store_frames(rows, stored, value, mask):
    """Writes ``value`` ``(R, BLOCK_T)`` at the stored frames of rows of pointers
    ``(R, 1)``, in the pointers' dtype."""
    tl.store(rows + stored[None, :], value.to(rows.dtype.element_ty), mask=mask)


@triton.jit
def _biased_deltas(delta_rows, stored, stride_delta_t, mask, bias, HAS_BIAS: tl.constexpr,
                   ACC: tl.constexpr):
    """``delta + bias`` ``(BLOCK_D, BLOCK_T)`` at the stored frames."""
    dt = _load_frames(delta_rows, stored, stride_delta_t, mask, ACC)
    if HAS_BIAS:
        dt += bias[:, None]
    return dt


@triton.jit
def _step_sizes(dt_in, mask, SOFTPLUS: tl.constexpr):
    """The step sizes of ``delta + bias`` (after the softplus), 0 where ``mask`` is False
    (decay 1, input 0)."""
    dt = _softplus(dt_in) if SOFTPLUS else dt_in
    return tl.where(mask, dt, 0.0)


@triton.jit
def _next_deltas(t, seq_len, reverse, mask_d, delta_rows, stride_delta_t, bias,
                 HAS_BIAS: tl.constexpr, ACC: tl.constexpr):
    """``delta + bias`` ``(BLOCK_D, BLOCK_T)`` at the frames after the logical frames ``t``
    (whose decays carry the adjoint backwards), and the mask of the valid ones."""
    mask = mask_d[:, None] & ((t + 1) < seq_len)[None, :]
    stored = stored_frame(t + 1, seq_len, reverse)
    return _biased_deltas(delta_rows, stored, stride_delta_t, mask, bias, HAS_BIAS, ACC), mask


@triton.jit
def _chunk_inputs(dt, u, B):
    """The inputs ``b = delta * u * B`` of a chunk, ``(BLOCK_D, BLOCK_N, BLOCK_T)``."""
    return (dt * u)[:, None, :] * B[None, :, :]


@triton.jit
def _chunk_states(dt, u, B, A_log2, h_in):
    """States ``(BLOCK_D, BLOCK_N, BLOCK_T)`` of a chunk entered with ``h_in``
    ``(BLOCK_D, BLOCK_N)``."""
    a = tl.exp2(dt[:, None, :] * A_log2[:, :, None])
    b = _chunk_inputs(dt, u, B)
    a_cum, b_cum = tl.associative_scan((a, b), axis=2, combine_fn=_compose)
    return a_cum * h_in[:, :, None] + b_cum


@triton.jit
def _ungated_output(states, C, u, D, HAS_D: tl.constexpr):
    """``sum_n C * h + D * u``, ``(BLOCK_D, BLOCK_T)``."""
    y = tl.sum(states * C[None, :, :], axis=1)
    if HAS_D:
        y += D[:, None] * u
    return y


@triton.jit
def _gate_grads(gy, y, z):
    """Gradients of ``z`` and of the ungated ``y`` under the output ``y * silu(z)``."""
    sig = tl.sigmoid(z)
    return gy * y * sig * (1.0 + z * (1.0 - sig)), gy * z * sig


@triton.jit
def _adjoint_states(g, C, dt_next, A_log2, g_carry):
    """``g_h[t] = C[t] * g[t] + a[t + 1] * g_h[t + 1]`` over a chunk, a reverse scan
    entered with ``g_carry`` (``g_h`` at the next chunk's start); ``(BLOCK_D, BLOCK_N,
    BLOCK_T)``."""
    a_next = tl.exp2(dt_next[:, None, :] * A_log2[:, :, None])
    adj_a, adj_b = tl.associative_scan(
        (a_next, g[:, None, :] * C[None, :, :]), axis=2, combine_fn=_compose, reverse=True
    )
    return adj_b + adj_a * g_carry[:, :, None]


@triton.jit
def _chunk_grads(g_h, g, states, b, A, B, D, u, dt, gA, gD, HAS_D: tl.constexpr):
    """The gradients of the step sizes and of ``u``, ``(BLOCK_D, BLOCK_T)``, from the adjoint
    states ``g_h`` and the gradient ``g`` of the ungated output; ``gA`` ``(BLOCK_D, BLOCK_N)``
    and ``gD`` ``(BLOCK_D,)`` with the chunk's parts added."""
    # d(loss)/d(delta * A)[t] = g_h[t] * a[t] * h[t - 1], and a[t] * h[t - 1] = h[t] - b[t].
    q = g_h * (states - b)
    s = tl.sum(g_h * B[None, :, :], axis=1)  # (BLOCK_D, BLOCK_T)
    gdt = tl.sum(q * A[:, :, None], axis=1) + s * u
    gu = s * dt
    if HAS_D:
        gu += g * D[:, None]
        gD += tl.sum(g * u, axis=1)
    return gdt, gu, gA + tl.sum(q * dt[:, None, :], axis=2), gD


@triton.jit
def _add_matrix_grads(gB_ptr, gC_ptr, rows, stored, g_h, states, g, dt, u, mask):
    """Adds this program's channel sums into the gradients of ``B`` and ``C`` at the
    stored frames of rows ``(BLOCK_N, 1)`` of offsets."""
    gB = tl.sum(g_h * (dt * u)[:, None, :], axis=0)  # (BLOCK_N, BLOCK_T)
    gC = tl.sum(states * g[:, None, :], axis=0)
    tl.atomic_add(gB_ptr + rows + stored[None, :], gB, mask=mask)
    tl.atomic_add(gC_ptr + rows + stored[None, :], gC, mask=mask)


@triton.jit
def _add_channel_grads(gA_ptr, gD_ptr, gbias_ptr, gA, gD, gbias, d, n, n_state, mask_d, mask_dn,
                       HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Adds this program's sums over time into the gradients of ``A`` ``(D, N)``, ``D``
    and the step bias ``(D,)``."""
    tl.atomic_add(gA_ptr + d[:, None] * n_state + n[None, :], gA, mask=mask_dn)
    if HAS_D:
        tl.atomic_add(gD_ptr + d, gD, mask=mask_d)
    if HAS_BIAS:
        tl.atomic_add(gbias_ptr + d, gbias, mask=mask_d)


@triton.jit(do_not_specialize=_LENGTH_DEPENDENT)
def scan_fwd_kernel(
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
    pid_b, pid_g = tl.program_id(1), tl.program_id(2)
    d, mask_d, n, mask_n = _program_channels(pid_g, group_dim, n_state, BLOCK_D, BLOCK_N)
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A_log2 = _state_matrix(A_ptr, stride_A_d, stride_A_n, d, n, mask_dn, ACC) * _LOG2E
    D = tl.load(D_ptr + d, mask=mask_d, other=0.0).to(ACC) if HAS_D else None
    bias = tl.load(bias_ptr + d, mask=mask_d, other=0.0).to(ACC) if HAS_BIAS else None
    seq_len, reverse = _sequence(len_ptr, pid_b, pid_g, length, reverse_bits, HAS_LENGTHS)
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
        stored, mask_dv, mask_nv = _frame_masks(t, seq_len, reverse, mask_d, mask_n)
        u = _load_frames(u_rows, stored, stride_u_t, mask_dv, ACC)
        dt_in = _biased_deltas(delta_rows, stored, stride_delta_t, mask_dv, bias, HAS_BIAS, ACC)
        dt = _step_sizes(dt_in, mask_dv, SOFTPLUS)
        B = _load_frames(B_rows, stored, stride_B_t, mask_nv, ACC)
        C = _load_frames(C_rows, stored, stride_C_t, mask_nv, ACC)
        states = _chunk_states(dt, u, B, A_log2, h)
        y = _ungated_output(states, C, u, D, HAS_D)
        if HAS_Z:
            z = _load_frames(z_rows, stored, stride_z_t, mask_dv, ACC)
            y *= z * tl.sigmoid(z)
        y = tl.where(mask_dv, y, 0.0)
        _store_frames(y_rows, stored, y, mask_d[:, None] & (t < length)[None, :])
        h = tl.sum(tl.where(is_last, states, 0.0), axis=2)


@triton.jit(do_not_specialize=_LENGTH_DEPENDENT + ("stride_gy_b", "stride_gy_d"))
def scan_bwd_kernel(
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
    pid_b, pid_g = tl.program_id(1), tl.program_id(2)
    d, mask_d, n, mask_n = _program_channels(pid_g, group_dim, n_state, BLOCK_D, BLOCK_N)
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A = _state_matrix(A_ptr, stride_A_d, stride_A_n, d, n, mask_dn, ACC)
    A_log2 = A * _LOG2E
    D = tl.load(D_ptr + d, mask=mask_d, other=0.0).to(ACC) if HAS_D else None
    bias = tl.load(bias_ptr + d, mask=mask_d, other=0.0).to(ACC) if HAS_BIAS else None
    seq_len, reverse = _sequence(len_ptr, pid_b, pid_g, length, reverse_bits, HAS_LENGTHS)
    u_rows = u_ptr + pid_b * stride_u_b + d[:, None] * stride_u_d
    delta_rows = delta_ptr + pid_b * stride_delta_b + d[:, None] * stride_delta_d
    z_rows = z_ptr + pid_b * stride_z_b + d[:, None] * stride_z_d
    gy_rows = gy_ptr + pid_b * stride_gy_b + d[:, None] * stride_gy_d
    out_rows = (pid_b * dim + d[:, None]) * length  # offsets of gu, gdelta, gz rows
    B_rows = B_ptr + pid_b * stride_B_b + pid_g * stride_B_g + n[:, None] * stride_B_n
    C_rows = C_ptr + pid_b * stride_C_b + pid_g * stride_C_g + n[:, None] * stride_C_n
    gBC_rows = ((pid_b * (dim // group_dim) + pid_g) * n_state + n[:, None]) * length
    h_rows = h_ptr + (pid_b * dim + d[:, None]) * n_chunks * n_state + n[None, :]
    is_first = (tl.arange(0, BLOCK_T) == 0)[None, None, :]

    g_carry = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)  # g_h at the next chunk's start
    gA = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    gD = tl.zeros((BLOCK_D,), dtype=ACC)
    gbias = tl.zeros((BLOCK_D,), dtype=ACC)
    for step in range(n_chunks):
        chunk = n_chunks - 1 - step
        t = chunk * BLOCK_T + tl.arange(0, BLOCK_T)
        stored, mask_dv, mask_nv = _frame_masks(t, seq_len, reverse, mask_d, mask_n)
        u = _load_frames(u_rows, stored, stride_u_t, mask_dv, ACC)
        dt_in = _biased_deltas(delta_rows, stored, stride_delta_t, mask_dv, bias, HAS_BIAS, ACC)
        dt_next, mask_dv_next = _next_deltas(t, seq_len, reverse, mask_d, delta_rows,
                                             stride_delta_t, bias, HAS_BIAS, ACC)
        dt = _step_sizes(dt_in, mask_dv, SOFTPLUS)
        dt_next = _step_sizes(dt_next, mask_dv_next, SOFTPLUS)
        B = _load_frames(B_rows, stored, stride_B_t, mask_nv, ACC)
        C = _load_frames(C_rows, stored, stride_C_t, mask_nv, ACC)
        gy = _load_frames(gy_rows, stored, stride_gy_t, mask_dv, ACC)
        # States of the chunk, recomputed from the saved state entering it.
        h_in = tl.load(h_rows + chunk * n_state, mask=mask_dn, other=0.0)
        states = _chunk_states(dt, u, B, A_log2, h_in)
        mask_out = mask_d[:, None] & (t < length)[None, :]
        if HAS_Z:
            z = _load_frames(z_rows, stored, stride_z_t, mask_dv, ACC)
            gz, g = _gate_grads(gy, _ungated_output(states, C, u, D, HAS_D), z)
            _store_frames(gz_ptr + out_rows, stored, gz, mask_out)
        else:
            g = gy
        g_h = _adjoint_states(g, C, dt_next, A_log2, g_carry)
        g_carry = tl.sum(tl.where(is_first, g_h, 0.0), axis=2)
        b = _chunk_inputs(dt, u, B)
        gdt, gu, gA, gD = _chunk_grads(g_h, g, states, b, A, B, D, u, dt, gA, gD, HAS_D)
        _add_matrix_grads(gB_ptr, gC_ptr, gBC_rows, stored, g_h, states, g, dt, u, mask_nv)
        if SOFTPLUS:
            gdt *= tl.sigmoid(dt_in)
        gdt = tl.where(mask_dv, gdt, 0.0)
        if HAS_BIAS:
            gbias += tl.sum(gdt, axis=1)
        _store_frames(gu_ptr + out_rows, stored, gu, mask_out)
        _store_frames(gdelta_ptr + out_rows, stored, gdt, mask_out)
    _add_channel_grads(gA_ptr, gD_ptr, gbias_ptr, gA, gD, gbias, d, n, n_state, mask_d, mask_dn,
                       HAS_D, HAS_BIAS)
