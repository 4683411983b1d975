"""ESPnet's ``espnet2.bin.ssl_train`` with mamba-mi's classes registered.

Usage: ``python -m espnet_mamba.bin.ssl_train [ESPnet's ssl_train options]``
"""

import espnet_mamba.tasks  # noqa: F401  (registers our classes into ESPnet's tasks)
from espnet2.bin.ssl_train import main

if __name__ == "__main__":
    main()
