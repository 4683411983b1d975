"""Entry points: ranks that ESPnet spawns fork their data workers."""

import multiprocessing

from espnet_mamba.bin import ForkDataWorkersInRanks


class _ReportingTask:
    """Stands in for an ESPnet task: its rank function reports the start method that a
    DataLoader created there would use."""

    @classmethod
    def main_worker(cls, queue):
        queue.put(multiprocessing.get_start_method())


class _ForkingTask(ForkDataWorkersInRanks, _ReportingTask):
    pass


def _start_method_in_spawned_rank(task) -> str:
    """Runs ``task.main_worker`` as ESPnet runs a rank (a process started by "spawn")."""
    spawn = multiprocessing.get_context("spawn")
    queue = spawn.Queue()
    rank = spawn.Process(target=task.main_worker, args=(queue,))
    rank.start()
    start_method = queue.get(timeout=60)
    rank.join(timeout=60)
    return start_method


def test_spawned_rank_forks_its_data_workers():
    assert _start_method_in_spawned_rank(_ReportingTask) == "spawn"  # what ESPnet's ranks get
    assert _start_method_in_spawned_rank(_ForkingTask) == "fork"


def test_main_process_start_method_is_left_alone():
    """A user who chose "spawn" in the main process (no ESPnet rank) keeps it."""
    before = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("spawn", force=True)
    try:
        queue = multiprocessing.SimpleQueue()
        _ForkingTask.main_worker(queue)
        assert queue.get() == "spawn"
    finally:
        multiprocessing.set_start_method(before, force=True)


def test_training_entry_points_use_the_mixin():
    import espnet_mamba.bin.asr_train
    import espnet_mamba.bin.hubert_train
    import espnet_mamba.bin.lm_train
    import espnet_mamba.bin.ssl_train
    from espnet2.tasks.asr import ASRTask
    from espnet2.tasks.hubert import HubertTask
    from espnet2.tasks.lm import LMTask
    from espnet2.tasks.ssl import SSLTask

    for module, base in (
        (espnet_mamba.bin.asr_train, ASRTask),
        (espnet_mamba.bin.hubert_train, HubertTask),
        (espnet_mamba.bin.lm_train, LMTask),
        (espnet_mamba.bin.ssl_train, SSLTask),
    ):
        assert issubclass(module.Task, ForkDataWorkersInRanks) and issubclass(module.Task, base)
