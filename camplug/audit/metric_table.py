"""The audit's metrics, one ``MetricDefinition`` each: what scoring computes per sample, how the
summary aggregates it, how the summary table and the report show it and which way is better.

Scoring stores ``per_sample`` values under ``SampleRow.metrics[sample_key]`` (JSON in SQLite);
``summarize`` calls every ``aggregate`` and keeps the values in ``AuditSummary.metrics[name]``
(and in the runs row's ``summary`` column); ``AuditSummary.table()`` (printed, and the report's
summary section) shows each definition's ``table_rows``. Adding a metric is adding one entry to
``METRICS``.

Evidence every run stores whatever the metrics (``SampleRow`` columns): prediction, score,
label_score, ``box_ious`` / ``box_ious_v1`` (best IoU per CAM threshold, all boxes / largest
box) and ``pixel_counts`` (tp, fp, fn per PxAP threshold, samples with a mask).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from camplug import metrics

from .store import SampleRow

if TYPE_CHECKING:
    from .scoring import ScoringSettings

TableRow = tuple[str, str, str]  # (metric, value, what it means)


class ScoredBatch:
    """What per-sample metric functions read, for N samples of one batch (on one device):
    ``model`` (eval mode, hooks attached), ``images`` float [N, 3, H, W], ``cams`` float32
    [N, H, W] in [0, 1] (the labelled class's map), ``boxes`` list of float32 [M, 4] (inclusive
    pixels), ``objects`` bool [N, H, W] (the mask, else the union of the boxes), ``targets``
    int64 [N] (the labels), ``probs`` float32 [N, classes], ``box_ious_v2`` float64 [N, T].
    Shared intermediate results are ``cached_property``s (computed once per batch)."""

    def __init__(self, *, model: nn.Module, images: torch.Tensor, cams: torch.Tensor,
                 boxes: list[torch.Tensor], objects: torch.Tensor, targets: torch.Tensor,
                 probs: torch.Tensor, box_ious_v2: torch.Tensor,
                 settings: ScoringSettings) -> None:
        self.model, self.images, self.cams, self.boxes = model, images, cams, boxes
        self.objects, self.targets, self.probs = objects, targets, probs
        self.box_ious_v2, self.settings = box_ious_v2, settings

    @cached_property
    def energy(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(share of the CAM's mass inside the boxes [N], the boxes' area fraction [N])."""
        return metrics.energy_pointing_game(self.cams, self.boxes)


@dataclass(frozen=True)
class SummaryInputs:
    """What aggregates read: the run's rows without errors, the CAM threshold grid float64 [T]
    and the IoU thresholds."""

    rows: Sequence[SampleRow]
    thresholds: torch.Tensor
    iou_thresholds: tuple[float, ...]


def percent(value: Any) -> str:
    """A fraction as a percentage with one decimal; ``n/a`` for None or NaN."""
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def number(value: Any) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


@dataclass(frozen=True)
class MetricDefinition:
    """One audit metric.

    ``name``: its key in ``AuditSummary.metrics`` (and attribute, ``summary.<name>``) and in the
    runs row's ``summary``. ``per_sample(batch) -> [N]`` (None: the metric needs no value of
    its own per sample) is stored as ``SampleRow.metrics[sample_key]`` (bool tensors as
    booleans, others as floats). ``aggregate(inputs)``: the run's value (None: not measurable,
    e.g. no masks). ``label`` / ``meaning``: its summary table row, the value written by
    ``format``; ``rows`` replaces that one row (several rows, or a meaning built from the
    summary; [] hides the metric from the table). ``higher_is_better``: which way is better
    (None: neither, e.g. a reference value). ``when``: whether the run computes it at all.
    """

    name: str
    label: str
    aggregate: Callable[[SummaryInputs], Any]
    meaning: str = ""
    per_sample: Callable[[ScoredBatch], torch.Tensor] | None = None
    key: str | None = None
    format: Callable[[Any], str] = percent
    higher_is_better: bool | None = True
    when: Callable[[ScoringSettings], bool] = lambda settings: True
    rows: Callable[[Any, Any], list[TableRow]] | None = None

    @property
    def sample_key(self) -> str:
        return self.key or self.name

    def table_rows(self, value: Any, summary: Any) -> list[TableRow]:
        """The summary table rows of ``value`` (``summary``: the whole ``AuditSummary``)."""
        if self.rows is not None:
            return self.rows(value, summary)
        if value is None:
            return []
        meaning = self.meaning
        if self.format is not percent and self.higher_is_better is not None:
            direction = "higher is better" if self.higher_is_better else "lower is better"
            meaning = f"{meaning}; {direction}" if meaning else direction
        return [(self.label, self.format(value), meaning)]


