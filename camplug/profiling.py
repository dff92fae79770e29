"""Cost of one call: median wall time and peak memory, on CPU or CUDA."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], Any], device: torch.device, *, warmup: int = 1, repeats: int = 1
) -> tuple[Any, float]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; (last result, median s)."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got {warmup} and {repeats}")
    for _ in range(warmup):
        fn()
    seconds = []
    result = None
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        result = fn()
        _synchronize(device)
        seconds.append(time.perf_counter() - start)
    return result, statistics.median(seconds)


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Peak bytes allocated by ``fn`` above what was allocated when it started.

    CUDA: the caching allocator's peak statistic. CPU: the running total of the allocation and
    free events recorded by ``torch.profiler`` (tracemalloc and ru_maxrss do not see tensor
    memory, or cannot be reset). None when this torch build records no such events.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    if device.type != "cpu":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:
        return None
    events = [e for e in results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    running = peak = 0
    for event in events:
        running += event.nbytes()
        peak = max(peak, running)
    return peak
