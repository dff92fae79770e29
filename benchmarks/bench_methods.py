"""The CAM-family methods: time and peak memory per method, 1 and 5 classes per sample.

Two models with random weights (eval mode):
- ResNet-50-shaped (``benchmarks/models.py``), a GAP + linear head: the gradient methods use
  their closed forms (no backward pass). Compared with ``cam`` (the ratio column) and with
  Grad-CAM computed by plain autograd (forward with a graph, one backward per class).
- VGG-16-shaped (written here): 13 convolutions, max pooling, a 7x7 adaptive pooling and an
  MLP classifier, so no exact CAM: the gradient methods run one batched backward for all
  classes. For 5 classes, Grad-CAM is also run as 5 backward passes after one forward, and as 5
  separate calls (forward + backward per class, what a per-class implementation costs).

Each timed call is a whole map computation on an attached capture (head discovered once):
``model(x)`` (recording a graph only where a backward is needed) then ``capture.maps(...)``
(normalized fp32 maps at the input size). Calls are interleaved round-robin, the order
alternating between rounds; the report gives the median and best wall time and the median
process CPU time (the robust figure on a shared machine). Peak memory: one extra call under
``camplug.comparison.profiling.peak_memory_bytes`` (the profiler's allocation events on CPU,
the allocator's peak on CUDA).

Score-CAM is left out unless ``--scorecam``: it runs B * K masked forwards (K = 2048 for
ResNet-50: 2048 forwards of the batch, about an hour at batch 8 on one CPU thread).

As a script: ``python benchmarks/bench_methods.py [--device cpu] [--batches 8 32] [--size 224]
[--rounds 3] [--models resnet50 vgg16] [--threads 1] [--quick]`` prints a Markdown table and
writes JSON (device, date) under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_io import (  # noqa: E402
    add_run_options,
    interleaved_times,
    parse_run_options,
    run_environment,
    write_report,
)
from models import resnet50_like  # noqa: E402

import camplug  # noqa: E402
from camplug.comparison.profiling import peak_memory_bytes  # noqa: E402

CLASSES = (1, 5)
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16Like(nn.Module):
    """torchvision's VGG-16 layout (``features``, ``avgpool`` 7x7, ``classifier``), no BN."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in VGG16:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 49, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg16_like(seed: int = 0) -> VGG16Like:
    torch.manual_seed(seed)
    return VGG16Like().eval()


def method_call(model: nn.Module, capture: camplug.CamCapture, x: torch.Tensor, method: str,
                classes: int) -> Callable[[], torch.Tensor]:
    """Forward (with a graph only when the method needs a real backward) + maps."""
    graph = camplug.methods.get(method).uses_gradients and not capture.exact_head

    def call() -> torch.Tensor:
        with torch.set_grad_enabled(graph):
            model(x)
        return capture.maps(topk=classes, method=method)

    return call


def maps_call(capture: camplug.CamCapture, method: str,
              classes: int) -> Callable[[], torch.Tensor]:
    """The maps alone, on the stored forward (its graph is kept: a backward can run again)."""
    return lambda: capture.maps(topk=classes, method=method)


def explain_call(model: nn.Module, x: torch.Tensor, method: str,
                 classes: int) -> Callable[[], camplug.CamResult]:
    """The same maps through ``camplug.explain`` (a fresh capture: nothing held before)."""
    return lambda: camplug.explain(model, x, method=method, topk=classes)


