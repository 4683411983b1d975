"""Audio of the MI analysis: ``wav.scp`` entries as mono waveforms at a model's sample rate.

Reading goes through the project's one audio reader, :func:`espnet_mamba.io.read_audio`.
"""

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from analysis.extractors import ExtractionError
from espnet_mamba.io import AudioError, read_audio

__all__ = ["load_audio", "load_waveforms"]


def load_audio(spec: str, root: Optional[Path] = None, name: str = "audio") -> Tuple[np.ndarray, int]:
    """Read one ``wav.scp`` entry as a mono float32 waveform in [-1, 1] (channels averaged).

    Args:
        spec: A file path (relative paths are taken from ``root``), a Kaldi
            ``file.ark:offset`` entry, or a shell command ending in ``|`` whose
            output is an audio file.
        root: Directory relative paths and commands start from (the recipe root).
        name: Utterance id for error messages.

    Returns:
        ``(samples,)`` float32 and the sample rate.

    Raises:
        ExtractionError: The audio cannot be read or is empty (the message names the
            utterance and the entry).
    """
    try:
        data, rate = read_audio(spec, root, name)
    except AudioError as e:
        raise ExtractionError(str(e)) from e
    return np.ascontiguousarray(data.mean(axis=1), dtype=np.float32), rate


def load_waveforms(utterances: Sequence[Tuple[str, str]], root: Path, sample_rate: int) -> List[torch.Tensor]:
    """The waveforms ``(samples,)`` of ``[(utterance id, wav.scp entry), ...]``, resampled to
    ``sample_rate``.

    Raises:
        ExtractionError: An entry cannot be read.
    """
    import torchaudio

    wavs = []
    for utt, spec in utterances:
        audio, rate = load_audio(spec, root, name=utt)
        wav = torch.from_numpy(audio)
        if rate != sample_rate:
            wav = torchaudio.functional.resample(wav, rate, sample_rate)
        wavs.append(wav)
    return wavs
