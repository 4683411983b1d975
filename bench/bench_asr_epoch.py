"""Time one training epoch of an ESPnet ASR config on a LibriSpeech-layout corpus.

Builds Kaldi-style lists from ``<corpus>/LibriSpeech/train-clean-100`` (repeating the
utterance list, with new ids, until it holds at least ``--hours`` of audio), a character
token list, and runs ``python -m espnet_mamba.bin.asr_train`` for one epoch with the
given config (``--ngpu`` GPUs; with 2 or more, ESPnet's own distributed launcher).
Reports the wall time of the epoch (as ESPnet logs it), the audio hours per hour of
training, and the peak GPU memory from ESPnet's training log. Writes a markdown table.

Usage:
    python bench/bench_asr_epoch.py --corpus DIR --config CONF.yaml --out table.md [--ngpu 2]
"""

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile


def read_corpus(train_dir: Path):
    """[(utt_id, flac path, transcript, n_samples)] of a LibriSpeech-layout set."""
    items = []
    for trans in sorted(train_dir.glob("*/*/*.trans.txt")):
        for line in trans.read_text().splitlines():
            utt, text = line.split(" ", 1)
            path = trans.parent / f"{utt}.flac"
            items.append((utt, path, text, soundfile.info(str(path)).frames))
    if not items:
        raise SystemExit(f"error: no *.trans.txt under {train_dir}")
    return items


def write_lists(items, hours: float, workdir: Path, sample_rate: int = 16000):
    """Write wav.scp/text/shape files repeating ``items`` to ``hours``; return (n_utts, hours)."""
    workdir.mkdir(parents=True, exist_ok=True)
    target = hours * 3600 * sample_rate
    rows, total, copy = [], 0, 0
    while total < target:
        for utt, path, text, frames in items:
            rows.append((f"r{copy:03d}-{utt}", path, text, frames))
            total += frames
        copy += 1
    with open(workdir / "wav.scp", "w") as wav, open(workdir / "text", "w") as txt, open(
        workdir / "speech_shape", "w"
    ) as shape:
        for utt, path, text, frames in rows:
            wav.write(f"{utt} {path}\n")
            txt.write(f"{utt} {text}\n")
            shape.write(f"{utt} {frames}\n")
    chars = sorted({c for _, _, text, _ in items for c in text} - {" "})
    tokens = ["<blank>", "<unk>", "<space>"] + chars + ["<sos/eos>"]
    (workdir / "tokens.txt").write_text("\n".join(tokens) + "\n")
    with open(workdir / "text_shape", "w") as shape:
        for utt, _, text, _ in rows:
            shape.write(f"{utt} {len(text)},{len(tokens)}\n")
    return len(rows), total / sample_rate / 3600


def step_stat(stats: str, key: str) -> float:
    """The value of ``key`` in an ESPnet statistics line (``"..., forward_time=0.525, ..."``)."""
    match = re.search(rf"\b{key}=([0-9.e+-]+)", stats)
    return float(match.group(1)) if match else float("nan")


def peak_memory_gb(log_text: str) -> float:
    """Largest gpu_max_cached_mem_GB that ESPnet's trainer logged."""
    values = [float(v) for v in re.findall(r"gpu_max_cached_mem_GB=([0-9.]+)", log_text)]
    return max(values) if values else float("nan")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="directory holding LibriSpeech/train-clean-100")
    parser.add_argument("--config", required=True, help="ESPnet ASR training config")
    parser.add_argument("--out", required=True, help="markdown table (a .json beside it)")
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--ngpu", type=int, default=1)
    parser.add_argument("--batch_bins", type=int, default=None, help="override the config's")
    parser.add_argument("--workdir", default=None, help="default: a temporary directory")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="asr_epoch_"))
    items = read_corpus(Path(args.corpus) / "LibriSpeech" / "train-clean-100")
    data, valid = workdir / "data", workdir / "valid"
    n_utts, hours = write_lists(items, args.hours, data)
    # ESPnet validates after the epoch; one small batch keeps the time about training.
    valid.mkdir(exist_ok=True)
    for name in ("wav.scp", "text", "speech_shape", "text_shape"):
        (valid / name).write_text("\n".join((data / name).read_text().splitlines()[:8]) + "\n")
    command = [
        sys.executable, "-m", "espnet_mamba.bin.asr_train",
        "--config", args.config,
        "--ngpu", str(args.ngpu),
        "--max_epoch", "1",
        "--normalize", "utterance_mvn",  # global stats would need a collect-stats pass
        "--token_type", "char",
        "--token_list", str(data / "tokens.txt"),
        "--output_dir", str(workdir / "exp"),
        "--resume", "false",
    ]
    for split, folder in (("train", data), ("valid", valid)):
        command += [
            f"--{split}_data_path_and_name_and_type", f"{folder}/wav.scp,speech,sound",
            f"--{split}_data_path_and_name_and_type", f"{folder}/text,text,text",
            f"--{split}_shape_file", str(folder / "speech_shape"),
            f"--{split}_shape_file", str(folder / "text_shape"),
        ]
    if args.batch_bins:
        command += ["--batch_bins", str(args.batch_bins)]
    if args.ngpu > 1:
        command += ["--multiprocessing_distributed", "true", "--dist_launcher", "none"]

    start = time.time()
    log_path = workdir / "train.log"
    with open(log_path, "w") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    wall = time.time() - start
    log_text = log_path.read_text()
    if result.returncode != 0:
        print(log_text[-5000:])
        raise SystemExit(f"error: asr_train failed (exit {result.returncode}); log: {log_path}")
    # "[train] ..., time=3 minutes and 2.5 seconds, total_count=..." (the train part)
    epoch_times = re.findall(r"1epoch results: \[train\].*?, time=([^,]+),", log_text)
    train_stats = re.findall(r"1epoch results: \[train\](.*?), time=", log_text)
    row = {
        "config": os.path.basename(args.config),
        "ngpu": args.ngpu,
        "utterances": n_utts,
        "audio_hours": round(hours, 3),
        "wall_seconds": round(wall, 1),
        "espnet_epoch_time": epoch_times[-1] if epoch_times else "n/a",
        "peak_gpu_mem_gb": peak_memory_gb(log_text),
        # ESPnet's means: forward/backward_time per batch (host time: CUDA runs
        # asynchronously), train_time per optimizer step (accum_grad batches, wall time)
        **{key: step_stat(train_stats[-1], key) if train_stats else float("nan")
           for key in ("iter_time", "forward_time", "backward_time", "train_time")},
    }
    card = "CPU"
    try:
        import torch

        if torch.cuda.is_available():
            card = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}"
    except ImportError:
        pass
    table = "\n".join([
        f"One ESPnet training epoch, {card}, {datetime.date.today()}",
        "",
        "| config | GPUs | utterances | audio (h) | wall incl. start-up (s) | ESPnet epoch time "
        "| peak GPU memory (GB, per GPU) | forward / backward per batch (s) | train_time per step (s) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {row['config']} | {row['ngpu']} | {row['utterances']} | {row['audio_hours']} | "
        f"{row['wall_seconds']} | {row['espnet_epoch_time']} | {row['peak_gpu_mem_gb']} | "
        f"{row['forward_time']} / {row['backward_time']} | {row['train_time']} |",
    ])
    print(table)
    Path(args.out).write_text(table + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps({"card": card, **row}, indent=1))


if __name__ == "__main__":
    main()
