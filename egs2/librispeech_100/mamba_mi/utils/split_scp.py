#!/usr/bin/env python3
"""Split a ``<key> <value>`` file into N parts of consecutive lines.

The parts differ in size by at most one line and, concatenated, give the input
back. There must be at least as many lines as parts.

Usage:
    split_scp.py data/wav.scp split/wav.1.scp split/wav.2.scp ...
    split_scp.py --num_parts 4 data/wav.scp 'split/wav.JOB.scp'
"""

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence


def split_lines(lines: List[str], num_parts: int) -> List[List[str]]:
    """Cut ``lines`` into ``num_parts`` consecutive, nearly equal parts."""
    if num_parts < 1:
        raise ValueError(f"num_parts must be >= 1, got {num_parts}")
    if len(lines) < num_parts:
        raise ValueError(f"cannot split {len(lines)} lines into {num_parts} non-empty parts")
    base, extra = divmod(len(lines), num_parts)
    parts, start = [], 0
    for i in range(num_parts):
        size = base + (1 if i < extra else 0)
        parts.append(lines[start : start + size])
        start += size
    return parts


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_parts", type=int, default=None, help="with one output pattern containing JOB")
    parser.add_argument("input")
    parser.add_argument("outputs", nargs="+")
    args = parser.parse_args(argv)
    if args.num_parts is not None:
        if len(args.outputs) != 1 or "JOB" not in args.outputs[0]:
            parser.error("--num_parts needs exactly one output pattern containing JOB")
        outputs = [args.outputs[0].replace("JOB", str(i)) for i in range(1, args.num_parts + 1)]
    else:
        outputs = args.outputs
    lines = [line for line in Path(args.input).read_text(encoding="utf-8").splitlines(keepends=True) if line.strip()]
    try:
        parts = split_lines(lines, len(outputs))
    except ValueError as e:
        print(f"{args.input}: {e}", file=sys.stderr)
        return 1
    for out, part in zip(outputs, parts):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text("".join(part), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
