"""What the benchmark scripts share: their common options, the machine they ran on, and where
their JSON report goes."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def device_name(device: torch.device) -> str:
    """The GPU's name, or ``CPU: <model name>`` from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {name}"


def write_report(report: dict, prefix: str, now: datetime.datetime, out: Path | None) -> Path:
    """Write ``report`` as JSON to ``out``, or to results/<prefix>_<device>_<UTC time>.json."""
    slug = "".join(c if c.isalnum() else "-" for c in report["device"].lower()).strip("-")
    path = out or RESULTS_DIR / f"{prefix}_{slug}_{now:%Y%m%dT%H%M%SZ}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The model benchmarks' --quick, --threads and --out options."""
    parser.add_argument("--quick", action="store_true", help="batch 2 at 64 px, 3 rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")


def parse_run_options(
    parser: argparse.ArgumentParser, argv: list[str] | None
) -> tuple[argparse.Namespace, torch.device]:
    """Parse ``argv`` (a parser with --device and ``add_run_options``), apply --threads, and
    return the arguments and the device (--device, else cuda if present, else cpu)."""
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return args, device


def run_environment(device: torch.device, now: datetime.datetime) -> dict:
    """The report fields that say where and when a benchmark ran."""
    return {
        "device": device_name(device),
        "device_type": device.type,
        "date": now.isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
    }


def interleaved_times(
    calls: dict[str, Callable[[], object]], device: torch.device, warmup: int, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and process CPU seconds per call, one call of each per round (the order
    alternating between rounds); CUDA synchronized around calls."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    for index in range(rounds):
        order = list(calls.items())
        for name, fn in order if index % 2 == 0 else order[::-1]:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu
