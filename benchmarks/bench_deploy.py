"""Deployable CAM: what ``camplug.CamModel`` costs beside the model alone, eager and compiled,
and what onnxruntime makes of its ONNX export.

The ResNet-50-shaped model of ``benchmarks/models.py`` (random weights, eval, fp32, no
autograd). Five calls per batch, each returning the logits (and the maps of the predicted
class at the input size, fp32, for the CamModel rows):
- ``model``: ``model(x)``;
- ``CamModel``: ``CamModel(model)(x)`` (one forward, the features taken by its tap);
- ``compiled model`` / ``compiled CamModel``: the same through ``torch.compile`` (inductor,
  ``fullgraph=True``, static shapes: one compilation per batch size, timed apart);
- ``onnxruntime CamModel``: the CamModel exported once by ``torch.onnx.export`` (dynamic batch)
  and run by an onnxruntime CPU session with as many intra-op threads as torch (CPU only: the
  CUDA provider is not part of the ``deploy`` extra).
Calls are interleaved round-robin (order alternating) so drifting machine load biases no row;
the report has the median and best (min) wall time and the median process CPU time of each,
the overheads ``compiled CamModel / compiled model - 1`` (target: <= 5%) and ``CamModel /
model - 1`` from each figure, and the largest difference of the compiled and onnxruntime maps
from the eager CamModel's (a check that they compute the same thing).

As a script: ``python benchmarks/bench_deploy.py [--device cpu] [--batches 1 8 32]
[--size 224] [--rounds N] [--threads T] [--quick] [--out PATH]``; prints a table and writes
JSON (device name, UTC date) under benchmarks/results/. On a shared CPU use ``--threads 1``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_io import (  # noqa: E402
    add_run_options,
    interleaved_times,
    parse_run_options,
    run_environment,
    write_report,
)
from models import resnet50_like  # noqa: E402

from camplug.deploy import CamModel  # noqa: E402

Call = Callable[[], tuple[torch.Tensor, ...] | torch.Tensor]


def onnx_session(deployed: CamModel, x: torch.Tensor, threads: int, folder: Path):  # noqa: ANN201
    """An onnxruntime CPU session of ``deployed`` exported with a dynamic batch (None when
    onnxruntime or onnxscript is missing)."""
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx.export(dynamo=True) needs it)
    except ImportError:
        return None
    path = folder / "cam_model.onnx"
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(deployed, (x,), dynamo=True,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    input_names=["x"], output_names=["logits", "maps"])
    program.save(str(path))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _first_call(fn: Call) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def run_batch(model: torch.nn.Module, deployed: CamModel, compiled_model: Call,
              compiled_deployed: Call, session: object, batch: int, size: int,
              device: torch.device, rounds: int) -> dict:
    """The row of one batch size (see the module docstring)."""
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    x = x.to(device)
    calls: dict[str, Call] = {
        "model": lambda: model(x),
        "CamModel": lambda: deployed(x),
        "compiled model": lambda: compiled_model(x),
        "compiled CamModel": lambda: compiled_deployed(x),
    }
    if session is not None:
        array = x.cpu().numpy()
        calls["onnxruntime CamModel"] = lambda: session.run(None, {"x": array})
    first = {}
    results = {}
    for name, fn in calls.items():  # warm-up; the compiled calls compile for this batch here
        results[name], first[name] = _first_call(fn)
        fn()
    reference = results["CamModel"][1]
    differences = {"compiled CamModel": (results["compiled CamModel"][1] - reference)}
    if session is not None:
        differences["onnxruntime CamModel"] = (
            torch.from_numpy(results["onnxruntime CamModel"][1]).to(device) - reference)
    wall, cpu = interleaved_times(calls, device, 0, rounds)
    median = {name: statistics.median(values) for name, values in wall.items()}
    best = {name: min(values) for name, values in wall.items()}
    cpu_median = {name: statistics.median(values) for name, values in cpu.items()}

    def overhead(figures: dict[str, float], mine: str, base: str) -> float:
        return round(100 * (figures[mine] / figures[base] - 1), 2)

    return {
        "batch": batch,
        "median_ms": {name: round(1e3 * value, 3) for name, value in median.items()},
        "best_ms": {name: round(1e3 * value, 3) for name, value in best.items()},
        "cpu_time_median_ms": {name: round(1e3 * value, 3) for name, value in cpu_median.items()},
        "first_call_s": {name: round(value, 3) for name, value in first.items()},
        "overhead_percent": {
            figure_name: {
                "compiled CamModel vs compiled model": overhead(figures, "compiled CamModel",
                                                                "compiled model"),
                "CamModel vs model": overhead(figures, "CamModel", "model"),
            }
            for figure_name, figures in (("median", median), ("best", best),
                                         ("cpu_time", cpu_median))
        },
        "max_abs_map_difference_vs_eager_CamModel": {
            name: float(diff.abs().max()) for name, diff in differences.items()},
        "map_shape": list(reference.shape),
    }


def format_table(rows: list[dict]) -> str:
    names = list(rows[0]["median_ms"])
    lines = ["batch  " + "".join(f"{name:>24}" for name in names)
             + "  overhead compiled (median / best / cpu)"]
    for row in rows:
        cells = "".join(f"{row['median_ms'][n]:>13.2f} [{row['best_ms'][n]:>8.2f}]"
                        for n in names)
        over = row["overhead_percent"]
        key = "compiled CamModel vs compiled model"
        lines.append(f"{row['batch']:>5}  {cells}  {over['median'][key]:>6.2f}% / "
                     f"{over['best'][key]:.2f}% / {over['cpu_time'][key]:.2f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=None, help="default 30 (CUDA) / 5 (CPU)")
    add_run_options(parser)
    args, device = parse_run_options(parser, argv)
    batches = [2] if args.quick else args.batches
    size = 64 if args.quick else args.size
    rounds = 3 if args.quick else args.rounds or (30 if device.type == "cuda" else 5)
    now = datetime.datetime.now(datetime.timezone.utc)
    model = resnet50_like().to(device)
    example = torch.randn(1, 3, size, size, device=device)
    deployed = CamModel(model, example_input=example)
    compiled_model = torch.compile(model, fullgraph=True, dynamic=False)
    compiled_deployed = torch.compile(deployed, fullgraph=True, dynamic=False)
    rows = []
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        start = time.perf_counter()
        session = (onnx_session(deployed, example, torch.get_num_threads(), Path(folder))
                   if device.type == "cpu" else None)
        export_s = time.perf_counter() - start
        for batch in batches:
            print(f"batch {batch}: {rounds} rounds", file=sys.stderr, flush=True)
            rows.append(run_batch(model, deployed, compiled_model, compiled_deployed, session,
                                  batch, size, device, rounds))
    report = {
        "benchmark": "deploy: model vs CamModel (logits + maps of the predicted class at input "
        "size, fp32), eager, torch.compile (inductor, fullgraph, static shapes) and onnxruntime, "
        "ResNet-50-shaped model (benchmarks/models.py), fp32, no_grad",
        **run_environment(device, now),
        "image_size": size,
        "rounds": rounds,
        "onnx_export_s": round(export_s, 2) if session is not None else None,
        "onnxruntime": None if session is None else __import__("onnxruntime").__version__,
        "timing": "interleaved rounds after two warm-up calls each (the first, timed apart as "
        "first_call_s, compiles); median and best (min) wall clock, median process CPU time"
        + (" , CUDA synchronized" if device.type == "cuda" else ""),
        "command": "python benchmarks/bench_deploy.py " + " ".join(argv or sys.argv[1:]),
        "results": rows,
    }
    out = write_report(report, "deploy", now, args.out)
    print(f"device: {report['device']}  {size}x{size}  threads {report['cpu_threads']}  "
          f"torch {torch.__version__}  (median ms [best ms])")
    print(format_table(rows))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
