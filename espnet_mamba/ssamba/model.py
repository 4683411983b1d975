"""SSAMBA: self-supervised audio Mamba (Shams et al., arXiv 2405.11831).

SSAST's masked spectrogram patch model with its ViT replaced by Vision Mamba (Vim)
blocks. The module tree reproduces the public SSAMBA pretraining model, so its
state-dict keys and shapes are those of the public checkpoints (without the
``module.`` prefix that their DataParallel wrapper adds)::

    v.patch_embed.proj.{weight,bias}     Conv2d(1, D, (fshape, tshape), stride=(fshape, tshape))
    v.cls_token                          (1, 1, D)
    v.pos_embed                          (1, 1 + P, D), P = (F // fshape) * (T // tshape)
    v.layers.{i}.norm.weight[, .bias]    RMSNorm (weight) or LayerNorm (weight, bias)
    v.layers.{i}.mixer.*                 bidirectional Mamba "v2" (see BiMambaV2)
    v.norm_f.weight[, .bias]
    v.head.{weight,bias}                 Vim's classification head (unused here)
    cpredlayer.{0,2}.{weight,bias}       patch discrimination head, D -> D -> fshape * tshape
    gpredlayer.{0,2}.{weight,bias}       patch reconstruction head, D -> D -> fshape * tshape
    mask_embed                           (1, 1, D)
    p_input_fdim, p_input_tdim           input size of pretraining (int64 scalars)

Forward pass (as the public code runs it, with ``if_bidirectional``): the
spectrogram ``(F, T)`` is cut into non-overlapping patches, embedded, and ordered
frequency-major (patch ``f * t_dim + t``); a cls token goes in front and the
positional embedding is added. The 2K layers run in K pairs: layer ``2k`` reads the
sequence and layer ``2k + 1`` reads it reversed (cls token included); their outputs
and residual streams are added back in the original order. Each layer is a Vim
block: ``residual += hidden; hidden = mixer(norm(residual))``. Each mixer is itself
bidirectional (Vim's ``bimamba_type="v2"``): shared ``in_proj``, a forward and a
backward selective scan with separate convolution/projection/state parameters, the
two outputs averaged (``if_devide_out``) before the shared ``out_proj``.
"""

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from espnet_mamba.nn.mamba import Mamba
from espnet_mamba.nn.selective_scan import BACKENDS, selective_scan
from espnet_mamba.ssamba.features import (
    SAMPLE_RATE,
    compute_fbank,
    fbank_batch,
    waveforms_to_list,
)

__all__ = [
    "SIZES",
    "BiMambaV2",
    "LayerFeatures",
    "RMSNorm",
    "SSAMBA",
    "SSAMBAConfig",
    "VimBlock",
    "ssamba_config",
]

