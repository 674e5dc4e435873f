"""Peak memory of a piece of work: what a loss's forward + backward allocates on top of what
already exists.

CUDA: ``torch.cuda.max_memory_allocated`` above the level at the call. CPU: torch has no peak
counter for its CPU allocator, and ``tracemalloc`` does not see tensor memory, so the work runs
under the torch profiler with ``profile_memory=True`` and the peak is the running sum of its
allocation and free events (every tensor the CPU allocator hands out or takes back while the
work runs; memory held before the call is not counted, memory freed before the peak is).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

import torch


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (the profiler's C++ side prints start/stop lines there on every
    use; Python exceptions still propagate)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_bytes(work: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated by ``work()`` above the level at the call (see the module doc)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        work()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    level = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        level += event.nbytes()
        peak = max(peak, level)
    return peak
