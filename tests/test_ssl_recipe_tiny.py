"""Stages 11-13 (local/ssl.sh, local/downstream.sh, analysis/run_mine.py) of the tiny recipe.

Uses the session fixture ``tiny_recipe`` of conftest.py (the whole tiny recipe, as
users run it). Takes several minutes on a CPU.
"""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from analysis import discover
from conftest import RECIPE_ENV, needs_recipe_tools

pytestmark = needs_recipe_tools
# the options run.sh gives local/downstream.sh for --mini_preset tiny
DOWNSTREAM_TINY = ("--conf_dir", "conf/downstream/tiny", "--nbpe", "40", "--inference_nj", "1", "--test_utts", "4",
                   "--model_jobs", "2")


def _run(recipe, *cmd: str) -> str:
    out = subprocess.run(list(cmd), cwd=recipe, capture_output=True, text=True, env=RECIPE_ENV)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def recipe(tiny_recipe):
    return tiny_recipe


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
    assert "| + Decoder |" in text and "| - Decoder |" in text  # stage 10's Table I stays
    rows = re.findall(r"^\| ((?:Mamba-)?HuBERT \(L\d\)[^|]*) \| ([\d.]+) \| ([\d.]+) \|", text, re.MULTILINE)
    labels = [r[0] for r in rows]
    for model in ("Mamba-HuBERT (L6)", "Mamba-HuBERT (L9)", "HuBERT (L6)"):
        for kind in ("fine-tuned + 4-gram", "fine-tuned, no LM", "+ Conformer"):
            assert f"{model} {kind}" in labels
    assert len(rows) == 9
    # everything is complete: a second run only skips
    again = _run(recipe, "local/downstream.sh", *DOWNSTREAM_TINY)
    assert "Training" not in again and "Decoding test" not in again
    assert (recipe / "RESULTS.md").read_text() == text


def test_bad_options_are_clear_errors(recipe):
    recipe, _ = recipe
    out = subprocess.run(["local/ssl.sh", "--hubert_label_layer", "six"], cwd=recipe, capture_output=True,
                         text=True, env=RECIPE_ENV)
    assert out.returncode != 0 and "label layers must be non-negative integers" in out.stderr
    out = subprocess.run(["local/ssl.sh", "--conf_dir", "conf/ssl/tiny", "--stage", "3", "--hubert_label_layer",
                          "13", "--n_clusters_it2", "10"], cwd=recipe, capture_output=True, text=True, env=RECIPE_ENV)
    assert out.returncode != 0 and "layer 13 is out of range" in out.stderr
    out = subprocess.run(["local/downstream.sh", "--models", "conformer"], cwd=recipe, capture_output=True,
                         text=True, env=RECIPE_ENV)
    assert out.returncode != 0 and "unknown model 'conformer'" in out.stderr


def test_stage13_measures_every_model(recipe):
    recipe, runs = recipe
    assert "Stage 13: done" in runs["true"]
    summary = json.loads((recipe / "exp" / "mi" / "summary.json").read_text())
    measured = {m["name"]: m for m in summary["models"]}
    calibrated = set()
    for model in ("asr_train_asr_conbimamba", "asr_train_asr_conbimamba_nodec", "ssl_mamba_hubert_it2_L6",
                  "ssl_hubert_it2_L6"):
        assert model in measured, (model, sorted(measured), summary["skipped"])
        assert measured[model]["verdict"] in ("falls", "falls then rises", "unclear")
        assert all(row["mean_mi"] == row["mean_mi"] for row in measured[model]["rows"])  # no NaN
        # The calibrated curve, the paper's beside it, each with its calibration, and the cross-check.
        curves = {c["role"]: c for c in measured[model]["curves"]}
        assert curves["main"]["estimator"] == "gcmi" and curves["paper"]["estimator"] == "mine"
        if len(measured[model]["rows"]) >= 3:  # a shape, and so a calibration, needs 3 layers
            assert "spearman" in curves["main"]["calibration"] and "spearman" in curves["paper"]["calibration"]
            calibrated.add(model)
        assert measured[model]["cross_check"]["estimator"] == "pooled-critic"
        # The model measured is the model decoded.
        config = yaml.safe_load((recipe / "exp" / model / "config.yaml").read_text())
        if model.startswith("asr_"):
            assert Path(measured[model]["checkpoint"]).name == discover.decoded_checkpoint(config)
    assert calibrated and list((recipe / "exp" / "mi" / "plots").glob("*_calibration.png"))
    assert "shapes named" in (recipe / "exp" / "mi" / "RESULTS.md").read_text()
