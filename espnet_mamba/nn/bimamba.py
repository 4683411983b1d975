"""Bidirectional Mamba ("ExtBiMamba") that respects padding.

Two Mamba blocks with separate weights: one reads each sequence forward, the other
reads it backward. The backward block sees each sequence reversed *within its own
length*, so padding frames stay at the end, after every valid frame, and the causal
blocks never mix them into valid frames. A padded batch therefore gives each
sequence the output it gets alone.
"""

from typing import Optional

import torch
from torch import nn

from espnet_mamba.nn.mamba import Mamba

__all__ = ["BiMamba", "lengths_from_mask", "reverse_padded"]


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
    lengths = lengths.to(device=x.device, dtype=torch.long)
    t = torch.arange(length, device=x.device)[None, :]  # (1, L)
    index = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (B, L)
    index = index.reshape(batch, length, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


def lengths_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Valid lengths ``(B,)`` of a prefix mask ``(B, T)`` or ``(B, 1, T)`` (True = valid).

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


class BiMamba(nn.Module):
    """Bidirectional Mamba: ``out_proj(cat(fwd(x), rev(bwd(rev(x)))))``.

    ``rev`` reverses each sequence within its length (:func:`reverse_padded`).
    Outputs at padding frames are set to zero.

    Args:
        d_model: Input and output feature size.
        d_state: State size of each Mamba block.
        d_conv: Causal convolution kernel size of each Mamba block.
        expand: Inner-size factor of each Mamba block.
        backend: Selective-scan backend, ``"auto"``, ``"torch"`` or ``"cuda"``.
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
    ) -> torch.Tensor:
        """Applies both directions.

        Args:
            x: ``(B, L, d_model)``.
            lengths: Valid lengths ``(B,)``; or give ``mask`` instead.
            mask: Prefix mask ``(B, L)`` or ``(B, 1, L)``, True = valid.
                Neither: all frames are valid.

        Returns:
            ``(B, L, d_model)``, zero at padding frames.
        """
        if lengths is not None and mask is not None:
            raise ValueError("give lengths or mask, not both")
        if mask is not None:
            lengths = lengths_from_mask(mask)
        forward_out = self.mamba_fwd(x)
        backward_out = reverse_padded(self.mamba_bwd(reverse_padded(x, lengths)), lengths)
        out = self.out_proj(torch.cat((forward_out, backward_out), dim=-1))
        if lengths is not None:
            valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(
                x.device
            )[:, None]
            out = out.masked_fill(~valid[..., None], 0.0)
        return out
