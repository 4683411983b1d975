"""ESPnet's ``espnet2.bin.hubert_train`` with mamba-mi's classes registered.

Usage: ``python -m espnet_mamba.bin.hubert_train [ESPnet's hubert_train options]``
"""

import espnet_mamba.tasks  # noqa: F401  (registers our classes into ESPnet's tasks)
from espnet2.tasks.hubert import HubertTask
from espnet_mamba.bin import ForkDataWorkersInRanks


class Task(ForkDataWorkersInRanks, HubertTask):
    """ESPnet's HubertTask; with several GPUs its ranks fork their data workers."""


def main(cmd=None):
    Task.main(cmd=cmd)


if __name__ == "__main__":
    main()
