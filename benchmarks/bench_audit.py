"""The audit's throughput against the bare forward over the same DataLoader.

Data: ``--images`` synthetic images (``SyntheticLocalization``, easy split, 224 px) exported as
PNG files into an ImageFolder layout (one subfolder per class) in a temporary folder: a
labels-only audit (no boxes) reading real files. Model: a ResNet-18-shaped network (basic
blocks 2-2-2-2, 1000 classes, random weights, eval). Both sides iterate
``DataLoader(GuardedDataset(folder), batch_sampler=<the audit's batches>, collate_fn=collate,
num_workers=--workers)``:

  - bare: ``model(images)`` under ``torch.inference_mode`` per batch;
  - audit: ``camplug.run_audit(..., report=False, fresh=True)`` (forward, the maps of label and
    prediction, the map statistics, flags, SQLite writes of rows and maps), timed as the
    whole call and as the run's own images/s (its scoring loop only).

Rounds alternate bare and audit (order flipped each round) so drifting machine load biases
neither; the ratio is ``median(audit images/s) / median(bare images/s)`` (target >= 0.8), also
from the best times and from the process CPU time (``--workers 0``: all work is in this
process), the robust figure on a shared machine. The load average before and after is
recorded.

``python benchmarks/bench_audit.py [--images 2000] [--batch-size 64] [--workers 0]
[--rounds 2] [--threads T] [--device cpu]`` prints the numbers and writes JSON under
benchmarks/results/ (``audit_<device>_<UTC time>.json``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_io import run_environment, write_report  # noqa: E402


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != width:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, width, 1, stride, bias=False),
                                            nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18Like(nn.Module):
    """torchvision's resnet18 layout (layer names included), random weights."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, channels = [], 64
        for i, width in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(channels, width, stride),
                                        BasicBlock(width, width)))
            channels = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def export_image_folder(root: Path, n: int, size: int) -> None:
    """``n`` synthetic images as ``root/<class>/<id>.png``."""
    from PIL import Image

    from camplug.data.synthetic import SyntheticLocalization

    ds = SyntheticLocalization(n=n, image_size=size, seed=0)
    for i in range(n):
        sample = ds.render(i)
        folder = root / ds.class_names[sample.label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sample.rgb).save(folder / f"{sample.id}.png")


def bare_pass(model: nn.Module, data, batch_size: int, workers: int,
              device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one pass: the audit's DataLoader and
    ``model(images)`` per batch."""
    from torch.utils.data import DataLoader

    from camplug.audit.batches import GuardedDataset, collate
    from camplug.audit.pipeline import _batches

    loader = DataLoader(GuardedDataset(data), batch_sampler=_batches(list(range(len(data))),
                                                                     batch_size),
                        collate_fn=collate, num_workers=workers,
                        pin_memory=device.type == "cuda")
    started, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for batch in loader:
            model(batch.images.to(device, non_blocking=True))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started, time.process_time() - cpu


def audit_pass(model: nn.Module, data, batch_size: int, workers: int, device: torch.device,
               out: Path) -> tuple[float, float, float]:
    """(wall seconds, process CPU seconds of the whole ``run_audit`` call, the run's own
    images/s)."""
    from camplug.audit import run_audit

    started, cpu = time.perf_counter(), time.process_time()
    summary = run_audit(model, data, out_dir=out, batch_size=batch_size, num_workers=workers,
                        device=device, report=False, fresh=True, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert summary.n_errors == 0 and summary.n_stored == len(data)
    return seconds, cpu, float(summary.images_per_second)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    now = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    from camplug.data.folders import open_dataset

    model = ResNet18Like().eval().to(device)
    bare, audit, audit_loop, bare_cpu, audit_cpu = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        started = time.perf_counter()
        export_image_folder(root, args.images, args.size)
        export_seconds = time.perf_counter() - started
        data = open_dataset(str(root), image_size=args.size)
        bare_pass(model, data, args.batch_size, args.workers, device)  # warm-up (caches)
        for r in range(args.rounds):
            order = ("bare", "audit") if r % 2 == 0 else ("audit", "bare")
            for side in order:
                if side == "bare":
                    seconds, cpu = bare_pass(model, data, args.batch_size, args.workers, device)
                    bare.append(seconds)
                    bare_cpu.append(cpu)
                else:
                    seconds, cpu, ips = audit_pass(model, data, args.batch_size, args.workers,
                                                   device, Path(tmp) / "out")
                    audit.append(seconds)
                    audit_cpu.append(cpu)
                    audit_loop.append(ips)
            print(f"round {r + 1}: bare {args.images / bare[-1]:.1f} img/s, audit "
                  f"{args.images / audit[-1]:.1f} img/s (call), {audit_loop[-1]:.1f} img/s "
                  "(scoring loop)", flush=True)
    n = args.images
    bare_ips = n / statistics.median(bare)
    report = {
        **run_environment(device, now),
        "benchmark": "audit vs bare forward over the same DataLoader",
        "model": "ResNet-18-shaped (random weights, 1000 classes)",
        "images": n, "image_size": args.size, "batch_size": args.batch_size,
        "workers": args.workers, "rounds": args.rounds, "labels_only": True,
        "export_seconds": round(export_seconds, 2),
        "bare_seconds": bare, "audit_call_seconds": audit,
        "audit_loop_images_per_second": audit_loop,
        "bare_images_per_second": bare_ips,
        "audit_call_images_per_second": n / statistics.median(audit),
        "audit_loop_images_per_second_median": statistics.median(audit_loop),
        "ratio_call_median": statistics.median(bare) / statistics.median(audit),
        "ratio_loop_median": statistics.median(audit_loop) / bare_ips,
        "ratio_call_best": min(bare) / min(audit),
        "bare_cpu_seconds": bare_cpu, "audit_call_cpu_seconds": audit_cpu,
        "ratio_call_cpu_median": statistics.median(bare_cpu) / statistics.median(audit_cpu),
        "target_ratio": 0.8,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "note": "shared machine: other jobs ran at the same time (see the load averages)",
    }
    path = write_report(report, "audit", now, args.out)
    print(f"bare {bare_ips:.1f} img/s; audit {report['audit_call_images_per_second']:.1f} "
          f"img/s (whole call), {report['audit_loop_images_per_second_median']:.1f} img/s "
          f"(scoring loop); ratio {report['ratio_call_median']:.3f} (call), "
          f"{report['ratio_loop_median']:.3f} (loop), {report['ratio_call_cpu_median']:.3f} "
          f"(call, process CPU time); {path}")
    return report


if __name__ == "__main__":
    main()
