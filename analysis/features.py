"""Layer features for the MI analysis: waveforms in, one model's feature cache out.

:func:`extract_features` reads the utterances (:mod:`analysis.audio`), runs them through
a model's extractor (:mod:`analysis.extractors`: ``[X, T_1, ..., T_N]`` per utterance,
only real frames), crops them if asked, pairs X with every layer's frames
(:mod:`analysis.pairing`) and writes the cache (:mod:`analysis.feature_cache`), whose
identity (hashes of the checkpoint, config, utterance list and extraction options)
the caller stores to decide later whether it can be reused.

Extractors whose models are padding-safe run ``batch_size`` utterances at a time; the
others one utterance at a time, so a padded batch never changes an utterance's features.

This module is the extraction step's public face: the names a driver needs
(:func:`build_extractor`, :class:`FeatureStore`, :func:`file_digest` ...) are
importable from here; each lives in the module named in its docstring.
"""

import math
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch

from analysis.audio import load_audio, load_waveforms
from analysis.extractors import EXTRACTORS, ExtractionError, LayerExtractor, build_extractor, register_extractor
from analysis.feature_cache import FeatureStore, feature_writer, file_digest
from analysis.pairing import align_frames, pair_with_layers

__all__ = [
    "EXTRACTORS",
    "ExtractionError",
    "FeatureStore",
    "LayerExtractor",
    "align_frames",
    "build_extractor",
    "extract_features",
    "file_digest",
    "load_audio",
    "register_extractor",
]


def _batches(lengths: Sequence[int], batch_size: int) -> Iterator[List[int]]:
    """Indices grouped into batches of similar length (longest first)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def _crop(arrays: List[torch.Tensor], max_frames: Optional[int]) -> List[torch.Tensor]:
    """Keep at most ``max_frames`` frames of X and the same stretch of audio in other layers."""
    if max_frames is None:
        return arrays
    n_x = arrays[0].shape[0]
    out = []
    for a in arrays:
        keep = min(a.shape[0], math.ceil(max_frames * a.shape[0] / max(n_x, 1)))
        out.append(a[:keep])
    return out


def _checked(layers: List[torch.Tensor], extractor: LayerExtractor, utt: str) -> List[torch.Tensor]:
    """``layers`` of one utterance, or ExtractionError for a wrong count or NaN/inf values."""
    name = extractor.entry.name
    if len(layers) != len(extractor.layer_names):
        raise ExtractionError(
            f"model {name}: utterance {utt}: {len(layers)} layer arrays, expected "
            f"{len(extractor.layer_names)} ({extractor.layer_names[:3]} ...)"
        )
    for array, layer in zip(layers, extractor.layer_names):
        if not bool(torch.isfinite(array).all()):
            raise ExtractionError(f"model {name}: utterance {utt}: layer {layer} has NaN or infinite values")
    return layers


def extract_features(
    extractor: LayerExtractor,
    utterances: Sequence[Tuple[str, str]],
    cache_path,
    identity: dict,
    audio_root: Path,
    batch_size: int = 8,
    max_frames: Optional[int] = None,
    cache_dtype: str = "float16",
    progress: Optional[Callable[[int], None]] = None,
) -> FeatureStore:
    """Extracts every utterance's layers with ``extractor`` and writes the cache.

    Args:
        extractor: A loaded extractor.
        utterances: ``[(utterance id, wav.scp entry), ...]``.
        cache_path: Where the cache file goes (it appears only when complete).
        identity: Stored in the footer; the caller compares it to decide whether a
            cache can be reused.
        audio_root: Directory relative audio paths start from.
        batch_size: Utterances per forward pass (padding-safe extractors only).
        max_frames: Keep at most this many frames of X per utterance (other layers:
            the same stretch of audio); None keeps all.
        cache_dtype: "float16" or "float32".
        progress: Called with the number of utterances done after each batch.

    Returns:
        The written :class:`FeatureStore`; ``store.pair(utt, i)`` gives layer i with
        its paired X.

    Raises:
        ExtractionError: Unreadable audio, NaN/inf features, a layer count that
            differs from ``extractor.layer_names``, or a model failure.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    name = extractor.entry.name
    wavs = load_waveforms(utterances, audio_root, extractor.sample_rate)
    with feature_writer(cache_path, dtype=cache_dtype) as writer:
        for batch in _batches([len(w) for w in wavs], batch_size if extractor.padding_safe else 1):
            ids = [utterances[i][0] for i in batch]
            try:
                outputs = extractor.extract([wavs[i] for i in batch], ids)
            except ExtractionError:
                raise
            except Exception as e:  # model errors (too short input, shape errors ...)
                raise ExtractionError(f"model {name}: extraction failed on {ids[:3]}: {type(e).__name__}: {e}") from e
            for utt, layers in zip(ids, outputs):
                layers = _crop(_checked(layers, extractor, utt), max_frames)
                extra, x_index = pair_with_layers(layers)
                writer.add(utt, [t.numpy() for t in layers], [t.numpy() for t in extra], x_index)
            if progress is not None:
                progress(len(batch))
        meta = dict(identity)
        meta.update({
            "layer_names": extractor.layer_names,
            "boundary": extractor.boundary,
            "x_description": extractor.x_description,
        })
        writer.finish(meta)
    return FeatureStore(cache_path)
