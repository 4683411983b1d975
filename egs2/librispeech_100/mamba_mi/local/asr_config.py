#!/usr/bin/env python3
"""What mamba_mi.sh reads from an ASR training config (one value on stdout).

Usage:
    asr_config.py checkpoint CONFIG   the checkpoint that stage 8 leaves for decoding:
                                      <phase>.<metric>.ave.pth of the config's first
                                      best_model_criterion (valid.loss.ave.pth without one)
    asr_config.py frontend CONFIG     the frontend and its options, for the signature of
                                      the feature statistics
    asr_config.py has_decoder CONFIG  true for a CTC/attention model, false for CTC only
                                      (the test behind RESULTS.md's "+ Decoder" label)
"""

import argparse
import sys
from typing import Dict, Optional, Sequence

import yaml

from make_results import has_decoder


def checkpoint(config: Dict) -> str:
    """:func:`analysis.discover.decoded_checkpoint` (imported here, for this query only:
    the analysis package imports torch)."""
    from analysis.discover import decoded_checkpoint

    return decoded_checkpoint(config)


def frontend(config: Dict) -> str:
    """The frontend name and options, as the statistics' signature spells them."""
    return f"{config.get('frontend')} {config.get('frontend_conf')}"


QUERIES = {
    "checkpoint": checkpoint,
    "frontend": frontend,
    "has_decoder": lambda config: str(has_decoder(config)).lower(),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("query", choices=sorted(QUERIES))
    parser.add_argument("config")
    args = parser.parse_args(argv)
    try:
        with open(args.config, encoding="utf-8") as f:
            config = yaml.safe_load(f)
        if not isinstance(config, dict):
            raise ValueError("not a YAML mapping")
        print(QUERIES[args.query](config))
    except (OSError, ValueError, TypeError, yaml.YAMLError) as e:
        print(f"asr_config.py: error: {args.config}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
