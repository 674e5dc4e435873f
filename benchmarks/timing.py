"""Shared timing helper for the benchmarks: alternate the two contenders so both see the same
machine load (the benchmark machine is shared), and report medians -- or minima, for
sub-millisecond calls, where a load spike is longer than the call and the fastest repeat is the
one closest to the code's own cost (the ``timeit`` advice)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def once(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


Stat = Callable[[list[float]], float]


def interleaved(a: Callable[[], object], b: Callable[[], object], device: torch.device,
                repeats: int, warmup: int = 2, stat: Stat = statistics.median
                ) -> tuple[float, float]:
    """``stat`` (median) seconds of ``a`` and ``b``, run alternately after ``warmup`` calls."""
    for _ in range(warmup):
        once(a, device), once(b, device)
    times_a, times_b = [], []
    for _ in range(repeats):
        times_a.append(once(a, device))
        times_b.append(once(b, device))
    return stat(times_a), stat(times_b)
