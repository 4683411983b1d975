#!/usr/bin/env python3
"""Write an SSL training config whose HuBERT loss predicts the clusters of a token list.

The k-means token list (``espnet_mamba.ssl.kmeans``) holds the cluster ids ``0 ...
K-1`` and then ``<unk>``; every loss entry named ``hubert`` gets ``num_classes: K``.
All other settings are copied from the base config.

Usage:
    hubert_config.py BASE_CONFIG TOKEN_LIST OUT_CONFIG
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import yaml


def num_clusters(token_list: Path) -> int:
    """K of a k-means token list (``0`` ... ``K-1`` then ``<unk>``)."""
    tokens = [line.strip() for line in Path(token_list).read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(tokens) < 3 or tokens[-1] != "<unk>" or tokens[:-1] != [str(i) for i in range(len(tokens) - 1)]:
        raise ValueError(f"{token_list}: not a k-means token list ('0' ... 'K-1' and then '<unk>', K >= 2)")
    return len(tokens) - 1


def make_config(base: dict, n_clusters: int, source: str = "config") -> dict:
    """Copy of ``base`` with ``num_classes`` of each ``hubert`` loss set to ``n_clusters``."""
    losses = base.get("loss") if isinstance(base, dict) else None
    if not isinstance(losses, list) or not any(isinstance(x, dict) and x.get("name") == "hubert" for x in losses):
        raise ValueError(f"{source}: no 'loss' entry named 'hubert' (an ESPnet SSL-task HuBERT config is expected)")
    config = dict(base)
    config["loss"] = []
    for entry in losses:
        entry = dict(entry)
        if entry.get("name") == "hubert":
            entry["conf"] = dict(entry.get("conf") or {}, num_classes=n_clusters)
        config["loss"].append(entry)
    return config


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base_config")
    parser.add_argument("token_list")
    parser.add_argument("out_config")
    args = parser.parse_args(argv)
    try:
        with open(args.base_config, encoding="utf-8") as f:
            base = yaml.safe_load(f)
        config = make_config(base, num_clusters(Path(args.token_list)), args.base_config)
    except (OSError, ValueError, yaml.YAMLError) as e:
        print(f"hubert_config.py: error: {e}", file=sys.stderr)
        return 1
    tmp = args.out_config + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"# {args.base_config} with num_classes from {args.token_list} (local/hubert_config.py)\n")
        yaml.safe_dump(config, f, sort_keys=False)
    os.replace(tmp, args.out_config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
