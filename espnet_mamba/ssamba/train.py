"""SSAMBA pretraining (SSAST's joint masked-patch objective): the trainer behind
``python -m espnet_mamba.bin.ssamba_train``.

:func:`train` writes into its output directory:

* ``config.yaml``: the resolved configuration (model, normalization statistics
  computed on the training data when the config leaves them empty, training
  hyperparameters); written once, reused on resume;
* ``checkpoints/last.pth``: model, optimizer and step, every ``save_interval``
  steps and at the end; a rerun resumes from it (and does nothing when the run is
  complete);
* ``model.pth``: model + config, readable by :func:`espnet_mamba.ssamba.load_ssamba`;
* ``train.log``: progress (also logged to stderr).

Every file is written to a temporary name and renamed. The data order, the masks
and the stochastic depth are drawn from generators seeded by (seed, step), so a
resumed run takes the same steps as an uninterrupted one.

The YAML config: :mod:`espnet_mamba.ssamba.train_config`.
"""

import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import yaml

from espnet_mamba.io import (
    atomic_torch_save,
    atomic_write_text,
    audio_info,
    parse_device,
    read_mono_audio,
    read_wav_scp,
)
from espnet_mamba.ssamba.checkpoint import save_ssamba
from espnet_mamba.ssamba.config import SSAMBAConfig
from espnet_mamba.ssamba.features import compute_fbank, fbank_batch, fbank_statistics, num_fbank_frames
from espnet_mamba.ssamba.model import SSAMBA
from espnet_mamba.ssamba.pretrain import PretrainLoss, pretrain_loss
from espnet_mamba.ssamba.train_config import resolve_run_config

__all__ = ["batch_indices", "learning_rate", "select_entries", "train"]

logger = logging.getLogger("ssamba_train")


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
    for utt, audio in entries.items():
        n_samples, rate = audio_info(audio)
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
    wav = torch.from_numpy(read_mono_audio(audio, cfg.sample_rate))
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


def train(
    config: Union[str, Path],
    wav_scp: Union[str, Path],
    output_dir: Union[str, Path],
    device: str = "auto",
    max_steps: Optional[int] = None,
    seed: Optional[int] = None,
    resume: bool = True,
) -> None:
    """Run (or resume) a pretraining run; see the module docstring.

    Args:
        config: The YAML config (model section + training keys).
        wav_scp: Kaldi wav.scp of 16 kHz audio files.
        output_dir: Experiment directory.
        device: "auto" (cuda when available), "cpu", "cuda", "cuda:N".
        max_steps, seed: Override the config's values.
        resume: Continue from ``output_dir/checkpoints/last.pth`` when present.

    Raises:
        FileNotFoundError, ValueError: A missing or bad config, wav.scp or audio
            file, or a resume with another architecture (all named; also logged).
    """
    output_dir = Path(output_dir)
    (output_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    _setup_logging(output_dir)
    try:
        logger.info("command: %s", " ".join(sys.argv))
        run_config = resolve_run_config(Path(config), {"max_steps": max_steps, "seed": seed}, output_dir, resume)
        _train(run_config, Path(wav_scp), output_dir, parse_device(device), resume)
    except Exception as exc:
        logger.error("%s: %s", type(exc).__name__, exc)
        raise
    finally:
        _close_logging()


def _with_norm_stats(
    config: Dict[str, Any], entries: Sequence[Tuple[str, str]], output_dir: Path
) -> SSAMBAConfig:
    """The model config with the normalization statistics (computed when the config
    has none); writes the run's ``config.yaml``."""
    model_config = SSAMBAConfig.from_dict(config["model"])
    if config["norm_mean"] is None:
        mean, std = compute_norm_stats(entries, model_config, config["norm_stats_utts"], config["seed"])
        config["norm_mean"], config["norm_std"] = mean, std
        logger.info("log-mel statistics of %d utterances: mean %.4f std %.4f",
                    min(len(entries), config["norm_stats_utts"]), mean, std)
    model_config.norm_mean, model_config.norm_std = config["norm_mean"], config["norm_std"]
    config["model"] = model_config.to_dict()
    atomic_write_text(output_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    return model_config


def _train_step(
    model: SSAMBA,
    optimizer: torch.optim.Optimizer,
    config: Dict[str, Any],
    entries: Sequence[Tuple[str, str]],
    step: int,
    device: torch.device,
) -> Tuple[PretrainLoss, float]:
    """One optimizer step: the batch of ``step``, its loss, the update; (loss terms, lr)."""
    model_config = model.config
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
    return result, lr


def _train(config: Dict[str, Any], wav_scp: Path, output_dir: Path, device: torch.device, resume: bool) -> None:
    entries = select_entries(wav_scp, SSAMBAConfig.from_dict(config["model"]))
    logger.info("%d training utterances from %s", len(entries), wav_scp)
    model_config = _with_norm_stats(config, entries, output_dir)

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
    if resume and last_path.is_file():
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
        result, lr = _train_step(model, optimizer, config, entries, step, device)
        step += 1
        for key in sums:
            sums[key] += float(getattr(result, key).detach())
        count += 1
        if step % config["log_interval"] == 0 or step == max_steps:
            logger.info(
                "step %d/%d epoch %.2f: loss %.4f nce %.4f mse %.4f acc %.3f lr %.2e (%.2f s/step)",
                step, max_steps, step * min(config["batch_size"], len(entries)) / len(entries),
                *(sums[k] / count for k in ("loss", "nce", "mse", "acc")), lr, (time.time() - tic) / count,
            )
            sums = dict.fromkeys(sums, 0.0)
            count = 0
            tic = time.time()
        if step % config["save_interval"] == 0 or step == max_steps:
            save()
    logger.info("finished %d steps; model: %s", step, output_dir / "model.pth")
