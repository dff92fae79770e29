"""CAM kernel benchmark: eager reference, torch.compile, the Triton kernel and a copy roofline.

As a script: ``python benchmarks/bench_kernel.py [--quick] [--no-compile] [--device cpu]``
prints a table and writes JSON under benchmarks/results/. Under pytest-benchmark:
``pytest benchmarks --benchmark-only`` (benchmarks/conftest.py collects ``bench_*.py``).

Every method computes the same maps: 7x7 -> 224x224, normalize=True, relu=False, C=1.
The roofline is a device-to-device copy moving the same number of bytes (read + write) as
the CAM: features + weights read, maps written. On CUDA times are medians of
``triton.testing.do_bench`` (L2 flushed between runs); on CPU medians of wall-clock runs, a
reduced configuration, and the Triton kernel is skipped (its CPU interpreter measures nothing).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from benchmark_io import device_name, write_report
from camplug.kernels import cam
from camplug.kernels.reference import cam_reference

METHODS = ("eager", "compile", "triton", "copy")
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.uint8: "uint8"}


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
    def label(self) -> str:
        return (
            f"B{self.batch}-K{self.channels}-{DTYPE_NAMES[self.in_dtype]}"
            f"-to-{DTYPE_NAMES[self.out_dtype]}"
        )


def benchmark_cases(device: torch.device, quick: bool) -> list[Case]:
    """The full grid on CUDA; a reduced one on CPU or with --quick."""
    if device.type == "cuda" and not quick:
        batches, channels = (1, 8, 64, 256), (512, 2048)
        in_dtypes, out_dtypes = (torch.float16, torch.float32), (torch.float32, torch.float16,
                                                                  torch.uint8)  # fmt: skip
    elif device.type == "cuda":
        batches, channels = (8, 256), (2048,)
        in_dtypes, out_dtypes = (torch.float16,), (torch.float32, torch.uint8)
    elif not quick:
        batches, channels = (1, 8), (512, 2048)
        in_dtypes, out_dtypes = (torch.float16, torch.float32), (torch.float32, torch.float16,
                                                                  torch.uint8)  # fmt: skip
    else:
        batches, channels = (1,), (512,)
        in_dtypes, out_dtypes = (torch.float16,), (torch.float32, torch.uint8)
    return [
        Case(b, k, i, o)
        for b in batches
        for k in channels
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
        "eager": lambda: cam_reference(features, weights, size, **kw),
    }
    if compile_:
        torch.compiler.reset()  # a fresh compilation per case, no recompile-limit fallback
        compiled = torch.compile(cam_reference, dynamic=False)
        methods["compile"] = lambda: compiled(features, weights, size, **kw)
    else:
        methods["compile"] = "disabled with --no-compile"
    if features.device.type == "cuda":
        methods["triton"] = lambda: cam(features, weights, size, backend="triton", **kw)
    else:
        methods["triton"] = (
            "no CUDA device: the Triton kernel runs on CPU only through its interpreter, "
            "which says nothing about speed"
        )
    moved = case.bytes_read + case.bytes_written  # a copy of n bytes moves 2n
    src = torch.empty(moved // 2, dtype=torch.uint8, device=features.device)
    dst = torch.empty_like(src)
    methods["copy"] = lambda: dst.copy_(src)
    return methods


def median_seconds(fn: Callable[[], object], device: torch.device, quick: bool) -> float:
    """Median run time of ``fn`` in seconds."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3
    fn()
    times = []
    for _ in range(5 if quick else 15):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_case(case: Case, device: torch.device, *, quick: bool, compile_: bool) -> dict:
    """Time every method on one case; returns a JSON-ready row."""
    features, weights = make_inputs(case, device)
    methods = build_methods(case, features, weights, compile_)
    moved = case.bytes_read + case.bytes_written
    reference = methods["eager"]()
    results: dict[str, dict] = {}
    for name in METHODS:
        fn = methods[name]
        if isinstance(fn, str):
            results[name] = {"status": "skipped", "reason": fn}
            continue
        try:
            if name in ("compile", "triton"):
                diff = (fn().float() - reference.float()).abs().max().item()
            seconds = median_seconds(fn, device, quick)
        except Exception as exc:  # a failing method is reported, not fatal
            results[name] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500]}
            continue
        results[name] = {
            "status": "ok",
            "median_us": round(seconds * 1e6, 2),
            "gbps": round(moved / seconds / 1e9, 3),
        }
        if name in ("compile", "triton"):
            results[name]["max_abs_diff_vs_eager"] = diff
    copy = results["copy"]
    for entry in results.values():
        if entry["status"] == "ok" and copy["status"] == "ok":
            entry["pct_of_copy_bandwidth"] = round(100 * copy["median_us"] / entry["median_us"], 1)
    row = {k: v for k, v in asdict(case).items() if k not in ("in_dtype", "out_dtype")}
    row |= {
        "in_dtype": DTYPE_NAMES[case.in_dtype],
        "out_dtype": DTYPE_NAMES[case.out_dtype],
        "bytes_read": case.bytes_read,
        "bytes_written": case.bytes_written,
        "results": results,
    }
    return row




def format_table(rows: list[dict]) -> str:
    head = f"{'case':<26}" + "".join(f"{m + ' us':>12}" for m in METHODS)
    head += f"{'triton GB/s':>13}{'% copy':>8}{'x eager':>9}{'x compile':>10}"
    lines = [head]
    for row in rows:
        res = row["results"]
        us = {m: res[m].get("median_us") for m in METHODS}
        label = (f"B{row['batch']} K{row['channels']} {row['in_dtype']}->{row['out_dtype']}")
        line = f"{label:<26}" + "".join(
            f"{us[m]:>12.1f}" if us[m] is not None else f"{'-':>12}" for m in METHODS
        )
        tri = res["triton"]
        if tri["status"] == "ok":
            line += f"{tri['gbps']:>13.1f}{tri.get('pct_of_copy_bandwidth', float('nan')):>8.1f}"
            for base in ("eager", "compile"):
                ratio = us[base] / us["triton"] if us[base] else float("nan")
                line += f"{ratio:>{9 if base == 'eager' else 10}.2f}"
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
    rows = []
    for case in benchmark_cases(device, args.quick):
        print(f"running {case.label} ...", file=sys.stderr, flush=True)
        rows.append(run_case(case, device, quick=args.quick, compile_=not args.no_compile))
    report = {
        "benchmark": "camplug.kernels.cam, 7x7 -> 224x224, C=1, normalize=True",
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
        else "median wall clock on CPU; NOT GPU numbers",
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
        benchmark.extra_info.update(
            bytes_moved=case.bytes_read + case.bytes_written, device=device_name(device)
        )
        benchmark(synced)


if __name__ == "__main__":
    raise SystemExit(main())
