"""The options of :class:`~espnet_mamba.encoder.ConBiMambaEncoder`: their checks, and the
input layer and positional encoding they choose."""

from typing import List, Optional, Sequence, Tuple

import torch

from espnet_mamba.espnet_compat import (
    Conv2dSubsampling,
    Conv2dSubsampling6,
    Conv2dSubsampling8,
    ConvolutionalPositionalEmbedding,
    LayerNorm,
    PositionalEncoding,
)
from espnet_mamba.io import check_int
from espnet_mamba.nn.selective_scan import BACKENDS

__all__ = ["SUBSAMPLING", "build_embed", "check_options", "subsampled_length"]

SUBSAMPLING = {
    "conv2d": Conv2dSubsampling,
    "conv2d6": Conv2dSubsampling6,
    "conv2d8": Conv2dSubsampling8,
}


def subsampled_length(input_layer: str, size):
    """What a subsampling layer's 2-D convolutions leave of ``size`` (an int, or a
    tensor of lengths): feature bins or frames."""
    size = (size - 1) // 2  # first Conv2d(kernel 3, stride 2)
    if input_layer == "conv2d":
        return (size - 1) // 2
    if input_layer == "conv2d6":
        return (size - 2) // 3
    return ((size - 1) // 2 - 1) // 2  # conv2d8


class PaddedConvPositionalEmbedding(torch.nn.Module):
    """HuBERT's convolutional positional embedding on a padded batch.

    ``dropout(x + GELU(conv(x)))``, as fairseq's HuBERT adds it before its layers:
    ``conv`` is a grouped Conv1d over time (``d`` channels), weight-normalised over
    the kernel dimension, with "same" padding (for an even kernel the extra last
    frame is dropped). It is ESPnet's ``ConvolutionalPositionalEmbedding`` with
    ``use_residual=True``. Padding frames are set to zero before the convolution,
    so that a valid frame near the end of a shorter sequence sees the zeros it sees
    when the sequence is encoded alone, and again in the output.

    Args:
        size: Feature size d.
        kernel_size: Frames the convolution spans.
        groups: Channel groups; must divide ``size``.
        dropout_rate: Dropout after the addition.
    """

    def __init__(self, size: int, kernel_size: int, groups: int, dropout_rate: float):
        super().__init__()
        self.conv = ConvolutionalPositionalEmbedding(
            size, dropout_rate, kernel_size=kernel_size, groups=groups, use_residual=True
        )
        self.dropout = torch.nn.Dropout(dropout_rate)

    def forward(self, xs: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """``xs`` ``(B, T, d)`` and ``pad`` ``(B, T, 1)`` (True at padding) ->
        ``(B, T, d)``, zero at padding."""
        xs = self.conv(xs.masked_fill(pad, 0.0))
        return self.dropout(xs).masked_fill(pad, 0.0)


def check_options(
    input_size: int,
    output_size: int,
    linear_units: int,
    num_blocks: int,
    dropout_rate: float,
    positional_dropout_rate: float,
    input_layer: Optional[str],
    pos_enc: str,
    pos_conv_kernel: int,
    pos_conv_groups: int,
    mamba_backend: str,
    interctc_layer_idx: Sequence[int],
) -> List[int]:
    """Raises ValueError naming the first bad option of the encoder (the arguments of
    :class:`~espnet_mamba.encoder.ConBiMambaEncoder`); returns ``interctc_layer_idx``
    as a list."""
    for name, value in (
        ("input_size", input_size),
        ("output_size", output_size),
        ("linear_units", linear_units),
        ("num_blocks", num_blocks),
    ):
        check_int(name, value)
    for name, value in (
        ("dropout_rate", dropout_rate),
        ("positional_dropout_rate", positional_dropout_rate),
    ):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    if input_layer not in ("conv2d", "conv2d6", "conv2d8", "linear", None):
        raise ValueError(
            "input_layer must be 'conv2d', 'conv2d6', 'conv2d8', 'linear' or "
            f"None, got {input_layer!r}"
        )
    if input_layer in SUBSAMPLING and subsampled_length(input_layer, input_size) < 1:
        raise ValueError(
            f"input_size={input_size} is too small for input_layer={input_layer!r}"
        )
    if input_layer is None and input_size != output_size:
        raise ValueError(
            "input_layer=None needs input_size == output_size, got "
            f"input_size={input_size}, output_size={output_size}"
        )
    if pos_enc not in ("abs", "conv", "none"):
        raise ValueError(f"pos_enc must be 'abs', 'conv' or 'none', got {pos_enc!r}")
    if pos_enc == "conv":
        check_int("pos_conv_kernel", pos_conv_kernel)
        check_int("pos_conv_groups", pos_conv_groups)
        if output_size % pos_conv_groups:
            raise ValueError(
                f"pos_conv_groups={pos_conv_groups} must divide output_size={output_size}"
            )
    if mamba_backend not in BACKENDS:
        raise ValueError(
            f"mamba_backend must be one of {BACKENDS}, got {mamba_backend!r}"
        )
    interctc_layer_idx = list(interctc_layer_idx)
    for idx in interctc_layer_idx:
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 < idx < num_blocks:
            raise ValueError(
                f"interctc_layer_idx entries must be integers in [1, {num_blocks - 1}], "
                f"got {interctc_layer_idx}"
            )
    return interctc_layer_idx


def build_embed(
    input_layer: Optional[str],
    input_size: int,
    output_size: int,
    dropout_rate: float,
    pos_enc: str,
    positional_dropout_rate: float,
    pos_conv_kernel: int,
    pos_conv_groups: int,
) -> Tuple[torch.nn.Module, Optional[PaddedConvPositionalEmbedding]]:
    """The input layer with the positional encoding, and the convolutional positional
    embedding (None unless ``pos_enc="conv"``), which the encoder applies after the
    input layer, once the padding is known. Arguments as those of the encoder."""
    pos_conv = None
    if pos_enc == "abs":
        pos_module = PositionalEncoding(output_size, positional_dropout_rate)
    elif pos_enc == "conv":
        pos_module = torch.nn.Identity()
        pos_conv = PaddedConvPositionalEmbedding(
            output_size, pos_conv_kernel, pos_conv_groups, positional_dropout_rate
        )
    else:
        pos_module = torch.nn.Dropout(positional_dropout_rate)
    if input_layer in SUBSAMPLING:
        embed = SUBSAMPLING[input_layer](input_size, output_size, dropout_rate, pos_module)
    elif input_layer == "linear":
        embed = torch.nn.Sequential(
            torch.nn.Linear(input_size, output_size),
            LayerNorm(output_size),
            torch.nn.Dropout(dropout_rate),
            pos_module,
        )
    else:
        embed = pos_module
    return embed, pos_conv
