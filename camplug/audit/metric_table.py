"""The audit's metrics, one ``MetricDefinition`` each: what scoring computes per sample, how the
summary aggregates it, how the summary table and the report show it and which way is better.

Scoring stores ``per_sample`` values under ``SampleRow.metrics[sample_key]`` (JSON in SQLite);
``summarize`` calls every ``aggregate`` and keeps the values in ``AuditSummary.metrics[name]``
(and in the runs row's ``summary`` column); ``AuditSummary.table()`` (printed, and the report's
summary section) shows each definition's ``table_rows``. Adding a metric is adding one entry to
``METRICS``.

Evidence every run stores whatever the metrics (``SampleRow`` columns): prediction, score,
label_score, the low-resolution maps of label and prediction, ``box_ious`` / ``box_ious_v1``
(best IoU per CAM threshold, all boxes / largest box; samples with boxes) and ``pixel_counts``
(tp, fp, fn per PxAP threshold, samples with a mask). Samples without boxes (labels-only) get
every metric whose definition has ``needs_boxes=False``.
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

from . import map_stats
from .store import SampleRow

if TYPE_CHECKING:
    from .scoring import ScoringSettings

TableRow = tuple[str, str, str]  # (metric, value, what it means)


class ScoredBatch:
    """What per-sample metric functions read, for N samples of one batch (on one device):
    ``model`` (eval mode, hooks attached), ``images`` float [N, 3, H, W], ``cams`` float32
    [N, H, W] in [0, 1] (the labelled class's map), ``targets`` int64 [N] (the labels),
    ``probs`` float32 [N, classes], ``settings``. The batch that metrics needing boxes
    (``MetricDefinition.needs_boxes``) read holds only samples with boxes and also has
    ``boxes`` (list of float32 [M, 4], inclusive pixels), ``objects`` bool [N, H, W] (the mask,
    else the union of the boxes) and ``box_ious_v2`` float64 [N, T]; elsewhere they are None.
    Shared intermediate results are ``cached_property``s (computed once per batch)."""

    def __init__(self, *, model: nn.Module, images: torch.Tensor, cams: torch.Tensor,
                 targets: torch.Tensor, probs: torch.Tensor, settings: ScoringSettings,
                 boxes: list[torch.Tensor] | None = None, objects: torch.Tensor | None = None,
                 box_ious_v2: torch.Tensor | None = None) -> None:
        self.model, self.images, self.cams, self.targets = model, images, cams, targets
        self.probs, self.settings = probs, settings
        self.boxes, self.objects, self.box_ious_v2 = boxes, objects, box_ious_v2

    @cached_property
    def energy(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(share of the CAM's mass inside the boxes [N], the boxes' area fraction [N])."""
        assert self.boxes is not None, "energy needs the batch of samples with boxes"
        return metrics.energy_pointing_game(self.cams, self.boxes)

    @cached_property
    def centroid(self) -> torch.Tensor:
        """The maps' centres of mass, float64 [N, 2] (x, y as fractions of width, height)."""
        return map_stats.centroid(self.cams)

    @cached_property
    def drop_increase(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(drop in confidence float64 [N], increase in confidence bool [N]) of the map-masked
        images (Chattopadhay et al.'s average drop / increase in confidence)."""
        return metrics.average_drop_increase(self.model, self.images, self.cams, self.targets)


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
    needs_boxes: bool = False

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
    """The mean of ``row.metrics[key]`` over the rows holding a finite value (None when none
    do; a map of zero mass has NaN statistics)."""

    def aggregate(inputs: SummaryInputs) -> float | None:
        values = [float(r.metrics[key]) for r in inputs.rows if key in r.metrics]
        values = [v for v in values if math.isfinite(v)]
        return float(np.mean(values)) if values else None

    return aggregate


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _accuracy(inputs: SummaryInputs) -> float:
    return _mean([r.prediction == r.label for r in inputs.rows])


def _max_box_acc(column: str) -> Callable[[SummaryInputs], metrics.MaxBoxAccResult | None]:
    def aggregate(inputs: SummaryInputs) -> metrics.MaxBoxAccResult | None:
        located = [getattr(r, column) for r in inputs.rows if getattr(r, column) is not None]
        if not located:
            return None
        ious = torch.from_numpy(np.stack(located))
        return metrics.max_box_acc_from_ious(ious, inputs.thresholds, inputs.iou_thresholds)

    return aggregate


def _pxap(inputs: SummaryInputs) -> float | None:
    counts = [r.pixel_counts for r in inputs.rows if r.pixel_counts is not None]
    if not counts:
        return None
    tp, fp, fn = torch.from_numpy(np.sum(np.stack(counts), axis=0))
    return metrics.pxap_from_counts(tp, fp, fn)


def _cam_paper_top1(inputs: SummaryInputs) -> float | None:
    hits = [bool(r.metrics["cam_paper_hit"]) and r.prediction == r.label
            for r in inputs.rows if "cam_paper_hit" in r.metrics]
    return _mean(hits) if hits else None


def _fraction_of(key: str) -> Callable[[SummaryInputs], float | None]:
    """The share of the rows holding ``key`` whose value is true (None when none hold it)."""

    def aggregate(inputs: SummaryInputs) -> float | None:
        values = [bool(r.metrics[key]) for r in inputs.rows if key in r.metrics]
        return _mean(values) if values else None

    return aggregate


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


def _centroid_rows(value: float | None, summary: Any) -> list[TableRow]:
    if value is None:
        return []
    y = summary.metrics.get("centroid_y")
    return [("map centre of mass x, y", f"{number(value)}, {number(y)}",
             "mean over samples, as fractions of the width and height; 0.5, 0.5 is the centre")]


def _border_mass(batch: ScoredBatch) -> torch.Tensor:
    return map_stats.border_mass(batch.cams, batch.settings.border_fraction)


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
                     per_sample=lambda b: metrics.cam_paper_localization(
                         b.cams, b.boxes, protocol=b.settings.protocol),
                     needs_boxes=True),
    MetricDefinition("cam_paper_top1", "CAM-paper localization, top-1 (%)", _cam_paper_top1,
                     meaning="GT-known hit and the class is right"),
    MetricDefinition("pointing_game", "pointing game (%)", _fraction_of("pointing_hit"),
                     key="pointing_hit", meaning="the CAM's maximum lies on the object",
                     per_sample=lambda b: metrics.pointing_game(b.cams, b.objects),
                     needs_boxes=True),
    MetricDefinition("energy_inside", "energy inside the box (%)", mean_of("energy_inside"),
                     per_sample=lambda b: b.energy[0], rows=_energy_rows, needs_boxes=True),
    MetricDefinition("box_area_fraction", "box area (%)", mean_of("box_area_fraction"),
                     per_sample=lambda b: b.energy[1], higher_is_better=None,
                     rows=lambda value, summary: [], needs_boxes=True),
    MetricDefinition("best_iou", "best IoU", lambda inputs: None,
                     per_sample=lambda b: b.box_ious_v2.amax(dim=1),
                     rows=lambda value, summary: [], needs_boxes=True),
    MetricDefinition("border_mass", "map mass in the border band (%)", mean_of("border_mass"),
                     per_sample=_border_mass, higher_is_better=False,
                     meaning="share of the map's mass near the sides (the band: --border of "
                     "each side); a uniform map puts the band's area share there"),
    MetricDefinition("effective_area", "map effective area (%)", mean_of("effective_area"),
                     per_sample=lambda b: map_stats.effective_area(b.cams),
                     higher_is_better=None,
                     meaning="spread: exp(entropy of the map's mass) / pixels; 100 for a "
                     "uniform map, small for a concentrated one"),
    MetricDefinition("centroid_x", "map centre of mass x", mean_of("centroid_x"),
                     per_sample=lambda b: b.centroid[:, 0], format=number,
                     higher_is_better=None, rows=_centroid_rows),
    MetricDefinition("centroid_y", "map centre of mass y", mean_of("centroid_y"),
                     per_sample=lambda b: b.centroid[:, 1], format=number,
                     higher_is_better=None, rows=lambda value, summary: []),
    MetricDefinition("deletion_auc", "deletion AUC", mean_of("deletion_auc"),
                     per_sample=_deletion, format=number, higher_is_better=False,
                     when=_faithfulness),
    MetricDefinition("insertion_auc", "insertion AUC", mean_of("insertion_auc"),
                     per_sample=_insertion, format=number, when=_faithfulness),
    MetricDefinition("average_drop", "average drop in confidence (%)", mean_of("average_drop"),
                     per_sample=lambda b: b.drop_increase[0], higher_is_better=False,
                     when=_faithfulness,
                     meaning="mean relative drop of the class probability on map x image"),
    MetricDefinition("increase_in_confidence", "increase in confidence (%)",
                     _fraction_of("increase_in_confidence"),
                     per_sample=lambda b: b.drop_increase[1], when=_faithfulness,
                     meaning="samples whose class probability rises on map x image"),
)


def per_sample_values(batch: ScoredBatch, located: ScoredBatch | None = None,
                      located_index: Sequence[int] = ()) -> list[dict[str, bool | float]]:
    """Every enabled per-sample metric: one ``{sample_key: value}`` per sample of ``batch``.
    ``located``: the batch of the samples with boxes, which are ``located_index`` in ``batch``
    (None when none has boxes); only they get the metrics that need boxes."""
    out: list[dict[str, bool | float]] = [{} for _ in range(batch.cams.shape[0])]
    for definition in METRICS:
        if definition.per_sample is None or not definition.when(batch.settings):
            continue
        source, targets = batch, out
        if definition.needs_boxes:
            if located is None:
                continue
            source, targets = located, [out[i] for i in located_index]
        values = definition.per_sample(source).detach().cpu()
        convert = bool if values.dtype == torch.bool else float
        for sample, value in zip(targets, values.tolist(), strict=True):
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
