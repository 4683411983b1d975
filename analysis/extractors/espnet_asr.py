"""Models of ESPnet tasks built from ``config.yaml`` (ASR by default, HuBERT): one class per structure.

The model is built by the task and loaded strictly; what X and T_i are depends on its
structure, each read by its own class:

- :class:`EncoderLayers` (stage 8): frontend, normalization and pre-encoder on each
  utterance alone, then the encoder. X is the input of the first encoder block
  (subsampled, position-encoded local features: ``forward_layers()[0]`` of
  ``ConBiMambaEncoder``; for other ESPnet encoders, e.g. Conformer, the input of
  ``encoder.encoders[0]`` caught by a forward pre-hook); T_i is the output of block
  i, T_N the encoder output (after its final LayerNorm).
- :class:`UpstreamStackLayers` (``frontend: s3prl``, stage 12): X is the S3PRL
  upstream's ``hidden_states[0]``; the layers are the upstream's, then the encoder's
  blocks (X paired with their frames by :mod:`analysis.pairing`).
- :class:`FinetunedSslLayers` (``encoder: hubert_finetune``, stage 12): the SSL model
  inside the encoder, read as the SSL task's models are.
"""

import argparse
import contextlib
import copy
import importlib
import os
from pathlib import Path
from typing import Dict, List

import torch

from analysis.discover import ModelEntry
from analysis.extractors.base import ExtractionError, LayerExtractor, register_extractor
from analysis.extractors.ssl import ssl_layers
from espnet_mamba.io import CheckpointError, load_state_dict_strict, read_state_dict

__all__ = ["EncoderLayers", "EspnetAsrExtractor", "EspnetHubertExtractor", "FinetunedSslLayers",
           "UpstreamStackLayers"]


