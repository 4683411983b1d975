"""ConBiMamba block: a Conformer block with bidirectional Mamba in place of attention.

Pre-norm order (``normalize_before=True``)::

    x = x + 0.5 * dropout(FFN(LN(x)))          macaron feed-forward
    x = x + dropout(BiMamba(LN(x)))            bidirectional Mamba
    x = x + dropout(Conv(LN(x)))               convolution module
    x = x + 0.5 * dropout(FFN(LN(x)))          feed-forward
    x = LN(x)

Padding: every part is padding-safe, so in eval mode a padded batch gives each
sequence the output it gets alone. BiMamba reverses each sequence within its own
length, and the convolution module zeroes padding frames before its depthwise
convolution (ESPnet's Conformer convolution module does not, so padding leaks into
the last frames of shorter sequences there). One exception in training mode:
BatchNorm in the convolution module normalises with statistics of the whole batch,
padding frames included, as in ESPnet. Use ``use_batch_norm=False`` (LayerNorm)
for a module whose output never depends on other sequences of the batch.
"""

from typing import Optional

import torch
from espnet.nets.pytorch_backend.transformer.layer_norm import LayerNorm
from espnet.nets.pytorch_backend.transformer.positionwise_feed_forward import (
    PositionwiseFeedForward,
)
from torch import nn

from espnet_mamba.nn.bimamba import BiMamba, lengths_from_mask

__all__ = ["ConBiMambaLayer", "MaskedConvolutionModule"]


def _resolve_lengths(
    x: torch.Tensor, mask: Optional[torch.Tensor], lengths: Optional[torch.Tensor]
) -> Optional[torch.Tensor]:
    """Lengths ``(B,)`` from a prefix mask or lengths (None when neither is given)."""
    if mask is not None and lengths is not None:
        raise ValueError("give mask or lengths, not both")
    if mask is not None:
        lengths = lengths_from_mask(mask)
    if lengths is None:
        return None
    if lengths.shape != (x.shape[0],):
        raise ValueError(
            f"lengths must be ({x.shape[0]},), got shape {tuple(lengths.shape)}"
        )
    lengths = lengths.to(x.device)
    if (lengths < 0).any() or (lengths > x.shape[1]).any():
        raise ValueError(f"lengths must lie in [0, {x.shape[1]}], got {lengths.tolist()}")
    return lengths


class MaskedConvolutionModule(nn.Module):
    """Conformer convolution module that ignores padding frames.

    ``pointwise Conv1d(C, 2C) -> GLU -> zero padding -> depthwise Conv1d(kernel,
    'same') -> BatchNorm1d or LayerNorm -> Swish -> pointwise Conv1d(C, C)``.

    Args:
        channels: Feature size C.
        kernel_size: Odd kernel size of the depthwise convolution.
        use_batch_norm: BatchNorm1d (as in ESPnet) if True, else LayerNorm over C.
        bias: Bias in the convolutions.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 31,
        use_batch_norm: bool = True,
        bias: bool = True,
    ):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels <= 0:
            raise ValueError(f"channels must be a positive integer, got {channels!r}")
        if (
            isinstance(kernel_size, bool)
            or not isinstance(kernel_size, int)
            or kernel_size <= 0
            or kernel_size % 2 == 0
        ):
            raise ValueError(
                f"kernel_size must be a positive odd integer, got {kernel_size!r}"
            )
        self.use_batch_norm = use_batch_norm
        self.pointwise_conv1 = nn.Conv1d(channels, 2 * channels, 1, bias=bias)
        self.depthwise_conv = nn.Conv1d(
            channels,
            channels,
            kernel_size,
            padding=(kernel_size - 1) // 2,
            groups=channels,
            bias=bias,
        )
        self.norm = nn.BatchNorm1d(channels) if use_batch_norm else LayerNorm(channels)
        self.activation = nn.SiLU()
        self.pointwise_conv2 = nn.Conv1d(channels, channels, 1, bias=bias)

    def forward(
        self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Applies the module.

        Args:
            x: ``(B, T, C)``.
            lengths: Valid lengths ``(B,)``; None means all frames are valid.

        Returns:
            ``(B, T, C)``.
        """
        x = self.pointwise_conv1(x.transpose(1, 2))  # (B, 2C, T)
        x = nn.functional.glu(x, dim=1)  # (B, C, T)
        if lengths is not None:
            valid = torch.arange(x.shape[2], device=x.device)[None, :] < lengths[:, None]
            x = x.masked_fill(~valid[:, None, :], 0.0)
        x = self.depthwise_conv(x)
        if self.use_batch_norm:
            x = self.norm(x)
        else:
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        x = self.pointwise_conv2(self.activation(x))
        return x.transpose(1, 2)


