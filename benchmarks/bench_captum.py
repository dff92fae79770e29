"""CAM against Captum's LayerGradCam: throughput on the ResNet-50-shaped benchmark model.

Every method makes the layer-resolution maps (S/32 x S/32) of the top-C classes of each image
(C = 1 and 5 by default, the classes known beforehand) on the same batch; a separate scenario,
"predicted class", explains each image's predicted class without knowing it (target=None, the
common workflow): LayerGradCam refuses target=None, so it first needs a forward for the argmax,
then its own forward and backward; the CAM methods do one forward.

- Captum's LayerGradCam on ``layer4``: a forward that records autograd, then a backward from
  the logits to ``layer4`` only;
- ``camplug.ClassActivationMap``: a forward without autograd (attached for that call; the head
  found by the first call's probe forward is cached for the unchanged model);
- ``camplug.explain``: the plugin attached for one call (same cache);
- the plugin attached once (``camplug.attach`` kept open on a copy of the model);
- a plain ``model(x)`` under no_grad: the floor every method pays.

Captum's API takes one class per image and call, so LayerGradCam and ClassActivationMap make C
calls where the plugin makes the C maps from one forward. LayerGradCam's maps are detached as
they come: each one otherwise holds its call's whole autograd graph (the saved activations of
the forward, about 5 GB at batch 64 and 224 px), and keeping C of them runs out of memory.

As a script: ``python benchmarks/bench_captum.py [--quick] [--device cpu] [--batch B]
[--size S] [--classes 1 5] [--no-predicted] [--threads T]`` prints a table and writes JSON
(device name, date) under benchmarks/results/. Default configuration: batch 64 at 224 px on
CUDA, batch 8 at 128 px on CPU. Under pytest-benchmark: ``pytest benchmarks --benchmark-only``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from captum.attr import LayerGradCam

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_io import (  # noqa: E402
    add_run_options,
    device_name,
    parse_run_options,
    run_environment,
    write_report,
)
from models import ResNet50Like, resnet50_like  # noqa: E402

import camplug  # noqa: E402
from camplug.captum.attribution import ClassActivationMap  # noqa: E402

METHODS = ("forward only", "LayerGradCam", "ClassActivationMap", "camplug.explain",
           "plugin (attached)")


def build_methods(
    model: ResNet50Like, x: torch.Tensor, targets: torch.Tensor | None
) -> tuple[dict[str, Callable[[], object]], Callable[[], None]]:
    """The timed callables for the classes ``targets`` [B, C] (None: each image's predicted
    class, unknown beforehand), and a function closing the attached capture. Captum's API takes
    one class per image and call, so LayerGradCam and ClassActivationMap make C calls; the
    plugin makes the C maps from one forward."""
    if targets is None:
        return _predicted_class_methods(model, x)
    grad_cam = LayerGradCam(model, model.layer4)
    cam = ClassActivationMap(model)
    # The attached plugin gets its own copy of the model, so that its hooks never run (and never
    # slow down) the other methods' forwards.
    twin = copy.deepcopy(model)
    capture = camplug.attach(twin)
    columns = targets.unbind(1)

    def forward_only() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    def attached() -> torch.Tensor:
        with torch.no_grad():
            twin(x)
        return capture.maps(targets, size="features", normalize=False)

    methods = {
        "forward only": forward_only,
        "LayerGradCam": lambda: [grad_cam.attribute(x, target=c).detach() for c in columns],
        "ClassActivationMap": lambda: [cam.attribute(x, target=c) for c in columns],
        "camplug.explain": lambda: camplug.explain(
            model, x, targets, size="features", normalize=False
        ).maps,
        "plugin (attached)": attached,
    }
    return methods, capture.close


def _predicted_class_methods(
    model: ResNet50Like, x: torch.Tensor
) -> tuple[dict[str, Callable[[], object]], Callable[[], None]]:
    """The callables for each image's predicted class (each returns maps [B, 1, h, w], or a
    list of one): LayerGradCam needs the argmax from a forward first (it refuses target=None)."""
    grad_cam = LayerGradCam(model, model.layer4)
    cam = ClassActivationMap(model)
    twin = copy.deepcopy(model)
    capture = camplug.attach(twin)

    def forward_only() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    def grad_cam_predicted() -> list[torch.Tensor]:
        with torch.no_grad():
            predicted = model(x).argmax(1)
        return [grad_cam.attribute(x, target=predicted).detach()]

    def attached() -> torch.Tensor:
        with torch.no_grad():
            twin(x)
        return capture.maps(size="features", normalize=False)

    methods = {
        "forward only": forward_only,
        "LayerGradCam": grad_cam_predicted,
        "ClassActivationMap": lambda: [cam.attribute(x)],
        "camplug.explain": lambda: camplug.explain(
            model, x, size="features", normalize=False
        ).maps,
        "plugin (attached)": attached,
    }
    return methods, capture.close


def interleaved_medians(
    methods: dict[str, Callable[[], object]], device: torch.device, warmup: int, rounds: int
) -> dict[str, float]:
    """Median wall time in seconds of each method, timed round-robin (one call of each per
    round) so that drifting machine load biases no method; CUDA synchronized around calls."""
    for fn in methods.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}




def run(
    device: torch.device, batch: int, size: int, classes: int | None, warmup: int, reps: int
) -> dict:
    """Time every method for the top-``classes`` classes of each image, known beforehand
    (None: the predicted class, found by each method); JSON-ready results with speedups over
    LayerGradCam."""
    model = resnet50_like().to(device)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    targets = None
    if classes is not None:
        with torch.no_grad():
            targets = model(x).topk(classes, dim=1).indices
    methods, close = build_methods(model, x, targets)
    try:
        grad_cam_maps = torch.cat([m.detach() for m in methods["LayerGradCam"]()], 1)
        cam_maps = torch.cat(methods["ClassActivationMap"](), 1)
        hw = cam_maps.shape[-2] * cam_maps.shape[-1]
        plugin_maps = methods["plugin (attached)"]() / hw
        explain_maps = methods["camplug.explain"]() / hw
        max_diff = max((maps - grad_cam_maps).abs().max().item()
                       for maps in (cam_maps, plugin_maps, explain_maps))
        print(f"{scenario_name(classes)}: timing {len(methods)} methods x {reps} rounds",
              file=sys.stderr, flush=True)
        medians = interleaved_medians(methods, device, warmup, reps)
    finally:
        close()
    results = {name: {"median_ms": round(seconds * 1e3, 3),
                      "images_per_s": round(batch / seconds, 2)}
               for name, seconds in medians.items()}
    base = results["LayerGradCam"]["median_ms"]
    for entry in results.values():
        entry["speedup_vs_LayerGradCam"] = round(base / entry["median_ms"], 3)
    return {"scenario": scenario_name(classes), "classes_per_image": classes or 1,
            "targets": "known beforehand" if classes else "predicted (target=None)",
            "results": results,
            "max_abs_diff_vs_LayerGradCam": max_diff, "map_shape": list(cam_maps.shape)}


def scenario_name(classes: int | None) -> str:
    if classes is None:
        return "predicted class (target=None: LayerGradCam needs a forward for the argmax)"
    return f"known target, {classes} class(es) per image"


def format_table(results: dict) -> str:
    lines = [f"{'method':<22}{'median ms':>12}{'images/s':>12}{'x LayerGradCam':>16}"]
    for name, entry in results.items():
        lines.append(f"{name:<22}{entry['median_ms']:>12.1f}{entry['images_per_s']:>12.1f}"
                     f"{entry['speedup_vs_LayerGradCam']:>16.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--batch", type=int, default=None, help="default 64 (CUDA) / 8 (CPU)")
    parser.add_argument("--size", type=int, default=None, help="default 224 (CUDA) / 128 (CPU)")
    parser.add_argument("--classes", type=int, nargs="+", default=[1, 5],
                        help="classes per image, one scenario each (default: 1 5)")
    parser.add_argument("--no-predicted", dest="predicted", action="store_false",
                        help="skip the predicted-class (target=None) scenario")
    add_run_options(parser)
    args, device = parse_run_options(parser, argv)
    cuda = device.type == "cuda"
    batch = args.batch or (2 if args.quick else 64 if cuda else 8)
    size = args.size or (64 if args.quick else 224 if cuda else 128)
    warmup, reps = (1, 3) if args.quick else (3, 10) if cuda else (1, 5)
    now = datetime.datetime.now(datetime.timezone.utc)
    cases: list[int | None] = [*args.classes, *([None] if args.predicted else [])]
    scenarios = [run(device, batch, size, classes, warmup, reps) for classes in cases]
    report = {
        "benchmark": "CAM vs Captum LayerGradCam, ResNet-50-shaped model (benchmarks/models.py), "
        "fp32, layer-resolution maps of the top-C classes of each image (known beforehand), "
        "and of each image's predicted class (target=None)",
        **run_environment(device, now),
        "batch": batch,
        "image_size": size,
        "warmup": warmup,
        "rounds": reps,
        "timing": "median wall clock of interleaved rounds"
        + (", CUDA synchronized" if cuda else " on CPU"),
        "scenarios": scenarios,
    }
    out = write_report(report, "captum", now, args.out)
    print(f"device: {report['device']}  batch {batch}  {size}x{size}  "
          f"threads {report['cpu_threads']}  torch {torch.__version__}")
    for scenario in scenarios:
        print(f"\n{scenario['scenario']} "
              f"(max |diff| vs LayerGradCam {scenario['max_abs_diff_vs_LayerGradCam']:.3g})")
        print(format_table(scenario["results"]))
    print(f"written: {out}")
    return 0


try:
    import pytest
except ImportError:  # running as a script without pytest installed
    pytest = None

if pytest is not None:

    @pytest.mark.parametrize("method", METHODS[1:])
    def test_captum_throughput(benchmark, method: str) -> None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        batch, size = (64, 224) if device.type == "cuda" else (2, 64)
        model = resnet50_like().to(device)
        x = torch.randn(batch, 3, size, size, device=device)
        with torch.no_grad():
            targets = model(x).argmax(1, keepdim=True)
        methods, close = build_methods(model, x, targets)
        fn = methods[method]

        def synced() -> None:
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()

        try:
            synced()  # first call: head discovery, kernel compilation
            benchmark.extra_info.update(device=device_name(device), batch=batch, size=size)
            benchmark(synced)
        finally:
            close()


if __name__ == "__main__":
    raise SystemExit(main())
