#!/usr/bin/env python3
"""Check a Kaldi-style data directory before it is used.

Checks, each reported with the file and the utterance at fault:
  * wav.scp, text and utt2spk exist, have unique keys, are sorted, and list the
    same utterances (an utterance in text but not in wav.scp is an error);
  * no transcript is empty;
  * spk2utt, if present, agrees with utt2spk;
  * every audio file in wav.scp exists, opens as audio, is mono and has the
    expected sample rate (16 kHz); with --decode the whole file is decoded, which
    also finds corrupt data after a valid header. Entries that are commands
    (ending in "|") are run and checked only with --check_commands;
  * utt2num_samples, if present, holds positive integers; feats_type, if
    present, is "raw".

Exit status 0 when the directory is valid, 1 otherwise (all problems printed,
at most --max_errors of them).

Usage:
    validate_data_dir.py [--decode] [--sample_rate 16000] data/train_clean_100
"""

import argparse
import io
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_dir import read_kv  # noqa: E402

__all__ = ["validate"]


def _check_sorted(path: Path, keys: List[str], problems: List[str]) -> None:
    for a, b in zip(keys, keys[1:]):
        if a > b:
            problems.append(f"{path}: not sorted ({a!r} comes before {b!r}); sort it with LC_ALL=C sort")
            return


def _check_audio(source: str, utt: str, wav_scp: Path, sample_rate: int, decode: bool, check_commands: bool) -> Optional[str]:
    """Return a problem description, or None when the audio is fine."""
    if source.endswith("|"):
        if not check_commands:
            return None
        proc = subprocess.run(source[:-1], shell=True, capture_output=True)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            return f"{wav_scp}: {utt}: command failed ({err[0]}): {source}"
        target, label = io.BytesIO(proc.stdout), f"output of {source!r}"
    else:
        path = Path(source)
        if not path.is_file():
            return f"{wav_scp}: {utt}: missing audio file {source}"
        target, label = str(path), source
    try:
        info = soundfile.info(target)
        if decode:
            if isinstance(target, io.BytesIO):
                target.seek(0)
            data, _ = soundfile.read(target, dtype="int16")
            if len(data) == 0:
                return f"{wav_scp}: {utt}: empty audio in {label}"
    except (RuntimeError, soundfile.LibsndfileError) as e:
        return f"{wav_scp}: {utt}: unreadable or corrupt audio {label}: {e}"
    if info.samplerate != sample_rate:
        return f"{wav_scp}: {utt}: sample rate {info.samplerate} Hz, expected {sample_rate} Hz: {label}"
    if info.channels != 1:
        return f"{wav_scp}: {utt}: {info.channels} channels, expected mono: {label}"
    return None


def validate(
    data_dir, sample_rate: int = 16000, decode: bool = False, check_commands: bool = False, check_audio: bool = True
) -> List[str]:
    """Validate a data directory.

    Args:
        data_dir: The directory.
        sample_rate: Expected sample rate of every audio file (Hz).
        decode: Decode every file completely (finds corruption past the header).
        check_commands: Run the commands of piped wav.scp entries and check their output.
        check_audio: Open the audio files at all (False: check the text files only).

    Returns:
        The problems found; empty when the directory is valid.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return [f"{data_dir}: no such data directory"]
    problems: List[str] = []
    tables = {}
    for name in ("wav.scp", "text", "utt2spk"):
        path = data_dir / name
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        try:
            tables[name] = read_kv(path, allow_empty_value=(name == "text"))
        except ValueError as e:
            problems.append(str(e))
            continue
        if not tables[name]:
            problems.append(f"{path}: empty file")
        _check_sorted(path, list(tables[name]), problems)
    if problems:
        return problems

    wav, text, utt2spk = tables["wav.scp"], tables["text"], tables["utt2spk"]
    for utt, transcript in text.items():
        if not transcript.strip():
            problems.append(f"{data_dir / 'text'}: {utt}: empty transcript")
    for name, table in (("text", text), ("utt2spk", utt2spk)):
        for utt in sorted(set(table) - set(wav)):
            problems.append(f"{data_dir / name}: {utt}: in {name} but not in wav.scp")
        for utt in sorted(set(wav) - set(table)):
            problems.append(f"{data_dir / 'wav.scp'}: {utt}: in wav.scp but not in {name}")

    spk2utt_path = data_dir / "spk2utt"
    if spk2utt_path.exists():
        try:
            spk2utt = read_kv(spk2utt_path)
            pairs = {(utt, spk) for spk, utts in spk2utt.items() for utt in utts.split()}
            if pairs != {(utt, spk) for utt, spk in utt2spk.items()}:
                problems.append(f"{spk2utt_path}: does not agree with utt2spk (rewrite it: utils/data_dir.py spk2utt)")
        except ValueError as e:
            problems.append(str(e))

    num_samples_path = data_dir / "utt2num_samples"
    if num_samples_path.exists():
        for utt, value in read_kv(num_samples_path).items():
            if not value.isdigit() or int(value) <= 0:
                problems.append(f"{num_samples_path}: {utt}: not a positive number of samples: {value!r}")
    feats_type_path = data_dir / "feats_type"
    if feats_type_path.exists() and feats_type_path.read_text().strip() != "raw":
        problems.append(f"{feats_type_path}: expected 'raw', got {feats_type_path.read_text().strip()!r}")

    if check_audio:
        for utt, source in wav.items():
            problem = _check_audio(source, utt, data_dir / "wav.scp", sample_rate, decode, check_commands)
            if problem:
                problems.append(problem)
    return problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    parser.add_argument("--sample_rate", type=int, default=16000, help="expected sample rate (Hz)")
    parser.add_argument("--decode", action="store_true", help="decode every audio file completely")
    parser.add_argument("--check_commands", action="store_true", help="run piped wav.scp commands and check them")
    parser.add_argument("--no_audio", action="store_true", help="check the text files only")
    parser.add_argument("--max_errors", type=int, default=20, help="print at most this many problems")
    args = parser.parse_args(argv)
    problems = validate(args.data_dir, args.sample_rate, args.decode, args.check_commands, not args.no_audio)
    if problems:
        for p in problems[: args.max_errors]:
            print(f"Error: {p}", file=sys.stderr)
        if len(problems) > args.max_errors:
            print(f"... and {len(problems) - args.max_errors} more problems", file=sys.stderr)
        print(f"{args.data_dir}: invalid data directory ({len(problems)} problems)", file=sys.stderr)
        return 1
    print(f"{args.data_dir}: OK ({len(read_kv(Path(args.data_dir) / 'wav.scp'))} utterances)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
