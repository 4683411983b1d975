"""Shared fixtures: one run of the whole tiny recipe (stages 1-13) for the recipe tests."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs2" / "librispeech_100" / "mamba_mi"
RECIPE_TOOLS = ("espeak-ng", "sox", "flac")
# skip marks of tests that run the recipe
needs_recipe_tools = [
    pytest.mark.slow,
    pytest.mark.skipif(any(shutil.which(t) is None for t in RECIPE_TOOLS), reason="needs espeak-ng, sox, flac"),
    pytest.mark.skipif(not (REPO / ".venv" / "bin" / "lmplz").exists(), reason="needs .venv with KenLM (tools/install.sh)"),
]
RECIPE_ENV = dict(os.environ, MAMBA_MI_ROOT=str(REPO), OMP_NUM_THREADS="1")


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


@pytest.fixture(scope="session")
def tiny_recipe(tmp_path_factory):
    """The tiny recipe run as users run it: ``--use_decoder false`` up to stage 10, then
    everything (stages 1-13, the shared stages skipped). Returns (recipe dir, {use_decoder: stdout})."""
    recipe = copy_recipe(tmp_path_factory.mktemp("recipe"))
    runs = {}
    for use_decoder, stop_stage in (("false", "10"), ("true", "13")):
        out = run_tiny(recipe, "--use_decoder", use_decoder, "--stop_stage", stop_stage)
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
        runs[use_decoder] = out.stdout
    return recipe, runs
