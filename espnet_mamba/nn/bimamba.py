"""Bidirectional Mamba ("ExtBiMamba") that respects padding.

Two Mamba blocks with separate weights: one reads each sequence forward, the other
reads it backward. The backward block sees each sequence reversed *within its own
length*, so padding frames stay at the end, after every valid frame, and the causal
blocks never mix them into valid frames. A padded batch therefore gives each
sequence the output it gets alone.

:class:`Padding` holds the tensors that describe the padding of a batch (lengths,
padding mask, reversal index). An encoder builds it once per forward pass and hands
it to every layer, so that no layer recomputes them or reads lengths on the host.

On the Triton backend both directions run as one stack of ``2 * d_inner`` channels:
one input projection, one convolution and one selective scan for both, with the
backward direction reading each sequence reversed within its length inside the
kernels (no reversed copies).
"""

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from espnet_mamba.nn.mamba import Mamba, _at_least_float32
from espnet_mamba.nn.selective_scan import resolve_backend, reverse_index, selective_scan

__all__ = ["BiMamba", "Padding", "lengths_from_mask", "resolve_padding", "reverse_padded"]


def reverse_padded(x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Reverses each sequence in time within its own length.

    Frame ``t < lengths[b]`` of row ``b`` becomes frame ``lengths[b] - 1 - t``;
    padding frames (``t >= lengths[b]``) stay where they are. Applying it twice
    gives the input back.

    Args:
        x: ``(B, L, *)``.
        lengths: Valid lengths ``(B,)`` (integers in ``[0, L]``); None means every
            sequence has length L (a plain flip).

    Returns:
        ``(B, L, *)``.
    """
    if x.dim() < 2:
        raise ValueError(f"x must be (B, L, ...), got shape {tuple(x.shape)}")
    if lengths is None:
        return x.flip(1)
    batch, length = x.shape[:2]
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must be ({batch},), got shape {tuple(lengths.shape)}")
    index = reverse_index(lengths.to(device=x.device, dtype=torch.long), length)
    index = index.reshape(batch, length, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


def lengths_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Valid lengths ``(B,)`` of a prefix mask ``(B, T)`` or ``(B, 1, T)`` (True = valid).

    This reads the mask's values (on a GPU, a host-device synchronisation): call it
    once per batch, not once per layer.

    Raises:
        ValueError: The mask has another shape or is not a prefix mask (valid frames
            first, then padding).
    """
    if mask.dim() == 3 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.dim() != 2:
        raise ValueError(f"mask must be (B, T) or (B, 1, T), got shape {tuple(mask.shape)}")
    mask = mask.bool()
    lengths = mask.sum(-1)
    prefix = torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]
    if not torch.equal(prefix, mask):
        raise ValueError("mask must mark a prefix of each sequence as valid (True)")
    return lengths


class Padding:
    """Padding of a batch of sequences, built once and shared by every layer.

    Only device operations are used: building it never reads a length on the host.
    Lengths outside ``[0, T]`` are not rejected here (that would need their values);
    they are clamped into range so that no index leaves the tensor. Callers validate
    the lengths once, where they enter the model.

    Args:
        lengths: Valid lengths ``(B,)`` (integer tensor).
        max_len: Number of frames T of the padded batch.

    Attributes:
        lengths: ``(B,)`` long, on the device of the input ``lengths``.
        pad: ``(B, T, 1)`` bool, True at padding frames (``t >= lengths[b]``); a
            ``masked_fill`` mask for ``(B, T, D)`` tensors.
        reverse_index: ``(B, T, 1)`` long, the time index of :func:`reverse_padded`.

    :meth:`valid` gives the mask as a float multiplier: one ``mul`` (forward and
    backward) instead of ``masked_fill``'s copy and fill. Use it only on values that
    are finite (``0 * inf`` is nan); ``masked_fill`` with :attr:`pad` zeroes
    anything.

    Example:
        >>> padding = Padding(torch.tensor([3, 1]), 4)
        >>> padding.reverse(torch.arange(8.0).view(2, 4, 1))[..., 0]
        tensor([[2., 1., 0., 3.],
                [4., 5., 6., 7.]])
    """

    def __init__(self, lengths: torch.Tensor, max_len: int):
        if lengths.dim() != 1:
            raise ValueError(f"lengths must be (B,), got shape {tuple(lengths.shape)}")
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise ValueError(f"lengths must be an integer tensor, got {lengths.dtype}")
        self.max_len = int(max_len)
        self.lengths = lengths.long().clamp(0, self.max_len)
        t = torch.arange(self.max_len, device=lengths.device)
        self.pad = (t >= self.lengths.unsqueeze(1)).unsqueeze(2)
        self.reverse_index = reverse_index(self.lengths, self.max_len).unsqueeze(2)
        self._expanded: Dict[int, torch.Tensor] = {}
        self._valid: Dict[torch.dtype, torch.Tensor] = {}

    def valid(self, dtype: torch.dtype) -> torch.Tensor:
        """``(B, T, 1)`` multiplier in ``dtype``: 1 at valid frames, 0 at padding
        (built once per dtype)."""
        multiplier = self._valid.get(dtype)
        if multiplier is None:
            multiplier = (~self.pad).to(dtype)
            self._valid[dtype] = multiplier
        return multiplier

    def check(self, x: torch.Tensor) -> None:
        """Raises ValueError unless ``x`` is a ``(B, T, ...)`` batch of this padding."""
        batch = self.lengths.shape[0]
        if x.dim() < 2 or x.shape[:2] != (batch, self.max_len):
            raise ValueError(
                f"padding describes a ({batch}, {self.max_len}) batch, "
                f"got an input of shape {tuple(x.shape)}"
            )

    def reverse(self, x: torch.Tensor) -> torch.Tensor:
        """:func:`reverse_padded` of ``x`` ``(B, T, D)`` with the stored index.

        One gather; the index expanded to D features is cached, so every layer and
        both directions reuse it.
        """
        size = x.shape[-1]
        index = self._expanded.get(size)
        if index is None:
            index = self.reverse_index.expand(-1, -1, size)
            self._expanded[size] = index
        return x.gather(1, index)


