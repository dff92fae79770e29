"""CAM kernel benchmark: eager reference, CPU fast path, torch.compile, Triton, and a roofline.

As a script: ``python benchmarks/bench_kernel.py [--quick] [--no-compile] [--device cpu]
[--threads 1]`` prints a table and writes JSON under benchmarks/results/. Under
pytest-benchmark: ``pytest benchmarks --benchmark-only`` (benchmarks/conftest.py collects
``bench_*.py``).

Every method computes the same maps: 7x7 -> 224x224, normalize=True, relu=False:
- eager: ``reference.cam_reference`` (einsum + F.interpolate + casts), the baseline;
- cpu_fast: ``cam(backend="torch")`` on CPU tensors, i.e. ``cpu_cam.cam_cpu`` behind the public
  entry point (bmm + interpolation-matrix GEMMs, uint8 from the GEMM);
- compile: ``torch.compile(cam_reference)``; triton: ``cam(backend="triton")`` (CUDA only);
- copy: a device copy moving the same bytes as the CAM (cache-resident when small).

Bytes moved = features + weights read + maps written (the CAM's compulsory traffic). GB/s is
bytes moved / time. The modelled roofline is the time to move those bytes at the device's copy
bandwidth, measured in the same run by copying a 256 MiB buffer (read + write bytes / time);
"roofline" is that time over the measured time. On CUDA times are medians of
``triton.testing.do_bench`` (L2 flushed); on CPU the methods of a case run interleaved, one call
each per round, and the median (and min) over rounds is kept, so load from other processes
hits every method alike (the JSON records the load average). The Triton kernel is skipped on
CPU (its interpreter measures nothing).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from benchmark_io import device_name, write_report
from camplug.kernels import cam
from camplug.kernels.reference import cam_reference
from camplug.kernels.semantics import min_max_normalize

METHODS = ("eager", "cpu_fast", "compile", "triton", "copy")
CHECKED = ("cpu_fast", "compile", "triton")  # compared with eager and the fp64 maps
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.uint8: "uint8"}
BANDWIDTH_BYTES = 256 * 2**20  # buffer copied to measure the copy bandwidth


@dataclass(frozen=True)
class Case:
    """One benchmark shape: features [B, K, h, w] -> maps [B, C, H, W]."""

    batch: int
    channels: int
    in_dtype: torch.dtype
    out_dtype: torch.dtype
    h: int = 7
    w: int = 7
    out_h: int = 224
    out_w: int = 224
    classes: int = 1

    @property
    def bytes_read(self) -> int:
        feature_bytes = self.batch * self.channels * self.h * self.w * self.in_dtype.itemsize
        return feature_bytes + self.classes * self.channels * 4

    @property
    def bytes_written(self) -> int:
        return self.batch * self.classes * self.out_h * self.out_w * self.out_dtype.itemsize

    @property
    def bytes_moved(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def label(self) -> str:
        return (
            f"B{self.batch}-K{self.channels}-C{self.classes}-{DTYPE_NAMES[self.in_dtype]}"
            f"-to-{DTYPE_NAMES[self.out_dtype]}"
        )


def benchmark_cases(device: torch.device, quick: bool) -> list[Case]:
    """The full grid on CUDA; on CPU the CPU-path issue's shapes (B=8, K=2048, C=1 and 8,
    fp32 features, fp32 and uint8 maps); a few small cases with --quick."""
    classes = (1, 8)
    if device.type == "cuda" and not quick:
        batches, channels, classes = (1, 8, 64, 256), (512, 2048), (1,)
        in_dtypes, out_dtypes = (torch.float16, torch.float32), (torch.float32, torch.float16,
                                                                  torch.uint8)  # fmt: skip
    elif device.type == "cuda":
        batches, channels = (8, 256), (2048,)
        in_dtypes, out_dtypes = (torch.float16,), (torch.float32, torch.uint8)
    elif not quick:
        batches, channels = (8,), (2048,)
        in_dtypes, out_dtypes = (torch.float32,), (torch.float32, torch.uint8)
    else:
        batches, channels, classes = (1,), (512,), (1,)
        in_dtypes, out_dtypes = (torch.float16,), (torch.float32, torch.uint8)
    return [
        Case(b, k, i, o, classes=c)
        for b in batches
        for k in channels
        for c in classes
        for i in in_dtypes
        for o in out_dtypes
    ]


def make_inputs(case: Case, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(0)
    features = torch.rand(
        case.batch, case.channels, case.h, case.w, generator=gen, device=device
    ).to(case.in_dtype)
    weights = torch.randn(case.classes, case.channels, generator=gen, device=device)
    return features, weights


def build_methods(
    case: Case, features: torch.Tensor, weights: torch.Tensor, compile_: bool
) -> dict[str, Callable[[], object] | str]:
    """Each method as a zero-argument callable, or the reason it cannot run here."""
    size = (case.out_h, case.out_w)
    kw = {"relu": False, "normalize": True, "out_dtype": case.out_dtype}
    methods: dict[str, Callable[[], object] | str] = {
        "eager": lambda: cam_reference(features, weights, size, **kw)[0],
    }
    if features.device.type == "cpu":
        methods["cpu_fast"] = lambda: cam(features, weights, size, backend="torch", **kw)
    else:
        methods["cpu_fast"] = "the CPU fast path runs on CPU tensors only"
    if compile_:
        torch.compiler.reset()  # a fresh compilation per case, no recompile-limit fallback
        compiled = torch.compile(cam_reference, dynamic=False)
        methods["compile"] = lambda: compiled(features, weights, size, **kw)[0]
    else:
        methods["compile"] = "disabled with --no-compile"
    if features.device.type == "cuda":
        methods["triton"] = lambda: cam(features, weights, size, backend="triton", **kw)
    else:
        methods["triton"] = (
            "no CUDA device: the Triton kernel runs on CPU only through its interpreter, "
            "which says nothing about speed"
        )
    src = torch.empty(case.bytes_moved // 2, dtype=torch.uint8, device=features.device)
    dst = torch.empty_like(src)
    methods["copy"] = lambda: dst.copy_(src)
    return methods


def cpu_times(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each CPU method, interleaved: each round calls every method once."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def cuda_times(fns: dict[str, Callable[[], object]]) -> dict[str, list[float]]:
    """Median seconds per call of each CUDA method (do_bench, L2 flushed)."""
    import triton.testing

    return {
        name: [triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3]
        for name, fn in fns.items()
    }


def copy_bandwidth(device: torch.device, rounds: int) -> float:
    """Device copy bandwidth in bytes/s (read + write) from a BANDWIDTH_BYTES buffer copy."""
    src = torch.ones(BANDWIDTH_BYTES, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    if device.type == "cuda":
        seconds = cuda_times({"copy": lambda: dst.copy_(src)})["copy"][0]
    else:
        seconds = statistics.median(cpu_times({"copy": lambda: dst.copy_(src)}, rounds)["copy"])
    return 2 * BANDWIDTH_BYTES / seconds


def fp64_maps(case: Case, features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The maps in float64 (sum, normalization, resize), as the output dtype expresses them."""
    maps = torch.einsum("ck,bkhw->bchw", weights.double(), features.double())
    maps = F.interpolate(min_max_normalize(maps), size=(case.out_h, case.out_w),
                         mode="bilinear", align_corners=False)  # fmt: skip
    if case.out_dtype == torch.uint8:
        return torch.floor(maps * 255 + 0.5)
    return maps


