"""ESPnet's ``espnet2.bin.asr_inference`` with mamba-mi's classes registered.

Usage: ``python -m espnet_mamba.bin.asr_inference [ESPnet's asr_inference options]``
"""

import espnet_mamba.tasks  # noqa: F401  (registers our classes into ESPnet's tasks)
from espnet2.bin.asr_inference import main

if __name__ == "__main__":
    main()
