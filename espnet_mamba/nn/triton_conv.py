"""The depthwise causal convolution of the Mamba block as Triton kernels.

``out[c, t] = act(bias[c] + sum_k weight[c, k] * x[c, t - (K - 1 - k)])`` with
``x[c, t] = 0`` for ``t < 0`` (what ``nn.Conv1d(C, C, K, groups=C, padding=K - 1)``
gives when its output is cut to the first L frames), ``act`` SiLU or the identity.
It replaces the compiled ``causal_conv1d`` extension on the Triton backend, with the
options of :mod:`espnet_mamba.nn.triton_scan`: ``lengths`` (frames past a
sequence's length are never read; outputs there are 0) and, per channel group,
reading each sequence backwards within its length, so that the backward direction
of a bidirectional layer needs no flipped copies.

Imported only where the Triton backend is used (it imports Triton).
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from espnet_mamba.nn.triton_scan_kernels import TL_DTYPES, stored_frame

__all__ = ["triton_causal_conv1d"]

_BLOCK_C = 16
_BLOCK_T = 128


@triton.jit
def _conv_at(x_rows, stride_x_t, w_ptr, stride_w_c, stride_w_k, bias, c, mask_c,
             t, seq_len, reverse, K: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr):
    """The convolution before the activation at logical frames ``t``: ``(BLOCK_C, BLOCK_T)``."""
    pre = tl.zeros((c.shape[0], t.shape[0]), dtype=ACC)
    if HAS_BIAS:
        pre += bias[:, None]
    for k in tl.static_range(K):
        src = t - (K - 1 - k)
        ok = mask_c[:, None] & ((src >= 0) & (src < seq_len))[None, :]
        x = tl.load(x_rows + stored_frame(src[None, :], seq_len, reverse) * stride_x_t, mask=ok,
                    other=0.0).to(ACC)
        w = tl.load(w_ptr + c * stride_w_c + k * stride_w_k, mask=mask_c, other=0.0).to(ACC)
        pre += w[:, None] * x
    return pre


@triton.jit(do_not_specialize=("stride_x_b", "stride_x_c", "length"))
def _conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, len_ptr, out_ptr,
    stride_x_b, stride_x_c, stride_x_t, stride_w_c, stride_w_k,
    channels, group_dim, length, reverse_bits,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Grid ``(cdiv(L, BLOCK_T), cdiv(C, BLOCK_C), batch)``; ``out`` contiguous ``(batch, C, L)``."""
    pid_t, pid_c, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = c < channels
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    seq_len = tl.load(len_ptr + pid_b).to(tl.int32) if HAS_LENGTHS else length
    reverse = ((reverse_bits >> (c // group_dim)) & 1)[:, None]
    bias = tl.load(bias_ptr + c, mask=mask_c, other=0.0).to(ACC) if HAS_BIAS else None
    x_rows = x_ptr + pid_b * stride_x_b + c[:, None] * stride_x_c
    out = _conv_at(x_rows, stride_x_t, w_ptr, stride_w_c, stride_w_k, bias, c, mask_c,
                   t, seq_len, reverse, K, HAS_BIAS, ACC)
    if SILU:
        out = out * tl.sigmoid(out)
    out = tl.where((t < seq_len)[None, :], out, 0.0)
    out_rows = out_ptr + (pid_b * channels + c[:, None]) * length
    tl.store(out_rows + stored_frame(t[None, :], seq_len, reverse), out.to(out_ptr.dtype.element_ty),
             mask=mask_c[:, None] & (t < length)[None, :])


@triton.jit(do_not_specialize=("stride_x_b", "stride_x_c", "stride_g_b", "stride_g_c", "length"))
def _conv_bwd_kernel(
    x_ptr, w_ptr, bias_ptr, len_ptr, gout_ptr, gx_ptr, gw_ptr, gbias_ptr,
    stride_x_b, stride_x_c, stride_x_t, stride_w_c, stride_w_k,
    stride_g_b, stride_g_c, stride_g_t,
    channels, group_dim, length, reverse_bits,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Grid as the forward kernel's. Writes ``gx`` contiguous ``(batch, C, L)``; adds into
    ``gw`` ``(C, K)`` and ``gbias`` ``(C,)`` (``ACC``, contiguous).

    ``gx[s] = sum_j weight[K - 1 - j] * gpre[s + j]``, where ``gpre`` (the gradient
    before the activation) is recomputed at the K frames ``s .. s + K - 1``.
    """
    pid_t, pid_c, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = c < channels
    s = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    seq_len = tl.load(len_ptr + pid_b).to(tl.int32) if HAS_LENGTHS else length
    reverse = ((reverse_bits >> (c // group_dim)) & 1)[:, None]
    bias = tl.load(bias_ptr + c, mask=mask_c, other=0.0).to(ACC) if HAS_BIAS else None
    x_rows = x_ptr + pid_b * stride_x_b + c[:, None] * stride_x_c
    g_rows = gout_ptr + pid_b * stride_g_b + c[:, None] * stride_g_c

    gx = tl.zeros((BLOCK_C, BLOCK_T), dtype=ACC)
    for j in tl.static_range(K):
        t = s + j
        valid = mask_c[:, None] & (t < seq_len)[None, :]
        g = tl.load(g_rows + stored_frame(t[None, :], seq_len, reverse) * stride_g_t, mask=valid,
                    other=0.0).to(ACC)
        if SILU:
            pre = _conv_at(x_rows, stride_x_t, w_ptr, stride_w_c, stride_w_k, bias, c, mask_c,
                           t, seq_len, reverse, K, HAS_BIAS, ACC)
            sig = tl.sigmoid(pre)
            g = g * sig * (1.0 + pre * (1.0 - sig))
        g = tl.where(valid, g, 0.0)
        w = tl.load(w_ptr + c * stride_w_c + (K - 1 - j) * stride_w_k, mask=mask_c, other=0.0)
        gx += w.to(ACC)[:, None] * g
        if j == 0:  # the frames of this program: the weight and bias gradients
            for k in tl.static_range(K):
                src = s - (K - 1 - k)
                ok = mask_c[:, None] & ((src >= 0) & (src < seq_len))[None, :]
                x = tl.load(x_rows + stored_frame(src[None, :], seq_len, reverse) * stride_x_t,
                            mask=ok, other=0.0).to(ACC)
                tl.atomic_add(gw_ptr + c * K + k, tl.sum(g * x, axis=1), mask=mask_c)
            if HAS_BIAS:
                tl.atomic_add(gbias_ptr + c, tl.sum(g, axis=1), mask=mask_c)
    gx_rows = gx_ptr + (pid_b * channels + c[:, None]) * length
    tl.store(gx_rows + stored_frame(s[None, :], seq_len, reverse), gx.to(gx_ptr.dtype.element_ty),
             mask=mask_c[:, None] & (s < length)[None, :])


class _TritonCausalConv(torch.autograd.Function):
    """``(x, weight, bias) -> out``; see :func:`triton_causal_conv1d`."""

    @staticmethod
    def forward(ctx, x, weight, bias, silu, lengths, reverse_bits, group_dim):
        batch, channels, length = x.shape
        acc = torch.float64 if torch.float64 in (x.dtype, weight.dtype) else torch.float32
        out = torch.empty(batch, channels, length, device=x.device, dtype=x.dtype)
        if out.numel() > 0:
            grid = (triton.cdiv(length, _BLOCK_T), triton.cdiv(channels, _BLOCK_C), batch)
            _conv_fwd_kernel[grid](
                x, weight, x if bias is None else bias, x if lengths is None else lengths, out,
                *x.stride(), *weight.stride(),
                channels, group_dim, length, reverse_bits,
                K=weight.shape[1], HAS_BIAS=bias is not None, SILU=silu,
                HAS_LENGTHS=lengths is not None, ACC=TL_DTYPES[acc],
                BLOCK_C=_BLOCK_C, BLOCK_T=_BLOCK_T,
            )
        ctx.save_for_backward(x, weight, bias, lengths)
        ctx.options = (silu, reverse_bits, group_dim, acc)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, lengths = ctx.saved_tensors
        silu, reverse_bits, group_dim, acc = ctx.options
        batch, channels, length = x.shape
        grad_x = torch.empty(batch, channels, length, device=x.device, dtype=x.dtype)
        grad_w = torch.zeros(weight.shape, device=x.device, dtype=acc)
        grad_bias = None if bias is None else torch.zeros(channels, device=x.device, dtype=acc)
        if grad_x.numel() > 0:
            grid = (triton.cdiv(length, _BLOCK_T), triton.cdiv(channels, _BLOCK_C), batch)
            _conv_bwd_kernel[grid](
                x, weight, x if bias is None else bias, x if lengths is None else lengths,
                grad_out, grad_x, grad_w, grad_w if grad_bias is None else grad_bias,
                *x.stride(), *weight.stride(), *grad_out.stride(),
                channels, group_dim, length, reverse_bits,
                K=weight.shape[1], HAS_BIAS=bias is not None, SILU=silu,
                HAS_LENGTHS=lengths is not None, ACC=TL_DTYPES[acc],
                BLOCK_C=_BLOCK_C, BLOCK_T=_BLOCK_T,
            )
        return (
            grad_x,
            grad_w.to(weight.dtype),
            None if bias is None else grad_bias.to(bias.dtype),
            None, None, None, None,
        )


def triton_causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    silu: bool = True,
    lengths: Optional[torch.Tensor] = None,
    reverse: tuple = (False,),
) -> torch.Tensor:
    """Depthwise causal convolution (and SiLU) on the Triton kernels.

    Args:
        x: ``(batch, C, L)``, any strides.
        weight: ``(C, K)`` (``conv1d.weight[:, 0]``).
        bias: ``(C,)`` or None.
        silu: Apply SiLU to the result.
        lengths: Valid lengths ``(batch,)`` (integer tensor), or None (all L).
        reverse: One bool per channel group (``C / len(reverse)`` channels each): the
            group reads each sequence backwards within its length.

    Returns:
        ``(batch, C, L)`` contiguous, in the dtype of ``x``.

    Raises:
        ValueError: Shapes that do not match.
    """
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(
            f"x must be (batch, C, L) and weight (C, K), got {tuple(x.shape)} and "
            f"{tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (x.shape[1],):
        raise ValueError(f"bias must be (C={x.shape[1]},), got {tuple(bias.shape)}")
    if x.shape[1] % len(reverse) != 0:
        raise ValueError(f"{len(reverse)} channel groups do not divide C={x.shape[1]}")
    if lengths is not None:
        lengths = lengths.to(device=x.device, dtype=torch.int32, non_blocking=True).contiguous()
    bits = sum(1 << g for g, flag in enumerate(reverse) if flag)
    return _TritonCausalConv.apply(
        x, weight, bias, bool(silu), lengths, bits, x.shape[1] // len(reverse)
    )