def run_case(
    case: Case, device: torch.device, *, quick: bool, compile_: bool, bandwidth: float
) -> dict:
    """Time every method on one case; returns a JSON-ready row."""
    features, weights = make_inputs(case, device)
    methods = build_methods(case, features, weights, compile_)
    reference = methods["eager"]()
    exact = fp64_maps(case, features, weights)
    results: dict[str, dict] = {}
    runnable: dict[str, Callable[[], object]] = {}
    for name in METHODS:
        fn = methods[name]
        if isinstance(fn, str):
            results[name] = {"status": "skipped", "reason": fn}
            continue
        try:
            out = fn()
        except Exception as exc:  # a failing method is reported, not fatal
            results[name] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500]}
            continue
        results[name] = {"status": "ok"}
        if name == "eager" or name in CHECKED:
            diff = (out.double() - exact.to(out.device)).abs().max().item()
            results[name]["max_abs_diff_vs_fp64"] = diff
        if name in CHECKED:
            diff = (out.float() - reference.float()).abs().max().item()
            results[name]["max_abs_diff_vs_eager"] = diff
        runnable[name] = fn
    if device.type == "cuda":
        times = cuda_times(runnable)
    else:
        times = cpu_times(runnable, rounds=7 if quick else 41)
    roofline_s = case.bytes_moved / bandwidth
    for name, samples in times.items():
        seconds = statistics.median(samples)
        results[name] |= {
            "median_us": round(seconds * 1e6, 2),
            "min_us": round(min(samples) * 1e6, 2),
            "rounds": len(samples),
            "gbps": round(case.bytes_moved / seconds / 1e9, 3),
            "pct_of_roofline": round(100 * roofline_s / seconds, 1),
        }
    row = {k: v for k, v in asdict(case).items() if k not in ("in_dtype", "out_dtype")}
    row |= {
        "in_dtype": DTYPE_NAMES[case.in_dtype],
        "out_dtype": DTYPE_NAMES[case.out_dtype],
        "bytes_read": case.bytes_read,
        "bytes_written": case.bytes_written,
        "roofline_us": round(roofline_s * 1e6, 2),
        "results": results,
    }
    for name in ("cpu_fast", "compile", "triton"):
        if results[name].get("median_us") and results["eager"].get("median_us"):
            for stat in ("median", "min"):
                row[f"speedup_{name}_vs_eager_{stat}"] = round(
                    results["eager"][f"{stat}_us"] / results[name][f"{stat}_us"], 2
                )
    return row


