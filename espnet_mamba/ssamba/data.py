"""Audio lists for SSAMBA pretraining: Kaldi ``wav.scp`` files and audio reading."""

from pathlib import Path
from typing import List, Tuple, Union

import numpy as np
import soundfile
import torch

__all__ = ["audio_num_samples", "read_audio", "read_wav_scp"]


def read_wav_scp(path: Union[str, Path]) -> List[Tuple[str, str]]:
    """Reads a Kaldi ``wav.scp`` of the form ``<utt> <audio file>``.

    Relative audio paths are taken relative to the current directory (as Kaldi
    and ESPnet do).

    Args:
        path: The wav.scp file.

    Returns:
        ``[(utt, audio path), ...]`` in file order.

    Raises:
        FileNotFoundError: No such file.
        ValueError: A malformed line, a piped command (``... |``), a repeated
            utterance id, or no entries; the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such wav.scp file")
    entries: List[Tuple[str, str]] = []
    seen = set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise ValueError(f"{path}:{lineno}: expected '<utt> <audio file>', got {line!r}")
            utt, audio = parts[0], parts[1].strip()
            if audio.endswith("|"):
                raise ValueError(
                    f"{path}:{lineno}: piped command entries are not supported ({audio!r}); "
                    "use the dumped wav.scp (dump/raw/<set>/wav.scp) with audio files"
                )
            if utt in seen:
                raise ValueError(f"{path}:{lineno}: utterance id {utt!r} appears twice")
            seen.add(utt)
            entries.append((utt, audio))
    if not entries:
        raise ValueError(f"{path}: no entries")
    return entries


def audio_num_samples(path: Union[str, Path]) -> Tuple[int, int]:
    """(samples, sample rate) of an audio file, from its header.

    Raises:
        ValueError: Unreadable file (the message names it).
    """
    try:
        info = soundfile.info(str(path))
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"{path}: cannot read audio ({exc})") from exc
    return int(info.frames), int(info.samplerate)


def read_audio(path: Union[str, Path], sample_rate: int) -> torch.Tensor:
    """Reads a mono audio file as float32 samples in [-1, 1].

    Args:
        path: Audio file (any format soundfile reads: wav, flac, ...).
        sample_rate: Required sample rate.

    Returns:
        ``(L,)`` float32.

    Raises:
        ValueError: Unreadable file, another sample rate, or several channels.
    """
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"{path}: cannot read audio ({exc})") from exc
    if rate != sample_rate:
        raise ValueError(f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz")
    if data.shape[1] != 1:
        raise ValueError(f"{path}: {data.shape[1]} channels, expected mono")
    return torch.from_numpy(np.ascontiguousarray(data[:, 0]))
