"""Aggregate stored sample rows into the audit's summary metrics (no model needed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import metric_table
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
    """Aggregates of one run. ``metrics``: ``metric_table`` name -> aggregate (fractions in
    [0, 1]; None where not measurable, e.g. PxAP without masks; ``max_box_acc_v2`` /
    ``max_box_acc_v1``: ``metrics.MaxBoxAccResult`` of all boxes / the largest box per CAM
    threshold), also readable as attributes (``summary.pxap``). ``images_per_second``: the
    throughput of the last session that audited samples (None when it audited none)."""

    run_id: str
    db_path: Path
    model: str
    dataset: str
    thresholds: np.ndarray
    iou_thresholds: tuple[float, ...]
    n_samples: int
    n_stored: int
    n_errors: int
    n_with_masks: int
    metrics: dict[str, Any]
    flag_counts: dict[str, int]
    flag_rules: dict[str, str]
    images_per_second: float | None = None
    report_path: Path | None = None

    def __getattr__(self, name: str) -> Any:
        if name != "metrics" and any(m.name == name for m in metric_table.METRICS):
            return self.metrics.get(name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def complete(self) -> bool:
        return self.n_stored == self.n_samples

    def best_threshold(self) -> float:
        """The CAM threshold used to draw predicted boxes: MaxBoxAccV2's best at IoU 0.5 (or
        the middle IoU threshold)."""
        v2 = self.metrics["max_box_acc_v2"]
        assert v2 is not None
        deltas = sorted(v2.best_threshold)
        delta = 0.5 if 0.5 in deltas else deltas[len(deltas) // 2]
        return float(v2.best_threshold[delta])

    def table(self) -> list[tuple[str, str, str]]:
        """(metric, value, meaning) rows; percentages with one decimal."""
        rows = [("samples audited", f"{self.n_stored - self.n_errors}",
                 f"of {self.n_samples}; {self.n_errors} failed (see errors)")]
        for definition in metric_table.METRICS:
            rows += definition.table_rows(self.metrics.get(definition.name), self)
        if self.images_per_second is not None:
            rows.append(("throughput (images/s)", f"{self.images_per_second:.1f}",
                         "samples audited per second of wall time in the last session"))
        for name, count in self.flag_counts.items():
            rows.append((f"flagged {name}", str(count), self.flag_rules[name]))
        return rows

    def to_markdown(self) -> str:
        """The summary table as GitHub Markdown."""
        lines = ["| metric | value | notes |", "| --- | ---: | --- |"]
        lines += [f"| {m.strip()} | {v} | {n} |" for m, v, n in self.table()]
        return "\n".join(lines)


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
    images_per_second: float | None = None,
) -> AuditSummary:
    """Aggregate a run's rows (errors excluded from every metric, counted separately)."""
    ok = [r for r in rows if r.error is None]
    grid = torch.as_tensor(np.asarray(thresholds, dtype=np.float64))
    inputs = metric_table.SummaryInputs(ok, grid, tuple(iou_thresholds))
    return AuditSummary(
        run_id=run_id, db_path=db_path, model=model, dataset=dataset,
        thresholds=np.asarray(thresholds), iou_thresholds=tuple(iou_thresholds),
        n_samples=n_samples, n_stored=len(rows), n_errors=len(rows) - len(ok),
        n_with_masks=sum(r.pixel_counts is not None for r in ok),
        metrics=metric_table.aggregate_all(inputs),
        flag_counts={name: sum(name in r.flags for r in ok) for name in FLAG_RULES},
        flag_rules=flag_thresholds.rules(), images_per_second=images_per_second,
    )
