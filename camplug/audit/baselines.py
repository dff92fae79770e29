"""CAM against reference maps on a localization set: MaxBoxAccV2, MaxBoxAcc v1 and PxAP.

Maps compared (every one min-max normalized per image, scored with ``camplug.metrics`` on the
labelled class):

- ``CAM``: the model's class activation map (``camplug.attach``): normalized at the feature
  resolution, then bilinearly upsampled;
- ``centre Gaussian``: exp(-d^2 / (2 sigma^2)) around the image centre, sigma = a quarter of
  the image side; it knows nothing about the image (the "centre bias" baseline of Choe et al.);
- ``smoothed random``: i.i.d. uniform noise blurred with a Gaussian of sigma = 1/16 of the
  side (seeded); smoothing matters, as multi-contour MaxBoxAccV2 rewards raw pixel noise;
- ``untrained CAM``: the CAM of the same architecture with random weights
  (``camplug.zoo.untrained_demo_model``; only when the model is the demo architecture);
- ``LayerGradCam``: Captum's Grad-CAM on the layer CAM uses, ReLU applied, normalized and
  upsampled like CAM (on a GAP + linear model it is ReLU(CAM) up to a constant factor);
- ``Saliency``: Captum's absolute input gradient, maximum over colour channels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from camplug import metrics

from ..comparison.registry import map_function
from ..kernels.semantics import min_max_normalize
from .batches import GuardedDataset, collate
from .scoring import pixel_thresholds

METHODS = ("CAM", "centre Gaussian", "smoothed random", "untrained CAM", "LayerGradCam",
           "Saliency")
CENTRE_SIGMA = 0.25  # of the image side
NOISE_SIGMA = 1 / 16  # of the image side


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max normalization of [N, H, W] to [0, 1] (float32) with the kernel's rule
    (``camplug.kernels.semantics.min_max_normalize``): flat maps become 0."""
    return min_max_normalize(maps.detach().float()).clamp(0, 1)


def centre_gaussian(n: int, height: int, width: int, sigma: float = CENTRE_SIGMA,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """[N, H, W] Gaussians centred on the image centre, sigma = ``sigma`` * min(H, W), in
    [0, 1]."""
    ys = torch.arange(height, device=device, dtype=torch.float64) - (height - 1) / 2
    xs = torch.arange(width, device=device, dtype=torch.float64) - (width - 1) / 2
    s = sigma * min(height, width)
    bump = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * s * s))
    return minmax(bump.expand(n, height, width))


