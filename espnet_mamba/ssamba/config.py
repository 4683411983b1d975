"""SSAMBA's hyperparameters: :class:`SSAMBAConfig` and the public model sizes."""

from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Optional, Union

from espnet_mamba.io import check_int
from espnet_mamba.nn.selective_scan import BACKENDS
from espnet_mamba.ssamba.features import SAMPLE_RATE

__all__ = ["NORM_TYPES", "SIZES", "SSAMBAConfig", "ssamba_config"]

# Embedding size of each public model size; all have 24 layers.
SIZES = {"tiny": 192, "small": 384, "base": 768}
NORM_TYPES = ("layer", "rms")


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
            check_int(name, getattr(self, name))
        if self.dt_rank != "auto":
            check_int("dt_rank", self.dt_rank)
        check_int("num_classes", self.num_classes, 0)
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
