"""Reading and writing SSAMBA checkpoints.

Two formats are read:

* the public SSAMBA files: a bare state dict saved from ``torch.nn.DataParallel``
  (keys ``module.v.layers.0.mixer.in_proj.weight``, ...). The architecture is read
  off the keys and shapes (width, depth, patch shape, input size, norm type, head);
  what the tensors cannot tell (paired layers, averaged directions) takes the
  public models' values;
* the files of ``espnet_mamba.bin.ssamba_train``: a dict holding ``"model"`` (the
  state dict, no prefix) and ``"config"`` (:class:`SSAMBAConfig` as a dict, with the
  normalization statistics of the pretraining data).

Writes are atomic (:func:`espnet_mamba.io.atomic_torch_save`).
"""

import logging
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from espnet_mamba.io import atomic_torch_save, torch_load
from espnet_mamba.ssamba.config import SIZES, SSAMBAConfig
from espnet_mamba.ssamba.model import SSAMBA

__all__ = [
    "infer_config",
    "load_ssamba",
    "read_checkpoint",
    "save_ssamba",
    "size_name",
    "strip_prefix",
]

logger = logging.getLogger(__name__)

_PREFIX = "module."
_LAYER_KEY = re.compile(r"^v\.layers\.(\d+)\.")
_MAX_LISTED = 12


def size_name(embed_dim: int) -> str:
    """"tiny", "small" or "base" for a public width, else "custom (D=...)"."""
    for name, dim in SIZES.items():
        if dim == embed_dim:
            return name
    return f"custom (D={embed_dim})"


