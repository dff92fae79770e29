"""Localization-metric benchmark: camplug's MaxBoxAccV2 (both box protocols) and PxAP against an
independent per-image OpenCV / numpy implementation of the same protocols.

As a script: ``python benchmarks/bench_metrics.py [--maps 500] [--size 224] [--rounds 3]
[--threads 1] [--device cpu]`` prints a Markdown table and writes JSON under
benchmarks/results/. Under pytest-benchmark: ``pytest benchmarks --benchmark-only``.

The maps are CAM-like: 7x7 uniform noise upsampled bilinearly to size x size and min-max
normalized (``--kind noise``: i.i.d. uniform noise, the worst case for both sides); one or two
random ground-truth boxes per map; the PxAP masks are the boxes' pixels.
Thresholds: numpy.arange(0, 1, 0.01) for boxes (100), that grid plus 1.0 for PxAP.

The reference loops over maps and thresholds: ``cv2.threshold`` on the uint8 map
(``q > int(tau * max q)``), ``cv2.findContours`` and ``cv2.boundingRect``; protocol "camplug"
keeps the outer contours (cv2.RETR_CCOMP, no parent) with inclusive boxes (x + w - 1),
"wsolevaluation" every contour (cv2.RETR_TREE) with boxes ending at min(x + w, W - 1) and the
box [0, 0, 0, 0] when nothing is foreground, as Choe et al.'s code. PxAP: per-map
``numpy.histogram`` over the thresholds' right edges and the step-rule average precision, as
Choe et al.'s code. OpenCV (``opencv-python-headless``) is a benchmark-only dependency: without
it the reference is skipped with a message. Times are medians over ``--rounds`` of wall clock
for the whole set, the two implementations interleaved; results must agree (IoUs to 1e-9).
On CPU, camplug's connected components run on the compiled numba kernels when numba (the
``fast`` extra) is installed, else on torch; the report names the backend
(``components_backend``), and ``--backend torch`` forces the torch one.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from benchmark_io import run_environment, write_report

from camplug import metrics
from camplug.metrics import components

try:
    import cv2
except ImportError:
    cv2 = None

DELTAS = (0.3, 0.5, 0.7)
PROTOCOLS = ("camplug", "wsolevaluation")


def make_case(n: int, size: int, seed: int = 0, kind: str = "cam"):
    """Maps float32 [n, size, size] (kind "cam": CAM-like; "noise": i.i.d. uniform, the worst
    case, thousands of components per threshold), boxes float64 [n, 2, 4] (the second box of
    a map with one object repeats the first), masks bool [n, size, size]."""
    rng = np.random.default_rng(seed)
    side = 7 if kind == "cam" else size
    small = torch.from_numpy(rng.random((n, 1, side, side), dtype=np.float32))
    cams = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    low = cams.amin(dim=(1, 2), keepdim=True)
    high = cams.amax(dim=(1, 2), keepdim=True)
    cams = ((cams - low) / (high - low)).clamp(0, 1)
    boxes = np.zeros((n, 2, 4))
    for i in range(n):
        for j in range(2):
            w, h = (int(rng.uniform(0.2, 0.7) * size) for _ in range(2))
            x0, y0 = rng.integers(0, size - w + 1), rng.integers(0, size - h + 1)
            boxes[i, j] = [x0, y0, x0 + w - 1, y0 + h - 1]
        if rng.random() < 0.5:
            boxes[i, 1] = boxes[i, 0]
    ys = np.arange(size)[None, :, None]
    xs = np.arange(size)[None, None, :]
    masks = np.zeros((n, size, size), dtype=bool)
    for j in range(2):
        b = boxes[:, j, :, None, None]
        masks |= (xs >= b[:, 0]) & (xs <= b[:, 2]) & (ys >= b[:, 1]) & (ys <= b[:, 3])
    return cams, torch.from_numpy(boxes), torch.from_numpy(masks)


# ------------------------------------------------------------- independent reference


def _iou(a, b) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = inter_w * inter_h
    union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (union - inter)


def opencv_box_ious(cams: np.ndarray, boxes: np.ndarray, protocol: str) -> np.ndarray:
    """[N, T] best IoU per map and threshold, one cv2.findContours call per pair."""
    thresholds = np.arange(0, 1, 0.01)
    n, height, width = cams.shape
    mode = cv2.RETR_TREE if protocol == "wsolevaluation" else cv2.RETR_CCOMP
    out = np.zeros((n, thresholds.size))
    for i in range(n):
        levels = (cams[i] * 255).astype(np.uint8)
        top = int(levels.max())
        objects = boxes[i].tolist()
        for j, tau in enumerate(thresholds):
            _, binary = cv2.threshold(levels, int(tau * top), 255, cv2.THRESH_BINARY)
            contours, hierarchy = cv2.findContours(binary, mode, cv2.CHAIN_APPROX_SIMPLE)
            candidates = []
            for k, contour in enumerate(contours):
                x, y, w, h = cv2.boundingRect(contour)
                if protocol == "wsolevaluation":
                    candidates.append((x, y, min(x + w, width - 1), min(y + h, height - 1)))
                elif hierarchy[0][k][3] == -1:  # an outer boundary, not a hole
                    candidates.append((x, y, x + w - 1, y + h - 1))
            if not candidates and protocol == "wsolevaluation":
                candidates = [(0, 0, 0, 0)]
            out[i, j] = max((_iou(p, g) for p in candidates for g in objects), default=0.0)
    return out


def numpy_pxap(cams: np.ndarray, masks: np.ndarray) -> float:
    """Choe et al.'s PxAP: per-map histograms over right edges, step-rule AP (a fraction)."""
    edges = np.append(np.arange(0, 1, 0.01), [1.0, 2.0, 3.0])
    true_hist = np.zeros(edges.size - 1)
    false_hist = np.zeros(edges.size - 1)
    for cam, mask in zip(cams, masks, strict=True):
        true_hist += np.histogram(cam[mask], bins=edges)[0]
        false_hist += np.histogram(cam[~mask], bins=edges)[0]
    tp = true_hist[::-1].cumsum()
    fp = false_hist[::-1].cumsum()
    fn = true_hist.sum() - tp
    predicted = tp + fp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / predicted
    recall = tp / (tp + fn)
    keep = predicted[1:] != 0
    return float((precision[1:] * np.diff(recall))[keep].sum())


