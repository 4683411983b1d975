"""The one door to ESPnet's internals.

mamba-mi uses espnet2's task and model API directly (``espnet2.tasks.*``,
``espnet2.asr.encoder.abs_encoder.AbsEncoder``, ``espnet2.bin.*``). Everything else
it takes from ESPnet - the legacy ``espnet.nets.pytorch_backend`` modules - comes
through this module, so that a newer ESPnet is one edit here.

Supported ESPnet versions: the releases 202402 to 202511, which keep those modules
under ``espnet/nets/pytorch_backend/``, and the later master, which moved them
under ``espnet2/legacy/nets/pytorch_backend/`` (tried first).

This module imports nothing of the project, so every package may use it.
"""

import importlib
import importlib.util
from types import ModuleType

__all__ = [
    "Conv2dSubsampling",
    "Conv2dSubsampling6",
    "Conv2dSubsampling8",
    "ConvolutionalPositionalEmbedding",
    "LayerNorm",
    "PositionalEncoding",
    "PositionwiseFeedForward",
    "TooShortUttError",
    "check_short_utt",
    "make_pad_mask",
]

# where the legacy modules live, newest layout first
_LEGACY_PACKAGES = ("espnet2.legacy", "espnet")


def _legacy_module(name: str) -> ModuleType:
    """``<package>.<name>`` of the first of :data:`_LEGACY_PACKAGES` that has it.

    Only a missing module of that path moves on to the next package; an import
    error inside the module (a missing dependency) is raised as it is.
    """
    for package in _LEGACY_PACKAGES:
        full = f"{package}.{name}"
        try:
            return importlib.import_module(full)
        except ModuleNotFoundError as e:
            if e.name is None or not (full == e.name or full.startswith(e.name + ".")):
                raise
    if not any(importlib.util.find_spec(package.split(".")[0]) for package in _LEGACY_PACKAGES):
        raise ModuleNotFoundError(
            f"ESPnet is not installed (none of {', '.join(_LEGACY_PACKAGES)} imports): run "
            f"tools/install.sh, or tools/install_gpu_offline.sh on an offline GPU machine"
        )
    raise ImportError(
        f"ESPnet has no module {name} under {' or '.join(_LEGACY_PACKAGES)}: this ESPnet is newer "
        f"than the ones espnet_mamba/espnet_compat.py supports"
    )


_nets_utils = _legacy_module("nets.pytorch_backend.nets_utils")
_embedding = _legacy_module("nets.pytorch_backend.transformer.embedding")
_layer_norm = _legacy_module("nets.pytorch_backend.transformer.layer_norm")
_feed_forward = _legacy_module("nets.pytorch_backend.transformer.positionwise_feed_forward")
_subsampling = _legacy_module("nets.pytorch_backend.transformer.subsampling")

make_pad_mask = _nets_utils.make_pad_mask
PositionalEncoding = _embedding.PositionalEncoding
ConvolutionalPositionalEmbedding = _embedding.ConvolutionalPositionalEmbedding
LayerNorm = _layer_norm.LayerNorm
PositionwiseFeedForward = _feed_forward.PositionwiseFeedForward
Conv2dSubsampling = _subsampling.Conv2dSubsampling
Conv2dSubsampling6 = _subsampling.Conv2dSubsampling6
Conv2dSubsampling8 = _subsampling.Conv2dSubsampling8
TooShortUttError = _subsampling.TooShortUttError
check_short_utt = _subsampling.check_short_utt

