"""Timing, peak memory and map agreement for the peer benchmark (CPU, Linux).

Peak memory is the rise of the process's resident set size (RSS) during one call: the kernel's
high-water mark ``VmHWM`` is reset (``/proc/self/clear_refs`` = 5) right before the call and
read right after, minus ``VmRSS`` before the call. It counts everything the call touches
(PyTorch tensors, NumPy/OpenCV buffers of pytorch-grad-cam, autograd's saved tensors). So that
freed memory goes back to the kernel and does not hide the next call's peak, glibc's mmap
threshold is fixed at 64 KiB (``mallopt(M_MMAP_THRESHOLD)``) for the whole run, every method
alike: allocations above it are mapped and unmapped on their own.
"""

from __future__ import annotations

import ctypes
import gc
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 * 1024
_STATUS = Path("/proc/self/status")


def fix_mmap_threshold() -> bool:
    """Make glibc map every allocation above 64 KiB on its own (returned to the kernel when
    freed); False where that is not possible (no glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{field} not found in {_STATUS}")
    return int(match.group(1))


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def timed_call(fn: Callable[[], object]) -> tuple[float, float, float]:
    """Run ``fn`` once: (wall seconds, process CPU seconds, peak RSS rise in MiB). The result
    is dropped after the peak is read, so the peak includes the returned maps."""
    gc.collect()
    before = _status_kib("VmRSS")
    _reset_peak()
    start, cpu_start = time.perf_counter(), time.process_time()
    result = fn()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = _status_kib("VmHWM")
    del result
    return seconds, cpu_seconds, max(peak - before, 0) / 1024


def interleaved_rounds(
    methods: dict[str, Callable[[], object]], rounds: int
) -> dict[str, dict[str, float | list[float]]]:
    """Time every method ``rounds`` times, one call of each per round, the order rotated each
    round so that no method always follows the same one; per method the median and all wall
    times (ms), the median process CPU time (ms: user + system, all threads; on a shared
    machine it does not count the time spent waiting for a core) and the median peak RSS rise
    (MiB)."""
    names = list(methods)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            seconds, cpu_seconds, peak = timed_call(methods[name])
            wall[name].append(seconds * 1e3)
            cpu[name].append(cpu_seconds * 1e3)
            peaks[name].append(peak)
    return {name: {"median_ms": round(statistics.median(wall[name]), 2),
                   "times_ms": [round(t, 2) for t in wall[name]],
                   "median_cpu_ms": round(statistics.median(cpu[name]), 2),
                   "cpu_times_ms": [round(t, 2) for t in cpu[name]],
                   "peak_rss_mib": round(statistics.median(peaks[name]), 1)}
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
