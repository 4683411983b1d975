"""ESPnet's ``espnet2.bin.asr_train`` with mamba-mi's classes registered.

Usage: ``python -m espnet_mamba.bin.asr_train [ESPnet's asr_train options]``
"""

from espnet2.tasks.asr import ASRTask

from espnet_mamba.bin import EntryPointTask, register

# before ESPnet builds its parser; the ranks that ESPnet spawns import this module too
register()


class Task(EntryPointTask, ASRTask):
    """ESPnet's ASRTask; an unreadable checkpoint.pth is set aside before resuming, and
    with several GPUs its ranks fork their data workers."""


def main(cmd=None):
    Task.main(cmd=cmd)


if __name__ == "__main__":
    main()