def max_box_acc_v2(ious: np.ndarray) -> float:
    return float(np.mean([(ious >= d).mean(axis=0).max() for d in DELTAS]))


# ---------------------------------------------------------------------------- runs


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def run(n: int, size: int, rounds: int, device: torch.device, kind: str) -> dict:
    cams, boxes, masks = make_case(n, size, kind=kind)
    cams_np, boxes_np, masks_np = cams.numpy(), boxes.numpy(), masks.numpy()
    on_device = cams.to(device), masks.to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def camplug_ious(protocol: str) -> torch.Tensor:
        ious = metrics.box_ious(on_device[0], boxes, protocol=protocol)
        sync()
        return ious

    def camplug_pxap() -> float:
        value = metrics.pxap(*on_device)
        sync()
        return value

    tasks = {f"MaxBoxAccV2 {p}": (lambda p=p: camplug_ious(p),
                                  lambda p=p: opencv_box_ious(cams_np, boxes_np, p))
             for p in PROTOCOLS}
    tasks["PxAP"] = (camplug_pxap, lambda: numpy_pxap(cams_np, masks_np))
    camplug_ious(PROTOCOLS[0])  # warm-up
    rows = []
    for name, (ours, theirs) in tasks.items():
        times = {"camplug": [], "reference": []}
        values = {}
        for _ in range(rounds):
            seconds, values["camplug"] = _timed(ours)
            times["camplug"].append(seconds)
            if cv2 is not None or name == "PxAP":
                seconds, values["reference"] = _timed(theirs)
                times["reference"].append(seconds)
        rows.append(_row(name, times, values))
        print(f"{name}: done", file=sys.stderr, flush=True)
    return {"maps": n, "kind": kind, "size": size, "thresholds": 100, "rounds": rounds,
            "rows": rows}