def strip_prefix(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """Removes the DataParallel ``module.`` prefix when every key has it."""
    keys = list(state_dict)
    if keys and all(k.startswith(_PREFIX) for k in keys):
        return {k[len(_PREFIX):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _listing(names: List[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    if len(names) > _MAX_LISTED:
        shown += f", ... ({len(names) - _MAX_LISTED} more)"
    return shown


def _describe_foreign(keys: List[str]) -> str:
    """A hint on what a non-SSAMBA state dict probably is."""
    if any(k.startswith("v.blocks.") for k in keys):
        return " (it has v.blocks.*: an SSAST/AST Transformer checkpoint, not SSAMBA)"
    if any(k.startswith(("encoder.", "model.encoder.")) for k in keys):
        return " (it looks like an ESPnet/HuBERT model, not SSAMBA)"
    return ""


def infer_config(state_dict: Mapping[str, torch.Tensor], **overrides: Any) -> SSAMBAConfig:
    """Reads the architecture of an SSAMBA state dict off its keys and shapes.

    Args:
        state_dict: With or without the ``module.`` prefix.
        **overrides: Config fields the tensors cannot tell (``paired_layers``,
            ``divide_out``, ``norm_mean``, ...), or values to force.

    Returns:
        The config.

    Raises:
        ValueError: Not an SSAMBA state dict (the message names the missing keys)
            or inconsistent shapes.
    """
    sd = strip_prefix(state_dict)
    keys = sorted(sd)
    required = ["v.patch_embed.proj.weight", "v.pos_embed", "v.layers.0.mixer.in_proj.weight",
                "v.layers.0.mixer.A_log", "v.layers.0.mixer.A_b_log",
                "v.layers.0.mixer.conv1d.weight", "v.layers.0.mixer.dt_proj.weight",
                "v.norm_f.weight"]
    missing = [k for k in required if k not in sd]
    if missing:
        raise ValueError(
            f"not an SSAMBA (Vim bimamba v2) state dict: missing {_listing(missing)}"
            f"{_describe_foreign(keys)}"
        )
    proj = sd["v.patch_embed.proj.weight"]
    if proj.dim() != 4 or proj.shape[1] != 1:
        raise ValueError(
            f"v.patch_embed.proj.weight must be (D, 1, fshape, tshape), got {tuple(proj.shape)}"
        )
    embed_dim, _, fshape, tshape = (int(n) for n in proj.shape)
    depth = 1 + max(int(m.group(1)) for m in map(_LAYER_KEY.match, keys) if m)
    in_proj = sd["v.layers.0.mixer.in_proj.weight"]
    expand_f = in_proj.shape[0] / (2 * embed_dim)
    expand = int(expand_f) if float(expand_f).is_integer() else expand_f
    values: Dict[str, Any] = dict(
        embed_dim=embed_dim,
        depth=depth,
        fshape=fshape,
        tshape=tshape,
        d_state=int(sd["v.layers.0.mixer.A_log"].shape[1]),
        d_conv=int(sd["v.layers.0.mixer.conv1d.weight"].shape[-1]),
        expand=expand,
        norm="layer" if "v.norm_f.bias" in sd else "rms",
        num_classes=int(sd["v.head.weight"].shape[0]) if "v.head.weight" in sd else 0,
    )
    dt_rank = int(sd["v.layers.0.mixer.dt_proj.weight"].shape[1])
    if dt_rank != math.ceil(embed_dim / 16):
        values["dt_rank"] = dt_rank
    num_tokens = int(sd["v.pos_embed"].shape[1])
    if "p_input_fdim" in sd and "p_input_tdim" in sd:
        values["input_fdim"] = int(sd["p_input_fdim"])
        values["input_tdim"] = int(sd["p_input_tdim"])
    else:  # Without the stored input size: 128 mel bins, time from the table.
        values["input_fdim"] = 128
        values["input_tdim"] = (num_tokens - 1) // (128 // fshape) * tshape
    values.update(overrides)
    config = SSAMBAConfig(**values)
    if config.num_patches + 1 != num_tokens:
        raise ValueError(
            f"v.pos_embed has {num_tokens} positions but an input of "
            f"{config.input_fdim}x{config.input_tdim} with {fshape}x{tshape} patches "
            f"needs {config.num_patches + 1}"
        )
    return config


def read_checkpoint(
    path: Union[str, Path], map_location: Any = "cpu"
) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, Any]]]:
    """Loads a checkpoint file: (state dict without prefix, stored config or None).

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file is not a checkpoint of a known format.
    """
    path = Path(path)
    obj = torch_load(path, map_location)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        return strip_prefix(obj["model"]), obj.get("config")
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return strip_prefix(obj), None
    raise ValueError(
        f"{path}: neither a state dict nor a checkpoint with a 'model' entry "
        f"(top-level type {type(obj).__name__})"
    )


def _compare(
    model: SSAMBA, sd: Mapping[str, torch.Tensor]
) -> Tuple[List[str], List[str], List[str]]:
    """(missing keys, unexpected keys, shape mismatches) of ``sd`` against ``model``."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {expected[k]}"
        for k in set(expected) & set(sd)
        if tuple(sd[k].shape) != expected[k]
    )
    return missing, unexpected, mismatched


def load_ssamba(
    path: Union[str, Path],
    size: Optional[str] = None,
    strict: bool = True,
    map_location: Any = "cpu",
    **config_overrides: Any,
) -> SSAMBA:
    """Builds an SSAMBA model from a checkpoint file in one call.

    Args:
        path: A public SSAMBA ``.pth`` (DataParallel state dict), a checkpoint of
            ``espnet_mamba.bin.ssamba_train``, or its experiment directory (then
            ``<dir>/model.pth``).
        size: Expected size ("tiny", "small", "base"); None accepts any.
        strict: Require exactly the keys and shapes of the model. With False,
            missing and unexpected keys are logged and skipped (shape mismatches
            still fail).
        map_location: Where tensors are loaded.
        **config_overrides: :class:`SSAMBAConfig` fields to set, e.g. the
            normalization statistics (``norm_mean``, ``norm_std``) that public
            checkpoints do not store, or ``backend``.

    Returns:
        The model in eval mode.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not an SSAMBA checkpoint, another size than ``size``, or keys
            and shapes that do not match (all listed).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.pth"
    sd, stored = read_checkpoint(path, map_location)
    if size is not None and size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)} or None, got {size!r}")
    try:
        if stored is not None:
            values = dict(stored)
            values.update(config_overrides)
            config = SSAMBAConfig.from_dict(values)
        else:
            config = infer_config(sd, **config_overrides)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if size is not None and config.embed_dim != SIZES[size]:
        raise ValueError(
            f"{path}: expected an SSAMBA-{size} checkpoint (embed_dim {SIZES[size]}), got "
            f"{size_name(config.embed_dim)} with embed_dim {config.embed_dim} and "
            f"depth {config.depth}"
        )
    model = SSAMBA(config)
    missing, unexpected, mismatched = _compare(model, sd)
    problems = []
    if mismatched:
        problems.append(f"shape mismatches: {_listing(mismatched)}")
    if strict and missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}{_describe_foreign(list(sd))}")
    if problems:
        raise ValueError(
            f"{path}: checkpoint does not match SSAMBA {size_name(config.embed_dim)} "
            f"(depth {config.depth}, input {config.input_fdim}x{config.input_tdim}): "
            + "; ".join(problems)
        )
    if missing or unexpected:
        logger.warning(
            "%s: loading non-strictly; missing keys: %s; unexpected keys: %s",
            path, _listing(missing) or "none", _listing(unexpected) or "none",
        )
    model.load_state_dict({k: v for k, v in sd.items() if k not in unexpected}, strict=False)
    return model.eval()


def save_ssamba(model: SSAMBA, path: Union[str, Path], **extra: Any) -> None:
    """Writes a self-contained checkpoint (state dict + config) atomically.

    Args:
        model: The model.
        path: Output file (``.pth``).
        **extra: More entries of the checkpoint dict (e.g. ``step``).
    """
    obj = {"model": model.state_dict(), "config": model.config.to_dict()}
    obj.update(extra)
    atomic_torch_save(obj, path)
