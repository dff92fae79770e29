"""Aggregate stored sample rows into the audit's summary metrics (no model needed)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import metrics
from . import metric_table
from .store import SampleRow

FLAG_RULES = {
    "wrong_class": "the predicted class is not the label",
    "low_confidence": "the predicted class's softmax probability is below {low_confidence}",
    "mass_outside": (
        "right class, but the share of the CAM's mass inside the ground-truth boxes is below "
        "{min_mass_inside} and below {min_lift} x the boxes' share of the image"
    ),
    "border_focus": (
        "at least {max_border_mass} of the map's mass lies in the border band (a uniform map "
        "puts the band's area share there)"
    ),
    "confident_wrong": "wrong class predicted with probability at least {high_confidence}",
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
    below ``low_confidence``. Every misclassified sample is ``wrong_class``, and
    ``confident_wrong`` too when its predicted-class probability is at least
    ``high_confidence``. ``border_focus``: the share of the map's mass in the border band
    (``border_mass``, no boxes needed) is at least ``max_border_mass``. ``mass_outside`` needs
    boxes; the other flags apply to every sample.
    """

    min_mass_inside: float = 0.5
    min_lift: float = 2.0
    low_confidence: float = 0.5
    max_border_mass: float = 0.6
    high_confidence: float = 0.9

    def __post_init__(self) -> None:
        for name in ("min_mass_inside", "low_confidence", "max_border_mass", "high_confidence"):
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


def flags_for(prediction: int, label: int, score: float, values: Mapping[str, float | bool],
              thresholds: FlagThresholds) -> list[str]:
    """The flags of one sample (a subset of ``FLAG_RULES``, in that order); ``values``: its
    per-sample metrics (``energy_inside`` and ``box_area_fraction`` only with boxes,
    ``border_mass`` NaN for a map of zero mass: then those flags do not apply)."""
    flags = []
    if prediction != label:
        flags.append("wrong_class")
    if score < thresholds.low_confidence:
        flags.append("low_confidence")
    if prediction == label and "energy_inside" in values and (
        values["energy_inside"] < thresholds.mass_threshold(float(values["box_area_fraction"]))
    ):
        flags.append("mass_outside")
    if float(values.get("border_mass", float("nan"))) >= thresholds.max_border_mass:
        flags.append("border_focus")
    if prediction != label and score >= thresholds.high_confidence:
        flags.append("confident_wrong")
    return flags


@dataclass(frozen=True)
class ClassStats:
    """One class's results: ``n`` audited samples labelled ``label``, the share predicted
    right, and the most frequent wrong predictions as (class, count), most frequent first."""

    label: int
    name: str | None
    n: int
    accuracy: float
    confusions: tuple[tuple[int, int], ...]


def per_class_stats(rows: Sequence[SampleRow], class_names: Sequence[str] | None = None,
                    top: int = 3) -> list[ClassStats]:
    """``ClassStats`` of every label among ``rows`` (audited rows, no errors), by label."""
    by_label: dict[int, Counter[int]] = {}
    for row in rows:
        if row.label is not None and row.prediction is not None:
            by_label.setdefault(row.label, Counter())[row.prediction] += 1
    out = []
    for label in sorted(by_label):
        counts = by_label[label]
        n = sum(counts.values())
        wrong = sorted(((p, c) for p, c in counts.items() if p != label),
                       key=lambda pc: (-pc[1], pc[0]))
        name = class_names[label] if class_names and 0 <= label < len(class_names) else None
        out.append(ClassStats(label, name, n, counts[label] / n, tuple(wrong[:top])))
    return out


def warning_counts(rows: Sequence[SampleRow],
                   data_warnings: Mapping[str, int] | None = None) -> dict[str, int]:
    """How often each kind of warning occurred: the dataset's own (``data_warnings``, e.g.
    skipped crowd annotations) and the rows' (the kind is a warning's text before its first
    colon), most frequent first."""
    counts: Counter[str] = Counter(data_warnings or {})
    for row in rows:
        counts.update(w.partition(":")[0] for w in row.warnings)
    return dict(sorted(counts.items(), key=lambda kc: (-kc[1], kc[0])))


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
    per_class: list[ClassStats] = field(default_factory=list)
    warnings: dict[str, int] = field(default_factory=dict)
    class_names: list[str] | None = None
    method: str = "cam"
    protocol: str = metrics.DEFAULT_PROTOCOL

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
                 f"of {self.n_samples}; {self.n_errors} failed (see errors)"),
                ("map method", self.method, "camplug.methods name ('auto': CAM on exact heads, "
                 "else Grad-CAM)"),
                ("box protocol", self.protocol, metrics.PROTOCOLS.get(self.protocol, ""))]
        for definition in metric_table.METRICS:
            rows += definition.table_rows(self.metrics.get(definition.name), self)
        if self.images_per_second is not None:
            rows.append(("throughput (images/s)", f"{self.images_per_second:.1f}",
                         "samples audited per second of wall time in the last session"))
        for name, count in self.flag_counts.items():
            rows.append((f"flagged {name}", str(count), self.flag_rules[name]))
        for kind, count in self.warnings.items():
            rows.append((f"warning: {kind}", str(count), "corrected while loading the data"))
        return rows

    def class_table(self) -> list[tuple[str, str, str, str]]:
        """(class, samples, accuracy %, top confusions) per class."""
        def name(label: int) -> str:
            names = self.class_names
            return names[label] if names and 0 <= label < len(names) else str(label)

        return [(name(c.label), str(c.n), metric_table.percent(c.accuracy),
                 ", ".join(f"{name(p)} ({n})" for p, n in c.confusions))
                for c in self.per_class]

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
    class_names: Sequence[str] | None = None,
    data_warnings: Mapping[str, int] | None = None,
    method: str = "cam",
    protocol: str = metrics.DEFAULT_PROTOCOL,
) -> AuditSummary:
    """Aggregate a run's rows (errors excluded from every metric, counted separately).
    ``class_names``: label -> name for the per-class table; ``data_warnings``: the dataset's
    own warning counts (added to the rows'); ``method`` / ``protocol``: the run's map method
    and MaxBoxAcc box protocol (shown in the table)."""
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
        per_class=per_class_stats(ok, class_names), warnings=warning_counts(rows, data_warnings),
        class_names=list(class_names) if class_names is not None else None,
        method=method, protocol=protocol,
    )
