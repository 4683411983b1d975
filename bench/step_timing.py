"""Timing of a repeated step, shared by the benchmarks of bench/."""

import statistics
import time
from typing import Callable, Tuple

import torch


def median_step_time(
    step: Callable[[], None], device: torch.device, warmup: int, repeats: int, peak_above_start: bool = True
) -> Tuple[float, float]:
    """Runs ``step`` ``warmup`` times, then times it ``repeats`` times.

    On CUDA each step is timed with CUDA events (the device work, not only the launches)
    and the peak allocated memory is recorded; on the CPU the wall time is taken and the
    peak is nan.

    Returns:
        (median seconds per step, peak bytes): the peak counts the memory allocated above
        what was allocated before the timed steps if ``peak_above_start``, else all of it.
    """
    for _ in range(warmup):
        step()
    times = []
    if device.type != "cuda":
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return statistics.median(times), float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if peak_above_start else 0
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times), torch.cuda.max_memory_allocated() - base