# aggregates -------------------------------------------------------------------------------
def mean_of(key: str) -> Callable[[SummaryInputs], float | None]:
    """The mean of ``row.metrics[key]`` over the rows holding it (None when none do)."""

    def aggregate(inputs: SummaryInputs) -> float | None:
        values = [float(r.metrics[key]) for r in inputs.rows if key in r.metrics]
        return float(np.mean(values)) if values else None

    return aggregate


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _accuracy(inputs: SummaryInputs) -> float:
    return _mean([r.prediction == r.label for r in inputs.rows])


def _max_box_acc(column: str) -> Callable[[SummaryInputs], metrics.MaxBoxAccResult | None]:
    def aggregate(inputs: SummaryInputs) -> metrics.MaxBoxAccResult | None:
        if not inputs.rows:
            return None
        ious = torch.from_numpy(np.stack([getattr(r, column) for r in inputs.rows]))
        return metrics.max_box_acc_from_ious(ious, inputs.thresholds, inputs.iou_thresholds)

    return aggregate


def _pxap(inputs: SummaryInputs) -> float | None:
    counts = [r.pixel_counts for r in inputs.rows if r.pixel_counts is not None]
    if not counts:
        return None
    tp, fp, fn = torch.from_numpy(np.sum(np.stack(counts), axis=0))
    return metrics.pxap_from_counts(tp, fp, fn)


def _cam_paper_top1(inputs: SummaryInputs) -> float:
    return _mean([bool(r.metrics["cam_paper_hit"]) and r.prediction == r.label
                  for r in inputs.rows])


def _fraction_of(key: str) -> Callable[[SummaryInputs], float]:
    return lambda inputs: _mean([bool(r.metrics[key]) for r in inputs.rows])


# table rows of the metrics that show more than one number ---------------------------------
def _deltas(summary: Any) -> str:
    return "/".join(f"{d:g}" for d in summary.iou_thresholds)


def _v2_rows(value: metrics.MaxBoxAccResult | None, summary: Any) -> list[TableRow]:
    if value is None:
        return []
    rows = [("MaxBoxAccV2 (%)", percent(value.mean),
             f"mean over IoU {_deltas(summary)} of the best-threshold box accuracy, all boxes")]
    for delta, acc in sorted(value.accuracy.items()):
        rows.append((f"  MaxBoxAccV2 @ IoU {delta:g} (%)", percent(acc),
                     f"best CAM threshold {value.best_threshold[delta]:.2f}"))
    return rows


def _v1_rows(value: metrics.MaxBoxAccResult | None, summary: Any) -> list[TableRow]:
    if value is None:
        return []
    rows = []
    if 0.5 in value.accuracy:
        rows.append(("MaxBoxAcc v1 (%)", percent(value.accuracy[0.5]),
                     "IoU 0.5, largest connected region only (Choe et al. v1)"))
    rows.append(("MaxBoxAcc v1, mean over IoU (%)", percent(value.mean),
                 f"largest region only, mean over IoU {_deltas(summary)}"))
    return rows


def _pxap_rows(value: float | None, summary: Any) -> list[TableRow]:
    meaning = (f"pixel precision-recall AUC over {summary.n_with_masks} samples with masks"
               if value is not None else "needs ground-truth masks")
    return [("PxAP (%)", percent(value), meaning)]


def _energy_rows(value: float | None, summary: Any) -> list[TableRow]:
    chance = summary.metrics.get("box_area_fraction")
    return [("energy inside the box (%)", percent(value),
             f"CAM mass inside the boxes; chance (box area) {percent(chance)}")]


