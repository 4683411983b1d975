"""The Vision Mamba (Vim) blocks of SSAMBA, named and shaped as in the public code.

Each layer is a Vim block: ``residual += hidden; hidden = mixer(norm(residual))``.
Each mixer is bidirectional (Vim's ``bimamba_type="v2"``, :class:`BiMambaV2`): a
shared ``in_proj``, a forward and a backward selective scan with separate
convolution/projection/state parameters, the two outputs averaged
(``if_devide_out``) before the shared ``out_proj``. :class:`VisionMamba` holds the
patch embedding, the cls token, the positional embedding, the layers and the final
norm (the ``v.*`` keys of a checkpoint).
"""

from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from espnet_mamba.nn.mamba import Mamba
from espnet_mamba.nn.selective_scan import selective_scan
from espnet_mamba.ssamba.config import SSAMBAConfig

__all__ = ["BiMambaV2", "DropPath", "RMSNorm", "VimBlock", "VisionMamba"]


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """The scan parameters in float32 (half precision upcast; float64 kept)."""
    return t if t.dtype == torch.float64 else t.float()


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (mamba_ssm's RMSNorm; no bias).

    Args:
        dim: Feature size.
        eps: Added to the mean square.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., dim) -> (..., dim)``, computed in float32."""
        x32 = x.float()
        scale = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * scale * self.weight.float()).to(x.dtype)


def _make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    return nn.LayerNorm(dim, eps=eps) if kind == "layer" else RMSNorm(dim, eps=eps)


class DropPath(nn.Module):
    """Stochastic depth: zeroes whole samples with probability ``p`` in training.

    Args:
        p: Drop probability in [0, 1).
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, ...) -> (B, ...)``; identity in eval mode or when ``p == 0``."""
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep


class BiMambaV2(Mamba):
    """Vim's bidirectional Mamba mixer (``bimamba_type="v2"``).

    ``xz = in_proj(x)`` is shared; the forward scan uses ``conv1d, x_proj, dt_proj,
    A_log, D`` and the backward scan runs on ``xz`` reversed in time with
    ``conv1d_b, x_proj_b, dt_proj_b, A_b_log, D_b``; the backward output is
    reversed back, added to the forward one, halved when ``divide_out``, and
    projected by the shared ``out_proj``. The backward parameters are initialized
    like the forward ones.

    Args:
        d_model: Input and output size.
        divide_out: Average the two directions instead of adding them.
        **mamba_kwargs: Arguments of :class:`espnet_mamba.nn.mamba.Mamba`
            (``d_state``, ``d_conv``, ``expand``, ``dt_rank``, ``backend``, ...).

    Example:
        >>> mixer = BiMambaV2(d_model=32, d_state=8)
        >>> mixer(torch.randn(2, 10, 32)).shape
        torch.Size([2, 10, 32])
    """

    def __init__(self, d_model: int, divide_out: bool = True, **mamba_kwargs: Any):
        super().__init__(d_model, **mamba_kwargs)
        self.divide_out = divide_out
        # A second Mamba gives the backward parameters the same initialization;
        # its in_proj/out_proj are dropped (the directions share ours).
        backward = Mamba(d_model, **mamba_kwargs)
        self.conv1d_b = backward.conv1d
        self.x_proj_b = backward.x_proj
        self.dt_proj_b = backward.dt_proj
        self.A_b_log = backward.A_log
        self.D_b = backward.D

    def _scan(
        self,
        xz: torch.Tensor,
        conv: nn.Conv1d,
        x_proj: nn.Linear,
        dt_proj: nn.Linear,
        A_log: torch.Tensor,
        D: torch.Tensor,
    ) -> torch.Tensor:
        """One direction, without ``out_proj``: ``(B, 2 * E, L) -> (B, E, L)``."""
        length = xz.shape[-1]
        x, z = xz.chunk(2, dim=1)
        x = F.silu(conv(x)[..., :length])  # causal depthwise convolution
        x_dbl = x_proj(x.transpose(1, 2))  # (B, L, dt_rank + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, dt_proj.weight).transpose(1, 2)  # (B, E, L), bias in the scan
        return selective_scan(
            x.contiguous(),
            dt.contiguous(),
            -torch.exp(_at_least_float32(A_log)),
            B.transpose(1, 2).contiguous(),
            C.transpose(1, 2).contiguous(),
            D=_at_least_float32(D),
            z=z.contiguous(),
            delta_bias=_at_least_float32(dt_proj.bias),
            delta_softplus=True,
            backend=self.backend,
        )

    def forward_directions(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The two scan outputs before ``out_proj``, both in input time order.

        Args:
            x: ``(B, L, d_model)``.

        Returns:
            y_fwd, y_bwd: ``(B, E, L)`` each.
        """
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"BiMambaV2 expects input (B, L, {self.d_model}), got {tuple(x.shape)}"
            )
        xz = self.in_proj(x).transpose(1, 2)  # (B, 2E, L)
        y_fwd = self._scan(xz, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        y_bwd = self._scan(
            xz.flip(-1), self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b
        ).flip(-1)
        return y_fwd, y_bwd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, d_model) -> (B, L, d_model)``."""
        y_fwd, y_bwd = self.forward_directions(x)
        y = y_fwd + y_bwd
        if self.divide_out:
            y = y / 2
        return self.out_proj(y.transpose(1, 2))


class VimBlock(nn.Module):
    """Vim block: ``residual = residual + drop_path(hidden); hidden = mixer(norm(residual))``.

    Args:
        dim: Model width D.
        mixer: The token mixer (a :class:`BiMambaV2`).
        norm: "layer" or "rms".
        norm_eps: Epsilon of the norm.
        drop_path: Stochastic depth applied to the incoming ``hidden``.
        residual_in_fp32: Keep the residual stream in float32.
    """

    def __init__(
        self,
        dim: int,
        mixer: nn.Module,
        norm: str = "layer",
        norm_eps: float = 1e-5,
        drop_path: float = 0.0,
        residual_in_fp32: bool = False,
    ):
        super().__init__()
        self.mixer = mixer
        self.norm = _make_norm(norm, dim, norm_eps)
        self.drop_path = DropPath(drop_path)
        self.residual_in_fp32 = residual_in_fp32

    def forward(
        self, hidden: torch.Tensor, residual: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Applies the block.

        Args:
            hidden: Output of the previous block (or the embeddings), ``(B, L, D)``.
            residual: Residual stream before ``hidden`` is added, ``(B, L, D)``;
                None for the first block (the stream starts as ``hidden``).

        Returns:
            hidden: Mixer output ``(B, L, D)``.
            residual: Updated residual stream ``(B, L, D)``.
        """
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        hidden = self.mixer(self.norm(residual.to(self.norm.weight.dtype)))
        if self.residual_in_fp32:
            residual = residual.float()
        return hidden, residual


