"""Pretrain SSAMBA with SSAST's joint masked-patch objective (:mod:`espnet_mamba.ssamba.train`).

Usage::

    python -m espnet_mamba.bin.ssamba_train --config conf/ssamba/mini.yaml \\
        --wav_scp dump/raw/train_clean_100/wav.scp --output_dir exp/ssamba_mini

What it writes into ``--output_dir`` and how it resumes: see
:mod:`espnet_mamba.ssamba.train`. A bad option or input file is logged and exits 1.
"""

import argparse
import sys
from typing import Optional, Sequence

from espnet_mamba.ssamba.train import train


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


def run(args: argparse.Namespace) -> None:
    """:func:`espnet_mamba.ssamba.train.train` with the parsed options."""
    train(args.config, args.wav_scp, args.output_dir, device=args.device, max_steps=args.max_steps,
          seed=args.seed, resume=args.resume)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError):
        sys.exit(1)  # already logged


if __name__ == "__main__":
    main()