def format_table(rows: list[dict]) -> str:
    """Median (and min) microseconds per method, then GB/s and % of roofline of the fastest
    non-copy method by median, and its speedup over eager by median and by min."""
    head = f"{'case':<24}" + "".join(f"{m + ' us':>18}" for m in METHODS)
    head += f"{'best':>10}{'GB/s':>7}{'% roof':>8}{'x eager':>9}{'(min)':>7}"
    lines = [head]
    for row in rows:
        res = row["results"]
        us = {m: res[m].get("median_us") for m in METHODS}
        label = f"B{row['batch']} K{row['channels']} C{row['classes']} "
        label += f"{row['in_dtype']}->{row['out_dtype']}"
        line = f"{label:<24}" + "".join(
            f"{us[m]:>10.0f} ({res[m]['min_us']:>5.0f})" if us[m] is not None else f"{'-':>18}"
            for m in METHODS
        )
        timed = [m for m in METHODS if m != "copy" and us[m] is not None]
        best = min(timed, key=lambda m: us[m])
        line += f"{best:>10}{res[best]['gbps']:>7.2f}{res[best]['pct_of_roofline']:>8.1f}"
        line += f"{us['eager'] / us[best]:>9.2f}"
        line += f"{res['eager']['min_us'] / res[best]['min_us']:>7.2f}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few small cases")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    now = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    bandwidth = copy_bandwidth(device, rounds=5 if args.quick else 21)
    print(f"copy bandwidth {bandwidth / 1e9:.2f} GB/s", file=sys.stderr, flush=True)
    rows = []
    for case in benchmark_cases(device, args.quick):
        print(f"running {case.label} ...", file=sys.stderr, flush=True)
        rows.append(run_case(case, device, quick=args.quick, compile_=not args.no_compile,
                             bandwidth=bandwidth))  # fmt: skip
    report = {
        "benchmark": "camplug.kernels.cam, 7x7 -> 224x224, normalize=True, relu=False",
        "command": "python benchmarks/bench_kernel.py " + " ".join(sys.argv[1:] if argv is None
                                                                   else argv),  # fmt: skip
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "date": now.isoformat(timespec="seconds"),
        "quick": args.quick,
        "cpu_threads": torch.get_num_threads(),
        "timing": "triton.testing.do_bench median, L2 flushed"
        if device.type == "cuda"
        else "CPU wall clock, methods interleaved per round; median and min over rounds",
        "bytes_moved": "features + weights read + maps written",
        "roofline": {
            "model": "bytes moved / copy bandwidth",
            "copy_bandwidth_gbps": round(bandwidth / 1e9, 3),
            "measured_by": f"torch copy_ of a {BANDWIDTH_BYTES // 2**20} MiB buffer on "
            f"{device.type}, read + write bytes / median time",
        },
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "rows": rows,
    }
    out = write_report(report, "kernel", now, args.out)
    print(f"device: {report['device']}  torch {torch.__version__}  triton {triton_version}")
    print(format_table(rows))
    print(f"written: {out}")
    return 0


# pytest-benchmark entry points: a few cases, one test per (method, case).
def _pytest_cases() -> list[Case]:
    if torch.cuda.is_available():
        return [Case(256, 2048, torch.float16, torch.float32), Case(8, 2048, torch.float16,
                                                                    torch.uint8)]  # fmt: skip
    return [Case(1, 512, torch.float16, torch.float32)]


def _bench_param_ids(case: Case) -> str:
    return case.label


try:
    import pytest
except ImportError:  # running as a script without pytest installed
    pytest = None

if pytest is not None:

    @pytest.mark.parametrize("case", _pytest_cases(), ids=_bench_param_ids)
    @pytest.mark.parametrize("method", METHODS)
    def test_cam_kernel(benchmark, method: str, case: Case) -> None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        features, weights = make_inputs(case, device)
        fn = build_methods(case, features, weights, compile_=True)[method]
        if isinstance(fn, str):
            pytest.skip(fn)

        def synced() -> None:
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()

        synced()  # compile / autotune outside the timed runs
        benchmark.extra_info.update(bytes_moved=case.bytes_moved, device=device_name(device))
        benchmark(synced)


if __name__ == "__main__":
    raise SystemExit(main())
