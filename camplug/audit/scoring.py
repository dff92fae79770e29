"""Score one batch: forward pass, the low-resolution maps of the labelled and the predicted
class (stored), the labelled class's map at the input size (scored), per-sample metrics and
flags. Samples without boxes get every metric that needs none (labels-only audit)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from camplug import metrics

from .batches import Batch
from .metric_table import ScoredBatch, per_sample_values
from .store import SampleRow
from .summary import FlagThresholds, flags_for

if TYPE_CHECKING:
    from .run import AuditRun


@dataclass(frozen=True)
class ScoringSettings:
    """``thresholds``: float64 [T] CAM thresholds in [0, 1) for MaxBoxAcc (PxAP uses them
    followed by 1.0); ``faithfulness``: also compute deletion / insertion AUC (``steps`` model
    forwards each) and average drop / increase in confidence; ``method``: the map method (a
    ``camplug.methods`` name or ``"auto"``); ``border_fraction``: the border band's width per
    side, as a share of the side (``map_stats.border_mass``); ``protocol``: the box protocol of
    MaxBoxAcc and the CAM paper's localization (``camplug.metrics.PROTOCOLS``)."""

    thresholds: torch.Tensor
    flags: FlagThresholds
    faithfulness: bool = False
    faithfulness_steps: int = 16
    method: str = "cam"
    border_fraction: float = 0.1
    protocol: str = "camplug"  # the MaxBoxAcc box protocol (camplug.metrics.PROTOCOLS)

    @property
    def pixel_thresholds(self) -> torch.Tensor:
        return pixel_thresholds(self.thresholds)


def pixel_thresholds(thresholds: torch.Tensor) -> torch.Tensor:
    """PxAP's grid: the box thresholds followed by 1.0 (Choe et al.'s bin edges)."""
    return torch.cat([thresholds.double(), torch.ones(1, dtype=torch.float64)])


