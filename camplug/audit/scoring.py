"""Score one batch: forward pass, maps of the labelled class, per-sample metrics and flags."""

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
    forwards each); ``method``: the map method (a ``camplug.methods`` name or ``"auto"``)."""

    thresholds: torch.Tensor
    flags: FlagThresholds
    faithfulness: bool = False
    faithfulness_steps: int = 16
    method: str = "cam"

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
    cams = label_maps(capture, targets, settings.method)
    for i in (~valid).nonzero().flatten().tolist():
        rows.append(SampleRow(
            run_id, batch.indices[i], batch.sample_ids[i], label=int(batch.labels[i]),
            error=f"ValueError: label {int(batch.labels[i])} is not a class of the model "
                  f"(it has {n_classes} outputs)",
        ))
    keep = valid.nonzero().flatten()
    if keep.numel() == 0:
        return rows
    return rows + _metric_rows(model, batch, keep, images[keep], cams[keep], probs[keep],
                               targets[keep], settings, device, run_id)


def _metric_rows(model, batch, keep, images, cams, probs, targets, settings, device, run_id):
    keep_list = keep.tolist()
    boxes = [batch.boxes[i].to(device) for i in keep_list]
    masks = [batch.masks[i] for i in keep_list]
    height, width = cams.shape[-2:]
    ious_v1, ious_v2 = metrics.box_ious_v1_v2(cams, boxes, settings.thresholds.to(device))
    objects = torch.stack([
        m.to(device) if m is not None else boxes_to_mask(b, height, width)
        for m, b in zip(masks, boxes, strict=True)
    ])
    with_mask = [k for k, m in enumerate(masks) if m is not None]
    counts = {}
    if with_mask:
        sel = torch.tensor(with_mask, device=device)
        tp, fp, fn = metrics.pixel_pr_counts(cams[sel], objects[sel], settings.pixel_thresholds)
        per_sample = torch.stack([tp, fp, fn], dim=1).cpu().numpy()  # [S, 3, T + 1]
        counts = {k: per_sample[j] for j, k in enumerate(with_mask)}
    values = per_sample_values(ScoredBatch(
        model=model, images=images, cams=cams, boxes=boxes, objects=objects, targets=targets,
        probs=probs, box_ious_v2=ious_v2, settings=settings))

    score, prediction = probs.max(dim=1)
    label_score = probs.gather(1, targets.unsqueeze(1)).squeeze(1)
    rows = []
    for k, i in enumerate(keep_list):
        label = int(batch.labels[i])
        rows.append(SampleRow(
            run_id, batch.indices[i], batch.sample_ids[i], label=label,
            prediction=int(prediction[k]), score=float(score[k]),
            label_score=float(label_score[k]), metrics=values[k],
            flags=flags_for(int(prediction[k]), label, float(score[k]),
                            values[k]["energy_inside"], values[k]["box_area_fraction"],
                            settings.flags),
            box_ious=ious_v2[k].cpu().numpy(),
            box_ious_v1=ious_v1[k].cpu().numpy(),
            pixel_counts=counts.get(k),
        ))
    return rows
