"""run_mine.py killed with SIGKILL mid-run: the rerun finishes with the results of an uninterrupted run."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_run_mine_helpers as helpers  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--n_utts", "5", "--epochs", "20", "--mine_batch_size", "16", "--n_boot", "200", "--progress", "off",
        "--estimator", "mine", "--cross_check", "none", "--calibrate", "off", "--no_plots",
        "--problems_per_call", "1", "--device", "cpu"]
MODELS = ["asr_conbimamba_ctc", "asr_conbimamba_dec", "asr_conformer_ctc"]


def command(exp: Path):
    return [sys.executable, str(REPO / "analysis" / "run_mine.py"), str(exp)] + ARGS


def test_sigkill_then_rerun_gives_the_uninterrupted_results(tmp_path):
    helpers.make_recipe(tmp_path / "killed", per_set=4)
    shutil.copytree(tmp_path / "killed", tmp_path / "whole")
    env = dict(os.environ, OMP_NUM_THREADS="1")

    killed = tmp_path / "killed" / "exp"
    proc = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    estimates = killed / "mi" / "estimates"
    deadline = time.monotonic() + 300
    while not list(estimates.glob("*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # a few more engine calls, and likely one in the middle of a write
    assert proc.poll() is None, "run_mine finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (killed / "mi" / "RESULTS.md").exists()

    rerun = subprocess.run(command(killed), capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "already done" in rerun.stderr
    whole = subprocess.run(command(tmp_path / "whole" / "exp"), capture_output=True, text=True, env=env,
                           timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    for name in MODELS:
        got = (killed / "mi" / f"{name}.csv").read_text()
        assert got == (tmp_path / "whole" / "exp" / "mi" / f"{name}.csv").read_text(), name
    assert not [p for p in (killed / "mi").rglob("*") if p.name.endswith(".tmp")]
