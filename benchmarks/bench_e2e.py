"""End to end: a forward pass alone against a forward pass plus CAM through the plugin.

The ResNet-50-shaped model of ``benchmarks/models.py`` (random weights, eval, no autograd). The
plugin is attached once (``camplug.attach``, head already discovered); each timed call is
``model(x)`` then ``capture.maps()`` (predicted class, normalized, upsampled to the input size,
fp32 maps). The overhead is ``median(forward + CAM) / median(forward) - 1``, and the same
from the best (minimum) times and from the process CPU time, the robust figures on a shared,
noisy machine; the CAM alone
(``capture.maps()`` on the stored batch) is timed too. Calls are interleaved round-robin (order
alternating) so that drifting machine load biases neither side.

CUDA: fp16 weights and inputs, channels_last, batches 1, 32, 256 at 224 px (target: overhead
<= 3% at batch 256 on an H100). CPU: fp32, batches 1 and 8 at 224 px by default (target:
<= 10% at batch 8); ``--batches 1 8 32 256`` for the large ones (minutes per batch on a few cores).

As a script: ``python benchmarks/bench_e2e.py [--device cpu] [--batches 1 8] [--rounds N]
[--threads T] [--quick]`` prints a table and writes JSON (device name, date) under
benchmarks/results/. On a CPU shared with other jobs, ``--threads 1`` gives stable figures (with
several threads, OpenMP barriers waiting on a descheduled thread swamp the comparison).
Under pytest-benchmark: ``pytest benchmarks/bench_e2e.py --benchmark-only`` (batches 1 and 8
on CPU, or also 32 with CAMPLUG_BENCH_LARGE=1; 1, 32 and 256 on CUDA).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_io import (  # noqa: E402
    add_run_options,
    device_name,
    interleaved_times,
    parse_run_options,
    run_environment,
    write_report,
)
from models import ResNet50Like, resnet50_like  # noqa: E402

import camplug  # noqa: E402


def prepare(device: torch.device, batch: int, size: int, dtype: torch.dtype,
            channels_last: bool) -> tuple[ResNet50Like, ResNet50Like, torch.Tensor]:
    """(plain model, twin copy for the capture, input batch) on ``device`` in ``dtype``."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = resnet50_like().to(device=device, dtype=dtype, memory_format=memory_format)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=generator)
    x = x.to(device=device, dtype=dtype).contiguous(memory_format=memory_format)
    return model, copy.deepcopy(model), x


def timed_calls(model: ResNet50Like, twin: ResNet50Like, x: torch.Tensor,
                capture: camplug.CamCapture) -> dict[str, Callable[[], object]]:
    def forward() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    def forward_and_cam() -> torch.Tensor:
        with torch.no_grad():
            twin(x)
        return capture.maps()

    return {"forward": forward, "forward + CAM": forward_and_cam, "CAM only": capture.maps}


