"""ESPnet's ``espnet2.bin.asr_train`` with mamba-mi's classes registered.

Usage: ``python -m espnet_mamba.bin.asr_train [ESPnet's asr_train options]``
"""

import espnet_mamba.tasks  # noqa: F401  (registers our classes into ESPnet's tasks)
from espnet2.tasks.asr import ASRTask
from espnet_mamba.bin import ForkDataWorkersInRanks


class Task(ForkDataWorkersInRanks, ASRTask):
    """ESPnet's ASRTask; with several GPUs its ranks fork their data workers."""


def main(cmd=None):
    Task.main(cmd=cmd)


if __name__ == "__main__":
    main()
