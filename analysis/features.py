"""Layer features for the MI analysis: X and T_1..T_N of each utterance, and their cache.

For every model kind an extractor (a small class registered in :data:`EXTRACTORS`)
turns waveforms into, per utterance, a list of frame matrices ``[X, T_1, ..., T_N]``,
each ``(n, d)`` with only the utterance's own frames (never padding):

- ``espnet-asr`` (ESPnet ASR models of stage 8; fine-tuned and upstream+downstream
  models of stage 12): the frontend, normalization and pre-encoder run on each
  utterance alone, then the encoder. ``X`` is the input of the first encoder block:
  subsampled, position-encoded local features (``forward_layers()[0]`` of
  ``ConBiMambaEncoder``; for other ESPnet encoders, e.g. Conformer or Transformer,
  the input of ``encoder.encoders[0]`` caught by a forward pre-hook). ``T_i`` is the
  output of block i; ``T_N`` is the encoder output (after its final LayerNorm).
  When the frontend is an S3PRL upstream (``frontend: s3prl``, stage 12), ``X`` is
  the upstream's ``hidden_states[0]`` (its first layer's input), the layers are the
  upstream's layers followed by the encoder's blocks (if the encoder has any), and
  ``X`` is paired with the encoder's frames as described in :func:`align_frames`.
- ``espnet-ssl`` (Mamba-HuBERT and HuBERT of stage 11, ESPnet SSL task):
  ``hidden_states`` of :func:`espnet_mamba.ssl.model.ssl_hidden_states`, the same as
  the S3PRL upstream's: ``X`` is the input of the first encoder layer (CNN features
  after the pre-encoder projection), ``T_i`` each layer's output.
- ``ssamba``: :meth:`espnet_mamba.ssamba.model.SSAMBA.extract_layers`: ``X`` the
  patch embeddings (positional embedding added, cls token left out), ``T_i`` the
  output of each forward/backward layer pair; frames are the valid patches.

Encoders that promise padding-safe batches (those with ``forward_layers``) run
``batch_size`` utterances at a time; the others run one utterance at a time, so a
padded batch never changes an utterance's features.

The cache (:class:`FeatureWriter`, :class:`FeatureStore`) keeps all features of one
model in one file: a fixed header, the arrays back to back (float16 unless a value
does not fit, then float32) and a JSON footer with the utterance list, shapes and an
identity (hashes of the checkpoint, config, utterance list and extraction
options). A cache whose identity differs from the current one is rebuilt.
"""

import contextlib
import hashlib
import io
import json
import math
import os
import struct
import subprocess
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Type

import numpy as np
import torch

from analysis.discover import ModelEntry

__all__ = [
    "EXTRACTORS",
    "ExtractionError",
    "FeatureStore",
    "FeatureWriter",
    "LayerExtractor",
    "align_frames",
    "build_extractor",
    "extract_features",
    "file_digest",
    "load_audio",
    "register_extractor",
]

_MAGIC = b"MAMBAMI\x01"
_HEADER_BYTES = 64
_FLOAT16_MAX = float(np.finfo(np.float16).max)


class ExtractionError(RuntimeError):
    """A model cannot be loaded or gives unusable features (NaN/inf, wrong shapes)."""


