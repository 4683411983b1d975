"""The extractor interface and the registry of extractors by model kind."""

from typing import Callable, Dict, List, Optional, Type

import torch

from analysis.discover import ModelEntry

__all__ = ["EXTRACTORS", "ExtractionError", "LayerExtractor", "build_extractor", "register_extractor"]


class ExtractionError(RuntimeError):
    """A model cannot be loaded or gives unusable features (NaN/inf, wrong shapes)."""


class LayerExtractor:
    """Base class: one loaded model; :meth:`extract` gives ``[X, T_1, ..., T_N]`` per utterance.

    Subclasses set, once loaded:
        layer_names: ``["X", "1", ..., "N"]`` or e.g. ``["X", "up1", ..., "enc1", ...]``.
        boundary: For upstream+downstream models, the number of upstream layers
            (the plot draws a line after it); None otherwise.
        x_description: What X is for this model (written into the results).
        sample_rate: The audio rate the model expects.
        padding_safe: True if a padded batch gives each utterance the same features
            as running it alone (then ``batch_size`` utterances run together).
        version: Bumped when the extraction changes (invalidates caches).
    """

    kind = "base"
    version = 1

    def __init__(self, entry: ModelEntry, device: torch.device) -> None:
        self.entry = entry
        self.device = device
        self.layer_names: List[str] = []
        self.boundary: Optional[int] = None
        self.x_description = ""
        self.sample_rate = 16000
        self.padding_safe = False

    @classmethod
    def build(cls, entry: ModelEntry, device: torch.device) -> "LayerExtractor":
        """The extractor of ``entry`` with its model loaded on ``device`` (a kind whose
        models come in several structures returns the subclass for the one found)."""
        return cls(entry, device)

    def extract(self, wavs: List[torch.Tensor], utt_ids: List[str]) -> List[List[torch.Tensor]]:
        """Features of a list of waveforms ``(samples,)`` (on CPU, float32).

        Returns:
            Per utterance ``[X, T_1, ..., T_N]``, each ``(n_l, d_l)`` float32 on CPU,
            only real frames.
        """
        raise NotImplementedError


EXTRACTORS: Dict[str, Type[LayerExtractor]] = {}


def register_extractor(kind: str) -> Callable[[Type[LayerExtractor]], Type[LayerExtractor]]:
    """Class decorator: make an extractor class the one for ``kind``."""

    def decorate(cls):
        if kind in EXTRACTORS and EXTRACTORS[kind] is not cls:
            raise ValueError(f"an extractor for kind {kind!r} is already registered: {EXTRACTORS[kind]}")
        cls.kind = kind
        EXTRACTORS[kind] = cls
        return cls

    return decorate


def build_extractor(entry: ModelEntry, device="cpu") -> LayerExtractor:
    """The extractor of ``entry.kind``, with the model loaded on ``device``.

    Raises:
        ExtractionError: No extractor for the kind, or the model cannot be loaded.
    """
    if entry.kind not in EXTRACTORS:
        raise ExtractionError(f"model {entry.name}: no extractor for kind {entry.kind!r} (known: {sorted(EXTRACTORS)})")
    return EXTRACTORS[entry.kind].build(entry, torch.device(device))
