#!/usr/bin/env python3
"""Exit 0 when the Python module MODULE can be imported (it is found), 1 when not.

Usage:
    has_module.py MODULE     e.g. has_module.py espnet_mamba.bin.asr_train
"""

import importlib.util
import sys


def main(argv: list) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        return 0 if importlib.util.find_spec(argv[0]) is not None else 1
    except (ImportError, ValueError):
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
