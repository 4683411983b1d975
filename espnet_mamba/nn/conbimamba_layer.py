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
for a module whose output never depends on other sequences of the batch. Padding
frames may hold any finite values (the encoder zeroes its input's padding once).

Host cost: the padding description (:class:`~espnet_mamba.nn.bimamba.Padding`) is
built once per batch by the encoder and passed to every block, so a block does no
mask or index arithmetic and never reads a tensor value on the host (which, on a
GPU, would make the host wait for the device).
"""

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from espnet_mamba.espnet_compat import LayerNorm, PositionwiseFeedForward
from espnet_mamba.io import check_int
from espnet_mamba.nn.bimamba import BiMamba, Padding, resolve_padding

__all__ = ["ConBiMambaLayer", "MaskedConvolutionModule"]


class MaskedConvolutionModule(nn.Module):
    """Conformer convolution module that ignores padding frames.

    ``pointwise Conv1d(C, 2C) -> GLU -> zero padding -> depthwise Conv1d(kernel,
    'same') -> BatchNorm1d or LayerNorm -> Swish -> pointwise Conv1d(C, C)``.

    The pointwise convolutions keep their ``Conv1d`` parameters (as in ESPnet's
    module) but run as matrix products on ``(B, T, C)`` frames: the same values,
    for less host time than a convolution call (a cuDNN call on a GPU).

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
        check_int("channels", channels)
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
        self,
        x: torch.Tensor,
        lengths: Optional[torch.Tensor] = None,
        padding: Optional[Padding] = None,
    ) -> torch.Tensor:
        """Applies the module.

        Args:
            x: ``(B, T, C)``; finite at padding frames too (they are zeroed by a
                multiply, which would turn inf into nan).
            lengths: Valid lengths ``(B,)``; or give ``padding`` (built once by the
                caller) instead. Neither: all frames are valid.

        Returns:
            ``(B, T, C)``.
        """
        padding = resolve_padding(x, lengths=lengths, padding=padding)
        conv1, conv2 = self.pointwise_conv1, self.pointwise_conv2
        x = F.linear(x, conv1.weight.squeeze(2), conv1.bias)  # (B, T, 2C)
        x = F.glu(x, dim=-1)  # (B, T, C)
        if padding is not None:  # finite values: a multiply zeroes the padding
            x = x * padding.valid(x.dtype)
        x = self.depthwise_conv(x.transpose(1, 2))  # (B, C, T)
        if self.use_batch_norm:
            x = self.activation(self.norm(x)).transpose(1, 2)  # (B, T, C)
        else:
            x = self.activation(self.norm(x.transpose(1, 2)))
        return F.linear(x, conv2.weight.squeeze(2), conv2.bias)


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
        check_int("size", size)
        check_int("linear_units", linear_units)
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
        """``x + scale * dropout(branch(norm(x)))`` (pre-norm) or its post-norm form.

        The scaled sum is one ``add`` (``alpha=scale``); for the scales used here
        (1 and 0.5) it equals the separate product and sum bit for bit.
        """
        if self.normalize_before:
            return torch.add(x, self.dropout(branch(norm(x))), alpha=scale)
        return norm(torch.add(x, self.dropout(branch(x)), alpha=scale))

    def forward(
        self,
        x: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        lengths: Optional[torch.Tensor] = None,
        padding: Optional[Padding] = None,
    ) -> torch.Tensor:
        """Applies the block.

        Args:
            x: ``(B, T, size)``.
            mask: Prefix mask ``(B, 1, T)`` or ``(B, T)``, True = valid frame
                (its values are read: on a GPU, a host-device synchronisation).
            lengths: Valid lengths ``(B,)``, instead of ``mask``; their values are
                checked when they are on the CPU.
            padding: A :class:`~espnet_mamba.nn.bimamba.Padding` of the batch,
                instead of ``mask`` or ``lengths``: an encoder builds it once and
                passes it to every block, which then does no per-block padding
                work and never waits for the GPU. None of the three: all frames
                are valid.

        Returns:
            ``(B, T, size)``. Values at padding frames are unspecified (finite).
        """
        if x.dim() != 3 or x.shape[-1] != self.size:
            raise ValueError(
                f"ConBiMambaLayer expects input (B, T, {self.size}), got {tuple(x.shape)}"
            )
        padding = resolve_padding(x, mask, lengths, padding)
        x = self._residual(x, self.norm_ff_macaron, self.feed_forward_macaron, 0.5)
        x = self._residual(
            x, self.norm_mamba, lambda h: self.bimamba(h, padding=padding)
        )
        x = self._residual(
            x, self.norm_conv, lambda h: self.conv_module(h, padding=padding)
        )
        x = self._residual(x, self.norm_ff, self.feed_forward, 0.5)
        return self.norm_final(x)
