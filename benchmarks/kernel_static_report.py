"""Static evidence for the Triton CAM kernel: compile every launch ahead of time for sm_90.

``python benchmarks/kernel_static_report.py [--out PATH]`` needs no GPU: the kernels are
compiled with the installed triton for an H100 target (``GPUTarget("cuda", 90, 32)``) from
meta tensors at the benchmark shapes, then ``ptxas -v`` (registers, spills) and
``cuobjdump -sass`` (instruction counts, loops), both shipped with triton, read the result.
It prints a Markdown table and writes JSON under benchmarks/results/.

Roofline model (stated in the report): H100 SXM, 132 SMs at 1.755 GHz, 4 schedulers per SM
issuing one warp instruction per clock each; 3.0 TB/s device copy bandwidth. Each launch
takes max(its HBM bytes / 3.0 TB/s, its executed warp instructions / issue rate); the scratch
buffers (partial maps, x-interpolated rows: < 2 MB at B=256) are assumed to stay in the
50 MB L2 and cost no HBM time; launch gaps are not modelled (a CUDA graph hides most).
Executed instructions: straight-line SASS once per thread, loop bodies once per iteration.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
from benchmark_io import write_report
from camplug.kernels import triton_cam
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGET = GPUTarget("cuda", 90, 32)
H100_SMS, H100_CLOCK_HZ, SCHEDULERS_PER_SM = 132, 1.755e9, 4
COPY_BYTES_PER_S = 3.0e12
ISSUE_PER_S = H100_SMS * SCHEDULERS_PER_SM * H100_CLOCK_HZ  # warp instructions per second
BIN_DIR = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
          torch.uint8: "u8", torch.float64: "fp64"}  # fmt: skip
SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")


def toolchain_missing() -> str | None:
    """Why the report cannot run here (None when ptxas and cuobjdump are present)."""
    for tool in ("ptxas", "cuobjdump"):
        if not (BIN_DIR / tool).exists():
            return f"{tool} not found under {BIN_DIR}"
    return None


@dataclass(frozen=True)
class Case:
    """One benchmark shape: fp16 features [B, K, h, w] -> maps [B, C, H, W]."""

    batch: int
    channels_last: bool
    out_dtype: torch.dtype
    classes: int = 1
    channels: int = 2048
    hw: tuple[int, int] = (7, 7)
    size: tuple[int, int] = (224, 224)
    positional: bool = False

    @property
    def label(self) -> str:
        layout = "channels_last" if self.channels_last else "nchw"
        weights = "BCKhw" if self.positional else f"C{self.classes}"
        return f"B{self.batch}-K{self.channels}-{layout}-{weights}-to-{DTYPES[self.out_dtype]}"

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.empty(self.batch, self.channels, *self.hw, dtype=torch.float16,
                               device="meta")  # fmt: skip
        if self.channels_last:
            features = features.to(memory_format=torch.channels_last)
        shape = ((self.batch, self.classes, self.channels, *self.hw) if self.positional
                 else (self.classes, self.channels))  # fmt: skip
        return features, torch.empty(shape, device="meta")

    def hbm_bytes(self) -> int:
        features, weights = self.tensors()
        out = self.batch * self.classes * self.size[0] * self.size[1] * self.out_dtype.itemsize
        return features.numel() * 2 + weights.numel() * 4 + out


def _arg_type(value) -> tuple[str, bool]:
    """(Triton signature type, divisible by 16) of one runtime argument, as the JIT sees it."""
    if isinstance(value, torch.Tensor):
        return "*" + DTYPES[value.dtype], True  # the caching allocator aligns to >= 512 bytes
    if isinstance(value, bool):
        return "i1", False
    if isinstance(value, int):
        return ("i64" if abs(value) >= 2**31 else "i32"), value % 16 == 0
    return "fp32", False


def _is_one(value) -> bool:
    """Whether the JIT turns this argument into the constant 1."""
    return isinstance(value, int) and not isinstance(value, bool) and value == 1


def compile_launch(kernel, args: tuple, kwargs: dict):
    """triton.compile one launch for sm_90, specialized as the JIT would (ints equal to 1
    become constants, 16-divisible ints and pointers carry tt.divisibility)."""
    names = kernel.arg_names
    constexpr_names = {p.name for p in kernel.params if p.is_constexpr}
    runtime = [n for n in names if n not in constexpr_names]
    signature, constexprs, attrs = {}, {}, {}
    for name, value in zip(runtime, args, strict=True):
        i = names.index(name)
        if _is_one(value):
            signature[name] = "constexpr"
            constexprs[(i,)] = 1
            continue
        signature[name], divisible = _arg_type(value)
        if divisible:
            attrs[(i,)] = [["tt.divisibility", 16]]
    options = {k: kwargs[k] for k in ("num_warps", "num_stages", "enable_fp_fusion")}
    for name in names:
        if name in constexpr_names:
            signature[name] = "constexpr"
            constexprs[(names.index(name),)] = kwargs[name]
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=TARGET, options=options)


def _run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout + done.stderr


def _assemble(ptx_path: Path, cubin_path: Path, arch: str) -> str:
    """ptxas -v output; the first bundled ptxas that knows the PTX version wins (triton 3.9
    emits PTX 9.x, which only its ptxas-blackwell build reads)."""
    errors = []
    for name in ("ptxas", "ptxas-blackwell"):
        try:
            return _run([str(BIN_DIR / name), f"--gpu-name={arch}", "-v", str(ptx_path),
                         "-o", str(cubin_path)])  # fmt: skip
        except (RuntimeError, FileNotFoundError) as error:
            errors.append(str(error))
    raise RuntimeError("\n".join(errors))


def machine_code_stats(compiled) -> dict:
    """Registers, spills and shared memory (ptxas -v), SASS instruction counts and loops."""
    ptx = compiled.asm["ptx"]
    arch = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1).rstrip(",")
    with tempfile.TemporaryDirectory() as tmp:
        ptx_path, cubin_path = Path(tmp, "k.ptx"), Path(tmp, "k.cubin")
        ptx_path.write_text(ptx)
        info = _assemble(ptx_path, cubin_path, arch)
        sass = _run([str(BIN_DIR / "cuobjdump"), "-sass", str(cubin_path)])
    regs = int(re.search(r"Used (\d+) registers", info).group(1))
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", info))
    code = [(int(a, 16), ins) for a, ins in SASS_LINE.findall(sass)]
    code = [(a, ins) for a, ins in code if not ins.startswith("NOP")]
    exit_at = max(a for a, ins in code if "EXIT" in ins)
    body = [(a, ins) for a, ins in code if a <= exit_at]
    loops = []
    for addr, ins in body:
        jump = re.search(r"BRA\s+(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))", ins)
        target = None
        if jump and jump.group(1):
            target = int(jump.group(1), 16)
        elif jump:
            label = re.search(r"\.L_x_\d+", ins).group(0)
            found = re.search(rf"{re.escape(label)}:\s*\n\s*/\*([0-9a-f]+)\*/", sass)
            target = int(found.group(1), 16) if found else None
        if target is not None and target < addr:
            loops.append(sum(1 for a, _ in body if target <= a <= addr))
    stores = [ins for _, ins in body if ins.split()[0].lstrip("@!P0123456789T ").startswith("STG")
              or " STG" in ins]  # fmt: skip
    ptx_stores = re.findall(r"st\.global(?:\.v(\d))?\.(?:b|u|f)(\d+)", ptx)
    store_bits = max((int(v or 1) * int(b) for v, b in ptx_stores), default=0)
    return {
        "registers": regs,
        "spill_bytes": spills,
        "shared_bytes": compiled.metadata.shared,
        "sass_instructions": len(body),
        "sass_loop_bodies": loops,
        "sass_global_stores": len(stores),
        "widest_global_store_bits": store_bits,
        "ptx_target": arch,
    }


def _kernel_name(kernel) -> str:
    return kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__


def analyse_case(case: Case, cache: dict) -> dict:
    """Plan, compile and model one benchmark shape."""
    features, weights = case.tensors()
    p = triton_cam.plan(
        tuple(features.shape), features.stride(), 2,
        tuple(weights.shape) if case.positional else (1, *weights.shape),
        weights.stride() if case.positional else (0, *weights.stride()),
        case.size, H100_SMS, False, True, case.out_dtype == torch.uint8,
    )  # fmt: skip
    out = torch.empty(case.batch, case.classes, *case.size, dtype=case.out_dtype, device="meta")
    partial, rows, nan_flags = triton_cam._buffers(features, case.classes, p, out)
    launches = triton_cam.launch_list(features, weights, p, partial, rows, out, nan_flags)
    report = {"case": case.label, "flat_sum": p.flat, "splits": p.splits, "launches": []}
    model_s = 0.0
    hbm_in = case.hbm_bytes() - out.numel() * case.out_dtype.itemsize
    for index, (kernel, grid, args, kwargs) in enumerate(launches):
        key = (_kernel_name(kernel), tuple((_arg_type(a), _is_one(a)) for a in args),
               tuple(sorted((k, v) for k, v in kwargs.items())))  # fmt: skip
        if key not in cache:
            cache[key] = machine_code_stats(compile_launch(kernel, args, kwargs))
        stats = dict(cache[key])
        threads = 32 * kwargs["num_warps"]
        if index == 0:  # the K loop runs split_steps times
            executed = stats["sass_instructions"] + (p.split_steps - 1) * sum(
                stats["sass_loop_bodies"]
            )
            hbm = hbm_in
        elif index == 2:  # the row loop runs row_steps times
            body = sum(stats["sass_loop_bodies"])
            executed = stats["sass_instructions"] + (p.row_steps - 1) * body
            pixels = kwargs["BLOCK_H"] * kwargs["BLOCK_W"] / threads  # per thread and step
            stats["sass_per_output_pixel_in_loop"] = round(body / pixels, 2)
            stats["sass_per_output_pixel_with_prologue"] = round(
                executed / (pixels * p.row_steps), 2
            )
            hbm = out.numel() * case.out_dtype.itemsize
        else:  # one program per map; loops scale with the map (modelled as 8 iterations)
            executed = stats["sass_instructions"] + 7 * sum(stats["sass_loop_bodies"])
            hbm = 0
        warp_instructions = executed * math.prod(grid) * kwargs["num_warps"]
        seconds = max(hbm / COPY_BYTES_PER_S, warp_instructions / ISSUE_PER_S)
        model_s += seconds
        stats.update(kernel=_kernel_name(kernel), grid=list(grid), num_warps=kwargs["num_warps"],
                     num_stages=kwargs["num_stages"], model_us=round(seconds * 1e6, 2),
                     memory_bound=hbm / COPY_BYTES_PER_S >= warp_instructions / ISSUE_PER_S,
                     constexprs={k: v for k, v in kwargs.items() if k.isupper()})  # fmt: skip
        report["launches"].append(stats)
    copy_s = case.hbm_bytes() / COPY_BYTES_PER_S
    report.update(hbm_bytes=case.hbm_bytes(), copy_us=round(copy_s * 1e6, 2),
                  model_us=round(model_s * 1e6, 2),
                  model_fraction_of_copy=round(copy_s / model_s, 3))  # fmt: skip
    return report


def benchmark_cases(quick: bool = False) -> list[Case]:
    """The benchmark grid plus C=4, C=16 and per-position weights; ``quick``: the three main
    variants at B=256 (NCHW fp32 out, channels_last fp16 out, NCHW uint8 out)."""
    if quick:
        return [Case(256, False, torch.float32), Case(256, True, torch.float16),
                Case(256, False, torch.uint8)]  # fmt: skip
    cases = [Case(b, cl, od) for b in (8, 256) for cl in (False, True)
             for od in (torch.float32, torch.float16, torch.uint8)]  # fmt: skip
    cases += [Case(8, False, torch.float32, classes=4), Case(8, True, torch.float32, classes=16),
              Case(8, False, torch.float32, classes=2, channels=512, positional=True),
              Case(8, True, torch.float32, classes=2, channels=512, positional=True)]  # fmt: skip
    return cases


def host_plan_microseconds(repeats: int = 2000) -> float:
    """Median cost of ``plan_for`` on a repeated shape (a cache hit), on this CPU."""
    features, weights = Case(256, False, torch.float32).tensors()
    kw = {"relu": False, "normalize": True, "out_dtype": None}
    triton_cam.plan_for(features, weights, (224, 224), **kw)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        triton_cam.plan_for(features, weights, (224, 224), **kw)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e6, 2)


def markdown(reports: list[dict]) -> str:
    rows = ["| case | launch 1 (regs/spill/smem, SASS per K step) | launch 2 regs/spill | "
            "launch 3 regs/spill/smem | SASS / output px in loop (all) | store bits | "
            "model us | copy us | model % of copy |", "|" + "---|" * 9]  # fmt: skip
    for r in reports:
        l1, l2, l3 = r["launches"]
        rows.append(
            f"| {r['case']} | {l1['kernel'].strip('_')} {l1['registers']}/{l1['spill_bytes']}/"
            f"{l1['shared_bytes']}, {sum(l1['sass_loop_bodies'])} | {l2['registers']}/"
            f"{l2['spill_bytes']} | {l3['registers']}/{l3['spill_bytes']}/{l3['shared_bytes']} | "
            f"{l3['sass_per_output_pixel_in_loop']} ({l3['sass_per_output_pixel_with_prologue']})"
            f" | {l3['widest_global_store_bits']} | "
            f"{r['model_us']} | {r['copy_us']} | {100 * r['model_fraction_of_copy']:.0f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    parser.add_argument("--quick", action="store_true", help="the three main variants only")
    args = parser.parse_args(argv)
    missing = toolchain_missing()
    if missing:
        print(f"cannot compile ahead of time: {missing}", file=sys.stderr)
        return 2
    cache: dict = {}
    reports = []
    for case in benchmark_cases(args.quick):
        print(f"compiling {case.label}", file=sys.stderr, flush=True)
        reports.append(analyse_case(case, cache))
    now = datetime.datetime.now(datetime.timezone.utc)
    report = {
        "device": f"sm_90 ahead-of-time, triton {triton.__version__}",
        "date": now.isoformat(timespec="seconds"),
        "triton": triton.__version__,
        "torch": torch.__version__,
        "target": "cuda sm_90 (H100), compiled ahead of time without a GPU",
        "model": {"sms": H100_SMS, "clock_hz": H100_CLOCK_HZ,
                  "schedulers_per_sm": SCHEDULERS_PER_SM, "copy_bytes_per_s": COPY_BYTES_PER_S,
                  "assumptions": __doc__.split("Roofline model (stated in the report): ")[1]},
        "host_plan_us_cache_hit": host_plan_microseconds(),
        "cases": reports,
    }  # fmt: skip
    path = write_report(report, "kernel_static", now, args.out)
    print(markdown(reports))
    print(
        f"\nhost: launch settings of a repeated shape in {report['host_plan_us_cache_hit']} us "
        "(median, cached plan, this CPU)"
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)
    raise SystemExit(main())
