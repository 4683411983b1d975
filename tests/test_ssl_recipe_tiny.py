"""Stages 11-12 (local/ssl.sh, local/downstream.sh) on the tiny mini corpus, end to end.

Runs stages 1-6 of the recipe and then the two scripts with the tiny configs in a copy
of the recipe under a temporary directory. Takes several minutes on a CPU.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs2" / "librispeech_100" / "mamba_mi"
NEEDS = ("espeak-ng", "sox", "flac")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(any(shutil.which(t) is None for t in NEEDS), reason="needs espeak-ng, sox, flac"),
    pytest.mark.skipif(not (REPO / ".venv" / "bin" / "lmplz").exists(), reason="needs .venv with KenLM (tools/install.sh)"),
]
ENV = dict(os.environ, MAMBA_MI_ROOT=str(REPO), OMP_NUM_THREADS="1")


def _run(recipe: Path, *cmd: str) -> str:
    out = subprocess.run(list(cmd), cwd=recipe, capture_output=True, text=True, env=ENV)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    recipe = tmp_path_factory.mktemp("recipe") / "mamba_mi"
    recipe.mkdir()
    for name in ("local", "utils", "conf"):
        shutil.copytree(RECIPE / name, recipe / name, ignore=shutil.ignore_patterns("__pycache__", "mini_corpus"))
    for name in ("path.sh", "cmd.sh", "run.sh", "mamba_mi.sh"):
        shutil.copy2(RECIPE / name, recipe / name)
    _run(recipe, "./run.sh", "--mini_preset", "tiny", "--stage", "1", "--stop_stage", "6")
    (recipe / "RESULTS.md").write_text("# Results\n\nTable I stays.\n")
    logs = _run(recipe, "local/ssl.sh", "--conf_dir", "conf/ssl/tiny", "--n_clusters_it1", "10",
                "--n_clusters_it2", "10", "--kmeans_n_init", "2")
    logs += _run(recipe, "local/downstream.sh", "--conf_dir", "conf/downstream/tiny", "--nbpe", "40",
                 "--inference_nj", "1", "--test_utts", "3")
    return recipe, logs


def test_pretrained_models_of_both_iterations(recipe):
    recipe, _ = recipe
    for exp in ("ssl_mamba_hubert_it1", "ssl_hubert_it1", "ssl_mamba_hubert_it2_L6", "ssl_mamba_hubert_it2_L9",
                "ssl_hubert_it2_L6"):
        assert (recipe / "exp" / exp / "latest.pth").exists(), exp
    tokens = (recipe / "dump" / "ssl" / "it2_mamba_hubert_L9_km10" / "tokens.txt").read_text().split()
    assert tokens == [str(i) for i in range(10)] + ["<unk>"]


def test_table2_section_and_rerun_skips(recipe):
    recipe, _ = recipe
    text = (recipe / "RESULTS.md").read_text()
    assert text.startswith("# Results\n\nTable I stays.\n")
    rows = re.findall(r"^\| ((?:Mamba-)?HuBERT \(L\d\)[^|]*) \| ([\d.]+) \| ([\d.]+) \|", text, re.MULTILINE)
    labels = [r[0] for r in rows]
    for model in ("Mamba-HuBERT (L6)", "Mamba-HuBERT (L9)", "HuBERT (L6)"):
        for kind in ("fine-tuned + 4-gram", "fine-tuned, no LM", "+ Conformer"):
            assert f"{model} {kind}" in labels
    assert len(rows) == 9
    # everything is complete: a second run only skips
    again = _run(recipe, "local/downstream.sh", "--conf_dir", "conf/downstream/tiny", "--nbpe", "40",
                 "--inference_nj", "1", "--test_utts", "3")
    assert "Training" not in again and "Decoding test" not in again
    assert (recipe / "RESULTS.md").read_text() == text


def test_bad_options_are_clear_errors(recipe):
    recipe, _ = recipe
    out = subprocess.run(["local/ssl.sh", "--hubert_label_layer", "six"], cwd=recipe, capture_output=True,
                         text=True, env=ENV)
    assert out.returncode != 0 and "label layers must be non-negative integers" in out.stdout
    out = subprocess.run(["local/ssl.sh", "--conf_dir", "conf/ssl/tiny", "--stage", "3", "--hubert_label_layer",
                          "13", "--n_clusters_it2", "10"], cwd=recipe, capture_output=True, text=True, env=ENV)
    assert out.returncode != 0 and "layer 13 is out of range" in out.stdout
    out = subprocess.run(["local/downstream.sh", "--models", "conformer"], cwd=recipe, capture_output=True,
                         text=True, env=ENV)
    assert out.returncode != 0 and "unknown model 'conformer'" in out.stdout
