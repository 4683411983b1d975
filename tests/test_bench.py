"""The GPU benchmarks of bench/ on the CPU: their small modes run, and the paper configs they load build."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str):
    """Imports bench/<name>.py as its script run would (bench/ on the path, for step_timing)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_bench_encoder_small_writes_table_and_profiles(tmp_path):
    bench_encoder = _load("bench_encoder")
    out = tmp_path / "encoder.md"
    bench_encoder.main(["--small", "--out", str(out), "--profile", str(tmp_path / "prof")])
    rows = [line for line in out.read_text().splitlines() if line.startswith("| 64 |")]
    assert len(rows) == 1
    times = [float(cell) for cell in rows[0].strip("|").split("|")[2:4]]
    assert all(t > 0 for t in times)
    profiles = sorted(p.name for p in (tmp_path / "prof").iterdir())
    assert profiles == ["conbimamba-torch_d64_2s_float32.txt", "conformer_d64_2s_float32.txt"]
    assert "aten::" in (tmp_path / "prof" / profiles[0]).read_text()


@pytest.mark.parametrize("kind,expected_millions", [("hubert", (90, 100)), ("mamba_hubert", (200, 300))])
def test_bench_hubert_builds_paper_configs(kind, expected_millions):
    """The iteration-1 configs build as ESPnet reads them ("init: none" is no initializer)."""
    bench_hubert = _load("bench_hubert")
    model, n_classes, path = bench_hubert.build_model(kind, small=False, device=torch.device("cpu"))
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert n_classes == 100 and path.name == f"{kind}_it1.yaml"
    assert expected_millions[0] < millions < expected_millions[1]
    assert len(model.encoder.encoders) == 12


def test_bench_asr_epoch_reads_espnet_statistics():
    bench_asr_epoch = _load("bench_asr_epoch")
    log = (
        "INFO: 1epoch results: [train] iter_time=0.035, forward_time=0.3, loss=135.4, "
        "backward_time=0.185, train_time=44.441, time=1 minute and 32.15 seconds, total_count=11, "
        "gpu_max_cached_mem_GB=23.711, [valid] loss=160.8, time=2.1 seconds, gpu_max_cached_mem_GB=24.5\n"
    )
    stats = log.split("[train]")[1].split(", time=")[0]
    assert bench_asr_epoch.step_stat(stats, "forward_time") == 0.3
    assert bench_asr_epoch.step_stat(stats, "train_time") == 44.441
    # "time" is not read out of "iter_time" or "train_time"; a missing key is nan
    assert math.isnan(bench_asr_epoch.step_stat(stats, "time"))
    assert math.isnan(bench_asr_epoch.step_stat(stats, "optim_step_time"))
    assert bench_asr_epoch.peak_memory_gb(log) == 24.5


def test_median_step_time_runs_warmup_then_timed_steps_on_cpu():
    step_timing = _load("step_timing")
    calls = []
    seconds, peak = step_timing.median_step_time(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=5)
    assert len(calls) == 7 and seconds >= 0 and math.isnan(peak)
