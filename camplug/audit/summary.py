"""Aggregate stored sample rows into the audit's summary metrics (no model needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from camplug import metrics

from .store import SampleRow

FLAG_RULES = {
    "wrong_class": "the predicted class is not the label",
    "low_confidence": "the predicted class's softmax probability is below {low_confidence}",
    "mass_outside": (
        "right class, but the share of the CAM's mass inside the ground-truth boxes is below "
        "{min_mass_inside} and below {min_lift} x the boxes' share of the image"
    ),
}


@dataclass(frozen=True)
class FlagThresholds:
    """When a sample is flagged as suspicious (see ``FLAG_RULES``).

    ``mass_outside`` (right for the wrong reasons): the class is right, but the share of the
    CAM's mass inside the ground-truth boxes (the energy-based pointing game) is below both
    ``min_mass_inside`` (the mass lies mostly outside the object) and ``min_lift`` times the
    boxes' area share (a uniform map scores exactly that share). The second condition keeps the
    flag meaningful for small objects, where even a well-placed low-resolution CAM keeps most of
    its mass outside the box. ``low_confidence``: the predicted-class softmax probability is
    below ``low_confidence``. Every misclassified sample is ``wrong_class``.
    """

    min_mass_inside: float = 0.5
    min_lift: float = 2.0
    low_confidence: float = 0.5

    def __post_init__(self) -> None:
        for name in ("min_mass_inside", "low_confidence"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not self.min_lift >= 0.0:
            raise ValueError(f"min_lift must be >= 0, got {self.min_lift}")

    def rules(self) -> dict[str, str]:
        """Each flag's rule in words, with this instance's thresholds."""
        return {name: rule.format(**self.__dict__) for name, rule in FLAG_RULES.items()}

    def mass_threshold(self, box_area_fraction: float) -> float:
        """The share of CAM mass inside the boxes below which ``mass_outside`` applies."""
        return min(self.min_mass_inside, self.min_lift * box_area_fraction)


def flags_for(prediction: int, label: int, score: float, mass_inside: float,
              box_area_fraction: float, thresholds: FlagThresholds) -> list[str]:
    """The flags of one sample (a subset of ``FLAG_RULES``, in that order)."""
    flags = []
    if prediction != label:
        flags.append("wrong_class")
    if score < thresholds.low_confidence:
        flags.append("low_confidence")
    if prediction == label and mass_inside < thresholds.mass_threshold(box_area_fraction):
        flags.append("mass_outside")
    return flags


@dataclass
class AuditSummary:
    """Aggregates of one run. Fractions are in [0, 1]; None where not measurable (e.g. PxAP
    without masks). ``max_box_acc_v2`` / ``max_box_acc_v1``: ``metrics.MaxBoxAccResult`` of
    all boxes / the largest box per CAM threshold."""

    run_id: str
    db_path: Path
    model: str
    dataset: str
    thresholds: np.ndarray
    iou_thresholds: tuple[float, ...]
    n_samples: int
    n_stored: int
    n_errors: int
    accuracy: float
    max_box_acc_v2: metrics.MaxBoxAccResult | None
    max_box_acc_v1: metrics.MaxBoxAccResult | None
    pxap: float | None
    n_with_masks: int
    cam_paper_gt_known: float
    cam_paper_top1: float
    pointing_game: float
    energy_inside: float
    box_area_fraction: float
    deletion_auc: float | None
    insertion_auc: float | None
    flag_counts: dict[str, int]
    flag_rules: dict[str, str]
    report_path: Path | None = None

    @property
    def complete(self) -> bool:
        return self.n_stored == self.n_samples

    def best_threshold(self) -> float:
        """The CAM threshold used to draw predicted boxes: MaxBoxAccV2's best at IoU 0.5 (or
        the middle IoU threshold)."""
        assert self.max_box_acc_v2 is not None
        deltas = sorted(self.max_box_acc_v2.best_threshold)
        delta = 0.5 if 0.5 in deltas else deltas[len(deltas) // 2]
        return float(self.max_box_acc_v2.best_threshold[delta])

    def table(self) -> list[tuple[str, str, str]]:
        """(metric, value, meaning) rows; percentages with one decimal."""
        def pct(value: float | None) -> str:
            return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"

        deltas = "/".join(f"{d:g}" for d in self.iou_thresholds)
        rows = [("samples audited", f"{self.n_stored - self.n_errors}",
                 f"of {self.n_samples}; {self.n_errors} failed (see errors)")]
        rows.append(("top-1 accuracy (%)", pct(self.accuracy), "predicted class == label"))
        if self.max_box_acc_v2 is not None and self.max_box_acc_v1 is not None:
            rows.append(("MaxBoxAccV2 (%)", pct(self.max_box_acc_v2.mean),
                         f"mean over IoU {deltas} of the best-threshold box accuracy, all boxes"))
            for delta, acc in sorted(self.max_box_acc_v2.accuracy.items()):
                rows.append((f"  MaxBoxAccV2 @ IoU {delta:g} (%)", pct(acc),
                             f"best CAM threshold {self.max_box_acc_v2.best_threshold[delta]:.2f}"))
            if 0.5 in self.max_box_acc_v1.accuracy:
                rows.append(("MaxBoxAcc v1 (%)", pct(self.max_box_acc_v1.accuracy[0.5]),
                             "IoU 0.5, largest connected region only (Choe et al. v1)"))
            rows.append(("MaxBoxAcc v1, mean over IoU (%)", pct(self.max_box_acc_v1.mean),
                         f"largest region only, mean over IoU {deltas}"))
        masks = f"over {self.n_with_masks} samples with masks"
        rows.append(("PxAP (%)", pct(self.pxap),
                     f"pixel precision-recall AUC {masks}" if self.pxap is not None
                     else "needs ground-truth masks"))
        rows.append(("CAM-paper localization, GT-known (%)", pct(self.cam_paper_gt_known),
                     "20% of max, largest component, IoU >= 0.5"))
        rows.append(("CAM-paper localization, top-1 (%)", pct(self.cam_paper_top1),
                     "GT-known hit and the class is right"))
        rows.append(("pointing game (%)", pct(self.pointing_game),
                     "the CAM's maximum lies on the object"))
        rows.append(("energy inside the box (%)", pct(self.energy_inside),
                     f"CAM mass inside the boxes; chance (box area) {pct(self.box_area_fraction)}"))
        if self.deletion_auc is not None:
            rows.append(("deletion AUC", f"{self.deletion_auc:.3f}", "lower is better"))
        if self.insertion_auc is not None:
            rows.append(("insertion AUC", f"{self.insertion_auc:.3f}", "higher is better"))
        for name, count in self.flag_counts.items():
            rows.append((f"flagged {name}", str(count), self.flag_rules[name]))
        return rows

    def to_markdown(self) -> str:
        """The summary table as GitHub Markdown."""
        lines = ["| metric | value | notes |", "| --- | ---: | --- |"]
        lines += [f"| {m.strip()} | {v} | {n} |" for m, v, n in self.table()]
        return "\n".join(lines)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def pxap_from_rows(rows: Sequence[SampleRow]) -> float | None:
    """PxAP of the samples whose rows hold pixel counts (int64 [3, T]: tp, fp, fn per
    threshold); None when none do."""
    counts = [r.pixel_counts for r in rows if r.pixel_counts is not None]
    if not counts:
        return None
    tp, fp, fn = torch.from_numpy(np.sum(np.stack(counts), axis=0))
    return metrics.pxap_from_counts(tp, fp, fn)


def summarize(
    rows: Sequence[SampleRow],
    *,
    run_id: str,
    db_path: Path,
    model: str,
    dataset: str,
    n_samples: int,
    thresholds: np.ndarray,
    iou_thresholds: Sequence[float],
    flag_thresholds: FlagThresholds,
) -> AuditSummary:
    """Aggregate a run's rows (errors excluded from every metric, counted separately)."""
    ok = [r for r in rows if r.error is None]
    thresholds_t = torch.as_tensor(np.asarray(thresholds, dtype=np.float64))
    v2 = v1 = None
    if ok:
        ious_v2 = torch.from_numpy(np.stack([r.box_ious for r in ok]))
        ious_v1 = torch.from_numpy(np.stack([r.box_ious_v1 for r in ok]))
        v2 = metrics.max_box_acc_from_ious(ious_v2, thresholds_t, tuple(iou_thresholds))
        v1 = metrics.max_box_acc_from_ious(ious_v1, thresholds_t, tuple(iou_thresholds))
    correct = [r.prediction == r.label for r in ok]
    hits = [bool(r.metrics["cam_paper_hit"]) for r in ok]
    deletion = [r.metrics["deletion_auc"] for r in ok if "deletion_auc" in r.metrics]
    insertion = [r.metrics["insertion_auc"] for r in ok if "insertion_auc" in r.metrics]
    flag_counts = {name: sum(name in r.flags for r in ok) for name in FLAG_RULES}
    return AuditSummary(
        run_id=run_id, db_path=db_path, model=model, dataset=dataset,
        thresholds=np.asarray(thresholds), iou_thresholds=tuple(iou_thresholds),
        n_samples=n_samples, n_stored=len(rows), n_errors=len(rows) - len(ok),
        accuracy=_mean(correct), max_box_acc_v2=v2, max_box_acc_v1=v1,
        pxap=pxap_from_rows(ok),
        n_with_masks=sum(r.pixel_counts is not None for r in ok),
        cam_paper_gt_known=_mean(hits),
        cam_paper_top1=_mean([h and c for h, c in zip(hits, correct, strict=True)]),
        pointing_game=_mean([bool(r.metrics["pointing_hit"]) for r in ok]),
        energy_inside=_mean([r.metrics["energy_inside"] for r in ok]),
        box_area_fraction=_mean([r.metrics["box_area_fraction"] for r in ok]),
        deletion_auc=_mean(deletion) if deletion else None,
        insertion_auc=_mean(insertion) if insertion else None,
        flag_counts=flag_counts, flag_rules=flag_thresholds.rules(),
    )
