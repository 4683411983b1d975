"""Load mamba-mi HuBERT checkpoints and extract every layer's hidden states.

A checkpoint is what ``python -m espnet_mamba.bin.ssl_train`` leaves in its output
directory: a model file (``latest.pth``, ``valid.loss.best.pth``, ``NNepoch.pth``;
not the resumable ``checkpoint.pth``) and ``config.yaml`` beside it. The model is an
``espnet2.ssl.espnet_model.ESPnetSSLModel``: wav2vec CNN frontend (stride 320),
optional normalize, a linear preencoder and a ``conbimamba`` (Mamba-HuBERT) or
``transformer`` (HuBERT) encoder.

Unlike ``AbsTask.build_model_from_file`` (which loads with ``strict=False``), loading
here is strict, so a checkpoint of another model fails with an error that names the
file instead of silently giving a randomly initialised network. Building a model
with the ``conbimamba`` encoder needs it registered in ESPnet's SSL task first
(:func:`espnet_mamba.registry.register`).

Hidden states follow S3PRL's convention: ``hidden_states[0]`` is the input of the
first encoder layer and ``hidden_states[i]`` the output of layer ``i``; the last one
is the encoder's final output (after its final layer norm, if it has one).

Example:
    >>> model, config = load_ssl_model("exp/ssl_mamba_hubert_it1/latest.pth")
    >>> wav = torch.randn(1, 16000)
    >>> hs, lens = ssl_hidden_states(model, wav, torch.tensor([16000]))
    >>> len(hs) == num_encoder_layers(model) + 1
    True
"""

import argparse
import copy
from pathlib import Path
from typing import List, Optional, Tuple, Union

import torch
import yaml

from espnet_mamba.espnet_compat import make_pad_mask
from espnet_mamba.io import CheckpointError, load_state_dict_strict, read_state_dict

__all__ = [
    "NotOurCheckpointError",
    "SUPPORTED_ENCODERS",
    "build_ssl_model",
    "check_ssl_config",
    "encoder_layer_outputs",
    "frontend_per_utterance",
    "load_ssl_config",
    "load_ssl_model",
    "num_encoder_layers",
    "ssl_features",
    "ssl_hidden_states",
]

# Encoders whose per-layer hidden states we know how to read.
SUPPORTED_ENCODERS = ("conbimamba", "hubert_transformer", "transformer")
_SUPPORTED_FRONTENDS = ("wav2vec_cnn",)


# A file that is not a mamba-mi HuBERT checkpoint (or its config): raised here for the
# config and by espnet_mamba.io for the weights.
NotOurCheckpointError = CheckpointError


