"""The YAML config of an SSAMBA pretraining run (:mod:`espnet_mamba.ssamba.train`):
its keys and defaults, their checks, and the comparison with the run being resumed.

The config has a ``model`` section (:class:`SSAMBAConfig` fields, or ``size``
(tiny/small/base) plus overrides) and the training keys of :data:`DEFAULTS`.
"""

import copy
from pathlib import Path
from typing import Any, Dict

import yaml

from espnet_mamba.io import check_int
from espnet_mamba.ssamba.config import SSAMBAConfig, ssamba_config

__all__ = ["DEFAULTS", "load_config", "resolve_run_config"]

# Training keys of the YAML config and their defaults (SSAST/SSAMBA values where
# they apply: AdamW with betas (0.95, 0.999), weight decay 5e-8, mse weight 10).
DEFAULTS: Dict[str, Any] = {
    "norm_mean": None,  # log-mel mean of the pretraining data; None: computed
    "norm_std": None,  # log-mel std of the pretraining data; None: computed
    "norm_stats_utts": 500,  # utterances used to compute the statistics
    "batch_size": 8,
    "max_steps": 300,
    "lr": 1.0e-3,
    "warmup_steps": 50,  # linear warm-up from 0, then constant
    "weight_decay": 5.0e-8,
    "betas": [0.95, 0.999],
    "grad_clip": 5.0,  # max gradient norm; 0 disables clipping
    "mask_patch": 400,  # most masked patches per utterance
    "max_mask_fraction": 0.75,  # most masked fraction of valid patches
    "mse_weight": 10.0,
    "seed": 1,
    "log_interval": 10,
    "save_interval": 100,
}
# Keys whose change makes a resumed run a different experiment.
_FIXED_KEYS = ("model", "norm_mean", "norm_std", "seed", "batch_size")



def load_config(path: Path, overrides: Dict[str, Any]) -> Dict[str, Any]:
    """Reads the YAML config, fills defaults and checks every value.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not a mapping, unknown keys, or bad values (named).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the config must be a YAML mapping")
    unknown = sorted(set(raw) - set(DEFAULTS) - {"model"})
    if unknown:
        raise ValueError(
            f"{path}: unknown config keys {unknown} (known: model, {sorted(DEFAULTS)})"
        )
    config = copy.deepcopy(DEFAULTS)
    config.update({k: v for k, v in raw.items() if k != "model"})
    config.update({k: v for k, v in overrides.items() if v is not None})
    model = dict(raw.get("model") or {})
    try:
        size = model.pop("size", None)
        for key in ("norm_mean", "norm_std"):
            if key in model:
                raise ValueError(f"set {key} at the top level of the config, not under model")
        model_config = ssamba_config(size, **model) if size else SSAMBAConfig(**model)
        _check_training_values(config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    config["model"] = model_config.to_dict()
    return config


def _check_training_values(config: Dict[str, Any]) -> None:
    for key in ("batch_size", "max_steps", "mask_patch", "log_interval", "save_interval",
                "norm_stats_utts"):
        check_int(key, config[key])
    for key in ("warmup_steps", "seed"):
        check_int(key, config[key], 0)
    for key in ("lr", "weight_decay", "grad_clip", "mse_weight", "max_mask_fraction"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key} must be a number, got {value!r}")
    if not config["lr"] > 0:
        raise ValueError(f"lr must be positive, got {config['lr']!r}")
    for key in ("weight_decay", "grad_clip", "mse_weight"):
        if not config[key] >= 0:
            raise ValueError(f"{key} must be >= 0, got {config[key]!r}")
    betas = config["betas"]
    pair = isinstance(betas, (list, tuple)) and len(betas) == 2
    if not (pair and all(0 <= b < 1 for b in betas)):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if not 0 < config["max_mask_fraction"] <= 1:
        raise ValueError(
            f"max_mask_fraction must be in (0, 1], got {config['max_mask_fraction']!r}"
        )
    if (config["norm_mean"] is None) != (config["norm_std"] is None):
        raise ValueError("norm_mean and norm_std must both be set or both be null")
    if config["norm_std"] is not None and not config["norm_std"] > 0:
        raise ValueError(f"norm_std must be positive, got {config['norm_std']!r}")


def resolve_run_config(
    config_path: Path, overrides: Dict[str, Any], output_dir: Path, resume: bool
) -> Dict[str, Any]:
    """The config of this run: the stored one on resume (checked), else a new one."""
    config = load_config(config_path, overrides)
    stored_path = output_dir / "config.yaml"
    if not (resume and stored_path.is_file()):
        return config
    with open(stored_path, encoding="utf-8") as f:
        stored = yaml.safe_load(f)
    if not isinstance(stored, dict):
        raise ValueError(
            f"{stored_path}: not a YAML mapping; remove the directory or pick another --output_dir"
        )
    for key in _FIXED_KEYS:
        new, old = config[key], stored.get(key)
        if key in ("norm_mean", "norm_std") and new is None:
            continue  # computed statistics are kept from the first run
        if key == "model":  # statistics and scan backend may differ
            new, old = _architecture(new), _architecture(old or {})
        if new != old:
            raise ValueError(
                f"{stored_path}: {key} of the run being resumed is {stored.get(key)!r}, the config "
                f"now gives {new!r}; use another --output_dir or --resume false"
            )
    merged = dict(config)
    merged["norm_mean"], merged["norm_std"] = stored["norm_mean"], stored["norm_std"]
    return merged


def _architecture(model: Dict[str, Any]) -> Dict[str, Any]:
    """A model config section without the fields that may change on resume."""
    return {k: v for k, v in model.items() if k not in ("norm_mean", "norm_std", "backend")}
