"""Shared fixtures: one run of the whole tiny recipe (stages 1-13) for the recipe tests,
and a guard that fails any test that reaches for the network.

Network guard (tests/network_guard.py): from the start of every pytest process (each
pytest-xdist worker loads this file too), ``socket.connect``/``connect_ex`` to an
IPv4/IPv6 address other than loopback raises ``NetworkBlockedError`` (an ``OSError``,
as on an offline machine), and the test during which that happened fails, even if the
code swallowed the error; an attempt while the test modules are imported (collection)
fails the session's tests.
Processes that tests start (the recipe, ``python -m espnet_mamba.bin.*``) are not
guarded; tests/test_imports.py runs the entry points' imports under the same guard in a
fresh interpreter.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from network_guard import block_network
from shared_session import build_once, xdist_worker

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs2" / "librispeech_100" / "mamba_mi"
RECIPE_TOOLS = ("espeak-ng", "sox", "flac")
# skip marks of tests that run the recipe
needs_recipe_tools = [
    pytest.mark.slow,
    pytest.mark.skipif(any(shutil.which(t) is None for t in RECIPE_TOOLS), reason="needs espeak-ng, sox, flac"),
    pytest.mark.skipif(not (REPO / ".venv" / "bin" / "lmplz").exists(), reason="needs .venv with KenLM (tools/install.sh)"),
]
# The Python processes that the tests start import tests/no_typecheck/sitecustomize.py,
# which turns ESPnet's typeguard checks off (they cost an ESPnet process about half of its
# start) unless MAMBA_MI_TYPECHECK=1.
CHILD_PYTHONPATH = os.pathsep.join([str(REPO / "tests" / "no_typecheck")]
                                   + [p for p in [os.environ.get("PYTHONPATH")] if p])
RECIPE_ENV = dict(os.environ, MAMBA_MI_ROOT=str(REPO), OMP_NUM_THREADS="1", PYTHONPATH=CHILD_PYTHONPATH)
if not torch.cuda.is_available():
    # Triton reads this when it is first imported, by whichever test module comes first:
    # without a GPU its kernels run through its interpreter.
    os.environ.setdefault("TRITON_INTERPRET", "1")

if xdist_worker() is not None:  # the workers share the cores
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


# ------------------------------------------------------------------ network guard
_ATTEMPTS: list = []  # every refused connection of this process
_RESTORE: list = []


def pytest_configure(config):
    _RESTORE.append(block_network(_ATTEMPTS))  # before the test modules are imported
    # CHILD_PYTHONPATH for the processes that tests start, not for pytest-xdist's workers
    # (started by the controller): the tests that run in a pytest process keep typeguard.
    if xdist_worker() is not None or not getattr(config.option, "numprocesses", None):
        os.environ["PYTHONPATH"] = CHILD_PYTHONPATH


def pytest_unconfigure(config):
    while _RESTORE:
        _RESTORE.pop()()


@pytest.fixture(scope="session", autouse=True)
def no_network_during_collection():
    """Fail the session's tests if importing the test modules tried the network."""
    if _ATTEMPTS:
        pytest.fail(f"importing the test modules tried to reach the network: {_ATTEMPTS}")


@pytest.fixture(autouse=True)
def no_network(no_network_during_collection):
    """Fail the test during which a connection was refused, even if it was swallowed."""
    before = len(_ATTEMPTS)
    yield
    tried = _ATTEMPTS[before:]
    if tried:
        pytest.fail(f"the test tried to reach the network: {tried}")


# -------------------------------------------------------------------- tiny recipe
def pytest_collection_modifyitems(items):
    """The tests on the tiny recipe first (in their order): under ``make test``'s
    ``--dist worksteal`` the worker that gets them starts the build at once while the
    others run the rest, and idle workers later take recipe tests over from it."""
    items.sort(key=lambda item: "tiny_recipe" not in item.fixturenames)


def copy_recipe(dst: Path) -> Path:
    """A copy of the recipe's scripts and configs under ``dst`` (the repository stays clean)."""
    recipe = dst / "mamba_mi"
    recipe.mkdir(parents=True)
    for name in ("local", "utils", "conf"):
        shutil.copytree(RECIPE / name, recipe / name, ignore=shutil.ignore_patterns("__pycache__", "mini_corpus"))
    for name in ("path.sh", "cmd.sh", "run.sh", "mamba_mi.sh"):
        shutil.copy2(RECIPE / name, recipe / name)
    return recipe


def run_tiny(recipe: Path, *args: str) -> subprocess.CompletedProcess:
    """``./run.sh --mini_preset tiny --train_threads 1 ARGS`` in ``recipe``."""
    return subprocess.run(["./run.sh", "--mini_preset", "tiny", "--train_threads", "1", *args], cwd=recipe,
                          capture_output=True, text=True, env=RECIPE_ENV)


def _run_tiny_recipe(directory: Path) -> dict:
    """Both runs of the tiny recipe in ``directory``; {use_decoder: stdout}."""
    recipe = copy_recipe(directory)
    runs = {}
    for use_decoder, stop_stage in (("false", "10"), ("true", "13")):
        out = run_tiny(recipe, "--use_decoder", use_decoder, "--stop_stage", stop_stage)
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
        runs[use_decoder] = out.stdout
    return runs


@pytest.fixture(scope="session")
def tiny_recipe(tmp_path_factory):
    """The tiny recipe run as users run it: ``--use_decoder false`` up to stage 10, then
    everything (stages 1-13, the shared stages skipped). Returns (recipe dir, {use_decoder: stdout}).

    Built once per session (:func:`shared_session.build_once`); under pytest-xdist each
    worker gets its own copy of the built recipe, so that tests which run more stages in
    it do not meet another worker's."""
    built, runs = build_once(tmp_path_factory, "tiny_recipe", _run_tiny_recipe)
    if xdist_worker() is None:
        return built / "mamba_mi", runs
    recipe = tmp_path_factory.mktemp("recipe") / "mamba_mi"
    shutil.copytree(built / "mamba_mi", recipe, symlinks=True)
    return recipe, runs
