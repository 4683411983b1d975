"""bench/bench_mine.py on the CPU: its tiny run writes the table and raw numbers, and its
FLOP count is the matrix-product work the engine really dispatches."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from analysis import chunking, stacked_critics
from analysis.bounds import make_bound
from analysis.mi import resolve_options

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_mine", BENCH / "bench_mine.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_mine"] = module
    spec.loader.exec_module(module)
    return module


def test_training_flops_count_the_engines_matrix_products():
    bench = _bench()
    n, dx, dy, hidden = 24, 5, 3, (7, 6)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, dx, generator=g), torch.randn(n, dy, generator=g)
    opts = resolve_options(None, hidden=hidden, batch_size=n, epochs=1)  # one full batch: every row is real
    problems = [chunking.Problem(x, y, chunking.memory_key(x), 0)]
    (units, group), = chunking.plan_chunks(problems, [0], False, opts, 2 ** 30, None)
    chunk, _ = chunking.load_chunk(problems, units, group, torch.device("cpu"), opts, torch.float32)
    rng, critics = stacked_critics.prepare_training(chunk, opts)
    with FlopCounterMode(display=False) as counter:
        stacked_critics.train_epoch(chunk, rng, critics, make_bound("mine", opts), None, 0, opts)
    assert counter.get_total_flops() == bench.training_flops([n], dx, dy, hidden, 1)


def test_optimizer_bytes_count_every_parameter_at_every_step():
    bench = _bench()
    params = (10 * 4 + 4) + (4 * 1 + 1)  # critic 10 -> 4 -> 1
    steps = 3 * (math.ceil(40 / 16) + math.ceil(16 / 16))
    assert bench.optimizer_bytes([40, 16], 6, 4, (4,), 3, 16) == 28 * params * steps


def test_cpu_run_writes_table_and_raw_numbers(tmp_path):
    bench = _bench()
    out = tmp_path / "mine.md"
    bench.main(["--cpu", "--utterances", "3", "--layers", "2", "--dim", "8", "--epochs", "2", "--loop-pairs", "2",
                "--out", str(out)])
    text = out.read_text()
    assert "| batched engine, float32 |" in text and "extrapolated" in text
    raw = json.loads((tmp_path / "mine.json").read_text())
    assert raw["pairs"] == 6 and raw["loop_pairs"] == 2
    row = raw["engine"]["float32"]
    assert row["seconds"] > 0 and row["max_abs_vs_float32"] == 0.0
    assert raw["loop_vs_engine_max_abs"] < 1e-4  # same seeds and batches as the loop
