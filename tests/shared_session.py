"""One build per test session, shared by the pytest-xdist workers.

Kept apart from conftest.py (which imports torch) so that tests/test_conftest.py can run
it in a small pytest session of its own.
"""

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

import pytest

__all__ = ["build_once", "xdist_worker"]


def xdist_worker() -> Optional[str]:
    """This process's pytest-xdist worker id (``gw0``, ...), or None outside xdist."""
    return os.environ.get("PYTEST_XDIST_WORKER")


def build_once(tmp_path_factory, name: str, build: Callable[[Path], Any]) -> Tuple[Path, Any]:
    """``build(directory)`` run once per test session, and its JSON-able result.

    Under pytest-xdist every worker has its own base temporary directory, and all of
    them share its parent (one per session). The first worker to get here builds in
    ``<parent>/<name>`` while holding ``<parent>/<name>.lock``; the others wait on the
    lock and then read the result that the builder left in ``<name>.json``, or fail
    with its error instead of building again. Without xdist, ``build`` runs in a new
    temporary directory.

    Returns:
        The directory built in (shared by all workers: tests must not change it) and
        what ``build`` returned.
    """
    if xdist_worker() is None:
        directory = tmp_path_factory.mktemp(name)
        return directory, build(directory)
    root = tmp_path_factory.getbasetemp().parent
    directory = root / name
    result_file = root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not result_file.exists():
            shutil.rmtree(directory, ignore_errors=True)  # left by a worker that died building
            directory.mkdir()
            try:
                result = {"value": build(directory)}
            except BaseException as e:
                _write_json(result_file, {"error": f"{type(e).__name__}: {e}"})
                raise
            _write_json(result_file, result)
        result = json.loads(result_file.read_text())
    if "error" in result:
        pytest.fail(f"the session's {name} build failed in another worker: {result['error']}")
    return directory, result["value"]


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")  # one writer at a time: the lock is held
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)
