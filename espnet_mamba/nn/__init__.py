"""Neural-network building blocks: Mamba-1, BiMamba and the ConBiMamba block.

The selective scan itself lives in :mod:`espnet_mamba.nn.selective_scan`.
"""

from espnet_mamba.nn.bimamba import BiMamba, Padding, lengths_from_mask, reverse_padded
from espnet_mamba.nn.conbimamba_layer import ConBiMambaLayer, MaskedConvolutionModule
from espnet_mamba.nn.mamba import Mamba

__all__ = [
    "BiMamba",
    "ConBiMambaLayer",
    "Mamba",
    "MaskedConvolutionModule",
    "Padding",
    "lengths_from_mask",
    "reverse_padded",
]