class ConBiMambaLayer(nn.Module):
    """ConBiMamba block (see the module docstring for the computation).

    Args:
        size: Feature size d.
        linear_units: Hidden size of each feed-forward module.
        dropout_rate: Dropout on each residual branch and inside the feed-forwards.
        cnn_module_kernel: Odd kernel size of the depthwise convolution.
        use_batch_norm: BatchNorm1d in the convolution module (ESPnet's choice);
            False uses LayerNorm.
        normalize_before: Pre-norm (True) or post-norm residual branches. The
            final LayerNorm is applied in both cases.
        d_state: Mamba state size.
        d_conv: Mamba causal convolution kernel size.
        expand: Mamba inner-size factor.
        mamba_backend: Selective-scan backend, ``"auto"``, ``"torch"`` or ``"cuda"``.

    Example:
        >>> layer = ConBiMambaLayer(64, linear_units=128).eval()
        >>> x = torch.randn(2, 40, 64)
        >>> layer(x, lengths=torch.tensor([40, 25])).shape
        torch.Size([2, 40, 64])
    """

    def __init__(
        self,
        size: int,
        linear_units: int = 1024,
        dropout_rate: float = 0.1,
        cnn_module_kernel: int = 31,
        use_batch_norm: bool = True,
        normalize_before: bool = True,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        mamba_backend: str = "auto",
    ):
        super().__init__()
        for name, value in (("size", size), ("linear_units", linear_units)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}")
        self.size = size
        self.normalize_before = normalize_before
        self.feed_forward_macaron = PositionwiseFeedForward(
            size, linear_units, dropout_rate, nn.SiLU()
        )
        self.bimamba = BiMamba(
            size, d_state=d_state, d_conv=d_conv, expand=expand, backend=mamba_backend
        )
        self.conv_module = MaskedConvolutionModule(
            size, cnn_module_kernel, use_batch_norm=use_batch_norm
        )
        self.feed_forward = PositionwiseFeedForward(
            size, linear_units, dropout_rate, nn.SiLU()
        )
        self.norm_ff_macaron = LayerNorm(size)
        self.norm_mamba = LayerNorm(size)
        self.norm_conv = LayerNorm(size)
        self.norm_ff = LayerNorm(size)
        self.norm_final = LayerNorm(size)
        self.dropout = nn.Dropout(dropout_rate)

    def _residual(self, x, norm, branch, scale=1.0):
        """``x + scale * dropout(branch(norm(x)))`` (pre-norm) or its post-norm form."""
        if self.normalize_before:
            return x + scale * self.dropout(branch(norm(x)))
        return norm(x + scale * self.dropout(branch(x)))

    def forward(
        self,
        x: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        lengths: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Applies the block.

        Args:
            x: ``(B, T, size)``.
            mask: Prefix mask ``(B, 1, T)`` or ``(B, T)``, True = valid frame.
            lengths: Valid lengths ``(B,)``, instead of ``mask``. Neither: all
                frames are valid.

        Returns:
            ``(B, T, size)``. Values at padding frames are unspecified (finite).
        """
        if x.dim() != 3 or x.shape[-1] != self.size:
            raise ValueError(
                f"ConBiMambaLayer expects input (B, T, {self.size}), got {tuple(x.shape)}"
            )
        lengths = _resolve_lengths(x, mask, lengths)
        x = self._residual(x, self.norm_ff_macaron, self.feed_forward_macaron, 0.5)
        x = self._residual(
            x, self.norm_mamba, lambda h: self.bimamba(h, lengths=lengths)
        )
        x = self._residual(
            x, self.norm_conv, lambda h: self.conv_module(h, lengths=lengths)
        )
        x = self._residual(x, self.norm_ff, self.feed_forward, 0.5)
        return self.norm_final(x)
