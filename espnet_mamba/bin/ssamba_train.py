"""Pretrain SSAMBA with SSAST's joint masked-patch objective.

Usage::

    python -m espnet_mamba.bin.ssamba_train --config conf/ssamba/mini.yaml \\
        --wav_scp dump/raw/train_clean_100/wav.scp --output_dir exp/ssamba_mini

Writes into ``--output_dir``:

* ``config.yaml``: the resolved configuration (model, normalization statistics
  computed on the training data when the config leaves them empty, training
  hyperparameters); written once, reused on resume;
* ``checkpoints/last.pth``: model, optimizer and step, every ``save_interval``
  steps and at the end; a rerun resumes from it (and does nothing when the run is
  complete);
* ``model.pth``: model + config, readable by ``espnet_mamba.ssamba.load_ssamba``;
* ``train.log``: progress (also printed).

Every file is written to a temporary name and renamed. The data order, the masks
and the stochastic depth are drawn from generators seeded by (seed, step), so a
resumed run takes the same steps as an uninterrupted one.

The YAML config has a ``model`` section (:class:`SSAMBAConfig` fields, or ``size``
(tiny/small/base) plus overrides) and training keys; see ``DEFAULTS``.
"""

import argparse
import copy
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import yaml

from espnet_mamba.ssamba.checkpoint import atomic_torch_save, file_mode, save_ssamba
from espnet_mamba.ssamba.data import audio_num_samples, read_audio, read_wav_scp
from espnet_mamba.ssamba.features import (
    compute_fbank,
    fbank_batch,
    fbank_statistics,
    num_fbank_frames,
)
from espnet_mamba.ssamba.model import SSAMBA, SSAMBAConfig, ssamba_config
from espnet_mamba.ssamba.pretrain import pretrain_loss

logger = logging.getLogger("ssamba_train")

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


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Pretrain SSAMBA (masked patch discrimination + reconstruction)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", required=True,
                        help="YAML config (model section + training keys)")
    parser.add_argument("--wav_scp", required=True,
                        help="Kaldi wav.scp: '<utt> <16 kHz audio file>'")
    parser.add_argument("--output_dir", required=True, help="experiment directory")
    parser.add_argument("--device", default="auto",
                        help="auto (cuda when available), cpu, cuda, cuda:N")
    parser.add_argument("--max_steps", type=int, default=None,
                        help="override the config's max_steps")
    parser.add_argument("--seed", type=int, default=None, help="override the config's seed")
    parser.add_argument("--resume", type=_str2bool, default=True,
                        help="continue from output_dir/checkpoints/last.pth when present")
    return parser


