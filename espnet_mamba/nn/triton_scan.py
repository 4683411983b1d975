"""Mamba-1 selective scan on Triton kernels: the launches and the autograd function.

The kernels (:mod:`espnet_mamba.nn.triton_scan_kernels`) walk each sequence in chunks
of ``_BLOCK_T`` frames, one program per ``BLOCK_D`` channels of one batch item; the
tile sizes and warps below pick ``BLOCK_D`` and ``BLOCK_N``. The state is float32 for
float32, bfloat16 and float16 inputs (float64 for float64 inputs, which the tests use
to check the kernels' logic to rounding level).

Two options act inside the kernels, without copies:

* ``lengths`` ``(batch,)``: frames ``t >= lengths[b]`` never enter a state; the
  outputs and gradients there are 0.
* per channel group ``g``, ``reverse``: the group reads each sequence backwards
  within its own length (logical frame ``t`` is stored at ``lengths[b] - 1 - t``),
  and writes its outputs back at the same stored positions. ``B`` and ``C`` may
  carry a group axis ``(batch, G, N, L)``: channel group ``g`` (``D / G``
  channels) uses ``B[:, g]`` and ``C[:, g]``. A bidirectional layer stacks its two
  directions as two groups and runs both in one launch.

This module imports Triton; :mod:`espnet_mamba.nn.selective_scan` imports it only
when the Triton backend is first used (so that ``TRITON_INTERPRET=1``, which runs
the kernels on the CPU, can still be set before).
"""

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from espnet_mamba.nn.triton_scan_kernels import TL_DTYPES, scan_bwd_kernel, scan_fwd_kernel

__all__ = ["triton_selective_scan"]

# Frames per chunk; also the spacing of the saved states. With the tile sizes and
# warps below, the fastest of a sweep on an H200 (docs/benchmarks.md).
_BLOCK_T = 16
# Elements of one (BLOCK_D, BLOCK_N, BLOCK_T) tile and warps per program, for the
# forward and the backward kernel.
_TILE_FWD = 1024
_TILE_BWD = 2048
_WARPS_FWD = 2
_WARPS_BWD = 2


def _block_sizes(group_dim: int, n_state: int, tile: int):
    """``(BLOCK_D, BLOCK_N)`` for tiles of about ``tile`` elements."""
    block_n = triton.next_power_of_2(n_state)
    block_d = max(1, min(triton.next_power_of_2(group_dim), tile // (block_n * _BLOCK_T)))
    return block_d, block_n


def _launch(kernel, tile, warps, inputs, tensors, strides, softplus, lengths, reverse_bits, acc,
            **flags):
    """Runs ``kernel`` on the grid ``(cdiv(group_dim, BLOCK_D), batch, groups)``.

    Its arguments: the scan ``inputs`` ``(u, delta, A, B, C, D, z, delta_bias)`` and
    ``lengths`` (an absent optional one replaced by ``u``, never read then), the
    kernel's own ``tensors``, the inputs' strides and its own ``strides``, the sizes,
    and the flags (``flags`` added) for the state dtype ``acc``.
    """
    u, delta, A, B, C, D, z, delta_bias = inputs
    batch, dim, length = u.shape
    groups, n_state = B.shape[1], B.shape[2]
    group_dim = dim // groups
    if length == 0 or batch == 0:
        return
    block_d, block_n = _block_sizes(group_dim, n_state, tile)
    kernel[(triton.cdiv(group_dim, block_d), batch, groups)](
        u, delta, A, B, C, _or(D, u), _or(z, u), _or(delta_bias, u), _or(lengths, u), *tensors,
        *u.stride(), *delta.stride(), *_or(z, u).stride(), *B.stride(), *C.stride(), *A.stride(),
        *strides,
        dim, group_dim, n_state, length, _loop_bound(triton.cdiv(length, _BLOCK_T)), reverse_bits,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=softplus, HAS_LENGTHS=lengths is not None,
        ACC=TL_DTYPES[acc], BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_T=_BLOCK_T,
        num_warps=warps, **flags,
    )


class _TritonSelectiveScan(torch.autograd.Function):
    """``(u, delta, A, B, C, D, z, delta_bias) -> y`` on the Triton kernels.

    ``B`` and ``C`` are ``(batch, G, N, L)``; ``D``, ``z``, ``delta_bias`` and
    ``lengths`` may be None; ``reverse_bits`` has bit ``g`` set for each group that
    reads backwards.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, lengths, reverse_bits):
        batch, dim, length = u.shape
        save = any(ctx.needs_input_grad[:8])
        acc = _accumulator_dtype(u, delta, A, B, C)
        y = torch.empty(batch, dim, length, device=u.device, dtype=u.dtype)
        states = torch.empty(
            (batch, dim, triton.cdiv(length, _BLOCK_T), B.shape[2]) if save else (1,),
            device=u.device, dtype=acc,
        )
        inputs = (u, delta, A, B, C, D, z, delta_bias)
        _launch(scan_fwd_kernel, _TILE_FWD, _WARPS_FWD, inputs, (y, states), (),
                delta_softplus, lengths, reverse_bits, acc, SAVE_STATES=save)
        if save:
            ctx.save_for_backward(*inputs, lengths, states)
            ctx.options = (delta_softplus, reverse_bits)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        u, delta, A, B, C, D, z, delta_bias, lengths, states = ctx.saved_tensors
        delta_softplus, reverse_bits = ctx.options
        batch, dim, length = u.shape
        groups, n_state = B.shape[1], B.shape[2]
        grad_u = torch.empty(batch, dim, length, device=u.device, dtype=u.dtype)
        grad_delta = torch.empty(batch, dim, length, device=u.device, dtype=delta.dtype)
        grad_z = None if z is None else torch.empty(batch, dim, length, device=u.device, dtype=z.dtype)
        acc = dict(device=u.device, dtype=states.dtype)
        grad_A = torch.zeros(dim, n_state, **acc)
        grad_B = torch.zeros(batch, groups, n_state, length, **acc)
        grad_C = torch.zeros(batch, groups, n_state, length, **acc)
        grad_D = None if D is None else torch.zeros(dim, **acc)
        grad_bias = None if delta_bias is None else torch.zeros(dim, **acc)
        tensors = (states, grad_y, grad_u, grad_delta, _or(grad_z, u), grad_A, grad_B, grad_C,
                   _or(grad_D, grad_A), _or(grad_bias, grad_A))
        _launch(scan_bwd_kernel, _TILE_BWD, _WARPS_BWD, (u, delta, A, B, C, D, z, delta_bias),
                tensors, grad_y.stride(), delta_softplus, lengths, reverse_bits, states.dtype)
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


def triton_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, lengths, reverse_bits):
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
