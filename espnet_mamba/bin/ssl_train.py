"""ESPnet's ``espnet2.bin.ssl_train`` with mamba-mi's classes registered.

Usage: ``python -m espnet_mamba.bin.ssl_train [ESPnet's ssl_train options]``
"""

import espnet_mamba.tasks  # noqa: F401  (registers our classes into ESPnet's tasks)
from espnet2.tasks.ssl import SSLTask
from espnet_mamba.bin import ForkDataWorkersInRanks


class Task(ForkDataWorkersInRanks, SSLTask):
    """ESPnet's SSLTask; with several GPUs its ranks fork their data workers."""


def main(cmd=None):
    Task.main(cmd=cmd)


if __name__ == "__main__":
    main()
