"""SSAMBA (self-supervised audio Mamba): model, checkpoints, features, pretraining.

Typical use, on a public checkpoint::

    from espnet_mamba.ssamba import PUBLIC_NORM_STATS, load_ssamba
    model = load_ssamba("ssamba_tiny_400.pth", size="tiny",
                        norm_mean=PUBLIC_NORM_STATS[0], norm_std=PUBLIC_NORM_STATS[1])
    feats = model.extract_layers([wav])  # wav: 16 kHz float tensor (L,)
    feats.hidden_states  # 13 tensors (B, P, D): X, then one per layer pair
    feats.lengths        # valid patches per utterance
"""

from espnet_mamba.ssamba.checkpoint import (
    infer_config,
    load_ssamba,
    read_checkpoint,
    save_ssamba,
)
from espnet_mamba.ssamba.config import SIZES, SSAMBAConfig, ssamba_config
from espnet_mamba.ssamba.extraction import LayerFeatures
from espnet_mamba.ssamba.features import PUBLIC_NORM_STATS, compute_fbank, fbank_batch
from espnet_mamba.ssamba.model import SSAMBA
from espnet_mamba.ssamba.vim import BiMambaV2, VimBlock
from espnet_mamba.ssamba.pretrain import PretrainLoss, cluster_mask, pretrain_loss

__all__ = [
    "PUBLIC_NORM_STATS",
    "SIZES",
    "SSAMBA",
    "BiMambaV2",
    "LayerFeatures",
    "PretrainLoss",
    "SSAMBAConfig",
    "VimBlock",
    "cluster_mask",
    "compute_fbank",
    "fbank_batch",
    "infer_config",
    "load_ssamba",
    "pretrain_loss",
    "read_checkpoint",
    "save_ssamba",
    "ssamba_config",
]
