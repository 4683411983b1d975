"""ESPnet's ``espnet2.bin.lm_train`` with mamba-mi's classes registered.

Usage: ``python -m espnet_mamba.bin.lm_train [ESPnet's lm_train options]``
"""

import espnet_mamba.tasks  # noqa: F401  (registers our classes into ESPnet's tasks)
from espnet2.tasks.lm import LMTask
from espnet_mamba.bin import ForkDataWorkersInRanks


class Task(ForkDataWorkersInRanks, LMTask):
    """ESPnet's LMTask; with several GPUs its ranks fork their data workers."""


def main(cmd=None):
    Task.main(cmd=cmd)


if __name__ == "__main__":
    main()