# Embedding size of each public model size; all have 24 layers.
SIZES = {"tiny": 192, "small": 384, "base": 768}
NORM_TYPES = ("layer", "rms")
OUTPUTS = ("residual", "mixer")
ORDERS = ("time", "model")


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """The scan parameters in float32 (half precision upcast; float64 kept)."""
    return t if t.dtype == torch.float64 else t.float()


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class SSAMBAConfig:
    """Hyperparameters of an SSAMBA model.

    The defaults are those of the public SSAMBA-base pretraining script.

    Attributes:
        embed_dim: Model width D (tiny 192, small 384, base 768).
        depth: Number of Vim layers (24 in the public models).
        input_fdim: Mel bins F of the input.
        input_tdim: Frames T of the input (target length; shorter input is
            zero-padded, longer input cut).
        fshape: Patch height in mel bins (patch stride equals the patch size).
        tshape: Patch width in frames.
        d_state: State size N of the selective scans.
        d_conv: Kernel size of the causal depthwise convolutions.
        expand: Inner size of the mixers is ``expand * embed_dim``.
        dt_rank: Rank of the step-size projection, or "auto" (``ceil(D / 16)``).
        norm: "layer" (LayerNorm, as the public pretraining script) or "rms".
        norm_eps: Epsilon of the norms.
        paired_layers: Run layers in forward/backward pairs (Vim's
            ``if_bidirectional``; true in the public models). Needs an even depth.
        divide_out: Average (rather than add) the two scan directions of each
            mixer (Vim's ``if_devide_out``).
        residual_in_fp32: Keep the residual stream in float32.
        num_classes: Outputs of Vim's classification head ``v.head`` (1000 in the
            public checkpoints; unused, kept for their keys); 0 for none.
        drop_path_rate: Stochastic depth of the last layer (linear in depth).
        drop_rate: Dropout after the positional embedding.
        sample_rate: Sample rate of the audio the fbank expects.
        norm_mean: Mean of the pretraining log-mel values (None: not known).
        norm_std: Standard deviation of the pretraining log-mel values.
        backend: Selective-scan backend, "auto", "torch" or "cuda".
    """

    embed_dim: int = 768
    depth: int = 24
    input_fdim: int = 128
    input_tdim: int = 1024
    fshape: int = 16
    tshape: int = 16
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: Union[int, str] = "auto"
    norm: str = "layer"
    norm_eps: float = 1e-5
    paired_layers: bool = True
    divide_out: bool = True
    residual_in_fp32: bool = False
    num_classes: int = 1000
    drop_path_rate: float = 0.1
    drop_rate: float = 0.0
    sample_rate: int = SAMPLE_RATE
    norm_mean: Optional[float] = None
    norm_std: Optional[float] = None
    backend: str = "auto"

    def __post_init__(self) -> None:
        for name in ("embed_dim", "depth", "input_fdim", "input_tdim", "fshape",
                     "tshape", "d_state", "d_conv", "expand", "sample_rate"):
            _positive_int(name, getattr(self, name))
        if self.dt_rank != "auto":
            _positive_int("dt_rank", self.dt_rank)
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) \
                or self.num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0, got {self.num_classes!r}")
        if self.norm not in NORM_TYPES:
            raise ValueError(f"norm must be one of {NORM_TYPES}, got {self.norm!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be positive, got {self.norm_eps!r}")
        if self.paired_layers and self.depth % 2:
            raise ValueError(f"depth must be even when paired_layers is true, got {self.depth}")
        if self.input_fdim < self.fshape:
            raise ValueError(
                f"input_fdim ({self.input_fdim}) must be at least fshape ({self.fshape})"
            )
        if self.input_tdim < self.tshape:
            raise ValueError(
                f"input_tdim ({self.input_tdim}) must be at least tshape ({self.tshape})"
            )
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate!r}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if (self.norm_mean is None) != (self.norm_std is None):
            raise ValueError("norm_mean and norm_std must be given together")
        if self.norm_std is not None and not self.norm_std > 0:
            raise ValueError(f"norm_std must be positive, got {self.norm_std!r}")

    @property
    def f_dim(self) -> int:
        """Patches along frequency."""
        return self.input_fdim // self.fshape

    @property
    def t_dim(self) -> int:
        """Patches along time."""
        return self.input_tdim // self.tshape

    @property
    def num_patches(self) -> int:
        """Patches per input, P = f_dim * t_dim."""
        return self.f_dim * self.t_dim

    @property
    def patch_dim(self) -> int:
        """Values per patch, fshape * tshape (the prediction heads' output size)."""
        return self.fshape * self.tshape

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict (YAML/JSON-friendly)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "SSAMBAConfig":
        """Builds a config from a dict, rejecting unknown keys.

        Raises:
            ValueError: Unknown keys or invalid values.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown SSAMBA config keys: {unknown}")
        return cls(**values)


def ssamba_config(size: str = "base", **overrides: Any) -> SSAMBAConfig:
    """Config of a public model size ("tiny", "small", "base"), with overrides.

    Raises:
        ValueError: Unknown size or bad overrides.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    values = {"embed_dim": SIZES[size], "depth": 24}
    values.update(overrides)
    return SSAMBAConfig(**values)


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


