#!/usr/bin/env python3
"""Kaldi-style data directories: read, write, combine, subset, speed-perturb.

A data directory holds text files of ``<key> <value>`` lines sorted by key:
``wav.scp`` (utterance -> audio file, or a shell command ending in ``|``),
``text`` (utterance -> transcript), ``utt2spk`` (utterance -> speaker) and
``spk2utt`` (speaker -> its utterances). Optional: ``utt2num_samples``,
``utt2dur``, ``feats_type``.

Subcommands (``data_dir.py SUBCOMMAND --help``):
    combine OUT IN1 IN2 ...         union of data directories
    subset  IN OUT --keys FILE      keep the utterances listed in FILE
    speed   IN OUT --factor 0.9     speed perturbation with sox (utterances sp0.9-<id>)
    spk2utt IN                      rewrite spk2utt from utt2spk
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

__all__ = [
    "DataDir",
    "combine",
    "read_kv",
    "speed_perturb",
    "subset",
    "write_kv",
]

UTT_FILES = ("wav.scp", "text", "utt2spk", "utt2num_samples", "utt2dur")


def read_kv(path, allow_empty_value: bool = False) -> Dict[str, str]:
    """Read a ``<key> <value>`` file.

    Args:
        path: The file.
        allow_empty_value: Accept a line with a key only (value ``""``).

    Returns:
        key -> value, in file order.

    Raises:
        ValueError: On a duplicate key or (unless allowed) a line without a value;
            the message names the file and the line.
    """
    out: Dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                raise ValueError(f"{path}:{lineno}: empty line")
            parts = line.split(maxsplit=1)
            key = parts[0]
            value = parts[1].strip() if len(parts) > 1 else ""
            if not value and not allow_empty_value:
                raise ValueError(f"{path}:{lineno}: no value for key {key!r}")
            if key in out:
                raise ValueError(f"{path}:{lineno}: duplicate key {key!r}")
            out[key] = value
    return out


def write_kv(path, table: Dict[str, str]) -> None:
    """Write ``<key> <value>`` lines sorted by key, atomically (temporary file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for key in sorted(table):
            f.write(f"{key} {table[key]}\n" if table[key] != "" else f"{key}\n")
    os.replace(tmp, path)


class DataDir:
    """A data directory in memory.

    Args:
        files: File name (``wav.scp``, ``text``, ``utt2spk``, ...) -> key -> value.
        feats_type: Content of ``feats_type`` (``raw`` after the dump stage) or None.
    """

    def __init__(self, files: Dict[str, Dict[str, str]], feats_type: Optional[str] = None):
        self.files = files
        self.feats_type = feats_type

    @classmethod
    def load(cls, path) -> "DataDir":
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such data directory")
        files = {}
        for name in UTT_FILES:
            if (path / name).exists():
                files[name] = read_kv(path / name, allow_empty_value=(name == "text"))
        feats_type = (path / "feats_type").read_text().strip() if (path / "feats_type").exists() else None
        return cls(files, feats_type)

    @property
    def utts(self) -> List[str]:
        return sorted(self.files["wav.scp"])

    def spk2utt(self) -> Dict[str, str]:
        groups: Dict[str, List[str]] = {}
        for utt in sorted(self.files["utt2spk"]):
            groups.setdefault(self.files["utt2spk"][utt], []).append(utt)
        return {spk: " ".join(utts) for spk, utts in groups.items()}

    def save(self, path) -> None:
        """Write the directory atomically: into ``<path>.tmp``, then rename over ``path``."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        if tmp.exists():
            _rmtree(tmp)
        tmp.mkdir(parents=True)
        for name, table in self.files.items():
            write_kv(tmp / name, table)
        if "utt2spk" in self.files:
            write_kv(tmp / "spk2utt", self.spk2utt())
        if self.feats_type:
            (tmp / "feats_type").write_text(self.feats_type + "\n")
        if path.exists():
            _rmtree(path)
        os.replace(tmp, path)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


def combine(dirs: Sequence[DataDir]) -> DataDir:
    """Union of data directories; an utterance id present in two of them is an error."""
    names = set.intersection(*(set(d.files) for d in dirs))
    files: Dict[str, Dict[str, str]] = {name: {} for name in names}
    for d in dirs:
        for name in names:
            for key, value in d.files[name].items():
                if key in files[name]:
                    raise ValueError(f"utterance {key!r} is in more than one input ({name})")
                files[name][key] = value
    feats = {d.feats_type for d in dirs}
    return DataDir(files, feats.pop() if len(feats) == 1 else None)


def subset(data: DataDir, keys: Iterable[str]) -> DataDir:
    """Keep only the utterances in ``keys``."""
    keep = set(keys)
    files = {name: {k: v for k, v in table.items() if k in keep} for name, table in data.files.items()}
    return DataDir(files, data.feats_type)


def speed_perturb(data: DataDir, factor: float) -> DataDir:
    """Speed perturbation (tempo and pitch) with sox, as a pipe in ``wav.scp``.

    Utterances and speakers get the prefix ``sp<factor>-``; factor 1.0 returns the
    data unchanged. The audio is resampled back to 16 kHz. ``utt2num_samples`` and
    ``utt2dur`` are dropped (the dump stage measures them again).
    """
    if factor <= 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    if factor == 1.0:
        return data
    prefix = f"sp{factor}-"
    wav = {}
    for utt, entry in data.files["wav.scp"].items():
        if entry.endswith("|"):
            source = f"{entry} sox -t wav - -t wav -r 16000 -b 16 - speed {factor} |"
        else:
            source = f"sox -D {entry} -t wav -r 16000 -b 16 - speed {factor} |"
        wav[prefix + utt] = source
    files = {
        "wav.scp": wav,
        "text": {prefix + k: v for k, v in data.files["text"].items()},
        "utt2spk": {prefix + k: prefix + v for k, v in data.files["utt2spk"].items()},
    }
    return DataDir(files, None)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("combine", help="union of data directories")
    p.add_argument("out")
    p.add_argument("inputs", nargs="+")
    p = sub.add_parser("subset", help="keep the utterances listed in --keys")
    p.add_argument("input")
    p.add_argument("out")
    p.add_argument("--keys", required=True, help="file whose first column lists the utterances to keep")
    p = sub.add_parser("speed", help="speed perturbation with sox")
    p.add_argument("input")
    p.add_argument("out")
    p.add_argument("--factor", type=float, required=True)
    p = sub.add_parser("spk2utt", help="rewrite spk2utt from utt2spk")
    p.add_argument("input")
    args = parser.parse_args(argv)

    if args.command == "combine":
        combine([DataDir.load(d) for d in args.inputs]).save(args.out)
    elif args.command == "subset":
        with open(args.keys, encoding="utf-8") as f:
            keys = [line.split()[0] for line in f if line.strip()]
        subset(DataDir.load(args.input), keys).save(args.out)
    elif args.command == "speed":
        speed_perturb(DataDir.load(args.input), args.factor).save(args.out)
    elif args.command == "spk2utt":
        data = DataDir.load(args.input)
        write_kv(Path(args.input) / "spk2utt", data.spk2utt())
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError) as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        sys.exit(1)