@contextlib.contextmanager
def _working_directory(path: Path):
    """Run a block in ``path`` (ESPnet configs hold paths relative to the recipe root)."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _recipe_root(entry: ModelEntry) -> Path:
    """The directory the recipe ran in: the parent of ``exp/`` (relative config paths)."""
    if entry.recipe_root is not None:
        return entry.recipe_root
    return entry.path.absolute().parents[len(Path(entry.name).parts)]


def _sample_rate(config: dict) -> int:
    fs = (config.get("frontend_conf") or {}).get("fs", 16000)
    if isinstance(fs, str):
        import humanfriendly

        fs = humanfriendly.parse_size(fs)
    return int(fs)


def _first_tensor(value):
    """The first tensor inside nested tuples/lists (ESPnet blocks return (x, mask) or ((x, pos), mask))."""
    while isinstance(value, (tuple, list)):
        if not value:
            return None
        value = value[0]
    return value if torch.is_tensor(value) else None


def _outputs_with_hooks(encoder: torch.nn.Module, feats: torch.Tensor, lens: torch.Tensor):
    """``[X, T_1, ..., T_N]`` ``(B, T', d)`` of an ESPnet encoder that has ``encoders`` blocks.

    X is the first positional input of ``encoders[0]``; T_i the output of block i; T_N
    is replaced by the encoder's own output (after its final norm, if any).
    """
    blocks = encoder.encoders
    captured: Dict[object, torch.Tensor] = {}
    handles = [blocks[0].register_forward_pre_hook(lambda m, args: captured.__setitem__("x", _first_tensor(args)))]
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_hook(
            lambda m, args, out, i=i: captured.__setitem__(i, _first_tensor(out))))
    try:
        out, olens, _ = encoder(feats, lens)
    finally:
        for handle in handles:
            handle.remove()
    hs = [captured.get("x")] + [captured.get(i) for i in range(len(blocks))]
    if any(h is None for h in hs):
        raise ExtractionError(f"{type(encoder).__name__}: a block did not return a tensor")
    hs[-1] = _first_tensor(out)
    return hs, olens


def _encoder_has_layers(encoder) -> bool:
    if encoder is None:
        return False
    if hasattr(encoder, "forward_layers"):
        return True
    blocks = getattr(encoder, "encoders", None)
    return isinstance(blocks, (torch.nn.ModuleList, torch.nn.Sequential)) and len(blocks) > 0


def _wraps_ssl_model(encoder) -> bool:
    """An encoder holding a whole SSL model (CNN, pre-encoder and encoder of a pretrained HuBERT)."""
    return not hasattr(encoder, "forward_layers") and all(
        hasattr(encoder, a) for a in ("frontend", "preencoder", "encoder"))


def _s3prl_upstream(model):
    """The S3PRL upstream of a ``frontend: s3prl`` model (an ``S3PRLUpstream``), or None."""
    upstream = getattr(getattr(model, "frontend", None), "upstream", None)
    return upstream if hasattr(upstream, "upstream") else None


class EspnetAsrExtractor(LayerExtractor):
    """Models of ESPnet's ASR task; :meth:`build` returns the class of the model's structure."""

    task_module = "espnet2.tasks.asr"
    task_class = "ASRTask"
    version = 2

    def __init__(self, entry: ModelEntry, device: torch.device, model: torch.nn.Module) -> None:
        super().__init__(entry, device)
        self.model = model
        self.encoder = getattr(model, "encoder", None)
        self.sample_rate = _sample_rate(entry.config)

    @classmethod
    def build(cls, entry: ModelEntry, device: torch.device) -> LayerExtractor:
        model = cls._load(entry, device)
        encoder = getattr(model, "encoder", None)
        if _wraps_ssl_model(encoder):
            structure = FinetunedSslLayers
        elif _s3prl_upstream(model) is not None:
            structure = UpstreamStackLayers
        else:
            structure = EncoderLayers
        extractor = structure(entry, device, model)
        extractor.kind = cls.kind
        return extractor

    @classmethod
    def _load(cls, entry: ModelEntry, device: torch.device) -> torch.nn.Module:
        """The task's model of ``entry.config`` with the checkpoint's weights, loaded strictly."""
        from espnet_mamba.bin import register

        register()  # our encoders and S3PRL upstreams, which configs may name
        task = getattr(importlib.import_module(cls.task_module), cls.task_class)
        try:
            state = read_state_dict(entry.checkpoint, containers=("model", "state_dict"))
        except (OSError, CheckpointError) as e:
            raise ExtractionError(str(e)) from e
        try:
            with _working_directory(_recipe_root(entry)):
                model = task.build_model(argparse.Namespace(**copy.deepcopy(entry.config)))
        except Exception as e:  # any failure of ESPnet's model builder
            raise ExtractionError(
                f"model {entry.name}: cannot build the model of {entry.config_path}: {type(e).__name__}: {e}"
            ) from e
        try:
            load_state_dict_strict(model, state, entry.checkpoint, entry.config_path)
        except CheckpointError as e:
            raise ExtractionError(str(e)) from e
        return model.to(device).eval()

    def _count_encoder_layers(self) -> int:
        from espnet_mamba.ssl.model import num_encoder_layers

        try:
            return num_encoder_layers(self.encoder)
        except ValueError as e:
            raise ExtractionError(f"model {self.entry.name}: {e}") from e

    def _encoder_input(self, wav: torch.Tensor) -> torch.Tensor:
        """Frontend, normalization and pre-encoder of one waveform: ``(n, d)`` real frames."""
        model = self.model
        feats = wav[None].to(self.device)
        lens = torch.tensor([wav.shape[0]], dtype=torch.long, device=self.device)
        for stage in (model.frontend, getattr(model, "normalize", None), getattr(model, "preencoder", None)):
            if stage is not None:
                feats, lens = stage(feats, lens)
        return feats[0, : int(lens[0])]

    def _encoder_layers(self, feats: List[torch.Tensor]) -> List[List[torch.Tensor]]:
        """Encoder ``[X, T_1..T_N]`` of each utterance's encoder input ``(n, d)``."""
        lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.long, device=self.device)
        padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
        if hasattr(self.encoder, "forward_layers"):
            hs, olens = self.encoder.forward_layers(padded, lens)
        else:
            hs, olens = _outputs_with_hooks(self.encoder, padded, lens)
        return [[h[b, : int(olens[b])] for h in hs] for b in range(len(feats))]


