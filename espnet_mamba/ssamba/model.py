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
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from espnet_mamba.nn.selective_scan import BACKENDS
from espnet_mamba.ssamba.config import SSAMBAConfig
from espnet_mamba.ssamba.extraction import LayerExtraction
from espnet_mamba.ssamba.vim import VisionMamba

__all__ = ["OUTPUTS", "SSAMBA"]

OUTPUTS = ("residual", "mixer")


class SSAMBA(LayerExtraction, nn.Module):
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
        self.v = VisionMamba(config)
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