def smoothed_random(n: int, height: int, width: int, generator: torch.Generator,
                    sigma: float = NOISE_SIGMA,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """[N, H, W] uniform noise blurred with sigma = ``sigma`` * min(H, W) pixels, in [0, 1]."""
    noise = torch.rand(n, 1, height, width, generator=generator, dtype=torch.float64)
    blurred = metrics.gaussian_blur(noise, sigma * min(height, width))
    return minmax(blurred[:, 0]).to(device)


@dataclass
class _Scores:
    ious_v1: list[torch.Tensor]
    ious_v2: list[torch.Tensor]
    counts: torch.Tensor | None = None  # int64 [3, T + 1] summed tp, fp, fn

    def add(self, maps: torch.Tensor, boxes, masks: torch.Tensor | None,
            thresholds: torch.Tensor, protocol: str) -> None:
        v1, v2 = metrics.box_ious_v1_v2(maps, boxes, thresholds, protocol=protocol)
        self.ious_v1.append(v1.cpu())
        self.ious_v2.append(v2.cpu())
        if masks is not None:
            tp, fp, fn = metrics.pixel_pr_counts(maps, masks, pixel_thresholds(thresholds))
            total = torch.stack([tp.sum(0), fp.sum(0), fn.sum(0)]).cpu()
            self.counts = total if self.counts is None else self.counts + total


@dataclass(frozen=True)
class LocalizationRow:
    method: str
    v2: metrics.MaxBoxAccResult
    v1: metrics.MaxBoxAccResult
    pxap: float | None


@dataclass(frozen=True)
class LocalizationTable:
    """One row per method; ``to_markdown()`` gives the README table. ``protocol``: the box
    protocol of MaxBoxAcc (``camplug.metrics.PROTOCOLS``)."""

    rows: tuple[LocalizationRow, ...]
    n_samples: int
    dataset: str
    protocol: str = metrics.DEFAULT_PROTOCOL

    def row(self, method: str) -> LocalizationRow:
        for row in self.rows:
            if row.method == method:
                return row
        raise KeyError(f"no method {method!r} in the table; it has {[r.method for r in self.rows]}")

    def to_markdown(self) -> str:
        deltas = sorted(self.rows[0].v2.accuracy) if self.rows else []
        header = (["method", "MaxBoxAccV2"] + [f"V2 @{d:g}" for d in deltas]
                  + ["MaxBoxAcc v1 (IoU 0.5)", "PxAP"])
        lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
        for row in self.rows:
            cells = [row.method, f"{100 * row.v2.mean:.1f}"]
            cells += [f"{100 * row.v2.accuracy[d]:.1f}" for d in deltas]
            cells.append(f"{100 * row.v1.accuracy[0.5]:.1f}" if 0.5 in row.v1.accuracy else "n/a")
            cells.append("n/a" if row.pxap is None else f"{100 * row.pxap:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(f"{self.n_samples} images of {self.dataset}; percentages; every map scored "
                     f"on the labelled class; box protocol {self.protocol!r}.")
        return "\n".join(lines)


def _cam_method(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    from ..api import attach

    def run(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with attach(model) as capture, torch.no_grad():
            model(images)
            maps = capture.maps(target=labels.unsqueeze(1), size="input", normalize=True)
        return maps[:, 0].float().clamp(0, 1)

    return run


def localization_table(
    model: nn.Module,
    data: Dataset,
    *,
    methods: Sequence[str] = METHODS,
    untrained: nn.Module | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    thresholds: Sequence[float] | None = None,
    iou_thresholds: Sequence[float] = (0.3, 0.5, 0.7),
    seed: int = 0,
    protocol: str = metrics.DEFAULT_PROTOCOL,
) -> LocalizationTable:
    """Score CAM and the reference maps (``METHODS``) on every sample of ``data`` (items as
    for ``camplug.audit``). ``untrained``: the random-weight network for "untrained CAM"
    (default: ``camplug.zoo.untrained_demo_model(seed)`` when ``model`` is a ``DemoCNN``;
    the method is skipped otherwise). ``protocol``: MaxBoxAcc's box protocol, as the audit's.
    The model is left in the mode and on the device it was."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    if protocol not in metrics.PROTOCOLS:
        raise ValueError(f"protocol must be one of {list(metrics.PROTOCOLS)}, got {protocol!r}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    grid = metrics.default_thresholds() if thresholds is None else torch.as_tensor(
        thresholds, dtype=torch.float64)
    methods = list(methods)
    if "untrained CAM" in methods and untrained is None:
        from camplug import zoo

        if isinstance(model, zoo.DemoCNN):
            untrained = zoo.untrained_demo_model(seed, model.classifier.out_features)
        else:
            methods.remove("untrained CAM")
    from .pipeline import ModelState
    from .run import describe_dataset

    state = ModelState(model)
    model.eval().to(device)
    if untrained is not None:
        untrained.eval().to(device)
    try:
        runners = _runners(model, untrained, methods)
        scores = {m: _Scores([], []) for m in methods}
        generator = torch.Generator().manual_seed(seed)
        n = 0
        loader = DataLoader(GuardedDataset(data), batch_size=batch_size, collate_fn=collate)
        for batch in loader:
            if batch.errors:
                raise ValueError(f"sample {batch.errors[0].sample_id}: {batch.errors[0].message}")
            images, labels = batch.images.to(device), batch.labels.to(device)
            boxes = [b.to(device) for b in batch.boxes]
            masks = (torch.stack(batch.masks).to(device)
                     if all(m is not None for m in batch.masks) else None)
            b, _, h, w = images.shape
            for method in methods:
                if method == "centre Gaussian":
                    maps = centre_gaussian(b, h, w, device=device)
                elif method == "smoothed random":
                    maps = smoothed_random(b, h, w, generator, device=device)
                else:
                    maps = runners[method](images, labels)
                scores[method].add(maps, boxes, masks, grid.to(device), protocol)
            n += b
    finally:
        state.restore()
    rows = []
    for method in methods:
        s = scores[method]
        v1 = metrics.max_box_acc_from_ious(torch.cat(s.ious_v1), grid, iou_thresholds)
        v2 = metrics.max_box_acc_from_ious(torch.cat(s.ious_v2), grid, iou_thresholds)
        pxap = None if s.counts is None else metrics.pxap_from_counts(*s.counts)
        rows.append(LocalizationRow(method, v2, v1, pxap))
    return LocalizationTable(tuple(rows), n, describe_dataset(data), protocol)


def _runners(model: nn.Module, untrained: nn.Module | None, methods: Sequence[str]):
    makers = {
        "CAM": lambda: _cam_method(model),
        "untrained CAM": lambda: _cam_method(untrained),
        "LayerGradCam": lambda: map_function("LayerGradCam", model, relu_attributions=True),
        "Saliency": lambda: map_function("Saliency", model, channel_reduction="max_abs"),
    }
    return {m: makers[m]() for m in methods if m in makers}