def _str2bool(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    for key in ("warmup_steps", "seed"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{key} must be an integer >= 0, got {value!r}")
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


def select_entries(
    wav_scp: Path, model_config: SSAMBAConfig
) -> List[Tuple[str, str]]:
    """The wav.scp entries long enough for one patch (others are skipped, logged).

    Raises:
        ValueError: Unreadable audio, another sample rate, or nothing left.
    """
    entries = read_wav_scp(wav_scp)
    kept = []
    short = []
    for utt, audio in entries:
        n_samples, rate = audio_num_samples(audio)
        if rate != model_config.sample_rate:
            raise ValueError(
                f"{wav_scp}: {utt} ({audio}) has sample rate {rate} Hz, "
                f"expected {model_config.sample_rate} Hz"
            )
        if num_fbank_frames(n_samples, rate) < model_config.tshape:
            short.append(utt)
        else:
            kept.append((utt, audio))
    if short:
        logger.warning(
            "%s: skipping %d utterances shorter than one patch (%d frames), e.g. %s",
            wav_scp, len(short), model_config.tshape, ", ".join(short[:5]),
        )
    if not kept:
        raise ValueError(f"{wav_scp}: no utterance is long enough for one patch")
    return kept


def utterance_fbank(utt: str, audio: str, cfg: SSAMBAConfig) -> torch.Tensor:
    """Log-mel matrix ``(T, F)`` of one wav.scp entry."""
    wav = read_audio(audio, cfg.sample_rate)
    return compute_fbank(wav, cfg.sample_rate, cfg.input_fdim, name=f"{utt} ({audio})")


def compute_norm_stats(
    entries: Sequence[Tuple[str, str]], cfg: SSAMBAConfig, max_utts: int, seed: int
) -> Tuple[float, float]:
    """Log-mel mean/std over up to ``max_utts`` random utterances (real frames only)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(entries), generator=generator)[:max_utts].tolist()
    fbanks = [utterance_fbank(*entries[i], cfg)[: cfg.input_tdim] for i in order]
    return fbank_statistics(fbanks)


def _seed_of(seed: int, *parts: int) -> int:
    """A 63-bit seed from (seed, parts), stable across runs."""
    value = seed
    for part in parts:
        value = (value * 1_000_003 + part + 1) % (2 ** 63 - 1)
    return value


def batch_indices(step: int, n_items: int, batch_size: int, seed: int) -> List[int]:
    """Items of a step: epochs are seeded permutations, cut into full batches."""
    batch_size = min(batch_size, n_items)
    per_epoch = n_items // batch_size
    epoch, position = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(_seed_of(seed, 0, epoch))
    order = torch.randperm(n_items, generator=generator)
    return order[position * batch_size:(position + 1) * batch_size].tolist()


def learning_rate(step: int, base_lr: float, warmup_steps: int) -> float:
    """Linear warm-up over ``warmup_steps`` steps, then constant."""
    if warmup_steps <= 0:
        return base_lr
    return base_lr * min(1.0, (step + 1) / warmup_steps)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available")
    return device


_HANDLERS: List[logging.Handler] = []


def _close_logging() -> None:
    root = logging.getLogger()
    for handler in _HANDLERS:
        root.removeHandler(handler)
        handler.close()
    _HANDLERS.clear()


def _setup_logging(output_dir: Path) -> None:
    """Logs to stderr and (appending) to output_dir/train.log."""
    _close_logging()
    root = logging.getLogger()
    fmt = logging.Formatter("%(asctime)s (ssamba_train) %(levelname)s: %(message)s")
    root.setLevel(logging.INFO)
    for handler in (logging.StreamHandler(sys.stderr),
                    logging.FileHandler(output_dir / "train.log", encoding="utf-8")):
        handler.setFormatter(fmt)
        root.addHandler(handler)
        _HANDLERS.append(handler)


def _resolve_run_config(args, output_dir: Path) -> Dict[str, Any]:
    """The config of this run: the stored one on resume (checked), else a new one."""
    overrides = {"max_steps": args.max_steps, "seed": args.seed}
    config = load_config(Path(args.config), overrides)
    stored_path = output_dir / "config.yaml"
    if not (args.resume and stored_path.is_file()):
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


def train(args) -> None:
    """Runs (or resumes) a pretraining run; see the module docstring."""
    output_dir = Path(args.output_dir)
    (output_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    _setup_logging(output_dir)
    try:
        _train(args, output_dir)
    except Exception as exc:
        logger.error("%s: %s", type(exc).__name__, exc)
        raise
    finally:
        _close_logging()


def _train(args, output_dir: Path) -> None:
    logger.info("command: %s", " ".join(sys.argv))
    config = _resolve_run_config(args, output_dir)
    device = _resolve_device(args.device)
    model_config = SSAMBAConfig.from_dict(config["model"])
    entries = select_entries(Path(args.wav_scp), model_config)
    logger.info("%d training utterances from %s", len(entries), args.wav_scp)

    if config["norm_mean"] is None:
        mean, std = compute_norm_stats(
            entries, model_config, config["norm_stats_utts"], config["seed"]
        )
        config["norm_mean"], config["norm_std"] = mean, std
        logger.info("log-mel statistics of %d utterances: mean %.4f std %.4f",
                    min(len(entries), config["norm_stats_utts"]), mean, std)
    model_config.norm_mean, model_config.norm_std = config["norm_mean"], config["norm_std"]
    config["model"] = model_config.to_dict()
    config_path = output_dir / "config.yaml"
    _atomic_write_text(config_path, yaml.safe_dump(config, sort_keys=False))

    torch.manual_seed(config["seed"])
    model = SSAMBA(model_config).to(device)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=config["lr"],
        betas=tuple(config["betas"]),
        weight_decay=config["weight_decay"],
    )
    step = 0
    last_path = output_dir / "checkpoints" / "last.pth"
    if args.resume and last_path.is_file():
        state = torch.load(last_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        logger.info("resumed from %s at step %d", last_path, step)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("SSAMBA: embed_dim %d, depth %d, %d patches, %.2fM parameters, device %s",
                model_config.embed_dim, model_config.depth, model_config.num_patches,
                n_params / 1e6, device)

    def save() -> None:
        atomic_torch_save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "config": model_config.to_dict()},
            last_path,
        )
        save_ssamba(model, output_dir / "model.pth", step=step)
        logger.info("step %d: saved %s and %s", step, last_path, output_dir / "model.pth")

    max_steps = config["max_steps"]
    if step >= max_steps:
        if not (output_dir / "model.pth").is_file():
            save()
        logger.info("already trained for %d steps (max_steps %d): nothing to do", step, max_steps)
        return
    model.train()
    sums = {"loss": 0.0, "nce": 0.0, "mse": 0.0, "acc": 0.0}
    count = 0
    tic = time.time()
    while step < max_steps:
        indices = batch_indices(step, len(entries), config["batch_size"], config["seed"])
        fbanks = [utterance_fbank(*entries[i], model_config) for i in indices]
        feats, n_frames = fbank_batch(
            fbanks, model_config.input_tdim, config["norm_mean"], config["norm_std"],
            min_frames=model_config.tshape, names=[entries[i][0] for i in indices],
        )
        lr = learning_rate(step, config["lr"], config["warmup_steps"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(_seed_of(config["seed"], 1, step))  # stochastic depth
        result = pretrain_loss(
            model, feats.to(device), n_frames,
            mask_patch=config["mask_patch"],
            max_mask_fraction=config["max_mask_fraction"],
            mse_weight=config["mse_weight"],
            generator=torch.Generator().manual_seed(_seed_of(config["seed"], 2, step)),
        )
        if not torch.isfinite(result.loss):
            raise RuntimeError(f"step {step}: the loss is {result.loss.item()}; training diverged")
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        if config["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config["grad_clip"])
        optimizer.step()
        step += 1
        for key in sums:
            sums[key] += float(getattr(result, key).detach())
        count += 1
        if step % config["log_interval"] == 0 or step == max_steps:
            elapsed = time.time() - tic
            logger.info(
                "step %d/%d epoch %.2f: loss %.4f nce %.4f mse %.4f acc %.3f lr %.2e (%.2f s/step)",
                step, max_steps, step * min(config["batch_size"], len(entries)) / len(entries),
                *(sums[k] / count for k in ("loss", "nce", "mse", "acc")), lr, elapsed / count,
            )
            sums = dict.fromkeys(sums, 0.0)
            count = 0
            tic = time.time()
        if step % config["save_interval"] == 0 or step == max_steps:
            save()
    logger.info("finished %d steps; model: %s", step, output_dir / "model.pth")


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    try:
        train(args)
    except (ValueError, FileNotFoundError):
        sys.exit(1)  # already logged


if __name__ == "__main__":
    main()
