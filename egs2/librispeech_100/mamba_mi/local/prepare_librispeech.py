#!/usr/bin/env python3
"""Make a Kaldi-style data directory from one LibriSpeech set.

Reads ``<librispeech_dir>/<set>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt``
and writes ``wav.scp`` (utterance -> absolute path of its flac file; ESPnet
reads flac directly), ``text``, ``utt2spk`` and ``spk2utt``. As in ESPnet's
LibriSpeech recipes, the "speaker" of an utterance is ``<speaker>-<chapter>``.

Works for the real corpus and for the synthesized mini corpus (same layout).
The data directory is written atomically. Missing audio, empty transcripts and
the like are left for utils/validate_data_dir.py to report.

Usage:
    prepare_librispeech.py downloads/LibriSpeech train-clean-100 data/train_clean_100
"""

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "utils"))
from data_dir import DataDir  # noqa: E402


def prepare(librispeech_dir, set_name: str) -> DataDir:
    """Read one set.

    Args:
        librispeech_dir: The directory that holds the sets (``.../LibriSpeech``).
        set_name: The set, e.g. ``dev-clean``.

    Returns:
        The data directory.

    Raises:
        FileNotFoundError: If the set is missing or holds no transcripts.
        ValueError: On a malformed transcript line or a duplicate utterance (the
            message names the file and line).
    """
    root = Path(librispeech_dir)
    set_dir = root / set_name
    if not set_dir.is_dir():
        raise FileNotFoundError(f"{root}: the LibriSpeech set {set_name} is missing (no directory {set_dir})")
    wav, text, utt2spk = {}, {}, {}
    transcripts = sorted(set_dir.glob("*/*/*.trans.txt"))
    if not transcripts:
        raise FileNotFoundError(f"{set_dir}: no <speaker>/<chapter>/*.trans.txt files")
    for trans in transcripts:
        speaker_chapter = trans.name[: -len(".trans.txt")]
        with open(trans, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.rstrip("\n").split(maxsplit=1)
                utt = parts[0]
                if not utt.startswith(speaker_chapter + "-"):
                    raise ValueError(f"{trans}:{lineno}: utterance {utt!r} does not belong to {speaker_chapter}")
                if utt in wav:
                    raise ValueError(f"{trans}:{lineno}: duplicate utterance {utt!r}")
                wav[utt] = str((trans.parent / f"{utt}.flac").resolve())
                text[utt] = parts[1].strip() if len(parts) > 1 else ""
                utt2spk[utt] = speaker_chapter
    return DataDir({"wav.scp": wav, "text": text, "utt2spk": utt2spk})


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("librispeech_dir", help="directory holding the sets (e.g. downloads/LibriSpeech)")
    parser.add_argument("set_name", help="e.g. train-clean-100")
    parser.add_argument("out_dir", help="data directory to write")
    args = parser.parse_args(argv)
    try:
        data = prepare(args.librispeech_dir, args.set_name)
    except (FileNotFoundError, ValueError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    data.save(args.out_dir)
    print(f"{args.out_dir}: {len(data.files['wav.scp'])} utterances from {args.set_name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