class _PatchEmbed(nn.Module):
    """Non-overlapping patches of a spectrogram ``(B, 1, F, T) -> (B, P, D)``, frequency-major."""

    def __init__(self, fshape: int, tshape: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=(fshape, tshape), stride=(fshape, tshape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionMamba(nn.Module):
    """The ``v`` submodule: Vim with the SSAMBA patch embedding and positional table."""

    def __init__(self, config: SSAMBAConfig):
        super().__init__()
        dim = config.embed_dim
        self.patch_embed = _PatchEmbed(config.fshape, config.tshape, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 1, dim))
        self.pos_drop = nn.Dropout(config.drop_rate)
        # Stochastic depth grows linearly over the layers; the first layer's input
        # has no mixer output yet, so layer i uses the rate of layer i - 1.
        rates = [0.0] + torch.linspace(0, config.drop_path_rate, config.depth).tolist()
        mamba_kwargs = dict(
            d_state=config.d_state,
            d_conv=config.d_conv,
            expand=config.expand,
            dt_rank=config.dt_rank,
            backend=config.backend,
        )
        self.layers = nn.ModuleList(
            VimBlock(
                dim,
                BiMambaV2(dim, divide_out=config.divide_out, **mamba_kwargs),
                norm=config.norm,
                norm_eps=config.norm_eps,
                drop_path=rates[i],
                residual_in_fp32=config.residual_in_fp32,
            )
            for i in range(config.depth)
        )
        self.norm_f = _make_norm(config.norm, dim, config.norm_eps)
        self.drop_path = DropPath(config.drop_path_rate)
        self.head = nn.Linear(dim, config.num_classes) if config.num_classes > 0 else None
