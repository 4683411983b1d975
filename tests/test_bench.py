"""The GPU benchmarks of bench/ on the CPU: their small modes run, and the paper configs they load build."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str):
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