def _row(name: str, times: dict, values: dict) -> dict:
    ours = statistics.median(times["camplug"])
    row = {"metric": name, "camplug_s": ours, "reference_s": None, "speedup": None}
    value = values["camplug"]
    if isinstance(value, torch.Tensor):
        row["camplug_value"] = max_box_acc_v2(value.cpu().numpy())
    else:
        row["camplug_value"] = value
    if "reference" in values:
        theirs = statistics.median(times["reference"])
        reference = values["reference"]
        if isinstance(value, torch.Tensor):
            difference = float(np.abs(value.cpu().numpy() - reference).max())
            row["reference_value"] = max_box_acc_v2(reference)
        else:
            difference = abs(value - reference)
            row["reference_value"] = reference
        row.update(reference_s=theirs, speedup=theirs / ours, max_abs_difference=difference,
                   agree=difference <= 1e-9)
    return row


def format_table(rows: list[dict]) -> str:
    lines = ["| metric | camplug (s) | reference (s) | speedup | value | agree |",
             "|---|---:|---:|---:|---:|:---:|"]
    for r in rows:
        ref = "skipped" if r["reference_s"] is None else f"{r['reference_s']:.3f}"
        speed = "-" if r["speedup"] is None else f"{r['speedup']:.1f}x"
        agree = "-" if r["reference_s"] is None else ("yes" if r["agree"] else "NO")
        lines.append(f"| {r['metric']} | {r['camplug_s']:.3f} | {ref} | {speed} | "
                     f"{r['camplug_value']:.6f} | {agree} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=500, help="number of maps (default 500)")
    parser.add_argument("--size", type=int, default=224, help="map side in pixels")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (median)")
    parser.add_argument("--kind", choices=("cam", "noise"), default="cam",
                        help="CAM-like maps (default) or i.i.d. noise (worst case)")
    parser.add_argument("--quick", action="store_true", help="50 maps, 1 round")
    parser.add_argument("--threads", type=int, default=None, help="torch and OpenCV threads")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    parser.add_argument("--backend", choices=("auto", "torch"), default="auto",
                        help="connected components on CPU: numba when installed (auto) or torch")
    args = parser.parse_args(argv)
    if args.backend == "torch":  # hide the compiled kernels: "auto" then means torch
        components._compiled_backend = lambda: None
    if args.threads:
        torch.set_num_threads(args.threads)
        if cv2 is not None:
            cv2.setNumThreads(args.threads)
    if cv2 is None:
        print("OpenCV (cv2) is not installed: the MaxBoxAccV2 reference is skipped "
              "(pip install opencv-python-headless)", file=sys.stderr)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n, rounds = (50, 1) if args.quick else (args.maps, args.rounds)
    now = datetime.datetime.now(datetime.timezone.utc)
    report = run_environment(device, now)
    load_before = os.getloadavg()
    compiled = device.type == "cpu" and components._compiled_backend() is not None
    report.update(benchmark="camplug.metrics MaxBoxAccV2 and PxAP vs per-image OpenCV/numpy",
                  opencv=None if cv2 is None else cv2.__version__,
                  components_backend=(f"numba {components._compiled_backend().numba.__version__}"
                                      if compiled else "torch"),
                  timing="median wall clock over rounds, whole set, one call each",
                  **run(n, args.size, rounds, device, args.kind))
    # Other work on the machine slows both sides, not always equally: keep the load.
    report["load_average_1min"] = {"before": load_before[0], "after": os.getloadavg()[0]}
    out = write_report(report, "metrics" if args.kind == "cam" else "metrics-noise", now, args.out)
    print(f"device: {report['device']}  threads {report['cpu_threads']}  {n} {args.kind} maps "
          f"{args.size}x{args.size}, 100 thresholds  components: "
          f"{report['components_backend']}  load average "
          f"{load_before[0]:.1f} -> {report['load_average_1min']['after']:.1f}")
    print(format_table(report["rows"]))
    print(f"written: {out}")
    return 0 if all(r.get("agree", True) for r in report["rows"]) else 1


try:
    import pytest
except ImportError:  # running as a script without pytest installed
    pytest = None

if pytest is not None:

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    def test_max_box_acc_v2(benchmark, protocol: str) -> None:
        cams, boxes, _ = make_case(64, 224)
        benchmark(lambda: metrics.box_ious(cams, boxes, protocol=protocol))


if __name__ == "__main__":
    sys.exit(main())
