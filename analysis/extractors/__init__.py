"""Layer extractors: for each model kind, a class that turns waveforms into, per
utterance, ``[X, T_1, ..., T_N]`` (only the utterance's own frames).

- :mod:`analysis.extractors.base`: the interface (:class:`LayerExtractor`) and the
  registry by kind (:func:`register_extractor`, :func:`build_extractor`).
- :mod:`analysis.extractors.espnet_asr`: ``espnet-asr`` and ``espnet-hubert`` (models of
  ESPnet tasks; one class per structure: encoder blocks, S3PRL upstream + encoder, a
  fine-tuned SSL model).
- :mod:`analysis.extractors.ssl`: ``espnet-ssl`` (Mamba-HuBERT / HuBERT pretraining).
- :mod:`analysis.extractors.ssamba`: ``ssamba``.

Importing the package registers the four kinds.
"""

from analysis.extractors import espnet_asr, ssamba, ssl  # noqa: F401  (register their kinds)
from analysis.extractors.base import (
    EXTRACTORS,
    ExtractionError,
    LayerExtractor,
    build_extractor,
    register_extractor,
)

__all__ = ["EXTRACTORS", "ExtractionError", "LayerExtractor", "build_extractor", "register_extractor"]
