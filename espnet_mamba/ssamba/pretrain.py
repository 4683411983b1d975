"""SSAST's joint pretraining objective for SSAMBA.

Some patches of each spectrogram are masked (their embeddings replaced by
``mask_embed``), and from the model's output at each masked position

* the generative head ``gpredlayer`` reconstructs the patch (mean squared error);
* the discriminative head ``cpredlayer`` must pick the right patch among all masked
  patches of the same utterance (InfoNCE: a softmax over the dot products of each
  true patch with every prediction).

The loss is ``nce + mse_weight * mse`` (SSAST uses 10). SSAST runs the two
objectives as two forward passes with different masks; here one masked pass feeds
both heads, which halves the cost.

Masks are clusters of patches, as SSAST's patch masking: squares of ``c x c``
patches (``c`` drawn from {3, 4, 5} per utterance) at random places, in the
frequency x time patch grid, until enough patches are covered. Unlike SSAST, the
squares do not wrap around from one frequency row to the next, and only patches
that cover real (not padded) frames are masked; the number masked per utterance is
``min(mask_patch, floor(max_mask_fraction * valid patches))``.
"""

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from espnet_mamba.ssamba.model import SSAMBA

__all__ = ["PretrainLoss", "cluster_mask", "pretrain_loss"]


def cluster_mask(
    f_dim: int,
    valid_t: int,
    t_dim: int,
    n_mask: int,
    generator: Optional[torch.Generator] = None,
    cluster_sizes=(3, 4, 5),
) -> torch.Tensor:
    """Indices of patches to mask, in clusters, within the valid time range.

    Args:
        f_dim: Patches along frequency.
        valid_t: Valid patches along time (the first ``valid_t`` columns).
        t_dim: Patches along time in the model (row length of the index).
        n_mask: How many patches to mask, at most ``f_dim * valid_t``.
        generator: Random generator.
        cluster_sizes: Candidate square sizes (one drawn per call).

    Returns:
        ``(n_mask,)`` int64 distinct indices ``f * t_dim + t`` with ``t < valid_t``.

    Raises:
        ValueError: ``n_mask`` out of range or bad grid sizes.
    """
    if f_dim < 1 or t_dim < 1 or not 1 <= valid_t <= t_dim:
        raise ValueError(f"bad patch grid: f_dim={f_dim}, valid_t={valid_t}, t_dim={t_dim}")
    if not 1 <= n_mask <= f_dim * valid_t:
        raise ValueError(f"n_mask must be in [1, {f_dim * valid_t}], got {n_mask}")
    size = cluster_sizes[int(torch.randint(len(cluster_sizes), (1,), generator=generator))]
    chosen = torch.zeros(f_dim, valid_t, dtype=torch.bool)
    order: List[torch.Tensor] = []
    count = 0
    while count < n_mask:
        f0 = int(torch.randint(f_dim, (1,), generator=generator))
        t0 = int(torch.randint(valid_t, (1,), generator=generator))
        block = torch.zeros_like(chosen)
        block[f0:f0 + size, t0:t0 + size] = True
        new = block & ~chosen
        if new.any():
            chosen |= new
            idx = new.nonzero()  # (k, 2) rows of (f, t)
            order.append(idx[:, 0] * t_dim + idx[:, 1])
            count += idx.shape[0]
    return torch.cat(order)[:n_mask]


@dataclass
class PretrainLoss:
    """Result of :func:`pretrain_loss` (all scalar tensors).

    Attributes:
        loss: ``nce + mse_weight * mse`` (differentiable).
        nce: InfoNCE of the discriminative head, averaged over masked patches.
        mse: Reconstruction error, averaged over masked patch values.
        acc: Fraction of predictions whose best-matching patch is the right one.
        n_masked: Total masked patches in the batch.
    """

    loss: torch.Tensor
    nce: torch.Tensor
    mse: torch.Tensor
    acc: torch.Tensor
    n_masked: int