# --------------------------------------------------------------------------- audio
def load_audio(spec: str, root: Optional[Path] = None, name: str = "audio") -> Tuple[np.ndarray, int]:
    """Read one ``wav.scp`` entry as a mono float32 waveform in [-1, 1].

    Args:
        spec: A file path (relative paths are taken from ``root``), a Kaldi
            ``file.ark:offset`` entry, or a shell command ending in ``|`` whose
            output is an audio file.
        root: Directory relative paths and commands start from (the recipe root).
        name: Utterance id for error messages.

    Returns:
        ``(samples,)`` float32 and the sample rate.

    Raises:
        ExtractionError: The audio cannot be read (the message names the utterance
            and the entry).
    """
    import soundfile

    root = Path(root) if root is not None else Path.cwd()
    spec = spec.strip()
    try:
        if spec.endswith("|"):
            result = subprocess.run(spec[:-1], shell=True, cwd=root, capture_output=True, check=True)
            data, rate = soundfile.read(io.BytesIO(result.stdout), dtype="float32", always_2d=True)
        elif ".ark:" in spec and not Path(spec).exists():
            import kaldiio

            path, _, offset = spec.rpartition(":")
            path = path if os.path.isabs(path) else str(root / path)
            loaded = kaldiio.load_mat(f"{path}:{offset}")
            if not (isinstance(loaded, tuple) and len(loaded) == 2):
                raise ValueError("the ark entry holds a matrix, not audio")
            rate, data = loaded
            data = np.asarray(data)
            if np.issubdtype(data.dtype, np.integer):
                data = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
            data = data.astype(np.float32).reshape(len(data), -1)
        else:
            path = Path(spec) if os.path.isabs(spec) else root / spec
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile, kaldiio and subprocess errors
        raise ExtractionError(f"utterance {name}: cannot read audio {spec!r}: {type(e).__name__}: {e}") from e
    if data.shape[0] == 0:
        raise ExtractionError(f"utterance {name}: audio {spec!r} is empty")
    return np.ascontiguousarray(data.mean(axis=1), dtype=np.float32), int(rate)