class EncoderLayers(EspnetAsrExtractor):
    """An ESPnet model whose encoder has blocks (see the module docstring). Encoders with
    ``forward_layers`` run padded batches; the others (hooks) one utterance at a time."""

    def __init__(self, entry: ModelEntry, device: torch.device, model: torch.nn.Module) -> None:
        super().__init__(entry, device, model)
        if not _encoder_has_layers(self.encoder):
            raise ExtractionError(f"model {entry.name}: encoder {type(self.encoder).__name__} exposes no layers")
        n = self._count_encoder_layers()
        self.layer_names = ["X"] + [str(i) for i in range(1, n + 1)]
        self.padding_safe = hasattr(self.encoder, "forward_layers")
        how = "forward_layers()[0]" if self.padding_safe else "input of encoder.encoders[0] (forward pre-hook)"
        self.x_description = (
            f"input of the first {type(self.encoder).__name__} block after its input layer "
            f"(subsampling + positional encoding): {how}; T_N = encoder output after its final norm"
        )

    @torch.no_grad()
    def extract(self, wavs, utt_ids):
        feats = [self._encoder_input(w) for w in wavs]
        if self.padding_safe:
            out = self._encoder_layers(feats)
        else:
            out = [self._encoder_layers([f])[0] for f in feats]
        return [[t.float().cpu() for t in layers] for layers in out]


class UpstreamStackLayers(EspnetAsrExtractor):
    """``frontend: s3prl``: the upstream's layers, then the downstream encoder's blocks.

    Each utterance runs alone through the model's own frontend (``S3prlFrontend.forward``:
    upstream, featurizer) as in training; the upstream's layers are the hidden states its
    expert returns inside that call (only real frames: S3PRL pads the hidden states it
    passes on by repeating the last frame, and zero-pads audio under 0.05 s).
    """

    def __init__(self, entry: ModelEntry, device: torch.device, model: torch.nn.Module) -> None:
        super().__init__(entry, device, model)
        self.expert = _s3prl_upstream(model).upstream
        n_up = _s3prl_upstream(model).num_layers - 1
        self.encoder_layers = self._count_encoder_layers() if _encoder_has_layers(self.encoder) else 0
        self.layer_names = ["X"] + [f"up{i}" for i in range(1, n_up + 1)]
        if self.encoder_layers:
            self.layer_names += [f"enc{i}" for i in range(1, self.encoder_layers + 1)]
            self.boundary = n_up
        self.x_description = (
            "hidden_states[0] of the S3PRL upstream (input of its first layer); layers: "
            f"the upstream's {n_up} layers" + (
                f", then the {self.encoder_layers} blocks of the downstream {type(self.encoder).__name__} "
                "(X paired with their frames by analysis.pairing.align_frames)" if self.encoder_layers else "")
        )

    def _input_and_upstream_layers(self, wav: torch.Tensor):
        captured = []
        handle = self.expert.register_forward_hook(lambda m, args, out: captured.append(out["hidden_states"]))
        try:
            feats = self._encoder_input(wav)
        finally:
            handle.remove()
        return feats, [h[0] for h in captured[0]]

    @torch.no_grad()
    def extract(self, wavs, utt_ids):
        out = []
        for wav in wavs:
            feats, layers = self._input_and_upstream_layers(wav)
            if self.encoder_layers:
                layers = layers + self._encoder_layers([feats])[0][1:]
            out.append([t.float().cpu() for t in layers])
        return out


class FinetunedSslLayers(EspnetAsrExtractor):
    """An encoder that wraps a pretrained SSL model (``hubert_finetune``, CTC fine-tuning),
    read like that SSL model; its CNN runs per utterance, its blocks on padded batches."""

    def __init__(self, entry: ModelEntry, device: torch.device, model: torch.nn.Module) -> None:
        super().__init__(entry, device, model)
        if model.frontend is not None or getattr(model, "preencoder", None) is not None:
            raise ExtractionError(
                f"model {entry.name}: {type(self.encoder).__name__} wraps an SSL model but the ASR model "
                "has its own frontend or pre-encoder; this combination is not supported"
            )
        n = self._count_encoder_layers()
        self.layer_names = ["X"] + [str(i) for i in range(1, n + 1)]
        self.padding_safe = True
        self.x_description = (
            f"hidden_states[0] of the fine-tuned SSL model inside {type(self.encoder).__name__}: input of "
            f"its first {type(self.encoder.encoder).__name__} layer (CNN features after the pre-encoder)"
        )

    @torch.no_grad()
    def extract(self, wavs, utt_ids):
        return ssl_layers(self.encoder, wavs, self.device)


register_extractor("espnet-asr")(EspnetAsrExtractor)


@register_extractor("espnet-hubert")
class EspnetHubertExtractor(EspnetAsrExtractor):
    """Models of ESPnet's HuBERT task (``espnet2.tasks.hubert``), read like ASR models."""

    task_module = "espnet2.tasks.hubert"
    task_class = "HubertTask"