def _faithfulness(settings: ScoringSettings) -> bool:
    return settings.faithfulness


def _deletion(batch: ScoredBatch) -> torch.Tensor:
    return metrics.deletion_auc(batch.model, batch.images, batch.cams, batch.targets,
                                steps=batch.settings.faithfulness_steps)


def _insertion(batch: ScoredBatch) -> torch.Tensor:
    return metrics.insertion_auc(batch.model, batch.images, batch.cams, batch.targets,
                                 steps=batch.settings.faithfulness_steps)


METRICS: tuple[MetricDefinition, ...] = (
    MetricDefinition("accuracy", "top-1 accuracy (%)", _accuracy,
                     meaning="predicted class == label"),
    MetricDefinition("max_box_acc_v2", "MaxBoxAccV2 (%)", _max_box_acc("box_ious"),
                     rows=_v2_rows),
    MetricDefinition("max_box_acc_v1", "MaxBoxAcc v1 (%)", _max_box_acc("box_ious_v1"),
                     rows=_v1_rows),
    MetricDefinition("pxap", "PxAP (%)", _pxap, rows=_pxap_rows),
    MetricDefinition("cam_paper_gt_known", "CAM-paper localization, GT-known (%)",
                     _fraction_of("cam_paper_hit"), key="cam_paper_hit",
                     meaning="20% of max, largest component, IoU >= 0.5",
                     per_sample=lambda b: metrics.cam_paper_localization(b.cams, b.boxes)),
    MetricDefinition("cam_paper_top1", "CAM-paper localization, top-1 (%)", _cam_paper_top1,
                     meaning="GT-known hit and the class is right"),
    MetricDefinition("pointing_game", "pointing game (%)", _fraction_of("pointing_hit"),
                     key="pointing_hit", meaning="the CAM's maximum lies on the object",
                     per_sample=lambda b: metrics.pointing_game(b.cams, b.objects)),
    MetricDefinition("energy_inside", "energy inside the box (%)", mean_of("energy_inside"),
                     per_sample=lambda b: b.energy[0], rows=_energy_rows),
    MetricDefinition("box_area_fraction", "box area (%)", mean_of("box_area_fraction"),
                     per_sample=lambda b: b.energy[1], higher_is_better=None,
                     rows=lambda value, summary: []),
    MetricDefinition("best_iou", "best IoU", lambda inputs: None,
                     per_sample=lambda b: b.box_ious_v2.amax(dim=1),
                     rows=lambda value, summary: []),
    MetricDefinition("deletion_auc", "deletion AUC", mean_of("deletion_auc"),
                     per_sample=_deletion, format=number, higher_is_better=False,
                     when=_faithfulness),
    MetricDefinition("insertion_auc", "insertion AUC", mean_of("insertion_auc"),
                     per_sample=_insertion, format=number, when=_faithfulness),
)


def per_sample_values(batch: ScoredBatch) -> list[dict[str, bool | float]]:
    """Every enabled per-sample metric of the batch: one ``{sample_key: value}`` per sample."""
    out: list[dict[str, bool | float]] = [{} for _ in range(batch.cams.shape[0])]
    for definition in METRICS:
        if definition.per_sample is None or not definition.when(batch.settings):
            continue
        values = definition.per_sample(batch).detach().cpu()
        convert = bool if values.dtype == torch.bool else float
        for sample, value in zip(out, values.tolist(), strict=True):
            sample[definition.sample_key] = convert(value)
    return out


def aggregate_all(inputs: SummaryInputs) -> dict[str, Any]:
    """``{name: aggregate}`` of every metric (None where not measurable)."""
    return {definition.name: definition.aggregate(inputs) for definition in METRICS}


def scalar_summary(values: dict[str, Any]) -> dict[str, float | None]:
    """The aggregates as numbers for the runs row (a MaxBoxAcc result by its mean)."""
    out: dict[str, float | None] = {}
    for name, value in values.items():
        if isinstance(value, metrics.MaxBoxAccResult):
            value = value.mean
        out[name] = None if value is None or math.isnan(float(value)) else float(value)
    return out
