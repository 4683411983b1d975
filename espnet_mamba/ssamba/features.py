"""SSAMBA / SSAST input features: Kaldi log-mel filterbanks, normalized and padded.

The public SSAMBA (and SSAST) data loader turns a waveform into the model input in
three steps, reproduced here:

1. the waveform minus its mean goes through ``torchaudio.compliance.kaldi.fbank``
   with ``htk_compat=True``, ``use_energy=False``, a Hanning window, ``dither=0``,
   a 10 ms shift (25 ms window) and 128 mel bins;
2. the ``(T, 128)`` log-mel matrix is zero-padded at the end to the model's target
   length (or cut to it);
3. every value, padding included, is normalized as ``(x - mean) / (2 * std)`` with
   the mean and standard deviation of the pretraining corpus.

The statistics belong to the checkpoint: the public SSAMBA models were pretrained
on AudioSet + LibriSpeech with :data:`PUBLIC_NORM_STATS`; a model pretrained with
``espnet_mamba.bin.ssamba_train`` stores its own.
"""

import math
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = [
    "FRAME_LENGTH_MS",
    "FRAME_SHIFT_MS",
    "PUBLIC_NORM_STATS",
    "SAMPLE_RATE",
    "check_norm_stats",
    "compute_fbank",
    "fbank_batch",
    "fbank_statistics",
    "min_samples",
    "num_fbank_frames",
    "waveforms_to_list",
]

SAMPLE_RATE = 16000
FRAME_SHIFT_MS = 10.0
FRAME_LENGTH_MS = 25.0
# Mean and standard deviation of the log-mel values of the public SSAMBA
# pretraining data (AudioSet + LibriSpeech), from its pretraining script.
PUBLIC_NORM_STATS = (-4.2677393, 4.5689974)

AudioLike = Union[torch.Tensor, np.ndarray]


def _window_samples(sample_rate: int) -> Tuple[int, int]:
    """(window length, window shift) in samples."""
    return (
        int(sample_rate * FRAME_LENGTH_MS / 1000.0),
        int(sample_rate * FRAME_SHIFT_MS / 1000.0),
    )


def min_samples(sample_rate: int = SAMPLE_RATE) -> int:
    """Fewest samples that give one fbank frame (one 25 ms window)."""
    return _window_samples(sample_rate)[0]


def num_fbank_frames(num_samples: int, sample_rate: int = SAMPLE_RATE) -> int:
    """Number of fbank frames of ``num_samples`` samples (Kaldi ``snip_edges``)."""
    window, shift = _window_samples(sample_rate)
    if num_samples < window:
        return 0
    return 1 + (num_samples - window) // shift


def compute_fbank(
    wav: AudioLike,
    sample_rate: int = SAMPLE_RATE,
    num_mel_bins: int = 128,
    name: str = "waveform",
) -> torch.Tensor:
    """Log-mel filterbank of one waveform, as SSAMBA/SSAST compute it.

    Args:
        wav: Mono waveform, ``(L,)`` or ``(1, L)``, float values in [-1, 1]
            (as soundfile/torchaudio read them).
        sample_rate: Sample rate of ``wav`` in Hz.
        num_mel_bins: Number of mel bins F.
        name: How error messages call the waveform (e.g. an utterance id).

    Returns:
        fbank: ``(T, F)`` float32, not normalized and not padded.

    Raises:
        ValueError: Not mono, not finite, or shorter than one 25 ms window.
    """
    from torchaudio.compliance import kaldi  # Deferred: torchaudio imports slowly.

    wav = torch.as_tensor(wav)
    if wav.dim() == 2 and wav.shape[0] == 1:
        wav = wav[0]
    if wav.dim() != 1:
        raise ValueError(
            f"{name}: expected a mono waveform (L,) or (1, L), got shape {tuple(wav.shape)}"
        )
    if not torch.is_floating_point(wav):
        raise ValueError(f"{name}: expected float samples in [-1, 1], got {wav.dtype}")
    if wav.shape[0] < min_samples(sample_rate):
        raise ValueError(
            f"{name}: {wav.shape[0]} samples is shorter than one fbank window "
            f"({min_samples(sample_rate)} samples at {sample_rate} Hz)"
        )
    wav = wav.to(torch.float32)
    if not torch.isfinite(wav).all():
        raise ValueError(f"{name}: waveform holds NaN or inf")
    wav = wav - wav.mean()
    return kaldi.fbank(
        wav[None],
        htk_compat=True,
        sample_frequency=float(sample_rate),
        use_energy=False,
        window_type="hanning",
        num_mel_bins=num_mel_bins,
        dither=0.0,
        frame_shift=FRAME_SHIFT_MS,
        frame_length=FRAME_LENGTH_MS,
    )


def check_norm_stats(norm_mean: Optional[float], norm_std: Optional[float]) -> Tuple[float, float]:
    """Validates the mel normalization statistics.

    Raises:
        ValueError: A statistic is missing, not finite, or ``norm_std <= 0``.
    """
    if norm_mean is None or norm_std is None:
        raise ValueError(
            "the mel normalization (norm_mean, norm_std) is not set: SSAMBA inputs are "
            "(fbank - mean) / (2 * std) with the statistics of the pretraining data. "
            "Pass norm_mean/norm_std (the public SSAMBA checkpoints use "
            f"{PUBLIC_NORM_STATS}), or use a checkpoint that stores them"
        )
    norm_mean, norm_std = float(norm_mean), float(norm_std)
    if not math.isfinite(norm_mean):
        raise ValueError(f"norm_mean must be finite, got {norm_mean}")
    if not (math.isfinite(norm_std) and norm_std > 0):
        raise ValueError(f"norm_std must be a positive finite number, got {norm_std}")
    return norm_mean, norm_std