def run_batch(device: torch.device, batch: int, size: int, dtype: torch.dtype,
              channels_last: bool, warmup: int, rounds: int) -> dict:
    model, twin, x = prepare(device, batch, size, dtype, channels_last)
    with camplug.attach(twin) as capture:
        with torch.no_grad():
            twin(x)  # head discovery (probe) and first-call compilation happen here
        maps = capture.maps()
        times, cpu = interleaved_times(timed_calls(model, twin, x, capture), device, warmup,
                                       rounds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    best = {name: min(values) for name, values in times.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
    forward, total = medians["forward"], medians["forward + CAM"]
    return {
        "batch": batch,
        "forward_ms": round(forward * 1e3, 3),
        "forward_plus_cam_ms": round(total * 1e3, 3),
        "cam_only_ms": round(medians["CAM only"] * 1e3, 3),
        "overhead_percent": round(100 * (total / forward - 1), 2),
        "best_forward_ms": round(best["forward"] * 1e3, 3),
        "best_forward_plus_cam_ms": round(best["forward + CAM"] * 1e3, 3),
        "best_cam_only_ms": round(best["CAM only"] * 1e3, 3),
        "overhead_percent_best": round(100 * (best["forward + CAM"] / best["forward"] - 1), 2),
        "cpu_time_forward_ms": round(cpu_medians["forward"] * 1e3, 3),
        "cpu_time_forward_plus_cam_ms": round(cpu_medians["forward + CAM"] * 1e3, 3),
        "overhead_percent_cpu_time": round(
            100 * (cpu_medians["forward + CAM"] / cpu_medians["forward"] - 1), 2),
        "images_per_s_forward": round(batch / forward, 2),
        "images_per_s_with_cam": round(batch / total, 2),
        "map_shape": list(maps.shape),
        "feature_shape": list(capture.features.shape),
        "feature_dtype": str(capture.features.dtype).replace("torch.", ""),
    }


def format_table(rows: list[dict]) -> str:
    """Medians, then best-of-rounds (the robust figure on a shared machine) in brackets."""
    lines = [f"{'batch':>6}{'forward ms':>22}{'fwd+CAM ms':>22}{'CAM ms':>18}"
             f"{'overhead':>20}{'CPU-time overhead':>19}"]
    for r in rows:
        lines.append(
            f"{r['batch']:>6}{r['forward_ms']:>12.2f} [{r['best_forward_ms']:>7.2f}]"
            f"{r['forward_plus_cam_ms']:>12.2f} [{r['best_forward_plus_cam_ms']:>7.2f}]"
            f"{r['cam_only_ms']:>8.2f} [{r['best_cam_only_ms']:>7.2f}]"
            f"{r['overhead_percent']:>9.2f}% [{r['overhead_percent_best']:>6.2f}%]"
            f"{r['overhead_percent_cpu_time']:>18.2f}%"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="default 1 32 256 (CUDA) / 1 8 (CPU)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=None, help="default 30 (CUDA) / 7 (CPU)")
    parser.add_argument("--fp32", action="store_true", help="CUDA: fp32 instead of fp16")
    parser.add_argument("--no-channels-last", action="store_true", help="CUDA: NCHW")
    add_run_options(parser)
    args, device = parse_run_options(parser, argv)
    cuda = device.type == "cuda"
    dtype = torch.float16 if cuda and not args.fp32 else torch.float32
    channels_last = cuda and not args.no_channels_last
    batches = [2] if args.quick else args.batches or ([1, 32, 256] if cuda else [1, 8])
    size = 64 if args.quick else args.size
    rounds = 3 if args.quick else args.rounds or (30 if cuda else 7)
    warmup = 3 if cuda else 1
    now = datetime.datetime.now(datetime.timezone.utc)
    rows = []
    for batch in batches:
        print(f"batch {batch}: {rounds} rounds", file=sys.stderr, flush=True)
        rows.append(run_batch(device, batch, size, dtype, channels_last, warmup, rounds))
    report = {
        "benchmark": "forward vs forward + CAM through camplug.attach, ResNet-50-shaped model "
        "(benchmarks/models.py), maps of the predicted class at input size, fp32 maps",
        **run_environment(device, now),
        "dtype": str(dtype).replace("torch.", ""),
        "channels_last": channels_last,
        "image_size": size,
        "warmup": warmup,
        "rounds": rounds,
        "timing": "median and best (min) wall clock of interleaved rounds"
        + (", CUDA synchronized" if cuda else " on CPU")
        + "; overhead_percent from medians, overhead_percent_best from minimums, "
        "overhead_percent_cpu_time from median process CPU time (with one thread, little "
        "affected by other processes' load)",
        "command": "python benchmarks/bench_e2e.py " + " ".join(argv or sys.argv[1:]),
        "results": rows,
    }
    out = write_report(report, "e2e", now, args.out)
    print(f"device: {report['device']}  {report['dtype']}  channels_last={channels_last}  "
          f"{size}x{size}  threads {report['cpu_threads']}  torch {torch.__version__}")
    print(format_table(rows))
    print(f"written: {out}")
    return 0


def _pytest_batches() -> list[int]:
    if torch.cuda.is_available():
        return [1, 32, 256]
    return [1, 8, 32] if os.environ.get("CAMPLUG_BENCH_LARGE") == "1" else [1, 8]


try:
    import pytest
except ImportError:  # running as a script without pytest installed
    pytest = None

if pytest is not None:

    @pytest.mark.parametrize("batch", _pytest_batches())
    @pytest.mark.parametrize("mode", ["forward", "forward + CAM"])
    def test_e2e(benchmark, mode: str, batch: int) -> None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        cuda = device.type == "cuda"
        dtype = torch.float16 if cuda else torch.float32
        model, twin, x = prepare(device, batch, 224, dtype, channels_last=cuda)
        with camplug.attach(twin) as capture:
            fn = timed_calls(model, twin, x, capture)[mode]

            def synced() -> None:
                fn()
                if cuda:
                    torch.cuda.synchronize()

            with torch.no_grad():
                twin(x)  # head discovery
            benchmark.extra_info.update(device=device_name(device), batch=batch,
                                        dtype=str(dtype), channels_last=cuda)
            benchmark.pedantic(synced, rounds=20 if cuda else 3, warmup_rounds=1)


if __name__ == "__main__":
    raise SystemExit(main())
