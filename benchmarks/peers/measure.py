"""Timing, peak memory and map agreement for the peer benchmark (CPU, Linux).

Timing and memory are measured in separate calls, because measuring memory changes the timing:
- timed calls run as any program's would (glibc keeps freed memory for reuse);
- peak memory is the rise of the process's resident set size (RSS) during one more, untimed
  call: first ``malloc_trim(0)`` hands the memory that malloc keeps back to the kernel, so
  that what the call allocates shows in the RSS; then the kernel's high-water mark ``VmHWM``
  is reset (``/proc/self/clear_refs`` = 5); after the call, ``VmHWM`` minus ``VmRSS`` before
  it. It counts everything the call touches (PyTorch tensors, NumPy/OpenCV buffers of
  pytorch-grad-cam, autograd's saved tensors).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{field} not found in {_STATUS}")
    return int(match.group(1))


def _release_free_memory() -> None:
    """Give the memory glibc's malloc keeps for reuse back to the kernel (no-op without glibc)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_rss_mib(fn: Callable[[], object]) -> float:
    """Rise of the resident set size (MiB) during one call of ``fn``, its result included."""
    gc.collect()
    _release_free_memory()
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    result = fn()
    peak = _status_kib("VmHWM")
    del result
    return max(peak - before, 0) / 1024


def timed_call(fn: Callable[[], object]) -> tuple[float, float]:
    """Run ``fn`` once: (wall seconds, process CPU seconds: user + system, all threads)."""
    gc.collect()
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu_start


def interleaved_rounds(
    methods: dict[str, Callable[[], object]], rounds: int
) -> dict[str, dict[str, float | list[float]]]:
    """Time every method ``rounds`` times, one call of each per round, the order rotated each
    round so that no method always follows the same one, then measure each one's peak memory
    in one more call. Per method: the median and all wall times (ms), the median and all
    process CPU times (ms; on a shared machine CPU time leaves out the time spent waiting for
    a core) and the peak RSS rise (MiB)."""
    names = list(methods)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            seconds, cpu_seconds = timed_call(methods[name])
            wall[name].append(seconds * 1e3)
            cpu[name].append(cpu_seconds * 1e3)
    return {name: {"median_ms": round(statistics.median(wall[name]), 2),
                   "times_ms": [round(t, 2) for t in wall[name]],
                   "median_cpu_ms": round(statistics.median(cpu[name]), 2),
                   "cpu_times_ms": [round(t, 2) for t in cpu[name]],
                   "peak_rss_mib": round(peak_rss_mib(methods[name]), 1)}
            for name in names}


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's second normalization of each [H, W] map: (x - min) / (max + 1e-7)
    after subtracting the min."""
    shifted = maps - maps.amin(dim=(-2, -1), keepdim=True)
    return shifted / (shifted.amax(dim=(-2, -1), keepdim=True) + 1e-7)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest elementwise |a - b| of two map batches of the same shape, in fp64."""
    if a.shape != b.shape:
        raise ValueError(f"map shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a.double() - b.double()).abs().max().item()