def load_ssl_config(model_file: Union[str, Path], config_file: Optional[Union[str, Path]] = None) -> Tuple[dict, Path]:
    """Read and check the training config of an SSL checkpoint.

    Args:
        model_file: The model file (used to find ``config.yaml`` beside it).
        config_file: The config; default ``<dir of model_file>/config.yaml``.

    Returns:
        The config as a dict and its path.

    Raises:
        FileNotFoundError: The config does not exist.
        NotOurCheckpointError: The config is not an ESPnet SSL-task HuBERT config
            with a supported encoder.
    """
    config_path = Path(config_file) if config_file is not None else Path(model_file).parent / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path}: no such config file (the SSL training config.yaml is expected beside "
            f"the model file {model_file}; pass the config explicitly otherwise)"
        )
    try:
        with config_path.open(encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise NotOurCheckpointError(f"{config_path}: not a YAML file: {e}") from e
    check_ssl_config(config, source=config_path)
    return config, config_path


def check_ssl_config(config, source: Union[str, Path] = "config") -> None:
    """Raise :class:`NotOurCheckpointError` unless ``config`` is one of our SSL configs.

    Args:
        config: The loaded YAML (a dict expected).
        source: Where it came from, for the error message.
    """
    if not isinstance(config, dict):
        raise NotOurCheckpointError(f"{source}: not an ESPnet training config (a YAML mapping expected)")
    missing = [k for k in ("encoder", "encoder_conf", "frontend", "loss", "token_list") if k not in config]
    if missing:
        raise NotOurCheckpointError(
            f"{source}: not an ESPnet SSL-task (HuBERT) config: missing {', '.join(missing)}"
        )
    losses = config["loss"]
    if not isinstance(losses, list) or not any(isinstance(x, dict) and x.get("name") == "hubert" for x in losses):
        raise NotOurCheckpointError(f"{source}: not a HuBERT config: 'loss' has no entry named 'hubert'")
    if config["encoder"] not in SUPPORTED_ENCODERS:
        raise NotOurCheckpointError(
            f"{source}: encoder '{config['encoder']}' is not supported (supported: {', '.join(SUPPORTED_ENCODERS)})"
        )
    if config["frontend"] not in _SUPPORTED_FRONTENDS or config.get("input_size") is not None:
        raise NotOurCheckpointError(
            f"{source}: frontend '{config['frontend']}' is not supported: a raw-waveform "
            f"{' or '.join(_SUPPORTED_FRONTENDS)} frontend is expected"
        )


def build_ssl_model(config: dict) -> torch.nn.Module:
    """The ``ESPnetSSLModel`` that a (checked) SSL config describes, randomly initialised.

    Raises:
        RuntimeError: ESPnet's SSL task does not know the config's encoder (for
            ``conbimamba``: :func:`espnet_mamba.registry.register` was not called).
    """
    from espnet2.tasks.ssl import SSLTask, encoder_choices

    if config["encoder"] not in encoder_choices.classes:
        raise RuntimeError(
            f"ESPnet's SSL task does not know the encoder '{config['encoder']}': call "
            f"espnet_mamba.registry.register() first (the entry points python -m espnet_mamba.bin.* "
            f"and the S3PRL upstream do)"
        )
    return SSLTask.build_model(argparse.Namespace(**copy.deepcopy(config)))


def load_ssl_model(
    model_file: Union[str, Path],
    config_file: Optional[Union[str, Path]] = None,
    device: Union[str, torch.device] = "cpu",
    expected_encoder: Optional[Tuple[str, ...]] = None,
) -> Tuple[torch.nn.Module, dict]:
    """Build an ESPnet SSL model from its config and load its weights strictly.

    Args:
        model_file: Model state dict written by ESPnet's trainer.
        config_file: Training config; default ``config.yaml`` beside ``model_file``.
        device: Where to put the model.
        expected_encoder: If given (e.g. ``("conbimamba",)``), the checkpoint's
            encoder must be one of these.

    Returns:
        The model in eval mode and its config dict.

    Raises:
        FileNotFoundError: A file is missing.
        NotOurCheckpointError: The config or the weights are not those of a mamba-mi
            HuBERT model (or not of ``expected_encoder``).
        RuntimeError: The encoder is not registered (see :func:`build_ssl_model`).
    """
    model_file = Path(model_file)
    config, config_path = load_ssl_config(model_file, config_file)
    if expected_encoder is not None and config["encoder"] not in expected_encoder:
        raise NotOurCheckpointError(
            f"{config_path}: the checkpoint has encoder '{config['encoder']}', not '{' or '.join(expected_encoder)}'"
        )
    # only a state dict: ESPnet's resumable checkpoint.pth (trainer state too) is refused
    state = read_state_dict(model_file)
    model = build_ssl_model(config)
    load_state_dict_strict(model, state, model_file, config_path)
    model.to(device).eval()
    return model, config


def num_encoder_layers(model: torch.nn.Module) -> int:
    """Number of blocks of the model's encoder (``len(hidden_states) - 1``)."""
    encoder = model.encoder if hasattr(model, "encoder") else model
    for name in ("encoders", "layers", "blocks"):
        blocks = getattr(encoder, name, None)
        if blocks is not None:
            return len(blocks)
    raise ValueError(f"cannot count the layers of {type(encoder).__name__}")


def frontend_per_utterance(
    frontend: torch.nn.Module, speech: torch.Tensor, speech_lengths: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run a waveform frontend on each utterance alone and pad the results.

    HuBERT-base's CNN normalises its first layer over time (GroupNorm), so a padded
    batch would change the features of its shorter utterances; one utterance at a
    time keeps them exactly as when the utterance is processed alone.

    Args:
        frontend: e.g. ESPnet's ``CNNFrontend``.
        speech: Waveforms (B, N).
        speech_lengths: Valid samples (B,).

    Returns:
        Features (B, T, C) zero-padded, and their lengths (B,).
    """
    feats, lens = [], []
    for wav, n in zip(speech, speech_lengths):
        n = int(n)
        f, f_len = frontend(wav[None, :n], torch.tensor([n], device=speech.device))
        feats.append(f[0, : int(f_len[0])])
        lens.append(int(f_len[0]))
    out = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    return out, torch.tensor(lens, dtype=torch.long, device=speech.device)


def ssl_features(
    model: torch.nn.Module, speech: torch.Tensor, speech_lengths: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Input of the encoder: CNN frontend, normalize and preencoder, pads zeroed.

    Args:
        model: An ``ESPnetSSLModel`` (or anything with ``frontend``, ``normalize``
            and ``preencoder`` attributes).
        speech: Waveforms (B, N).
        speech_lengths: Valid samples (B,).

    Returns:
        Features (B, T, D) and lengths (B,).
    """
    feats, lens = frontend_per_utterance(model.frontend, speech, speech_lengths)
    if getattr(model, "normalize", None) is not None:
        feats, lens = model.normalize(feats, lens)
    if getattr(model, "preencoder", None) is not None:
        feats, lens = model.preencoder(feats, lens)
    pad = make_pad_mask(lens, maxlen=feats.size(1)).to(feats.device)
    return feats.masked_fill(pad.unsqueeze(-1), 0.0), lens


def encoder_layer_outputs(
    encoder: torch.nn.Module, xs_pad: torch.Tensor, ilens: torch.Tensor
) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Input of the first block and the output of every block of an ESPnet encoder.

    ConBiMamba encoders provide ``forward_layers``; ESPnet's ``TransformerEncoder``
    is walked block by block (its ``forward`` only returns block outputs).

    Args:
        encoder: ``ConBiMambaEncoder`` (anything with ``forward_layers``) or
            ``TransformerEncoder`` without a subsampling input layer.
        xs_pad: Encoder input (B, T, D_in).
        ilens: Lengths (B,).

    Returns:
        ``[X, T_1, ..., T_N]``, each (B, T, D), where the last one is the encoder's
        final output; and the lengths (B,).
    """
    if hasattr(encoder, "forward_layers"):
        hs, olens = encoder.forward_layers(xs_pad, ilens)
        return list(hs), olens

    from espnet2.asr.encoder.transformer_encoder import TransformerEncoder
    if not isinstance(encoder, TransformerEncoder):
        raise ValueError(
            f"cannot read per-layer hidden states of {type(encoder).__name__}: "
            f"supported encoders are {', '.join(SUPPORTED_ENCODERS)}"
        )
    embed = encoder.embed
    if embed is not None and not isinstance(embed, (torch.nn.Sequential, torch.nn.Linear)):
        raise ValueError(f"TransformerEncoder with a subsampling input layer ({type(embed).__name__}) is not supported")
    masks = (~make_pad_mask(ilens, maxlen=xs_pad.size(1)))[:, None, :].to(xs_pad.device)
    x = xs_pad if embed is None else embed(xs_pad)
    hs = [x]
    for block in encoder.encoders:
        x, masks = block(x, masks)
        hs.append(x)
    if encoder.normalize_before:
        hs[-1] = encoder.after_norm(x)
    return hs, masks.squeeze(1).sum(1)


def ssl_hidden_states(
    model: torch.nn.Module, speech: torch.Tensor, speech_lengths: torch.Tensor
) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Every layer's hidden states of a pretrained SSL model (no masking).

    Args:
        model: An ``ESPnetSSLModel`` from :func:`load_ssl_model`.
        speech: Waveforms (B, N).
        speech_lengths: Valid samples (B,).

    Returns:
        ``[X, T_1, ..., T_N]``, each (B, T, D) with zeros after each length, and the
        frame lengths (B,).
    """
    feats, lens = ssl_features(model, speech, speech_lengths)
    hs, olens = encoder_layer_outputs(model.encoder, feats, lens)
    pad = make_pad_mask(olens, maxlen=hs[0].size(1)).to(hs[0].device).unsqueeze(-1)
    return [h.masked_fill(pad, 0.0) for h in hs], olens
