"""camplug against its peers (Captum, pytorch-grad-cam, torchcam) on torchvision models, CPU.

For each model (random weights: ResNet-50, DenseNet-121, EfficientNet-B0, ConvNeXt-T, Swin-T,
and for the gradient methods VGG-16 and MobileNetV3-Large) and batch size (1, 8, 32 at 224 px):
a plain forward, camplug CAM (``camplug.explain``), camplug Grad-CAM
(``camplug.explain(..., method="gradcam")``, recorded as not available where this camplug has
no ``method=``), Captum LayerGradCam, pytorch-grad-cam GradCAM, torchcam CAM and GradCAM. Every
method makes one map per image (its predicted class, computed beforehand) normalized and
upsampled to the input size (see ``peers/methods.py``). Reported per method: the median wall
time of interleaved rounds, the median peak RSS rise of a call (``peers/measure.py``), the
largest difference of its maps from camplug's, and the error of each method that fails.

Needs the separate environment ``.venv-peers`` (torch 2.14.1, torchvision 0.29.1, the peers):
``make bench-peers`` creates it and runs ``benchmarks/bench_peers.py --threads 1``. Options:
``--models ResNet-50 Swin-T``, ``--batches 1 8``, ``--rounds 5``, ``--threads 1``, ``--shared``
(the machine ran other jobs meanwhile: said in the report). Writes
``results/peers_<device>_<UTC time>.json`` and the ``.md`` table and ``.png`` plot beside it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL_NAMES = ("ResNet-50", "DenseNet-121", "EfficientNet-B0", "ConvNeXt-T", "Swin-T",
               "MobileNetV3-L", "VGG-16")
PACKAGES = ("torch", "torchvision", "camplug", "captum", "grad-cam", "torchcam", "timm", "numpy",
            "opencv-python-headless", "ttach", "matplotlib")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after a warm-up")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenCV CPU threads")
    parser.add_argument("--shared", action="store_true",
                        help="the machine runs other jobs meanwhile (recorded in the report)")
    parser.add_argument("--time-limit-min", type=float, default=None,
                        help="start no (batch, model) case expected to end after this many "
                        "minutes (its time scaled from the model's previous batch); the cases "
                        "left are listed as not run")
    parser.add_argument("--note", default="", help="free text stored in the report")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="only write the .md table and .png plot of an existing report")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.threads < 1 or min(args.batches) < 1:
        parser.error("--rounds, --threads and every batch size must be at least 1")
    return args


def package_versions() -> dict[str, str]:
    """Installed version of each benchmarked package ("not installed" where missing)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def camplug_source() -> dict[str, str]:
    """Where camplug was imported from and, for this repository's work tree, its commit (with
    "+changes" when camplug/ or kernels/ differ from it)."""
    import camplug

    path = Path(camplug.__file__).resolve().parent
    if path != HERE.parent / "camplug":
        return {"path": str(path), "commit": "not this work tree (see note)"}

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--", "../camplug", "../kernels")
        return {"path": str(path), "commit": git("rev-parse", "HEAD") + ("+changes" if dirty
                                                                        else "")}
    except (OSError, subprocess.CalledProcessError):
        return {"path": str(path), "commit": "unknown"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        sys.path.insert(0, str(HERE))
        report = json.loads(args.render.read_text())
        print(f"written: {write_outputs(report, args.render)} (+ .md, .png)")
        return 0
    # Thread pools are sized when the libraries load: set them before the first import.
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(args.threads)
    import cv2
    import torch

    sys.path.insert(0, str(HERE))
    from peers.report import headline
    from peers.run import model_entry, run_case
    from peers.zoo import MODELS

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    cv2.setNumThreads(args.threads)
    run = {"now": datetime.datetime.now(datetime.timezone.utc),
           "load_before": os.getloadavg(), "start": time.monotonic()}
    built = {name: MODELS[name].build() for name in args.models}
    entries = [model_entry(MODELS[name], built[name]) for name in args.models]
    not_run: list[dict] = []
    # Batch-major order: every model gets its small batches before any gets the largest one.
    minutes_per_image: dict[str, float] = {}
    for batch in args.batches:
        for name, entry in zip(args.models, entries, strict=True):
            minutes = (time.monotonic() - run["start"]) / 60
            expected = minutes + minutes_per_image.get(name, 0.0) * batch
            if args.time_limit_min is not None and expected > args.time_limit_min:
                not_run.append({"model": name, "batch": batch, "reason": f"expected to end "
                                f"after the time limit of {args.time_limit_min} min"})
                continue
            entry["cases"].append(run_case(MODELS[name], built[name], batch, args.size,
                                           args.rounds))
            case_minutes = (time.monotonic() - run["start"]) / 60 - minutes
            minutes_per_image[name] = case_minutes / batch
            write_outputs(build_report(args, run, entries, not_run), args.out)
    report = build_report(args, run, entries, not_run)
    json_path = write_outputs(report, args.out)
    print("\n".join(headline(report)))
    print(f"written: {json_path} (+ .md, .png)")
    return 0


def build_report(args: argparse.Namespace, run: dict, models: list[dict],
                 not_run: list[dict]) -> dict:
    """The JSON report of the cases run so far (``run``: the start time and load average)."""
    import torch
    from benchmark_io import device_name
    from peers.methods import camplug_has_gradcam

    return {
        "benchmark": "camplug vs Captum LayerGradCam, pytorch-grad-cam GradCAM, torchcam CAM "
        "and GradCAM on random-weight torchvision models, fp32, CPU",
        "device": device_name(torch.device("cpu")),
        "device_type": "cpu",
        "date": run["now"].isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "camplug_source": camplug_source(),
        "note": args.note,
        "camplug_has_gradcam": camplug_has_gradcam(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine_shared": args.shared,
        "load_average_1_5_15min": {"start": list(run["load_before"]), "end": list(os.getloadavg())},
        "image_size": args.size,
        "batches": args.batches,
        "rounds": args.rounds,
        "warmup_calls": 1,
        "targets": "each image's predicted class (argmax of a no_grad forward done beforehand), "
        "given to every method",
        "timing": "median wall clock (median_ms) and median process CPU time (median_cpu_ms: "
        "user + system, all threads, so not the time spent waiting for a core on a shared "
        "machine) of interleaved rounds (one call of each method per round, the order rotated "
        "each round), after one warm-up call whose maps are compared",
        "memory": {
            "short": "rise of the process RSS high-water mark during one more, untimed call",
            "method": "after the timed rounds, one call per method: malloc_trim(0) (malloc's "
            "kept memory back to the kernel), VmHWM reset through /proc/self/clear_refs, then "
            "VmHWM after the call minus VmRSS before it (/proc/self/status); counts PyTorch, "
            "NumPy and OpenCV allocations alike",
        },
        "agreement": "max |peer - camplug| over all pixels of the normalized maps at the input "
        "size. aligned: camplug's map of the same family (CAM or Grad-CAM) with the peer's "
        "ReLU (pytorch-grad-cam, torchcam GradCAM) and, for pytorch-grad-cam, its second "
        "min-max normalization after upsampling; default: camplug's default map of that "
        "family (no ReLU)",
        "conventions": {
            "camplug": "no ReLU by default; min-max (eps 1e-7) on the layer-resolution map; "
            "bilinear upsampling, align_corners=False",
            "Captum LayerGradCam": "no ReLU (relu_attributions=False); raw layer-resolution "
            "map: normalized and upsampled here as camplug does, inside the timed call",
            "pytorch-grad-cam GradCAM": "ReLU; min-max (eps 1e-7) on the layer-resolution map, "
            "OpenCV bilinear resize, then min-max again on the upsampled map; NumPy output",
            "torchcam CAM": "no ReLU; min-max (eps 1e-8) on the layer-resolution map; "
            "upsampled here inside the timed call",
            "torchcam GradCAM": "ReLU; min-max (eps 1e-8); upsampled here inside the timed call",
        },
        "models": models,
        "not_run": not_run,
        "elapsed_min": round((time.monotonic() - run["start"]) / 60, 1),
    }


def write_outputs(report: dict, out: Path | None) -> Path:
    """Write the JSON report, its Markdown table and its plot beside it; the JSON path."""
    from benchmark_io import write_report
    from peers.report import markdown, plot

    now = datetime.datetime.fromisoformat(report["date"])
    json_path = write_report(report, "peers", now, out)
    plot_path = json_path.with_suffix(".png")
    plot(report, plot_path)
    json_path.with_suffix(".md").write_text(markdown(report, plot_path.name))
    return json_path


if __name__ == "__main__":
    raise SystemExit(main())