def boxes_to_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The union of inclusive-pixel boxes [M, 4] as a bool mask [H, W]."""
    ys = torch.arange(height, device=boxes.device).view(-1, 1, 1)
    xs = torch.arange(width, device=boxes.device).view(1, -1, 1)
    x0, y0, x1, y1 = boxes.unbind(-1)
    inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    return inside.any(-1)


def error_rows(run_id: str, batch: Batch) -> list[SampleRow]:
    return [SampleRow(run_id, e.index, e.sample_id, error=e.message) for e in batch.errors]


def needs_autograd(method: str) -> bool:
    """Whether the forward must record autograd for ``method``'s maps: a gradient method on a
    head without a closed form (``"auto"`` counts as Grad-CAM)."""
    from camplug import methods

    return methods.resolve(method, exact_head=False).uses_gradients


def forward(model: nn.Module, capture, images: torch.Tensor, method: str) -> torch.Tensor:
    """Run ``model`` on ``images`` under its capture (recording autograd only when ``method``
    needs it); the selected logits, detached float32 [N, classes]."""
    with torch.set_grad_enabled(needs_autograd(method)):
        model(images)
    return capture.logits.detach().float()


def label_maps(capture, targets: torch.Tensor, method: str) -> torch.Tensor:
    """``method``'s maps of the last forward for one class per sample (``targets`` int64 [N]),
    at the input size, min-max normalized, with the method's own ReLU convention: float32
    [N, H, W] in [0, 1]."""
    maps = capture.maps(target=targets.unsqueeze(1), method=method, size="input",
                        normalize=True)
    return maps[:, 0].detach().float().clamp(0.0, 1.0)


def lowres_maps(capture, targets: torch.Tensor, method: str) -> torch.Tensor:
    """``method``'s maps of the last forward for ``targets`` int64 [N, C] at the features'
    resolution, as computed (the method's ReLU convention, not normalized): float32
    [N, C, h, w]."""
    maps = capture.maps(target=targets, method=method, size="features", normalize=False)
    return maps.detach().float()


def input_maps(lowres: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Maps as scoring reads them: low-resolution maps [N, h, w] min-max normalized and
    upsampled to ``size`` (H, W) by ``camplug.kernels.cam`` (a one-feature map with weight 1
    is the map itself), exactly as ``capture.maps(size="input", normalize=True)`` does: float32
    [N, H, W] in [0, 1]."""
    from camplug.kernels import cam

    ones = torch.ones(1, 1, device=lowres.device)
    maps = cam(lowres.unsqueeze(1).float().contiguous(), ones, size, relu=False, normalize=True)
    return maps[:, 0].clamp(0.0, 1.0)


def score_batch(run: AuditRun, capture, batch: Batch) -> list[SampleRow]:
    """Rows for every sample of ``batch`` (error rows included). ``capture``: the run's model's
    attached ``CamCapture`` (its hooks active)."""
    model, settings, device, run_id = run.model, run.settings, run.device, run.run_id
    rows = error_rows(run_id, batch)
    if not batch.indices:
        return rows
    images = batch.images.to(device, non_blocking=True)
    labels = batch.labels.to(device, non_blocking=True)
    probs = forward(model, capture, images, settings.method).softmax(dim=1)
    n_classes = probs.shape[1]
    valid = (labels >= 0) & (labels < n_classes)
    targets = labels.clamp(0, n_classes - 1)
    prediction = probs.argmax(dim=1)
    lowres = lowres_maps(capture, torch.stack([targets, prediction], dim=1), settings.method)
    cams = input_maps(lowres[:, 0], tuple(images.shape[-2:]))
    for i in (~valid).nonzero().flatten().tolist():
        rows.append(SampleRow(
            run_id, batch.indices[i], batch.sample_ids[i], label=int(batch.labels[i]),
            error=f"ValueError: label {int(batch.labels[i])} is not a class of the model "
                  f"(it has {n_classes} outputs)",
        ))
    keep = valid.nonzero().flatten()
    if keep.numel() == 0:
        return rows
    scored = ScoredBatch(model=model, images=images[keep], cams=cams[keep],
                         targets=targets[keep], probs=probs[keep], settings=settings)
    return rows + _metric_rows(batch, keep.tolist(), scored, lowres[keep].cpu().numpy(),
                               run_id)


def _located(batch: Batch, keep: list[int], scored: ScoredBatch):
    """The samples of ``scored`` with boxes: (their positions in it, their ``ScoredBatch``
    with boxes, objects and IoUs, (v1, v2) IoUs [L, T], pixel counts by position)."""
    located = [k for k, i in enumerate(keep) if batch.boxes[i].shape[0] > 0]
    if not located:
        return located, None, None, {}
    settings, device = scored.settings, scored.cams.device
    sel = torch.tensor(located, device=device)
    cams = scored.cams[sel]
    boxes = [batch.boxes[keep[k]].to(device) for k in located]
    masks = [batch.masks[keep[k]] for k in located]
    height, width = cams.shape[-2:]
    ious = metrics.box_ious_v1_v2(cams, boxes, settings.thresholds.to(device),
                                  protocol=settings.protocol)
    objects = torch.stack([
        m.to(device) if m is not None else boxes_to_mask(b, height, width)
        for m, b in zip(masks, boxes, strict=True)
    ])
    with_mask = [j for j, m in enumerate(masks) if m is not None]
    counts = {}
    if with_mask:
        pick = torch.tensor(with_mask, device=device)
        tp, fp, fn = metrics.pixel_pr_counts(cams[pick], objects[pick], settings.pixel_thresholds)
        per_sample = torch.stack([tp, fp, fn], dim=1).cpu().numpy()  # [S, 3, T + 1]
        counts = {located[j]: per_sample[s] for s, j in enumerate(with_mask)}
    sub = ScoredBatch(model=scored.model, images=scored.images[sel], cams=cams,
                      targets=scored.targets[sel], probs=scored.probs[sel], settings=settings,
                      boxes=boxes, objects=objects, box_ious_v2=ious[1])
    return located, sub, ious, counts


def _metric_rows(batch: Batch, keep: list[int], scored: ScoredBatch, lowres,
                 run_id: str) -> list[SampleRow]:
    """Rows of the samples ``keep`` of ``batch`` (``scored``: their ``ScoredBatch``; ``lowres``:
    float32 [N, 2, h, w] their stored maps)."""
    located, sub, ious, counts = _located(batch, keep, scored)
    values = per_sample_values(scored, sub, located)
    score, prediction = scored.probs.max(dim=1)
    label_score = scored.probs.gather(1, scored.targets.unsqueeze(1)).squeeze(1)
    position = {k: j for j, k in enumerate(located)}
    rows = []
    for k, i in enumerate(keep):
        label, j = int(batch.labels[i]), position.get(k)
        rows.append(SampleRow(
            run_id, batch.indices[i], batch.sample_ids[i], label=label,
            prediction=int(prediction[k]), score=float(score[k]),
            label_score=float(label_score[k]), metrics=values[k],
            flags=flags_for(int(prediction[k]), label, float(score[k]), values[k],
                            scored.settings.flags),
            box_ious=None if j is None else ious[1][j].cpu().numpy(),
            box_ious_v1=None if j is None else ious[0][j].cpu().numpy(),
            pixel_counts=counts.get(k), maps=lowres[k], warnings=list(batch.warnings[i]),
        ))
    return rows
