"""Entry points: ESPnet mains with mamba-mi registered (python -m espnet_mamba.bin.NAME).

Each training entry point runs ESPnet's task through :class:`EntryPointTask`, and
each calls :func:`register` before ESPnet parses its arguments.
"""

import multiprocessing
import sys
import time
import zipfile
from pathlib import Path
from typing import Optional

import s3prl_upstream
from espnet_mamba import registry

__all__ = [
    "EntryPointTask",
    "ForkDataWorkersInRanks",
    "SetAsideCorruptCheckpoint",
    "checkpoint_problem",
    "register",
    "set_aside_corrupt_checkpoint",
]


def register() -> None:
    """What every entry point registers: our classes in ESPnet's task choices and,
    when S3PRL is installed, our S3PRL upstreams (``frontend: s3prl`` names them)."""
    registry.register()
    try:
        s3prl_upstream.register()
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] != "s3prl":
            raise


class ForkDataWorkersInRanks:
    """Mixin for an ESPnet task: the training processes that ESPnet spawns fork their
    DataLoader workers.

    With ``--ngpu N --multiprocessing_distributed true`` ESPnet starts one process per
    GPU by "spawn", and Python makes "spawn" the default start method of a spawned
    process, so each DataLoader worker of a rank would be spawned too and re-import
    the entry point, one after another, for every data loader of every epoch
    (docs/benchmarks.md, two-GPU epoch). The workers only read audio and text, so a
    rank forks them, as a rank that torchrun (or a single process) starts does.
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


def checkpoint_problem(path: Path) -> Optional[str]:
    """Why ESPnet's resumable ``checkpoint.pth`` cannot be read, or None if it can.

    ``torch.save`` writes a zip archive; a save cut short by a kill leaves a file
    without the zip's central directory (at its end), and a damaged one fails a
    member's CRC. Both are found without unpickling anything.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        return f"not a complete torch.save archive ({type(e).__name__}: {e})"
    if bad is not None:
        return f"member {bad} fails its CRC check"
    return None


def set_aside_corrupt_checkpoint(output_dir: Path) -> Optional[Path]:
    """Move an unreadable ``<output_dir>/checkpoint.pth`` aside before ESPnet resumes.

    ESPnet saves ``checkpoint.pth`` in place, so a kill during the save leaves a
    truncated file that every rerun's resume fails on. Such a file is renamed to
    ``checkpoint.pth.corrupt-<time>`` and the reason printed: training then starts
    from scratch (ESPnet resumes only from ``checkpoint.pth``); the epoch snapshots
    ``<N>epoch.pth`` (model weights only) stay where they are.

    Returns:
        The new name of the file, or None when there was nothing to set aside.
    """
    path = Path(output_dir) / "checkpoint.pth"
    if not path.is_file():
        return None
    problem = checkpoint_problem(path)
    if problem is None:
        return None
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
    try:
        path.rename(aside)
    except FileNotFoundError:  # another process of this run set it aside first
        return None
    print(
        f"{path}: cannot be resumed from: {problem} (a save cut short, e.g. by a kill). "
        f"Moved it to {aside}; training starts again from epoch 1 (the epoch snapshots "
        f"{path.parent}/<N>epoch.pth hold model weights only and are left as they are).",
        file=sys.stderr,
    )
    return aside


class SetAsideCorruptCheckpoint:
    """Mixin for an ESPnet task: before ESPnet resumes (``--resume true``, as the
    recipe trains), an unreadable ``checkpoint.pth`` is set aside
    (:func:`set_aside_corrupt_checkpoint`), so a rerun after a kill trains instead of
    failing on it. Runs once, in the process that parses the arguments, before any
    rank starts."""

    @classmethod
    def main(cls, args=None, cmd=None):
        if args is None:
            args = cls.get_parser().parse_args(cmd)
        if getattr(args, "resume", False) and getattr(args, "output_dir", None):
            set_aside_corrupt_checkpoint(Path(args.output_dir))
        super().main(args=args)


class EntryPointTask(SetAsideCorruptCheckpoint, ForkDataWorkersInRanks):
    """Both mixins, for ``class Task(EntryPointTask, ASRTask)``."""
