"""Tests of analysis/run_mine.py: the whole stage-13 driver on tiny ESPnet models.

Runs use few utterances and MINE epochs; what is checked is the mechanics: result
files and their content, resuming from the caches, and how bad input is reported.
"""

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_run_mine_helpers as helpers  # noqa: E402

from analysis import discover, features, measure, report, run_mine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The paper's per-utterance MINE as the main curve: these tests check the driver's mechanics.
QUICK = ["--n_utts", "5", "--epochs", "3", "--mine_batch_size", "16", "--n_boot", "200", "--progress", "off",
         "--estimator", "mine", "--cross_check", "none", "--calibrate", "off"]
MODELS = ["asr_conbimamba_ctc", "asr_conbimamba_dec", "asr_conformer_ctc"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    helpers.make_recipe(root, per_set=4)
    return root


@pytest.fixture
def recipe(pristine, tmp_path):
    """A fresh copy of the tiny recipe (models + data) for each test."""
    root = tmp_path / "recipe"
    shutil.copytree(pristine, root)
    return root


class CountingEngine:
    """Wraps estimate_mi_batched and records the problems of each call."""

    def __init__(self, monkeypatch, fail_on_call=None):
        self.calls = []
        self.fail_on_call = fail_on_call
        self.real = measure.estimate_mi_batched
        monkeypatch.setattr(measure, "estimate_mi_batched", self)

    def __call__(self, x, y, **kwargs):
        self.calls.append(len(x))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt
        return self.real(x, y, **kwargs)

    @property
    def problems(self):
        return sum(self.calls)


def count_extractions(monkeypatch):
    built = []
    real = features.build_extractor

    def build(entry, device="cpu"):
        built.append(entry.name)
        return real(entry, device)

    monkeypatch.setattr(features, "build_extractor", build)
    return built


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_full_run_writes_results_plots_and_verdicts(recipe, capsys):
    exp = recipe / "exp"
    assert run_mine.main([str(exp)] + QUICK) == 0
    out = exp / "mi"
    printed = capsys.readouterr().out
    for name in MODELS:
        rows = read_csv(out / f"{name}.csv")
        assert [r["layer"] for r in rows] == ["1", "2", "3"]
        assert list(rows[0]) == list(report.CSV_COLUMNS)
        for r in rows:
            assert int(r["n_utts"]) == 5
            assert float(r["ci_low"]) <= float(r["mean_mi"]) <= float(r["ci_high"])
            assert float(r["std_mi"]) >= 0 and float(r["mean_log_n"]) > 0
        data = json.loads((out / f"{name}.json").read_text())
        assert data["name"] == name and data["verdict"] in ("falls", "falls then rises", "unclear")
        assert "bootstrap" in data["test"] or "needs" in data["test"]
        assert data["n_utts"] == 5 and len(data["layers"]) == 3
        assert data["options"]["epochs"] == 3 and data["x_description"]
        # The layer means are the means of the saved per-utterance estimates.
        saved = json.loads((out / "estimates" / f"{name}.mine.json").read_text())["values"]
        for j, layer in enumerate(["1", "2", "3"]):
            values = [saved[u][layer][0] for u in saved]
            assert len(values) == 5
            assert math.isclose(data["layers"][j]["mean_mi"], float(np.mean(values)), rel_tol=1e-9)
        assert f"{name}: {data['verdict']} (" in printed
        png = out / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
        assert (out / "plots" / f"{name}.pdf").stat().st_size > 0
    # With vs without decoder: both conbimamba models in one figure (the Conformer has no partner).
    assert (out / "plots" / "compare_decoder_conbimamba.png").stat().st_size > 1000
    summary = (out / "RESULTS.md").read_text()
    for name in MODELS:
        checkpoint = Path(json.loads((out / f"{name}.json").read_text())["checkpoint"]).name
        assert f"| {name} | espnet-asr | {checkpoint} | 3 | 5 |" in summary
    assert json.loads((out / "summary.json").read_text())["settings"]["n_utts_used"] == 5
    assert not list(out.rglob("*.tmp"))


def test_second_run_reuses_features_and_estimates(recipe, monkeypatch):
    exp = recipe / "exp"
    first = CountingEngine(monkeypatch)
    assert run_mine.main([str(exp)] + QUICK) == 0
    assert first.problems == 3 * 5 * 3
    before = {name: (exp / "mi" / f"{name}.csv").read_text() for name in MODELS}

    built = count_extractions(monkeypatch)
    again = CountingEngine(monkeypatch)
    assert run_mine.main([str(exp)] + QUICK) == 0
    assert again.calls == [] and built == []
    assert {name: (exp / "mi" / f"{name}.csv").read_text() for name in MODELS} == before

    # Forget two estimates of one model: only those two are computed again.
    path = exp / "mi" / "estimates" / "asr_conformer_ctc.mine.json"
    saved = json.loads(path.read_text())
    utt = sorted(saved["values"])[0]
    del saved["values"][utt]["1"], saved["values"][utt]["3"]
    path.write_text(json.dumps(saved))
    partial = CountingEngine(monkeypatch)
    assert run_mine.main([str(exp)] + QUICK) == 0
    assert partial.calls == [2] and built == []
    # Estimates depend only on (seed, utterance, data): the recomputed ones are the same.
    assert (exp / "mi" / "asr_conformer_ctc.csv").read_text() == before["asr_conformer_ctc"]

    # Other MINE options: features reused, every estimate made again.
    other = CountingEngine(monkeypatch)
    assert run_mine.main([str(exp)] + QUICK + ["--lr", "0.001"]) == 0
    assert other.problems == 3 * 5 * 3 and built == []


def test_changed_checkpoint_invalidates_its_features(recipe, monkeypatch):
    exp = recipe / "exp"
    assert run_mine.main([str(exp)] + QUICK + ["--no_plots"]) == 0
    helpers.make_asr_model(exp / "asr_conbimamba_ctc", decoder=False, checkpoint="valid.loss.ave.pth", seed=7)
    built = count_extractions(monkeypatch)
    engine = CountingEngine(monkeypatch)
    assert run_mine.main([str(exp)] + QUICK + ["--no_plots"]) == 0
    assert built == ["asr_conbimamba_ctc"] and engine.problems == 5 * 3
    # Another utterance draw invalidates every model's features.
    assert run_mine.main([str(exp)] + QUICK + ["--no_plots", "--seed", "1"]) == 0
    assert sorted(built[1:]) == MODELS


def test_interrupted_run_resumes_to_the_same_results(recipe, pristine, monkeypatch, tmp_path):
    exp = recipe / "exp"
    args = [str(exp)] + QUICK + ["--models", "asr_conbimamba_dec", "--problems_per_call", "4", "--no_plots"]
    CountingEngine(monkeypatch, fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        run_mine.main(args)
    saved = json.loads((exp / "mi" / "estimates" / "asr_conbimamba_dec.mine.json").read_text())["values"]
    assert sum(len(v) for v in saved.values()) == 8  # two finished calls of 4 problems
    resumed = CountingEngine(monkeypatch)
    assert run_mine.main(args) == 0
    assert resumed.calls == [4, 3]

    fresh = tmp_path / "fresh"
    shutil.copytree(pristine, fresh)
    fresh_args = [str(fresh / "exp")] + args[1:]
    assert run_mine.main(fresh_args) == 0
    got = json.loads((exp / "mi" / "asr_conbimamba_dec.json").read_text())["layers"]
    want = json.loads((fresh / "exp" / "mi" / "asr_conbimamba_dec.json").read_text())["layers"]
    for g, w in zip(got, want):
        assert g["mean_mi"] == pytest.approx(w["mean_mi"], rel=1e-6, abs=1e-9)


def test_empty_or_missing_exp_fails(tmp_path, capsys):
    (tmp_path / "exp").mkdir()
    assert run_mine.main([str(tmp_path / "exp"), "--progress", "off"]) == 1
    assert "(none)" in (tmp_path / "exp" / "mi" / "RESULTS.md").read_text()
    assert run_mine.main([str(tmp_path / "nowhere"), "--progress", "off"]) == 1


def test_broken_models_are_skipped_and_the_others_written(recipe, capsys):
    exp = recipe / "exp"
    (exp / "asr_conbimamba_dec" / "valid.acc.ave.pth").write_bytes(b"\0garbage")
    (exp / "asr_conformer_ctc" / "config.yaml").write_text("encoder: [broken\n")
    nan_model = helpers.make_asr_model(exp / "asr_nan", decoder=False, checkpoint="valid.loss.ave.pth")
    state = nan_model.state_dict()
    state["encoder.after_norm.weight"] = torch.full_like(state["encoder.after_norm.weight"], float("nan"))
    torch.save(state, exp / "asr_nan" / "valid.loss.ave.pth")
    (exp / "asr_noconfig_ckpt_only").mkdir()
    (exp / "asr_nockpt").mkdir()
    shutil.copy(exp / "asr_conbimamba_ctc" / "config.yaml", exp / "asr_nockpt" / "config.yaml")

    assert run_mine.main([str(exp)] + QUICK) == 0
    out = exp / "mi"
    assert (out / "asr_conbimamba_ctc.csv").exists()
    for name in ("asr_conbimamba_dec", "asr_conformer_ctc", "asr_nan", "asr_nockpt"):
        assert not (out / f"{name}.csv").exists()
    skipped = {s["name"]: s["reason"] for s in json.loads((out / "summary.json").read_text())["skipped"]}
    assert set(skipped) == {"asr_conbimamba_dec", "asr_conformer_ctc", "asr_nan", "asr_nockpt"}
    assert "valid.acc.ave.pth: not a model state dict" in skipped["asr_conbimamba_dec"]
    assert "unreadable config" in skipped["asr_conformer_ctc"]
    assert "layer 3 has NaN" in skipped["asr_nan"]
    assert "no checkpoint" in skipped["asr_nockpt"]
    printed = capsys.readouterr().out
    assert "asr_nan: not measured:" in printed
    assert "## Not measured" in (out / "RESULTS.md").read_text()

    # Nothing measurable at all: exit status 1.
    shutil.rmtree(exp / "asr_conbimamba_ctc")
    assert run_mine.main([str(exp)] + QUICK) == 1


def test_missing_evaluation_data_is_reported(recipe):
    shutil.rmtree(recipe / "data")
    assert run_mine.main([str(recipe / "exp")] + QUICK) == 1
    skipped = json.loads((recipe / "exp" / "mi" / "summary.json").read_text())["skipped"]
    assert len(skipped) == 3 and all("--wav_scp" in s["reason"] for s in skipped)


def test_options_out_wav_scp_max_frames(recipe):
    exp = recipe / "exp"
    out = recipe / "analysis_out"
    scp = recipe / "data" / "dev_clean" / "wav.scp"
    assert run_mine.main([str(exp), "--out", str(out), "--wav_scp", str(scp), "--max_frames", "12",
                          "--models", "asr_conbimamba_c*", "--no_plots"] + QUICK[2:] + ["--n_utts", "3"]) == 0
    data = json.loads((out / "asr_conbimamba_ctc.json").read_text())
    assert data["n_utts"] == 3 and data["max_frames"] == 12
    assert all(r["mean_log_n"] == pytest.approx(math.log(12)) for r in data["layers"])
    assert not (out / "asr_conbimamba_dec.json").exists() and not (out / "plots").exists()
    saved = json.loads((out / "estimates" / "asr_conbimamba_ctc.mine.json").read_text())["values"]
    assert all(u.startswith("dev_clean") for u in saved)


def test_layer_rows_against_numpy():
    rng = np.random.default_rng(0)
    est = rng.normal(1.0, 0.3, size=(40, 3))
    est[3, 1] = np.nan
    frames = np.full(est.shape, 50.0)
    est[5, 2] = math.log(50.0) - 0.1  # flagged near log n
    rows = report.layer_rows(est, frames, ["a", "b", "c"], seed=0, n_boot=500)
    assert [r["n_utts"] for r in rows] == [40, 39, 40]
    col = est[:, 1][np.isfinite(est[:, 1])]
    assert rows[1]["mean_mi"] == pytest.approx(col.mean())
    assert rows[1]["std_mi"] == pytest.approx(col.std(ddof=1))
    assert rows[1]["ci_low"] < rows[1]["mean_mi"] < rows[1]["ci_high"]
    assert [r["near_log_n"] for r in rows] == [0, 0, 1]
    assert rows[0]["mean_log_n"] == pytest.approx(math.log(50.0))


def test_trend_verdicts_on_synthetic_curves():
    rng = np.random.default_rng(1)
    noise = rng.normal(0.0, 0.05, size=(60, 6))
    names = [str(i) for i in range(1, 7)]
    falls = np.array([3.0, 2.5, 2.0, 1.6, 1.3, 1.0]) + noise
    dip = np.array([3.0, 2.0, 1.2, 1.0, 1.8, 2.8]) + noise
    verdict, test = report.trend(falls, names, n_boot=500)
    assert verdict == "falls" and "bootstrap over 60 utterances" in test and test.endswith("is T_1]")
    verdict, test = report.trend(dip, names, n_boot=500)
    assert verdict == "falls then rises"
    assert report.trend(noise + 1.0, names, n_boot=500)[0] == "unclear"
    assert report.trend(np.ones((5, 2)), names[:2])[0] == "unclear"


def test_script_help_runs_from_any_directory(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "analysis" / "run_mine.py"), "--help"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--n_utts" in result.stdout and "(default: 1000)" in result.stdout


def test_stage12_models_and_the_downstream_figure(tmp_path, monkeypatch):
    """SSL model, its fine-tuning and its upstream + Conformer model, run from another directory."""
    exp = helpers.make_stage12_recipe(tmp_path / "recipe")
    monkeypatch.chdir(tmp_path)
    assert run_mine.main([str(exp)] + QUICK) == 0
    out = exp / "mi"
    stacked = json.loads((out / "s3prl_conformer_mamba_hubert_it2_L9.json").read_text())
    assert [r["layer"] for r in stacked["layers"]] == ["up1", "up2", "up3", "enc1", "enc2"]
    assert stacked["boundary"] == 3 and stacked["tags"]["family"] == "upstream+downstream"
    # The Conformer's layers pair X's frames two by two: half as many frames.
    rows = stacked["layers"]
    assert rows[3]["mean_log_n"] < rows[2]["mean_log_n"] - 0.5
    tuned = json.loads((out / "ft_mamba_hubert_it2_L9.json").read_text())
    assert [r["layer"] for r in tuned["layers"]] == ["1", "2", "3"] and tuned["tags"]["family"] == "upstream"
    figure = out / "plots" / "compare_downstream_ssl_mamba_hubert_it2_L9.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_run_reports_calibrated_paper_and_cross_check_curves(recipe, monkeypatch):
    """Defaults: gcmi (main), the paper's mine beside it, pooled-critic cross-check, calibration."""
    exp = recipe / "exp"
    args = [str(exp), "--n_utts", "8", "--epochs", "3", "--mine_batch_size", "16", "--n_boot", "200",
            "--progress", "off", "--models", "asr_conbimamba_*"]
    assert run_mine.main(args) == 0
    out = exp / "mi"
    for name in ("asr_conbimamba_ctc", "asr_conbimamba_dec"):
        data = json.loads((out / f"{name}.json").read_text())
        roles = {c["role"]: c for c in data["curves"]}
        assert [c["estimator"] for c in data["curves"]] == ["gcmi", "mine", "pooled-critic"]
        assert data["estimator"] == "gcmi" and data["verdict"] == roles["main"]["verdict"]
        assert roles["main"]["unit"] == "utterance folds" and roles["main"]["n_units"] == 8
        for role in ("main", "paper"):
            calibration = roles[role]["calibration"]
            assert -1.0 <= calibration["spearman"] <= 1.0 and calibration["ladders"] == 2
            assert isinstance(calibration["trustworthy"], bool)
            assert [r["shape"] for r in calibration["readings"]] == ["falls then rises", "falls"]
            assert len(calibration["readings"][0]["true_mi"]) == 3
        assert "calibration" not in roles["cross-check"]
        assert data["cross_check"] == {"estimator": "pooled-critic", "verdict": roles["cross-check"]["verdict"],
                                       "agrees": roles["cross-check"]["verdict"] == data["verdict"]}
        assert read_csv(out / f"{name}.csv")[0]["estimator"] == "gcmi"
        assert read_csv(out / f"{name}.mine.csv")[0]["estimator"] == "mine"
        assert len(read_csv(out / f"{name}.pooled-critic.csv")) == 3
        png = out / "plots" / f"{name}_calibration.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "RESULTS.md").read_text()
    assert "main curve: `gcmi`" in summary and "paper curve: `mine`" in summary
    assert "shapes named" in summary and "pooled-critic: " in summary
    # Both models have the same shapes: one calibration per estimator, reused by the second run.
    assert len(list((out / "calibration").glob("gcmi_*.json"))) == 1
    calls = []
    monkeypatch.setattr(measure, "calibrate", lambda *a, **k: calls.append(a))
    assert run_mine.main(args) == 0 and calls == []


def test_too_few_utterances_skip_a_curve_not_the_model(recipe):
    exp = recipe / "exp"
    assert run_mine.main([str(exp), "--n_utts", "5", "--epochs", "2", "--n_boot", "100", "--progress", "off",
                          "--models", "asr_conbimamba_ctc", "--calibrate", "off", "--no_plots"]) == 0
    data = json.loads((exp / "mi" / "asr_conbimamba_ctc.json").read_text())
    assert [c["estimator"] for c in data["curves"]] == ["gcmi", "mine"]
    missing = data["curves_not_estimated"]
    assert missing[0]["estimator"] == "pooled-critic" and "5 utterances is fewer than the 8" in missing[0]["reason"]
    assert "pooled-critic (cross-check): not estimated" in (exp / "mi" / "RESULTS.md").read_text()
    # Too few for the main curve: the model is reported as not measured, with the count and the minimum.
    assert run_mine.main([str(exp), "--n_utts", "3", "--progress", "off", "--models", "asr_conbimamba_ctc",
                          "--paper_estimator", "none", "--cross_check", "none", "--calibrate", "off"]) == 1
    skipped = json.loads((exp / "mi" / "summary.json").read_text())["skipped"]
    assert "asr_conbimamba_ctc: gcmi: 3 utterances is fewer than the 4" in skipped[0]["reason"]


def test_the_decoded_checkpoint_is_the_one_measured(tmp_path):
    """The CTC-only model is decoded from valid.cer_ctc.ave.pth: that one, not latest.pth."""
    exp = tmp_path / "exp"
    helpers.make_asr_model(exp / "asr_ctc", decoder=False, checkpoint="valid.cer_ctc.ave.pth")
    config_path = exp / "asr_ctc" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["best_model_criterion"] = [["valid", "cer_ctc", "min"]]
    config_path.write_text(yaml.safe_dump(config))
    shutil.copy(exp / "asr_ctc" / "valid.cer_ctc.ave.pth", exp / "asr_ctc" / "latest.pth")
    (entry,) = discover.discover_models(exp)
    assert entry.checkpoint.name == "valid.cer_ctc.ave.pth"


BAD_OPTIONS = [
    (["--lr", "-1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--n_utts", "0"], "--n_utts"),
    (["--hidden", "0,5"], "--hidden"),
    (["--estimator", "magic"], "--estimator"),
    (["--paper_estimator", "gcmi"], "--paper_estimator"),
    (["--cross_check", "bogus"], "--cross_check"),
    (["--calibrate", "maybe"], "--calibrate"),
    (["--folds", "1"], "folds must be an int >= 2"),
    (["--ridge", "-1"], "--ridge"),
    (["--max_frames", "-3"], "--max_frames"),
    (["--wav_scp", "nowhere/wav.scp"], "--wav_scp nowhere/wav.scp: no such file"),
    (["--out", "FILE"], "exists and is not a directory"),
]
if not torch.cuda.is_available():
    BAD_OPTIONS.append((["--device", "cuda"], "--device cuda: CUDA is not available"))


@pytest.mark.parametrize("options, message", BAD_OPTIONS)
def test_bad_options_are_named_before_any_work(recipe, monkeypatch, capsys, options, message):
    monkeypatch.setattr(features, "build_extractor", lambda *a, **k: pytest.fail("extraction started"))
    monkeypatch.chdir(recipe)
    (recipe / "FILE").write_text("x")
    try:
        status = run_mine.main(["exp"] + options + ["--progress", "off"])
    except SystemExit as e:  # argparse's own checks
        status = e.code
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (recipe / "exp" / "mi").exists()


def test_a_second_run_on_the_same_output_is_refused(recipe, capsys):
    out = recipe / "exp" / "mi"
    lock = run_mine.OutputLock(out)
    try:
        assert run_mine.main([str(recipe / "exp")] + QUICK) == run_mine.EXIT_LOCKED
        assert f"{out} is in use by another run_mine (pid {os.getpid()})" in capsys.readouterr().err
        assert not (out / "RESULTS.md").exists()
    finally:
        lock.release()
    assert run_mine.main([str(recipe / "exp")] + QUICK + ["--models", "asr_conbimamba_ctc", "--no_plots"]) == 0
