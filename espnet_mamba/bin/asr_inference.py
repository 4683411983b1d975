"""ESPnet's ``espnet2.bin.asr_inference`` with mamba-mi's classes registered.

Usage: ``python -m espnet_mamba.bin.asr_inference [ESPnet's asr_inference options]``
"""

from espnet2.bin.asr_inference import main

from espnet_mamba.bin import register

register()  # before ESPnet builds its parser and the model

if __name__ == "__main__":
    main()