def resolve_padding(
    x: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    lengths: Optional[torch.Tensor] = None,
    padding: Optional[Padding] = None,
) -> Optional[Padding]:
    """The :class:`Padding` of ``x`` ``(B, T, D)`` from one of mask, lengths or padding.

    Returns None when none is given (every frame is valid). The values of
    ``lengths`` are checked only when they are on the CPU: reading GPU lengths would
    stall the host until the GPU has caught up.
    """
    batch, length = x.shape[:2]
    if sum(arg is not None for arg in (mask, lengths, padding)) > 1:
        raise ValueError("give mask, lengths or padding, not both")
    if padding is not None:
        padding.check(x)
        return padding
    if mask is not None:
        lengths = lengths_from_mask(mask)
    if lengths is None:
        return None
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must be ({batch},), got shape {tuple(lengths.shape)}")
    if lengths.device.type == "cpu" and len(lengths) > 0:
        if int(lengths.min()) < 0 or int(lengths.max()) > length:
            raise ValueError(f"lengths must lie in [0, {length}], got {lengths.tolist()}")
    return Padding(lengths.to(x.device, non_blocking=True), length)


class BiMamba(nn.Module):
    """Bidirectional Mamba: ``out_proj(cat(fwd(x), rev(bwd(rev(x)))))``.

    ``rev`` reverses each sequence within its length (:func:`reverse_padded`).

    Args:
        d_model: Input and output feature size.
        d_state: State size of each Mamba block.
        d_conv: Causal convolution kernel size of each Mamba block.
        expand: Inner-size factor of each Mamba block.
        backend: Selective-scan backend, ``"auto"``, ``"torch"``, ``"cuda"`` or
            ``"triton"`` (both directions in one launch).
        **mamba_kwargs: Further arguments of :class:`Mamba` (``dt_rank``, ...).

    Example:
        >>> layer = BiMamba(d_model=64)
        >>> x = torch.randn(2, 50, 64)
        >>> layer(x, lengths=torch.tensor([50, 30])).shape
        torch.Size([2, 50, 64])
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        backend: str = "auto",
        **mamba_kwargs,
    ):
        super().__init__()
        kwargs = dict(
            d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand,
            backend=backend, **mamba_kwargs,
        )
        self.mamba_fwd = Mamba(**kwargs)
        self.mamba_bwd = Mamba(**kwargs)
        self.out_proj = nn.Linear(2 * d_model, d_model)

    def forward(
        self,
        x: torch.Tensor,
        lengths: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
        padding: Optional[Padding] = None,
    ) -> torch.Tensor:
        """Applies both directions.

        Args:
            x: ``(B, L, d_model)``.
            lengths: Valid lengths ``(B,)``; or give ``mask`` or ``padding`` instead.
            mask: Prefix mask ``(B, L)`` or ``(B, 1, L)``, True = valid.
            padding: A :class:`Padding` of the batch, built once by the caller
                (the ConBiMamba layer passes it). Neither of the three: all frames
                are valid.

        Returns:
            ``(B, L, d_model)``. With ``lengths`` or ``mask``, zero at padding
            frames. With ``padding`` the padding frames are left as computed
            (finite values that never reach a valid frame): a caller that shares
            one :class:`Padding` among many layers masks once, where it needs to.
        """
        shared = padding is not None  # the caller zeroes padding where it needs to
        padding = resolve_padding(x, mask, lengths, padding)
        if resolve_backend(self.mamba_fwd.backend, x.device) == "triton":
            forward_out, backward_out = self._both_directions(x, padding)
            out = self.out_proj(torch.cat((forward_out, backward_out), dim=-1))
            return out if padding is None or shared else out.masked_fill(padding.pad, 0.0)
        forward_out = self.mamba_fwd(x)
        if padding is None:
            backward_out = self.mamba_bwd(x.flip(1)).flip(1)
        else:
            backward_out = padding.reverse(self.mamba_bwd(padding.reverse(x)))
        out = self.out_proj(torch.cat((forward_out, backward_out), dim=-1))
        if padding is not None and not shared:
            out = out.masked_fill(padding.pad, 0.0)
        return out

    def _both_directions(self, x: torch.Tensor, padding: Optional[Padding]):
        """Both Mamba blocks as one stack of channels, on the Triton kernels.

        Channels ``[0, E)`` hold the forward block, ``[E, 2E)`` the backward block
        (``E = d_inner``); the backward half reads each sequence reversed within its
        length in the convolution and the scan, and writes in input order.

        Args:
            x: ``(B, L, d_model)``.
            padding: The batch's padding, or None (all frames valid).

        Returns:
            The two blocks' outputs ``(B, L, d_model)`` each, in input time order.
        """
        from espnet_mamba.nn.triton_conv import triton_causal_conv1d  # imports Triton

        fwd, bwd = self.mamba_fwd, self.mamba_bwd
        inner, rank, n_state = fwd.d_inner, fwd.dt_rank, fwd.d_state
        batch, length, d_model = x.shape
        lengths = None if padding is None else padding.lengths
        reverse = (False, True)

        def stack(name, rows=slice(None)):
            """A parameter of both blocks, forward block first, along dim 0."""
            first, second = fwd.get_parameter(name), bwd.get_parameter(name)
            return torch.cat((first[rows], second[rows]))

        # xz: (B, 4E, L) with rows x_fwd, x_bwd, z_fwd, z_bwd (channel-major, as in Mamba).
        in_rows, gate_rows = slice(0, inner), slice(inner, 2 * inner)
        w_in = torch.cat((stack("in_proj.weight", in_rows), stack("in_proj.weight", gate_rows)))
        x_rows = x.reshape(batch * length, d_model).t()
        if fwd.in_proj.bias is None:
            xz = torch.mm(w_in, x_rows)
        else:
            b_in = torch.cat((stack("in_proj.bias", in_rows), stack("in_proj.bias", gate_rows)))
            xz = torch.addmm(b_in.unsqueeze(1), w_in, x_rows)
        xz = xz.view(4 * inner, batch, length).permute(1, 0, 2)
        x_in, z = xz[:, : 2 * inner], xz[:, 2 * inner :]

        conv_bias = stack("conv1d.bias") if fwd.conv1d.bias is not None else None
        x_in = triton_causal_conv1d(
            x_in, stack("conv1d.weight")[:, 0], conv_bias, lengths=lengths, reverse=reverse
        )  # (B, 2E, L)
        # Per-direction projections as one batched product over the direction axis.
        w_x = torch.stack((fwd.x_proj.weight, bwd.x_proj.weight))  # (2, R + 2N, E)
        x_dbl = torch.matmul(w_x, x_in.view(batch, 2, inner, length))  # (B, 2, R + 2N, L)
        w_dt = torch.stack((fwd.dt_proj.weight, bwd.dt_proj.weight))  # (2, E, R)
        dt = torch.matmul(w_dt, x_dbl[:, :, :rank]).view(batch, 2 * inner, length)
        y = selective_scan(
            x_in,
            dt,
            -torch.exp(_at_least_float32(stack("A_log"))),
            x_dbl[:, :, rank : rank + n_state],  # B: (B, 2, N, L)
            x_dbl[:, :, rank + n_state :],
            D=_at_least_float32(stack("D")),
            z=z,
            delta_bias=_at_least_float32(stack("dt_proj.bias")),
            delta_softplus=True,
            lengths=lengths,
            reverse=reverse,
            backend="triton",
        )  # (B, 2E, L)
        y = y.transpose(1, 2)  # (B, L, 2E)
        forward_out = F.linear(y[..., :inner], fwd.out_proj.weight, fwd.out_proj.bias)
        backward_out = F.linear(y[..., inner:], bwd.out_proj.weight, bwd.out_proj.bias)
        return forward_out, backward_out
