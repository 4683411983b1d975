"""K-means pseudo labels for HuBERT pretraining (:mod:`espnet_mamba.ssl.kmeans`).

Usage: ``python -m espnet_mamba.bin.kmeans --feature mfcc|ssl ...`` (``--help`` lists
the options). A bad option or input file prints ``kmeans: error: <what>`` and exits 1.
"""

import sys
from typing import Optional, Sequence

from espnet_mamba.bin import register
from espnet_mamba.ssl import kmeans

register()  # --feature ssl builds the pretrained model through ESPnet's SSL task


def main(argv: Optional[Sequence[str]] = None) -> None:
    try:
        kmeans.main(argv)
    except (ValueError, FileNotFoundError) as e:
        print(f"kmeans: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