def pretrain_loss(
    model: SSAMBA,
    feats: torch.Tensor,
    n_frames: torch.Tensor,
    mask_patch: int = 400,
    max_mask_fraction: float = 0.75,
    mse_weight: float = 10.0,
    generator: Optional[torch.Generator] = None,
) -> PretrainLoss:
    """Masked patch discrimination + reconstruction loss of a batch.

    Args:
        model: The SSAMBA model.
        feats: Normalized, padded input ``(B, input_tdim, input_fdim)``.
        n_frames: ``(B,)`` real frames per item.
        mask_patch: Most patches masked per utterance.
        max_mask_fraction: Most masked fraction of an utterance's valid patches.
        mse_weight: Weight of the reconstruction term.
        generator: Random generator of the masks (CPU).

    Returns:
        :class:`PretrainLoss`.

    Raises:
        ValueError: Bad hyperparameters or inputs.
    """
    if mask_patch < 1:
        raise ValueError(f"mask_patch must be >= 1, got {mask_patch}")
    if not 0.0 < max_mask_fraction <= 1.0:
        raise ValueError(f"max_mask_fraction must be in (0, 1], got {max_mask_fraction}")
    if mse_weight < 0:
        raise ValueError(f"mse_weight must be >= 0, got {mse_weight}")
    cfg = model.config
    n_frames = torch.as_tensor(n_frames, dtype=torch.long).cpu()
    batch = feats.shape[0]
    if n_frames.shape != (batch,):
        raise ValueError(f"n_frames must be ({batch},), got shape {tuple(n_frames.shape)}")
    if (n_frames < cfg.tshape).any():
        raise ValueError(
            f"every item needs at least one patch ({cfg.tshape} frames), got {n_frames.tolist()}"
        )
    masked, index = _batch_masks(cfg, n_frames, mask_patch, max_mask_fraction, generator)
    masked = masked.to(feats.device)
    index = [idx.to(feats.device) for idx in index]

    target = model.patchify(feats)  # (B, P, patch_dim), no gradient needed
    final, _ = model.run_layers(model.embed(feats, masked))
    out = model.head_input(final)[:, 1:]  # (B, P, D) without the cls token
    nce, mse, acc, total = _head_losses(model, out, target, index)
    return PretrainLoss(loss=nce + mse_weight * mse, nce=nce, mse=mse, acc=acc, n_masked=total)


def _batch_masks(cfg, n_frames: torch.Tensor, mask_patch: int, max_mask_fraction: float,
                 generator: Optional[torch.Generator]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Cluster masks of a batch of ``n_frames`` ``(B,)`` real frames: ``(B, P)`` True at
    the masked patches, and each item's masked patch indices in drawing order (CPU)."""
    batch = n_frames.shape[0]
    valid_t = ((n_frames.clamp(max=cfg.input_tdim) + cfg.tshape - 1) // cfg.tshape).tolist()
    index = []
    masked = torch.zeros(batch, cfg.num_patches, dtype=torch.bool)
    for b in range(batch):
        n_valid = cfg.f_dim * valid_t[b]
        n_mask = max(2, min(mask_patch, int(max_mask_fraction * n_valid)))
        n_mask = min(n_mask, n_valid)
        idx = cluster_mask(cfg.f_dim, valid_t[b], cfg.t_dim, n_mask, generator)
        masked[b, idx] = True
        index.append(idx)
    return masked, index


def _head_losses(model: SSAMBA, out: torch.Tensor, target: torch.Tensor,
                 index: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """InfoNCE and reconstruction error of the two heads at the masked patches ``index``
    of the model output ``out`` ``(B, P, D)`` against the patches ``target``
    ``(B, P, patch_dim)``: ``(nce, mse, acc, n_masked)``."""
    nce_sum = target.new_zeros(())
    sq_sum = target.new_zeros(())
    correct = 0
    total = 0
    for b, idx in enumerate(index):
        h = out[b, idx]  # (n, D)
        true = target[b, idx]  # (n, patch_dim)
        pred_c = model.cpredlayer(h)
        pred_g = model.gpredlayer(h)
        scores = true @ pred_c.T  # (n, n): row i = true patch i vs every prediction
        nce_sum = nce_sum - torch.diagonal(F.log_softmax(scores, dim=-1)).sum()
        with torch.no_grad():
            # A prediction is right when its best-scoring true patch is its own.
            best = scores.argmax(dim=0)
            correct += int((best == torch.arange(len(best), device=best.device)).sum())
        sq_sum = sq_sum + ((pred_g - true) ** 2).sum()
        total += h.shape[0]
    mse = sq_sum / (total * model.config.patch_dim)
    return nce_sum / total, mse, torch.tensor(correct / total), total