def fbank_batch(
    fbanks: Sequence[torch.Tensor],
    target_length: int,
    norm_mean: Optional[float],
    norm_std: Optional[float],
    min_frames: int = 1,
    names: Optional[Sequence[str]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pads or cuts log-mel matrices to ``target_length`` frames and normalizes them.

    As in SSAMBA's data loader, padding is zeros in the log-mel domain, added
    before the normalization (so padded frames hold ``-mean / (2 * std)``).

    Args:
        fbanks: B matrices ``(T_b, F)`` from :func:`compute_fbank`.
        target_length: Frames per model input.
        norm_mean: Mean of the pretraining log-mel values.
        norm_std: Standard deviation of the pretraining log-mel values.
        min_frames: Fewest frames accepted per item (e.g. one patch).
        names: Names of the items for error messages (default: their indices).

    Returns:
        feats: ``(B, target_length, F)`` normalized model input.
        n_frames: ``(B,)`` int64, real (not padded) frames of each item after
        cutting, ``min(T_b, target_length)``.

    Raises:
        ValueError: Missing or bad statistics, an empty batch, a bad item shape,
            or an item shorter than ``min_frames``.
    """
    norm_mean, norm_std = check_norm_stats(norm_mean, norm_std)
    if target_length < 1:
        raise ValueError(f"target_length must be >= 1, got {target_length}")
    if len(fbanks) == 0:
        raise ValueError("fbank_batch needs at least one item")
    num_bins = fbanks[0].shape[-1]
    feats = torch.zeros(len(fbanks), target_length, num_bins)
    n_frames = torch.zeros(len(fbanks), dtype=torch.long)
    for i, fbank in enumerate(fbanks):
        name = names[i] if names is not None else f"item {i}"
        if fbank.dim() != 2 or fbank.shape[1] != num_bins:
            raise ValueError(
                f"{name}: expected a (T, {num_bins}) fbank, got shape {tuple(fbank.shape)}"
            )
        if fbank.shape[0] < min_frames:
            raise ValueError(
                f"{name}: {fbank.shape[0]} fbank frames is shorter than one patch "
                f"({min_frames} frames of {FRAME_SHIFT_MS:g} ms)"
            )
        keep = min(fbank.shape[0], target_length)
        feats[i, :keep] = fbank[:keep].to(torch.float32)
        n_frames[i] = keep
    feats = (feats - norm_mean) / (2.0 * norm_std)
    return feats, n_frames


def fbank_statistics(fbanks: Sequence[torch.Tensor]) -> Tuple[float, float]:
    """Mean and standard deviation of all log-mel values of a set of utterances.

    Only real frames count (no padding), computed in float64.

    Args:
        fbanks: Matrices ``(T_b, F)`` from :func:`compute_fbank`.

    Returns:
        (mean, std) as Python floats.

    Raises:
        ValueError: No frames at all, or zero variance.
    """
    total = 0
    sum_x = 0.0
    sum_xx = 0.0
    for fbank in fbanks:
        values = fbank.to(torch.float64)
        total += values.numel()
        sum_x += float(values.sum())
        sum_xx += float((values * values).sum())
    if total == 0:
        raise ValueError("fbank_statistics: no frames to compute statistics from")
    mean = sum_x / total
    var = max(sum_xx / total - mean * mean, 0.0)
    if var <= 0.0:
        raise ValueError("fbank_statistics: the log-mel values have zero variance")
    return mean, math.sqrt(var)


def waveforms_to_list(
    items: Union[AudioLike, Sequence[AudioLike]],
    lengths: Optional[Union[torch.Tensor, Sequence[int]]] = None,
    item_dim: int = 1,
) -> List[torch.Tensor]:
    """Turns the accepted batch containers into a list of unpadded tensors.

    Args:
        items: One item (``item_dim`` dims), a padded batch (``item_dim + 1``
            dims, padded along dim 1) or a sequence of items.
        lengths: With a padded batch, the real length of each row.
        item_dim: Dimensions of one item: 1 for waveforms ``(L,)``, 2 for fbank
            matrices ``(T, F)``.

    Returns:
        List of B tensors.

    Raises:
        ValueError: Bad shapes or lengths.
    """
    what = "waveform" if item_dim == 1 else "fbank"
    if isinstance(items, (torch.Tensor, np.ndarray)):
        items = torch.as_tensor(items)
        if items.dim() == item_dim:
            items = items[None]
        if items.dim() != item_dim + 1:
            raise ValueError(
                f"{what} input must have {item_dim} (one item) or {item_dim + 1} (a padded "
                f"batch) dimensions, got shape {tuple(items.shape)}"
            )
        if lengths is None:
            return list(items)
        lengths = [int(n) for n in torch.as_tensor(lengths).reshape(-1).tolist()]
        if len(lengths) != items.shape[0]:
            raise ValueError(
                f"{what} lengths has {len(lengths)} entries for a batch of {items.shape[0]}"
            )
        for i, n in enumerate(lengths):
            if not 0 < n <= items.shape[1]:
                raise ValueError(f"{what} length {i} = {n} is outside [1, {items.shape[1]}]")
        return [items[i, :n] for i, n in enumerate(lengths)]
    if lengths is not None:
        raise ValueError(f"{what} lengths are only for a padded batch tensor")
    out = [torch.as_tensor(item) for item in items]
    if not out:
        raise ValueError(f"empty {what} list")
    return out
