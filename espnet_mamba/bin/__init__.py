"""Entry points: ESPnet mains with mamba-mi registered (python -m espnet_mamba.bin.NAME)."""

import multiprocessing


class ForkDataWorkersInRanks:
    """Mixin for an ESPnet task: the training processes that ESPnet spawns fork their
    DataLoader workers.

    With ``--ngpu N --multiprocessing_distributed true`` ESPnet starts one process per
    GPU by "spawn", and Python makes "spawn" the default start method of a spawned
    process. Each DataLoader worker of a rank is then spawned too and re-imports the
    entry point (ESPnet's preprocessor alone pulls in transformers and g2p_en; on a
    two-H100 host a worker took about 27 s to start), one worker after another, for every data loader of every epoch: on the
    paper config over 3 h of audio that made a two-GPU epoch 8.5x slower than a one-GPU
    epoch. The workers only read audio and text, so a rank forks them, as a rank that
    torchrun (or a single process) starts does.
    """

    @classmethod
    def main_worker(cls, args):
        if (
            multiprocessing.parent_process() is not None
            and multiprocessing.get_start_method(allow_none=True) == "spawn"
            and "fork" in multiprocessing.get_all_start_methods()
        ):
            multiprocessing.set_start_method("fork", force=True)
        super().main_worker(args)
