"""Cost of one call: wall time of repeated calls and peak memory, on CPU or CUDA."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], Any], device: torch.device, *, warmup: int = 1, repeats: int = 1
) -> tuple[Any, tuple[float, ...]]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; (last result, the seconds of
    each timed call)."""
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
    return result, tuple(seconds)


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

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_native_stderr():
        prof.start()
    try:
        fn()
    finally:
        with _quiet_native_stderr():
            prof.stop()
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


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the block: the profiler's native code logs its
    start and stop stages there, past Python's ``sys.stderr``. Only the profiler's start and
    stop run inside, so nothing the measured call writes is hidden."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