class _VisionMamba(nn.Module):
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


@dataclass
class LayerFeatures:
    """Layer-wise features of :meth:`SSAMBA.extract_layers`.

    Attributes:
        hidden_states: ``depth / 2 + 1`` tensors ``(B, P, D)`` (``depth + 1`` without
            paired layers): [0] the patch embeddings entering the first layer
            (positional embedding added), [i] the output of layer pair i. The cls
            token is left out; frames are patches.
        mask: ``(B, P)`` bool, True where a patch covers at least one real
            (not padded) fbank frame.
        lengths: ``(B,)`` int64, valid patches per item (``mask.sum(1)``).
        n_frames: ``(B,)`` int64, real fbank frames per item (after cutting to the
            target length).
        grid: ``(f_dim, t_dim)``, patches along frequency and time.
        order: "time" (patch ``t * f_dim + f``: valid patches come first, so
            ``mask`` is a prefix mask) or "model" (the model's frequency-major
            order ``f * t_dim + t``).
    """

    hidden_states: List[torch.Tensor]
    mask: torch.Tensor
    lengths: torch.Tensor
    n_frames: torch.Tensor
    grid: Tuple[int, int]
    order: str


class SSAMBA(nn.Module):
    """SSAMBA pretraining model (state-dict compatible with the public checkpoints).

    Args:
        config: Hyperparameters (see :class:`SSAMBAConfig`).

    Example:
        >>> cfg = SSAMBAConfig(embed_dim=32, depth=2, input_tdim=64, num_classes=0,
        ...                    norm_mean=-4.0, norm_std=4.0)
        >>> model = SSAMBA(cfg).eval()
        >>> feats = model.extract_layers([torch.randn(8000) * 0.1])
        >>> len(feats.hidden_states), feats.hidden_states[0].shape
        (2, torch.Size([1, 32, 32]))
    """

    def __init__(self, config: SSAMBAConfig):
        super().__init__()
        if not isinstance(config, SSAMBAConfig):
            raise ValueError(f"config must be an SSAMBAConfig, got {type(config).__name__}")
        self.config = config
        dim = config.embed_dim
        self.v = _VisionMamba(config)
        self.cpredlayer = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, config.patch_dim)
        )
        self.gpredlayer = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, config.patch_dim)
        )
        self.mask_embed = nn.Parameter(torch.zeros(1, 1, dim))
        # Pretraining input size, stored in the state dict as the public models do.
        self.register_buffer("p_input_fdim", torch.tensor(config.input_fdim))
        self.register_buffer("p_input_tdim", torch.tensor(config.input_tdim))
        self._init_weights()

    def _init_weights(self) -> None:
        """Vim/SSAST initialization."""
        v = self.v
        nn.init.trunc_normal_(v.pos_embed, std=0.02)
        nn.init.trunc_normal_(v.cls_token, std=0.02)
        if v.head is not None:
            nn.init.trunc_normal_(v.head.weight, std=0.02)
        for module in v.modules():
            # Linear biases start at zero, except the step-size bias of the scans.
            if isinstance(module, nn.Linear) and module.bias is not None:
                if not getattr(module.bias, "_no_reinit", False):
                    nn.init.zeros_(module.bias)
        for layer in v.layers:
            # Output projections scaled by 1/sqrt(depth) (GPT-2 style), as in Vim.
            weight = layer.mixer.out_proj.weight
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            with torch.no_grad():
                weight /= math.sqrt(self.config.depth)
        nn.init.xavier_normal_(self.mask_embed)

    @property
    def num_layer_outputs(self) -> int:
        """Layer outputs of :meth:`extract_layers` besides the input (pairs or layers)."""
        cfg = self.config
        return cfg.depth // 2 if cfg.paired_layers else cfg.depth

    def set_scan_backend(self, backend: str) -> None:
        """Selects the selective-scan backend ("auto", "torch", "cuda") of every layer.

        Raises:
            ValueError: Unknown backend.
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.config.backend = backend
        for layer in self.v.layers:
            layer.mixer.backend = backend

    # ------------------------------------------------------------------ core
    def patchify(self, feats: torch.Tensor) -> torch.Tensor:
        """Flattened patches of the model input, in the model's token order.

        Args:
            feats: Normalized input ``(B, T, F)`` with the model's T and F.

        Returns:
            ``(B, P, fshape * tshape)``; patch ``f * t_dim + t``, values ordered
            (frequency, time) within the patch.
        """
        cfg = self.config
        self._check_input(feats)
        spec = feats.transpose(1, 2)[:, None]  # (B, 1, F, T)
        patch = (cfg.fshape, cfg.tshape)
        return F.unfold(spec, kernel_size=patch, stride=patch).transpose(1, 2)

    def _check_input(self, feats: torch.Tensor) -> None:
        cfg = self.config
        if feats.dim() != 3 or feats.shape[1:] != (cfg.input_tdim, cfg.input_fdim):
            raise ValueError(
                f"SSAMBA expects input (B, {cfg.input_tdim}, {cfg.input_fdim}) "
                f"(frames padded or cut to input_tdim), got {tuple(feats.shape)}"
            )

    def embed(
        self, feats: torch.Tensor, masked: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Tokens entering the first layer.

        Args:
            feats: Normalized input ``(B, T, F)``.
            masked: Optional ``(B, P)`` bool; these patch embeddings are replaced by
                ``mask_embed`` (pretraining).

        Returns:
            ``(B, 1 + P, D)``: cls token, then the patches (frequency-major), with
            the positional embedding added.
        """
        self._check_input(feats)
        x = self.v.patch_embed(feats.transpose(1, 2)[:, None])  # (B, P, D)
        if masked is not None:
            x = torch.where(masked[..., None], self.mask_embed.to(x.dtype), x)
        cls = self.v.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.v.pos_embed
        return self.v.pos_drop(x)

    def run_layers(
        self, tokens: torch.Tensor, collect: bool = False, output: str = "residual"
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Runs the Vim layers and the final norm.

        Args:
            tokens: ``(B, L, D)`` from :meth:`embed`.
            collect: Also return the output of every layer pair (or layer).
            output: What a collected output is: "residual" (the residual stream
                the next layer reads, ``residual + hidden``) or "mixer" (the sum
                of the pair's mixer outputs, ``hidden``).

        Returns:
            final: ``norm_f(residual + hidden)`` after the last layer, ``(B, L, D)``.
            outputs: Collected ``(B, L, D)`` tensors (empty unless ``collect``).
        """
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        layers = self.v.layers
        hidden, residual = tokens, None
        outputs: List[torch.Tensor] = []

        def keep() -> None:
            if collect:
                outputs.append(residual + hidden if output == "residual" else hidden)

        if self.config.paired_layers:
            for k in range(0, len(layers), 2):
                hid_f, res_f = layers[k](hidden, residual)
                hid_b, res_b = layers[k + 1](
                    hidden.flip(1), None if residual is None else residual.flip(1)
                )
                hidden = hid_f + hid_b.flip(1)
                residual = res_f + res_b.flip(1)
                keep()
        else:
            for layer in layers:
                hidden, residual = layer(hidden, residual)
                keep()
        final = residual + self.v.drop_path(hidden)
        return self.v.norm_f(final.to(self.v.norm_f.weight.dtype)), outputs

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Final representation.

        Args:
            feats: Normalized input ``(B, T, F)``.

        Returns:
            ``(B, 1 + P, D)``: ``norm_f`` output, cls token first.
        """
        final, _ = self.run_layers(self.embed(feats))
        return final

    def head_input(self, final: torch.Tensor) -> torch.Tensor:
        """What the pretraining heads read: the public code applies ``norm_f`` to the
        already normalized output once more; kept so that public heads apply."""
        return self.v.norm_f(final)

    # -------------------------------------------------------------- features
    def valid_patch_mask(self, n_frames: torch.Tensor) -> torch.Tensor:
        """Patches covering at least one real frame, in the model's order.

        Args:
            n_frames: ``(B,)`` real frames per item (at most ``input_tdim``).

        Returns:
            ``(B, P)`` bool; patch ``f * t_dim + t`` is valid iff
            ``t * tshape < n_frames``.
        """
        cfg = self.config
        n_frames = torch.as_tensor(n_frames, dtype=torch.long)
        valid_t = (n_frames + cfg.tshape - 1) // cfg.tshape  # (B,)
        t = torch.arange(cfg.t_dim)
        mask_t = t[None, :] < valid_t[:, None]  # (B, t_dim)
        return mask_t[:, None, :].expand(-1, cfg.f_dim, -1).reshape(len(n_frames), -1)

    def _to_time_order(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, P, ...)`` frequency-major -> time-major (patch ``t * f_dim + f``)."""
        cfg = self.config
        rest = x.shape[2:]
        x = x.reshape(x.shape[0], cfg.f_dim, cfg.t_dim, *rest).transpose(1, 2)
        return x.reshape(x.shape[0], cfg.num_patches, *rest)

    def prepare_input(
        self,
        wavs: Optional[Any] = None,
        *,
        wav_lengths: Optional[Any] = None,
        sample_rate: int = SAMPLE_RATE,
        fbank: Optional[Any] = None,
        fbank_lengths: Optional[Any] = None,
        norm_mean: Optional[float] = None,
        norm_std: Optional[float] = None,
        names: Optional[Sequence[str]] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Waveforms or raw log-mel matrices -> normalized, padded model input.

        Exactly one of ``wavs`` and ``fbank`` must be given. See
        :meth:`extract_layers` for the arguments.

        Returns:
            feats: ``(B, input_tdim, input_fdim)``.
            n_frames: ``(B,)`` real frames per item.
        """
        cfg = self.config
        if (wavs is None) == (fbank is None):
            raise ValueError("give exactly one of wavs and fbank")
        norm_mean = cfg.norm_mean if norm_mean is None else norm_mean
        norm_std = cfg.norm_std if norm_std is None else norm_std
        if wavs is not None:
            if sample_rate != cfg.sample_rate:
                raise ValueError(
                    f"the model expects {cfg.sample_rate} Hz audio, got sample_rate="
                    f"{sample_rate}; resample first"
                )
            wav_list = waveforms_to_list(wavs, wav_lengths)
            names = names or [f"waveform {i}" for i in range(len(wav_list))]
            fbanks = [
                compute_fbank(w, sample_rate, cfg.input_fdim, name=n)
                for w, n in zip(wav_list, names)
            ]
        else:
            fbanks = waveforms_to_list(fbank, fbank_lengths, item_dim=2)
            names = names or [f"fbank {i}" for i in range(len(fbanks))]
        return fbank_batch(
            fbanks, cfg.input_tdim, norm_mean, norm_std, min_frames=cfg.tshape, names=names
        )

    @torch.no_grad()
    def forward_layers(
        self,
        feats: torch.Tensor,
        n_frames: Optional[torch.Tensor] = None,
        output: str = "residual",
        final_norm: bool = False,
        order: str = "time",
    ) -> LayerFeatures:
        """Layer-wise features of a normalized, padded input.

        Args:
            feats: ``(B, input_tdim, input_fdim)`` from :meth:`prepare_input`.
            n_frames: ``(B,)`` real frames per item (default: all frames real).
            output: "residual" or "mixer" (see :meth:`run_layers`).
            final_norm: Give the last entry after ``norm_f`` (the model's final
                output) instead of the raw last pair output.
            order: "time" or "model" (see :class:`LayerFeatures`).

        Returns:
            :class:`LayerFeatures`.
        """
        cfg = self.config
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if n_frames is None:
            n_frames = torch.full((feats.shape[0],), cfg.input_tdim, dtype=torch.long)
        n_frames = torch.as_tensor(n_frames, dtype=torch.long).cpu()
        if n_frames.shape != (feats.shape[0],):
            raise ValueError(
                f"n_frames must be ({feats.shape[0]},), got shape {tuple(n_frames.shape)}"
            )
        if (n_frames < 1).any() or (n_frames > cfg.input_tdim).any():
            raise ValueError(f"n_frames must lie in [1, {cfg.input_tdim}], got {n_frames.tolist()}")
        tokens = self.embed(feats)
        final, outputs = self.run_layers(tokens, collect=True, output=output)
        if final_norm:
            outputs[-1] = final
        hidden_states = [h[:, 1:] for h in [tokens] + outputs]  # drop the cls token
        mask = self.valid_patch_mask(n_frames).to(feats.device)
        if order == "time":
            hidden_states = [self._to_time_order(h) for h in hidden_states]
            mask = self._to_time_order(mask)
        return LayerFeatures(
            hidden_states=hidden_states,
            mask=mask,
            lengths=mask.sum(1),
            n_frames=n_frames,
            grid=(cfg.f_dim, cfg.t_dim),
            order=order,
        )

    @torch.no_grad()
    def extract_layers(
        self,
        wavs: Optional[Any] = None,
        *,
        wav_lengths: Optional[Any] = None,
        sample_rate: int = SAMPLE_RATE,
        fbank: Optional[Any] = None,
        fbank_lengths: Optional[Any] = None,
        norm_mean: Optional[float] = None,
        norm_std: Optional[float] = None,
        output: str = "residual",
        final_norm: bool = False,
        order: str = "time",
        names: Optional[Sequence[str]] = None,
    ) -> LayerFeatures:
        """Layer-wise features of waveforms (or of raw log-mel matrices).

        Each item is turned into a log-mel matrix as SSAMBA does, zero-padded (or
        cut) to ``input_tdim`` frames, normalized, and run through the model; the
        patches are the frames of the returned features. Call ``model.eval()``
        first (dropout and stochastic depth are active in training mode).

        Args:
            wavs: One waveform ``(L,)``, a padded batch ``(B, L)`` (with
                ``wav_lengths``) or a list of 1-D waveforms; float in [-1, 1].
            wav_lengths: Real lengths of a padded waveform batch.
            sample_rate: Sample rate of ``wavs`` (must be the model's, 16 kHz).
            fbank: Instead of ``wavs``: raw (not normalized, not padded) log-mel
                matrices, a list of ``(T_b, F)`` or a padded ``(B, T, F)`` with
                ``fbank_lengths``.
            fbank_lengths: Real frames of a padded fbank batch.
            norm_mean: Log-mel mean of the pretraining data (default: the
                config's; required when the config has none).
            norm_std: Log-mel standard deviation of the pretraining data.
            output: "residual" (residual stream after each pair) or "mixer".
            final_norm: Last entry after the final norm (see :meth:`forward_layers`).
            order: "time" (valid patches first) or "model".
            names: Item names for error messages.

        Returns:
            :class:`LayerFeatures` with ``depth / 2 + 1`` hidden states.

        Raises:
            ValueError: Missing normalization statistics, another sample rate, an
                item shorter than one patch (``tshape`` frames), bad shapes.
        """
        feats, n_frames = self.prepare_input(
            wavs,
            wav_lengths=wav_lengths,
            sample_rate=sample_rate,
            fbank=fbank,
            fbank_lengths=fbank_lengths,
            norm_mean=norm_mean,
            norm_std=norm_std,
            names=names,
        )
        device = self.v.pos_embed.device
        return self.forward_layers(
            feats.to(device), n_frames, output=output, final_norm=final_norm, order=order
        )