# ------------------------------------------------------------------- frame helpers
def align_frames(x: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Pair the frames of ``x`` ``(n_x, d)`` with a layer that has ``n_frames`` frames.

    Used only where a layer runs at another frame rate than X (a downstream encoder
    that subsamples or repeats the upstream's frames).

    - ``n_frames == n_x``: ``x`` itself.
    - ``n_frames < n_x``: r = round(n_x / n_frames) consecutive frames of X are
      concatenated: row j is ``cat(x[j*r], ..., x[j*r + r - 1])`` ``(n_frames, r*d)``
      (indices past the end repeat the last frame). Concatenation keeps all the
      information of the window, as a subsampling convolution sees it.
    - ``n_frames > n_x``: row j is ``x[floor(j * n_x / n_frames)]``.
    """
    n_x = x.shape[0]
    if n_frames == n_x:
        return x
    if n_frames > n_x:
        index = torch.arange(n_frames, device=x.device) * n_x // n_frames
        return x[index]
    ratio = max(1, round(n_x / n_frames))
    index = torch.arange(n_frames * ratio, device=x.device).clamp(max=n_x - 1)
    return x[index].reshape(n_frames, ratio * x.shape[1])


def _first_tensor(value):
    """The first tensor inside nested tuples/lists (ESPnet blocks return (x, mask) or ((x, pos), mask))."""
    while isinstance(value, (tuple, list)):
        if not value:
            return None
        value = value[0]
    return value if torch.is_tensor(value) else None


def _check_finite(arrays: Sequence[torch.Tensor], names: Sequence[str], utt: str, model: str) -> None:
    for array, name in zip(arrays, names):
        if not bool(torch.isfinite(array).all()):
            raise ExtractionError(f"model {model}: utterance {utt}: layer {name} has NaN or infinite values")


@contextlib.contextmanager
def _working_directory(path: Path):
    """Run a block in ``path`` (ESPnet configs hold paths relative to the recipe root)."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _read_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip, pickle and I/O errors
        raise ExtractionError(f"{path}: cannot be read as a PyTorch checkpoint: {type(e).__name__}: {e}") from e
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # ESPnet's resumable checkpoint.pth
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ExtractionError(f"{path}: not a model state dict (a mapping of names to tensors expected)")
    return state


def _load_strict(model: torch.nn.Module, state: Dict[str, torch.Tensor], path: Path, config: Path) -> None:
    """``load_state_dict`` that names the file and the mismatch instead of loading partly."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ExtractionError(
            f"{path}: weights do not match the model of {config}: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    wrong = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if wrong:
        raise ExtractionError(
            f"{path}: tensor {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, the model of "
            f"{config} expects {tuple(expected[wrong[0]].shape)}"
        )
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------- registry
EXTRACTORS: Dict[str, Type["LayerExtractor"]] = {}


def register_extractor(kind: str) -> Callable[[Type["LayerExtractor"]], Type["LayerExtractor"]]:
    """Class decorator: make an extractor class the one for ``kind``."""

    def decorate(cls):
        if kind in EXTRACTORS and EXTRACTORS[kind] is not cls:
            raise ValueError(f"an extractor for kind {kind!r} is already registered: {EXTRACTORS[kind]}")
        cls.kind = kind
        EXTRACTORS[kind] = cls
        return cls

    return decorate


def build_extractor(entry: ModelEntry, device="cpu") -> "LayerExtractor":
    """The extractor of ``entry.kind``, with the model loaded on ``device``.

    Raises:
        ExtractionError: No extractor for the kind, or the model cannot be loaded.
    """
    if entry.kind not in EXTRACTORS:
        raise ExtractionError(f"model {entry.name}: no extractor for kind {entry.kind!r} (known: {sorted(EXTRACTORS)})")
    return EXTRACTORS[entry.kind](entry, torch.device(device))


class LayerExtractor:
    """Base class: loads one model; :meth:`extract` gives ``[X, T_1, ..., T_N]`` per utterance.

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

    def extract(self, wavs: List[torch.Tensor], utt_ids: List[str]) -> List[List[torch.Tensor]]:
        """Features of a list of waveforms ``(samples,)`` (on CPU, float32).

        Returns:
            Per utterance ``[X, T_1, ..., T_N]``, each ``(n_l, d_l)`` float32 on CPU,
            only real frames.
        """
        raise NotImplementedError


def _layer_outputs_with_hooks(encoder: torch.nn.Module, feats: torch.Tensor, lens: torch.Tensor):
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
    out = _first_tensor(out)
    hs = [captured.get("x")] + [captured.get(i) for i in range(len(blocks))]
    if any(h is None for h in hs):
        raise ExtractionError(f"{type(encoder).__name__}: a block did not return a tensor")
    hs[-1] = out
    return hs, olens


def _ssl_layers(ssl_model, model: torch.nn.Module, wavs, device) -> List[List[torch.Tensor]]:
    """``[X, T_1..T_N]`` of each waveform from :func:`espnet_mamba.ssl.model.ssl_hidden_states` (real frames)."""
    lengths = torch.tensor([w.shape[0] for w in wavs], dtype=torch.long, device=device)
    speech = torch.nn.utils.rnn.pad_sequence(list(wavs), batch_first=True).to(device)
    hs, olens = ssl_model.ssl_hidden_states(model, speech, lengths)
    return [[h[b, : int(olens[b])].float().cpu() for h in hs] for b in range(len(wavs))]


def _encoder_has_layers(encoder) -> bool:
    if encoder is None:
        return False
    if hasattr(encoder, "forward_layers"):
        return True
    blocks = getattr(encoder, "encoders", None)
    return isinstance(blocks, (torch.nn.ModuleList, torch.nn.Sequential)) and len(blocks) > 0


@register_extractor("espnet-asr")
class EspnetExtractor(LayerExtractor):
    """ESPnet models built with an ESPnet task from ``config.yaml`` (ASR by default)."""

    task_module = "espnet2.tasks.asr"
    task_class = "ASRTask"

    def __init__(self, entry: ModelEntry, device: torch.device) -> None:
        super().__init__(entry, device)
        import argparse
        import copy
        import importlib

        import espnet_mamba.tasks  # noqa: F401  (registers conbimamba)

        config = entry.config
        frontend = config.get("frontend")
        if frontend == "s3prl":
            try:
                import s3prl_upstream  # noqa: F401  (registers mamba_hubert_local & co.)
            except ImportError as e:
                raise ExtractionError(f"model {entry.name}: cannot import s3prl_upstream: {e}") from e
        task = getattr(importlib.import_module(self.task_module), self.task_class)
        state = _read_state_dict(entry.checkpoint)
        try:
            with _working_directory(self._recipe_root()):
                model = task.build_model(argparse.Namespace(**copy.deepcopy(config)))
        except Exception as e:
            raise ExtractionError(
                f"model {entry.name}: cannot build the model of {entry.config_path}: {type(e).__name__}: {e}"
            ) from e
        _load_strict(model, state, entry.checkpoint, entry.config_path)
        self.model = model.to(device).eval()
        fs = (config.get("frontend_conf") or {}).get("fs", 16000)
        if isinstance(fs, str):
            import humanfriendly

            fs = humanfriendly.parse_size(fs)
        self.sample_rate = int(fs)
        self.encoder = getattr(self.model, "encoder", None)
        front = getattr(self.model, "frontend", None)
        self.upstream = getattr(front, "upstream", None) if front is not None else None
        if self.upstream is not None and not hasattr(self.upstream, "upstream"):
            self.upstream = None  # not an S3PRL upstream
        # An encoder that wraps a whole SSL model (``hubert_finetune``: CNN, pre-encoder and
        # encoder of a pretrained HuBERT, fine-tuned with CTC) is read like that SSL model.
        self.wrapped_ssl = (
            not hasattr(self.encoder, "forward_layers")
            and all(hasattr(self.encoder, a) for a in ("frontend", "preencoder", "encoder"))
        )
        if self.wrapped_ssl:
            if front is not None or getattr(self.model, "preencoder", None) is not None:
                raise ExtractionError(
                    f"model {entry.name}: {type(self.encoder).__name__} wraps an SSL model but the ASR model "
                    "has its own frontend or pre-encoder; this combination is not supported"
                )
            from espnet_mamba.ssl import model as ssl_model

            self._ssl = ssl_model
            n = ssl_model.num_encoder_layers(self.encoder)
            self.layer_names = ["X"] + [str(i) for i in range(1, n + 1)]
            self.padding_safe = True  # CNN per utterance; conbimamba/transformer blocks are padding safe
            self.x_description = (
                f"hidden_states[0] of the fine-tuned SSL model inside {type(self.encoder).__name__}: input of "
                f"its first {type(self.encoder.encoder).__name__} layer (CNN features after the pre-encoder)"
            )
            return
        has_layers = _encoder_has_layers(self.encoder)
        if self.upstream is None and not has_layers:
            raise ExtractionError(f"model {entry.name}: encoder {type(self.encoder).__name__} exposes no layers")
        self.encoder_layers = 0
        if has_layers:
            from espnet_mamba.ssl.model import num_encoder_layers

            try:
                self.encoder_layers = num_encoder_layers(self.encoder)
            except ValueError as e:
                raise ExtractionError(f"model {entry.name}: {e}") from e
        if self.upstream is not None:
            n_up = self.upstream.num_layers - 1
            self.layer_names = ["X"] + [f"up{i}" for i in range(1, n_up + 1)]
            if has_layers:
                self.layer_names += [f"enc{i}" for i in range(1, self.encoder_layers + 1)]
                self.boundary = n_up
            self.x_description = (
                "hidden_states[0] of the S3PRL upstream (input of its first layer); layers: "
                f"the upstream's {n_up} layers" + (
                    f", then the {self.encoder_layers} blocks of the downstream {type(self.encoder).__name__} "
                    "(X paired with their frames by analysis.features.align_frames)" if has_layers else "")
            )
            self.padding_safe = False
        else:
            self.layer_names = ["X"] + [str(i) for i in range(1, self.encoder_layers + 1)]
            self.padding_safe = hasattr(self.encoder, "forward_layers")
            how = "forward_layers()[0]" if self.padding_safe else "input of encoder.encoders[0] (forward pre-hook)"
            self.x_description = (
                f"input of the first {type(self.encoder).__name__} block after its input layer "
                f"(subsampling + positional encoding): {how}; T_N = encoder output after its final norm"
            )

    def _recipe_root(self) -> Path:
        """The directory the recipe ran in: the parent of ``exp/`` (relative config paths)."""
        if self.entry.recipe_root is not None:
            return self.entry.recipe_root
        return self.entry.path.absolute().parents[len(Path(self.entry.name).parts)]

    # Per-utterance part: frontend (+ S3PRL upstream), normalize, pre-encoder.
    def _encoder_input(self, wav: torch.Tensor):
        model = self.model
        speech = wav[None].to(self.device)
        lengths = torch.tensor([wav.shape[0]], dtype=torch.long, device=self.device)
        upstream_layers = None
        front = model.frontend
        if self.upstream is not None:
            feats, flens, upstream_layers = self._s3prl_frontend(front, speech, lengths)
        elif front is not None:
            feats, flens = front(speech, lengths)
        else:
            feats, flens = speech, lengths
        if getattr(model, "normalize", None) is not None:
            feats, flens = model.normalize(feats, flens)
        if getattr(model, "preencoder", None) is not None:
            feats, flens = model.preencoder(feats, flens)
        n = int(flens[0])
        return feats[0, :n], upstream_layers

    def _s3prl_frontend(self, front, speech, lengths):
        """The S3PRL frontend's output and the upstream's own hidden states (real frames only)."""
        upstream = front.upstream
        # The upstream runs twice: S3PRLUpstream.forward pads its hidden states to
        # ceil(samples / stride) frames by repeating the last frame (and zero-pads audio
        # under 0.05 s), so the layers are taken from the expert itself (true frames
        # only), and the encoder input from the wrapper (what the model was trained on).
        expert_hs = upstream.upstream([speech[0]])["hidden_states"]
        layers = [h[0] for h in expert_hs]
        all_hs, all_lens = upstream(speech, lengths)
        if getattr(front, "layer", -1) != -1:
            feats, flens = all_hs[front.layer], all_lens[front.layer]
        elif getattr(front, "multilayer_feature", False):
            feats, flens = front.featurizer(all_hs, all_lens)
        else:
            feats, flens = front.featurizer(all_hs[-1:], all_lens[-1:])
        if getattr(front, "tile_factor", 1) != 1:
            feats = front._tile_representations(feats)
            flens = flens * front.tile_factor
        return feats, flens, layers

    def _encoder_layers(self, feats: List[torch.Tensor]) -> List[List[torch.Tensor]]:
        """Encoder ``[X, T_1..T_N]`` of each utterance's encoder input ``(n, d)``."""
        lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.long, device=self.device)
        padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
        if hasattr(self.encoder, "forward_layers"):
            hs, olens = self.encoder.forward_layers(padded, lens)
        else:
            hs, olens = _layer_outputs_with_hooks(self.encoder, padded, lens)
        return [[h[b, : int(olens[b])] for h in hs] for b in range(len(feats))]

    @torch.no_grad()
    def extract(self, wavs, utt_ids):
        if self.wrapped_ssl:
            return _ssl_layers(self._ssl, self.encoder, wavs, self.device)
        inputs = [self._encoder_input(w) for w in wavs]
        feats = [f for f, _ in inputs]
        if self.upstream is None:
            if self.padding_safe:
                out = self._encoder_layers(feats)
            else:
                out = [self._encoder_layers([f])[0] for f in feats]
        else:
            out = []
            for f, (_, up_layers) in zip(feats, inputs):
                layers = list(up_layers)
                if self.encoder_layers:
                    layers += self._encoder_layers([f])[0][1:]
                out.append(layers)
        return [[t.float().cpu() for t in layers] for layers in out]


@register_extractor("espnet-hubert")
class EspnetHubertExtractor(EspnetExtractor):
    """Models of ESPnet's HuBERT task (``espnet2.tasks.hubert``), read like ASR models."""

    task_module = "espnet2.tasks.hubert"
    task_class = "HubertTask"


@register_extractor("espnet-ssl")
class EspnetSslExtractor(LayerExtractor):
    """Mamba-HuBERT / HuBERT of ESPnet's SSL task, through :mod:`espnet_mamba.ssl.model`."""

    def __init__(self, entry: ModelEntry, device: torch.device) -> None:
        super().__init__(entry, device)
        from espnet_mamba.ssl import model as ssl_model

        try:
            model, _ = ssl_model.load_ssl_model(entry.checkpoint, entry.config_path, device=device)
        except (OSError, ValueError, RuntimeError) as e:
            raise ExtractionError(f"model {entry.name}: {e}") from e
        self._ssl = ssl_model
        self.model = model.eval()
        n = ssl_model.num_encoder_layers(model)
        self.layer_names = ["X"] + [str(i) for i in range(1, n + 1)]
        self.padding_safe = True  # frontend per utterance; conbimamba/transformer are padding safe
        self.x_description = (
            "hidden_states[0] of the SSL model (= its S3PRL upstream's): input of the first "
            f"{type(model.encoder).__name__} layer (CNN features after normalize/pre-encoder)"
        )

    @torch.no_grad()
    def extract(self, wavs, utt_ids):
        return _ssl_layers(self._ssl, self.model, wavs, self.device)


@register_extractor("ssamba")
class SsambaExtractor(LayerExtractor):
    """SSAMBA models of ``espnet_mamba.bin.ssamba_train`` (``config.yaml`` + ``model.pth``),
    loaded strictly by :func:`espnet_mamba.ssamba.load_ssamba`."""

    def __init__(self, entry: ModelEntry, device: torch.device) -> None:
        super().__init__(entry, device)
        from espnet_mamba.ssamba import load_ssamba

        try:
            model = load_ssamba(entry.checkpoint, strict=True)
        except (OSError, ValueError, RuntimeError) as e:
            raise ExtractionError(f"model {entry.name}: {e}") from e
        self.model = model.to(device).eval()
        self.sample_rate = model.config.sample_rate
        self.layer_names = ["X"] + [str(i) for i in range(1, model.num_layer_outputs + 1)]
        self.padding_safe = True
        self.x_description = (
            "SSAMBA patch embeddings entering the first layer (positional embedding added, cls token "
            "left out); T_i = output of layer pair i; frames = valid patches in time order"
        )

    @torch.no_grad()
    def extract(self, wavs, utt_ids):
        feats = self.model.extract_layers(list(wavs), names=list(utt_ids), order="time")
        return [[h[b, : int(feats.lengths[b])].float().cpu() for h in feats.hidden_states]
                for b in range(len(wavs))]


# ------------------------------------------------------------------------ cache
def file_digest(path, chunk: int = 1 << 22) -> str:
    """BLAKE2b (128-bit) of a file's bytes, hex."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


class FeatureWriter:
    """Streams one model's features into ``path`` (via ``path + ".tmp"`` and a rename).

    Args:
        path: Final cache file.
        dtype: "float16" (default; arrays with values beyond float16's range are
            kept as float32) or "float32".
    """

    def __init__(self, path, dtype: str = "float16") -> None:
        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dtype = dtype
        self.file = open(self.tmp, "wb")
        self.file.write(_MAGIC + struct.pack("<Q", 0) + b"\0" * (_HEADER_BYTES - 16))
        self.utts: List[dict] = []

    def add(self, utt_id: str, arrays: Sequence[np.ndarray]) -> None:
        """Append one utterance's ``[X, T_1, ..., T_N]``, each ``(n_l, d_l)``."""
        entries = []
        for array in arrays:
            array = np.asarray(array)
            store = self.dtype
            if store == "float16" and array.size and float(np.abs(array).max()) > _FLOAT16_MAX:
                store = "float32"
            data = np.ascontiguousarray(array, dtype=store)
            offset = self.file.tell()
            self.file.write(data.tobytes())
            entries.append([offset, store, list(data.shape)])
        self.utts.append({"id": utt_id, "arrays": entries})

    def close(self, meta: dict) -> "FeatureStore":
        """Write the footer, make the file durable and move it into place."""
        footer = json.dumps({"version": 1, "meta": meta, "utts": self.utts}).encode("utf-8")
        offset = self.file.tell()
        self.file.write(footer)
        self.file.seek(len(_MAGIC))
        self.file.write(struct.pack("<Q", offset))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        return FeatureStore(self.path)

    def abort(self) -> None:
        self.file.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()


class FeatureStore:
    """Read-only view of a cache file written by :class:`FeatureWriter` (memory-mapped).

    Attributes:
        meta: The metadata given to :meth:`FeatureWriter.close` (identity, layer names ...).
        utt_ids: Utterances in file order.

    Raises:
        ValueError: The file is not a complete feature cache (named in the message).
    """

    def __init__(self, path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            head = f.read(_HEADER_BYTES)
            if len(head) < _HEADER_BYTES or head[: len(_MAGIC)] != _MAGIC:
                raise ValueError(f"{self.path}: not a mamba-mi feature cache (bad header)")
            (offset,) = struct.unpack("<Q", head[len(_MAGIC): len(_MAGIC) + 8])
            size = self.path.stat().st_size
            if not _HEADER_BYTES <= offset < size:
                raise ValueError(f"{self.path}: incomplete feature cache (no footer)")
            f.seek(offset)
            try:
                footer = json.loads(f.read().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"{self.path}: corrupt feature cache footer: {e}") from e
        self.meta = footer["meta"]
        self._utts = footer["utts"]
        self.utt_ids = [u["id"] for u in self._utts]
        self._index = {u: i for i, u in enumerate(self.utt_ids)}
        self._data = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(offset,))

    def __len__(self) -> int:
        return len(self.utt_ids)

    def get(self, utt_id: str, layer: int) -> np.ndarray:
        """Array ``layer`` (0 = X) of an utterance, ``(n, d)`` float16/float32, read-only."""
        offset, dtype, shape = self._utts[self._index[utt_id]]["arrays"][layer]
        count = int(np.prod(shape))
        item = np.dtype(dtype).itemsize
        return self._data[offset: offset + count * item].view(dtype).reshape(shape)


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
        cache_path: Where the cache file goes.
        identity: Stored in the footer; :func:`analysis.run_mine` compares it to
            decide whether a cache can be reused.
        audio_root: Directory relative audio paths start from.
        batch_size: Utterances per forward pass (padding-safe extractors only).
        max_frames: Keep at most this many frames of X per utterance (other layers:
            the same stretch of audio); None keeps all.
        cache_dtype: "float16" or "float32".
        progress: Called with the number of utterances done after each batch.

    Returns:
        The written :class:`FeatureStore`.

    Raises:
        ExtractionError: Unreadable audio, NaN/inf features, a layer count that
            differs from ``extractor.layer_names``, or a model failure.
    """
    import torchaudio

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    name = extractor.entry.name
    wavs: List[torch.Tensor] = []
    for utt, spec in utterances:
        audio, rate = load_audio(spec, audio_root, name=utt)
        wav = torch.from_numpy(audio)
        if rate != extractor.sample_rate:
            wav = torchaudio.functional.resample(wav, rate, extractor.sample_rate)
        wavs.append(wav)
    writer = FeatureWriter(cache_path, dtype=cache_dtype)
    try:
        step = batch_size if extractor.padding_safe else 1
        for batch in _batches([len(w) for w in wavs], step):
            ids = [utterances[i][0] for i in batch]
            try:
                outputs = extractor.extract([wavs[i] for i in batch], ids)
            except ExtractionError:
                raise
            except Exception as e:  # model errors (too short input, shape errors ...)
                raise ExtractionError(f"model {name}: extraction failed on {ids[:3]}: {type(e).__name__}: {e}") from e
            for i, layers in zip(batch, outputs):
                utt = utterances[i][0]
                if len(layers) != len(extractor.layer_names):
                    raise ExtractionError(
                        f"model {name}: utterance {utt}: {len(layers)} layer arrays, expected "
                        f"{len(extractor.layer_names)} ({extractor.layer_names[:3]} ...)"
                    )
                _check_finite(layers, extractor.layer_names, utt, name)
                writer.add(utt, [t.numpy() for t in _crop(layers, max_frames)])
            if progress is not None:
                progress(len(batch))
        meta = dict(identity)
        meta.update({
            "layer_names": extractor.layer_names,
            "boundary": extractor.boundary,
            "x_description": extractor.x_description,
        })
        return writer.close(meta)
    except BaseException:
        writer.abort()
        raise