def autograd_gradcam(model: nn.Module, layer: nn.Module, x: torch.Tensor, classes: int,
                     separate: bool) -> Callable[[], torch.Tensor]:
    """Grad-CAM by plain autograd on ``layer``'s output: one forward and ``classes`` backward
    passes, or (``separate``) a forward and a backward per class. Same kernel for the maps."""
    kept = {}

    def keep(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
        kept["a"] = output

    def one_pass(targets: torch.Tensor) -> list[torch.Tensor]:
        logits = model(x)
        return [torch.autograd.grad(logits.gather(1, targets[:, c:c + 1]).sum(), kept["a"],
                                    retain_graph=c < targets.shape[1] - 1)[0]
                for c in range(targets.shape[1])]

    def call() -> torch.Tensor:
        handle = layer.register_forward_hook(keep)
        try:
            with torch.enable_grad():
                if separate:
                    with torch.no_grad():
                        targets = model(x).topk(classes, dim=1).indices
                    grads = [one_pass(targets[:, c:c + 1])[0] for c in range(classes)]
                else:
                    logits = model(x)
                    targets = logits.detach().topk(classes, dim=1).indices
                    grads = [torch.autograd.grad(logits.gather(1, targets[:, c:c + 1]).sum(),
                                                 kept["a"], retain_graph=True)[0]
                             for c in range(classes)]
        finally:
            handle.remove()
        weights = torch.stack(grads, dim=1).mean(dim=(-2, -1))
        features = kept.pop("a").detach()  # the graph is not kept past the call
        return camplug.cam(features, weights, tuple(x.shape[-2:]), relu=True)

    return call


def summarized_times(calls: dict[str, Callable[[], object]], device: torch.device,
                     rounds: int) -> dict[str, dict[str, float]]:
    """``rounds`` interleaved rounds of every call (``benchmark_io.interleaved_times``): median
    and best wall seconds, median process CPU seconds."""
    wall, cpu = interleaved_times(calls, device, 0, rounds)
    return {name: {"median_s": statistics.median(wall[name]), "best_s": min(wall[name]),
                   "cpu_median_s": statistics.median(cpu[name])} for name in calls}


def model_calls(name: str, model: nn.Module, capture: camplug.CamCapture, x: torch.Tensor,
                scorecam: bool) -> dict[tuple[str, int], tuple[str, Callable[[], object]]]:
    """{(label, classes): (how the gradients are taken, timed call, call for the peak memory)}
    for one model. The capture keeps the last forward (and its graph, where a backward needs
    it) until the next one: the memory is measured on a fresh capture (``explain``) once
    ``capture`` is closed (an attached one would free its last forward during the call)."""
    methods = [m for m in camplug.methods.available() if scorecam or m != "scorecam"]
    calls = {}
    for classes in CLASSES:
        for method in methods:
            uses_gradients = camplug.methods.get(method).uses_gradients
            if method == "cam" and not capture.exact_head:
                continue
            how = ("closed form" if capture.exact_head else "batched backward") if (
                uses_gradients) else "no gradient"
            calls[(method, classes)] = (how, method_call(model, capture, x, method, classes),
                                        explain_call(model, x, method, classes))
        layer = model.layer4 if name == "resnet50" else model.features
        baseline = autograd_gradcam(model, layer, x, classes, separate=False)
        calls[("gradcam (autograd)", classes)] = ("1 forward + C backward", baseline, baseline)
        if classes > 1:
            separate = autograd_gradcam(model, layer, x, classes, separate=True)
            calls[("gradcam (per class)", classes)] = ("C x (forward + backward)", separate,
                                                       separate)
    return calls


def run_model(name: str, device: torch.device, batch: int, size: int, rounds: int,
              scorecam: bool) -> list[dict]:
    model = (resnet50_like() if name == "resnet50" else vgg16_like()).to(device)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    rows = []
    with camplug.attach(model) as capture:
        capture.discover(x)
        calls = model_calls(name, model, capture, x, scorecam)
        for _, timed, _ in calls.values():  # warm-up
            timed()
        times = summarized_times({key: timed for key, (_, timed, _) in calls.items()}, device,
                                  rounds)
        alone = {}
        for key in calls:  # the maps alone, on the stored forward that suits the method
            if key[0] in camplug.methods.available():
                method_call(model, capture, x, *key)()
                alone[key] = summarized_times({key: maps_call(capture, *key)}, device,
                                               5 * rounds)[key]["cpu_median_s"]
    for (label, classes), (how, _, fresh) in calls.items():
        gc.collect()  # tensors of earlier calls held in reference cycles: not freed mid-call
        rows.append({"model": name, "batch": batch, "size": size, "classes": classes,
                     "method": label, "gradients": how, **times[(label, classes)],
                     "maps_only_cpu_median_s": alone.get((label, classes)),
                     "peak_bytes": peak_memory_bytes(fresh, device)})
    for row in rows:  # ratios against cam (ResNet) or the batched Grad-CAM (VGG), same C
        base = next(r for r in rows if r["classes"] == row["classes"] and r["method"] == (
            "cam" if name == "resnet50" else "gradcam"))
        row["vs_" + base["method"]] = row["cpu_median_s"] / base["cpu_median_s"]
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| model | batch | C | method | gradients | wall median (best) s | CPU median s | "
             "x CAM / x Grad-CAM | maps alone CPU ms | peak MB |", "|" + "---|" * 10]
    for r in rows:
        ratio = r.get("vs_cam", r.get("vs_gradcam"))
        peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.0f}"
        alone = r["maps_only_cpu_median_s"]
        alone = "-" if alone is None else f"{1000 * alone:.1f}"
        lines.append(f"| {r['model']} | {r['batch']} | {r['classes']} | {r['method']} | "
                     f"{r['gradients']} | {r['median_s']:.3f} ({r['best_s']:.3f}) | "
                     f"{r['cpu_median_s']:.3f} | {ratio:.2f} | {alone} | {peak} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--batches", type=int, nargs="+", default=[8])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="+", choices=("resnet50", "vgg16"),
                        default=["resnet50", "vgg16"])
    parser.add_argument("--scorecam", action="store_true", help="include Score-CAM (slow)")
    add_run_options(parser)
    args, device = parse_run_options(parser, argv)
    batches, size, rounds = ([2], 64, 1) if args.quick else (args.batches, args.size, args.rounds)
    now = datetime.datetime.now(datetime.timezone.utc)
    rows = []
    for batch in batches:
        for name in args.models:
            print(f"{name} batch {batch} at {size} px: {rounds} rounds", file=sys.stderr,
                  flush=True)
            rows += run_model(name, device, batch, size, rounds, args.scorecam)
    report = {**run_environment(device, now), "size": size, "rounds": rounds,
              "timing": "interleaved rounds: median and best wall clock, median process CPU "
                        "time; ratios from the CPU medians", "rows": rows}
    path = write_report(report, "methods", now, args.out)
    print(format_table(rows))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
