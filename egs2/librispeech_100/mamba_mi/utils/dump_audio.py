#!/usr/bin/env python3
"""Write the audio of a wav.scp as 16-bit flac files and count their samples.

Every entry is decoded completely (so a corrupt file fails here, not in
training) and must have the expected sample rate and one channel. A flac file
that passes is copied as it is; anything else (other formats, the output of a
piped command such as sox speed perturbation) is encoded to flac. Output files
are written atomically and reused when present, so an interrupted run resumes.

Writes OUT_SCP (``<utt> <flac path>``) and OUT_NUM_SAMPLES (``<utt> <samples>``).
All problems are listed, each with the wav.scp and the utterance, and the exit
status is 1 if there was any.

Usage:
    dump_audio.py [--sample_rate 16000] IN_SCP OUT_AUDIO_DIR OUT_SCP OUT_NUM_SAMPLES
"""

import argparse
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_dir import read_kv  # noqa: E402


def dump_one(utt: str, source: str, out_dir: Path, sample_rate: int) -> Tuple[Path, int]:
    """Dump one utterance; returns (flac path, number of samples).

    Raises:
        ValueError: Unreadable or corrupt audio, a failing command, another sample
            rate, or more than one channel (the message names the source).
    """
    target = out_dir / (utt.replace("/", "_") + ".flac")
    if target.exists():
        return target, soundfile.info(str(target)).frames
    is_command = source.endswith("|")
    if is_command:
        proc = subprocess.run(source[:-1], shell=True, capture_output=True)
        if proc.returncode != 0:
            message = proc.stderr.decode(errors="replace").strip()
            raise ValueError(f"command failed (exit {proc.returncode}): {source} {message}")
        handle = io.BytesIO(proc.stdout)
    else:
        if not os.path.isfile(source):
            raise ValueError(f"missing audio file {source}")
        handle = source
    try:
        info = soundfile.info(handle)
        if is_command:
            handle.seek(0)
        data, rate = soundfile.read(handle, dtype="int16", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as e:
        raise ValueError(f"unreadable or corrupt audio {source}: {e}") from None
    if rate != sample_rate:
        raise ValueError(f"sample rate {rate} Hz, expected {sample_rate} Hz: {source}")
    if data.shape[1] != 1:
        raise ValueError(f"{data.shape[1]} channels, expected mono: {source}")
    if data.shape[0] == 0:
        raise ValueError(f"no samples: {source}")
    tmp = target.with_name(target.name + ".tmp")
    if not is_command and info.format == "FLAC" and info.subtype == "PCM_16":
        shutil.copyfile(source, tmp)
    else:
        soundfile.write(str(tmp), np.ascontiguousarray(data[:, 0]), sample_rate, format="FLAC", subtype="PCM_16")
    os.replace(tmp, target)
    return target, data.shape[0]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample_rate", type=int, default=16000)
    parser.add_argument("in_scp")
    parser.add_argument("out_dir")
    parser.add_argument("out_scp")
    parser.add_argument("out_num_samples")
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = read_kv(args.in_scp)
    scp_lines, num_lines, problems = [], [], []
    for utt, source in entries.items():
        try:
            path, frames = dump_one(utt, source, out_dir, args.sample_rate)
        except ValueError as e:
            problems.append(f"{args.in_scp}: {utt}: {e}")
            continue
        scp_lines.append(f"{utt} {path}\n")
        num_lines.append(f"{utt} {frames}\n")
    if problems:
        for p in problems:
            print(f"Error: {p}", file=sys.stderr)
        return 1
    for out, lines in ((args.out_scp, scp_lines), (args.out_num_samples, num_lines)):
        tmp = out + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
