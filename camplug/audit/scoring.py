"""Score one batch: forward pass, CAMs of the labelled class, per-sample metrics and flags."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from camplug import metrics

from .batches import Batch
from .store import SampleRow
from .summary import FlagThresholds, flags_for


@dataclass(frozen=True)
class ScoringSettings:
    """``thresholds``: float64 [T] CAM thresholds in [0, 1) for MaxBoxAcc (PxAP uses them
    followed by 1.0); ``faithfulness``: also compute deletion / insertion AUC (``steps`` model
    forwards each)."""

    thresholds: torch.Tensor
    flags: FlagThresholds
    faithfulness: bool = False
    faithfulness_steps: int = 16

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


def score_batch(
    model: nn.Module, capture, batch: Batch, settings: ScoringSettings,
    device: torch.device, run_id: str,
) -> list[SampleRow]:
    """Rows for every sample of ``batch`` (error rows included). ``capture``: the model's
    attached ``CamCapture`` (its hooks active)."""
    rows = error_rows(run_id, batch)
    if not batch.indices:
        return rows
    images = batch.images.to(device, non_blocking=True)
    labels = batch.labels.to(device, non_blocking=True)
    with torch.no_grad():
        model(images)
        logits = capture.logits.float()
        probs = logits.softmax(dim=1)
        n_classes = probs.shape[1]
        valid = (labels >= 0) & (labels < n_classes)
        targets = labels.clamp(0, n_classes - 1)
        cams = capture.maps(target=targets.unsqueeze(1), size="input", normalize=True)
        cams = cams[:, 0].float().clamp(0.0, 1.0)
    for i in (~valid).nonzero().flatten().tolist():
        rows.append(SampleRow(
            run_id, batch.indices[i], batch.sample_ids[i], label=int(batch.labels[i]),
            error=f"ValueError: label {int(batch.labels[i])} is not a class of the model "
                  f"(it has {n_classes} outputs)",
        ))
    keep = valid.nonzero().flatten()
    if keep.numel() == 0:
        return rows
    rows += _metric_rows(model, batch, keep, images, cams, probs, targets, settings, device,
                         run_id)
    return rows


def _metric_rows(model, batch, keep, images, cams, probs, targets, settings, device, run_id):
    cams = cams[keep]
    probs = probs[keep]
    targets = targets[keep]
    images = images[keep]
    keep_list = keep.tolist()
    boxes = [batch.boxes[i].to(device) for i in keep_list]
    masks = [batch.masks[i] for i in keep_list]
    height, width = cams.shape[-2:]
    thresholds = settings.thresholds.to(device)

    ious_v1, ious_v2 = metrics.box_ious_v1_v2(cams, boxes, thresholds)
    hits = metrics.cam_paper_localization(cams, boxes)
    objects = torch.stack([
        m.to(device) if m is not None else boxes_to_mask(b, height, width)
        for m, b in zip(masks, boxes, strict=True)
    ])
    pointing = metrics.pointing_game(cams, objects)
    energy, box_fraction = metrics.energy_pointing_game(cams, boxes)
    with_mask = [k for k, m in enumerate(masks) if m is not None]
    counts = {}
    if with_mask:
        sel = torch.tensor(with_mask, device=device)
        tp, fp, fn = metrics.pixel_pr_counts(cams[sel], objects[sel], settings.pixel_thresholds)
        per_sample = torch.stack([tp, fp, fn], dim=1).cpu().numpy()  # [S, 3, T + 1]
        counts = {k: per_sample[j] for j, k in enumerate(with_mask)}
    faithful = {}
    if settings.faithfulness:
        faithful["deletion_auc"] = metrics.deletion_auc(
            model, images, cams, targets, steps=settings.faithfulness_steps)
        faithful["insertion_auc"] = metrics.insertion_auc(
            model, images, cams, targets, steps=settings.faithfulness_steps)

    score, prediction = probs.max(dim=1)
    label_score = probs.gather(1, targets.unsqueeze(1)).squeeze(1)
    rows = []
    for k, i in enumerate(keep_list):
        sample_metrics = {
            "cam_paper_hit": bool(hits[k]),
            "pointing_hit": bool(pointing[k]),
            "energy_inside": float(energy[k]),
            "box_area_fraction": float(box_fraction[k]),
            "best_iou": float(ious_v2[k].max()),
        }
        for name, values in faithful.items():
            sample_metrics[name] = float(values[k])
        label = int(batch.labels[i])
        rows.append(SampleRow(
            run_id, batch.indices[i], batch.sample_ids[i], label=label,
            prediction=int(prediction[k]), score=float(score[k]),
            label_score=float(label_score[k]), metrics=sample_metrics,
            flags=flags_for(int(prediction[k]), label, float(score[k]),
                            sample_metrics["energy_inside"],
                            sample_metrics["box_area_fraction"], settings.flags),
            box_ious=ious_v2[k].cpu().numpy(),
            box_ious_v1=ious_v1[k].cpu().numpy(),
            pixel_counts=counts.get(k),
        ))
    return rows
