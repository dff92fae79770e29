"""Assemble the report of a finished run: ``REPORT_SECTIONS`` builds each section from
``ReportInputs`` (the run, its capture, summary and rows): the summary table, a place for the
baselines table (``add_baselines``), flag counts, plots from the stored rows, the per-class
section (accuracy, confusions, mean maps and groups of look-alike maps, from the stored maps),
a gallery of the best, worst and flagged samples whose CAMs are recomputed with the
still-attached capture (filterable by class and flag, sortable by metric), the error rows, the
run's configuration and notes. Runs without boxes get no localization plots or parts."""

from __future__ import annotations

import html
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from camplug import metrics
from camplug.drawing import overlay

from .. import metric_table
from ..batches import Sample, canonical_sample
from ..scoring import forward, label_maps
from ..store import ResultStore, SampleRow
from ..summary import AuditSummary
from . import classes
from .class_section import MAX_CLASS_BLOCKS, Example, classes_section
from .config import config_rows
from .html import (
    GalleryControls,
    GalleryItem,
    Plot,
    ReportContent,
    Section,
    gallery_section,
    histogram_plot,
    list_section,
    plots_section,
    replace_marker,
    table_section,
    threshold_curve_plot,
)
from .html import write_report as write_html

if TYPE_CHECKING:
    from ..baselines import LocalizationTable
    from ..run import AuditRun

# Flagged samples are shown most severe first (flags not listed here come last).
FLAG_SEVERITY = {"wrong_class": 0, "confident_wrong": 0, "mass_outside": 1, "border_focus": 2,
                 "low_confidence": 3}
MAX_ERRORS_SHOWN = 200
BASELINES_MARKER = "<!-- camplug: baselines table -->"
# Row values the gallery can sort by besides ``SampleRow.metrics``: key -> label.
ROW_VALUES = {"score": "confidence of the prediction", "label_score": "probability of the label",
              "iou": "IoU at the best threshold"}


def display_rgb(data: Dataset, index: int, image: torch.Tensor) -> np.ndarray:
    """A displayable uint8 [H, W, 3] version of sample ``index``: the dataset's own ``rgb(i)``,
    else the image un-normalized with the dataset's ``mean`` / ``std``, else min-max scaled."""
    rgb = getattr(data, "rgb", None)
    if callable(rgb):
        return np.asarray(rgb(index), dtype=np.uint8)
    x = image.detach().float().cpu()
    mean, std = getattr(data, "mean", None), getattr(data, "std", None)
    if mean is not None and std is not None and x.shape[0] == len(mean) == len(std):
        x = x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    else:
        x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
    x = x.clamp(0, 1).mul(255).round().to(torch.uint8)
    x = x.expand(3, -1, -1) if x.shape[0] == 1 else x[:3]
    return x.permute(1, 2, 0).numpy()


def _severity(row: SampleRow) -> int:
    return min(FLAG_SEVERITY.get(f, len(FLAG_SEVERITY)) for f in row.flags)


def select_gallery(rows: Sequence[SampleRow], column: int | None,
                   k: int) -> dict[str, list[SampleRow]]:
    """With boxes (``column``: the threshold-grid column of the best threshold): the ``k`` best
    and worst samples by IoU at that threshold (V2 boxes), among the samples with boxes;
    without (None): the ``k`` samples least confident in their label. Then up to ``k``
    flagged samples (``FLAG_SEVERITY`` order, least confident in the label first)."""
    ok = [r for r in rows if r.error is None]
    parts: dict[str, list[SampleRow]] = {}
    if column is not None:
        located = [r for r in ok if r.box_ious is not None]
        parts["Best localized (highest IoU)"] = sorted(
            located, key=lambda r: (-float(r.box_ious[column]), r.sample_index))[:k]
        parts["Worst localized (lowest IoU)"] = sorted(
            located, key=lambda r: (float(r.box_ious[column]), r.sample_index))[:k]
    else:
        parts["Least confident in the label"] = sorted(
            ok, key=lambda r: (r.label_score, r.sample_index))[:k]
    parts["Flagged"] = sorted(
        (r for r in ok if r.flags),
        key=lambda r: (_severity(r), r.label_score, r.sample_index),
    )[:k]
    return parts


def _class_name(names: Sequence[str] | None, index: int | None) -> str:
    if index is None:
        return "?"
    return f"{names[index]} ({index})" if names and 0 <= index < len(names) else str(index)


def sample_cams(samples: Sequence[Sample], *, model: nn.Module, capture,
                device: torch.device, method: str = "cam",
                batch_size: int = 32) -> list[torch.Tensor]:
    """The CAM of each sample's label, float [H, W] in [0, 1], computed in batches of samples
    of one image shape."""
    cams: list[torch.Tensor | None] = [None] * len(samples)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for k, sample in enumerate(samples):
        by_shape.setdefault(tuple(sample.image.shape), []).append(k)
    for group in by_shape.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start:start + batch_size]
            images = torch.stack([samples[k].image for k in chunk]).to(device)
            labels = torch.tensor([samples[k].label for k in chunk], device=device)
            forward(model, capture, images, method)
            maps = label_maps(capture, labels, method)
            for k, cam in zip(chunk, maps, strict=True):
                cams[k] = cam
    return cams  # type: ignore[return-value]


def tile_values(row: SampleRow, column: int | None) -> dict[str, float]:
    """What the gallery sorts a tile by: the row's numeric metrics, its confidences and (with
    boxes) its IoU at the best threshold."""
    values = {k: float(v) for k, v in row.metrics.items()
              if isinstance(v, int | float) and not isinstance(v, bool)}
    values.update(score=float(row.score), label_score=float(row.label_score))
    if column is not None and row.box_ious is not None:
        values["iou"] = float(row.box_ious[column])
    return values


def gallery_items(
    chosen: Sequence[SampleRow], *, run: AuditRun, capture, threshold: float | None,
    column: int | None, class_names: Sequence[str] | None,
) -> list[GalleryItem]:
    """Recompute the CAMs of ``chosen`` samples and draw their boxes at ``threshold`` (no
    CAM boxes when None: a run without boxes)."""
    data = run.data
    samples = [canonical_sample(r.sample_index, data[r.sample_index]) for r in chosen]
    cams = sample_cams(samples, model=run.model, capture=capture, device=run.device,
                       method=run.config.method)
    items = []
    for row, sample, cam in zip(chosen, samples, cams, strict=True):
        caption = [
            f"label {_class_name(class_names, row.label)}",
            f"predicted {_class_name(class_names, row.prediction)}, p = {row.score:.2f}",
        ]
        predicted = np.zeros((0, 4))
        if threshold is not None and column is not None and row.box_ious is not None:
            predicted = metrics.threshold_boxes(cam, [threshold], multi_contour=True)[0]
            predicted = predicted.cpu().numpy()
            caption.append(f"IoU {float(row.box_ious[column]):.2f} at threshold "
                           f"{threshold:.2f}")
        if "energy_inside" in row.metrics:
            caption.append(f"CAM mass inside box {row.metrics['energy_inside']:.2f}")
        if row.flags:
            caption.append("flags: " + ", ".join(row.flags))
        items.append(GalleryItem(
            row.sample_id, display_rgb(data, row.sample_index, sample.image),
            cam.cpu().numpy(), sample.boxes.numpy(), predicted, caption,
            label=row.label, flags=tuple(row.flags), values=tile_values(row, column),
        ))
    return items


def _plots(summary: AuditSummary, ok: Sequence[SampleRow], column: int | None) -> list[Plot]:
    plots = []
    if column is not None:
        v2, v1 = summary.max_box_acc_v2, summary.max_box_acc_v1
        curves = {f"V2, IoU >= {d:g}": np.asarray(c) for d, c in v2.curves.items()}
        curves.update({f"v1, IoU >= {d:g}": np.asarray(c) for d, c in v1.curves.items()})
        threshold = summary.best_threshold()
        ious = [float(r.box_ious[column]) for r in ok if r.box_ious is not None]
        plots += [
            Plot("accuracy vs threshold", threshold_curve_plot(
                summary.thresholds, curves, "Box accuracy against the CAM threshold"),
                "MaxBoxAcc is each curve's maximum; solid: all boxes (V2), dashed: largest box "
                "(v1)."),
            Plot("IoU histogram", histogram_plot(
                np.asarray(ious), "Best IoU per sample (V2 boxes)", "IoU",
                marker=(0.5, "IoU 0.5"), value_range=(0.0, 1.0)),
                f"At the CAM threshold {threshold:.2f} (MaxBoxAccV2's best at IoU 0.5)."),
        ]
    energy = [r.metrics["energy_inside"] for r in ok if "energy_inside" in r.metrics]
    if energy:
        chance = summary.metrics.get("box_area_fraction") or 0.0
        plots.append(Plot("energy histogram", histogram_plot(
            np.asarray(energy), "CAM mass inside the box", "fraction of the CAM's mass",
            marker=(chance, f"chance {chance:.2f}")),
            "Energy-based pointing game; chance is the mean box area fraction."))
    plots.append(Plot("confidence histogram", histogram_plot(
        np.asarray([r.score for r in ok]), "Confidence of the prediction",
        "softmax probability of the predicted class"),
        "Low-confidence samples are flagged."))
    return plots


@dataclass(frozen=True)
class ReportInputs:
    """What section builders read: the run (config, model, data, device), its attached
    ``capture``, the ``summary`` and every stored row (``ok``: those without an error)."""

    run: AuditRun
    capture: Any
    summary: AuditSummary
    rows: Sequence[SampleRow]

    @cached_property
    def ok(self) -> list[SampleRow]:
        return [r for r in self.rows if r.error is None]

    @property
    def threshold(self) -> float | None:
        """The CAM threshold boxes are drawn at (None: no sample has boxes)."""
        return None if self.summary.max_box_acc_v2 is None else self.summary.best_threshold()

    @property
    def column(self) -> int | None:
        """The threshold-grid column of the summary's best threshold (None without boxes)."""
        threshold = self.threshold
        if threshold is None:
            return None
        return int(np.argmin(np.abs(self.summary.thresholds - threshold)))

    @cached_property
    def class_names(self) -> Sequence[str] | None:
        """The run's class names (recorded in its config, else the dataset's or the
        model's), or None."""
        run = self.run
        return (run.config.class_names or getattr(run.data, "class_names", None)
                or getattr(run.model, "class_names", None))

    def class_name(self, index: int | None) -> str:
        return _class_name(self.class_names, index)


def summary_section(inputs: ReportInputs) -> Section:
    rows = [row for row in inputs.summary.table() if not row[0].startswith("flagged")]
    return table_section("Summary", ("metric", "value", "what it means"), rows,
                         table_id="summary", numeric={1})


def baselines_placeholder(inputs: ReportInputs) -> Section:
    """Where ``add_baselines`` puts the baselines table (nothing shows until then)."""
    return Section("", BASELINES_MARKER)


def flags_section(inputs: ReportInputs) -> Section:
    summary = inputs.summary
    rows = [(k, v, summary.flag_rules[k]) for k, v in summary.flag_counts.items()]
    return table_section("Flags", ("flag", "samples", "rule"), rows, table_id="flags",
                         numeric={1})


def plots(inputs: ReportInputs) -> Section:
    return plots_section("Plots", _plots(inputs.summary, inputs.ok, inputs.column)
                         if inputs.ok else [])


def _sort_choices(items: Sequence[GalleryItem]) -> list[tuple[str, str]]:
    labels = {d.sample_key: d.label for d in metric_table.METRICS}
    labels.update(ROW_VALUES)
    keys = sorted({k for item in items for k in item.values}, key=lambda k: (
        list(ROW_VALUES).index(k) if k in ROW_VALUES else len(ROW_VALUES), k))
    return [(k, labels.get(k, k.replace("_", " "))) for k in keys]


def gallery(inputs: ReportInputs) -> Section:
    ok = inputs.ok
    parts: dict[str, list[GalleryItem]] = {}
    controls = None
    if ok:
        run = inputs.run
        chosen = select_gallery(ok, inputs.column, run.options.gallery_size)
        unique = {r.sample_index: r for rows in chosen.values() for r in rows}
        items = dict(zip(unique, gallery_items(
            list(unique.values()), run=run, capture=inputs.capture,
            threshold=inputs.threshold, column=inputs.column,
            class_names=inputs.class_names), strict=True))
        parts = {title: [items[r.sample_index] for r in rows] for title, rows in chosen.items()}
        labels = sorted({r.label for r in unique.values() if r.label is not None})
        controls = GalleryControls(
            classes=[(k, inputs.class_name(k)) for k in labels],
            flags=list(inputs.summary.flag_rules),
            metrics=_sort_choices(list(items.values())))
    return gallery_section("Gallery", parts, controls)


def stored_label_maps(inputs: ReportInputs) -> dict[int, np.ndarray]:
    """sample index -> its stored low-resolution map of the label (float32 [h, w], raw);
    samples stored without maps (by an older camplug) are absent."""
    with ResultStore(inputs.run.db_path) as store:
        rows = store.rows(inputs.run.run_id, maps=True)
    return {r.sample_index: r.maps[0] for r in rows if r.error is None and r.maps is not None}


def common_size(maps: Sequence[np.ndarray]) -> np.ndarray:
    """Maps of possibly different sizes as one float64 [N, h, w] array: all at the most
    common size (area-averaged to it)."""
    shapes = [m.shape for m in maps]
    size = max(set(shapes), key=lambda shape: (shapes.count(shape), shape))
    return np.stack([m if m.shape == size else classes.pool_maps(m[None], size)[0]
                     for m in np.asarray(maps, dtype=object)]).astype(np.float64)


def class_examples(inputs: ReportInputs, stats: Sequence[classes.ClassStats],
                   maps: dict[int, np.ndarray]) -> dict[int, Example]:
    """The representatives' pictures: each image with its stored label map over it."""
    wanted = sorted({s.samples[m] for s in stats[:MAX_CLASS_BLOCKS]
                     for g in s.grouping.groups for m in g.representatives})
    by_index = {r.sample_index: r for r in inputs.ok}
    examples = {}
    for index in wanted:
        sample = canonical_sample(index, inputs.run.data[index])
        rgb = display_rgb(inputs.run.data, index, sample.image)
        cam = classes.minmax_maps(maps[index][None])[0]
        examples[index] = Example(by_index[index].sample_id, overlay(rgb, cam, alpha=0.45))
    return examples


def per_class(inputs: ReportInputs) -> Section | None:
    """Accuracy, confusions, mean maps and map groups per class (from the stored maps)."""
    rows = [r for r in inputs.ok if r.label is not None and r.prediction is not None]
    if not rows:
        return None
    stored = stored_label_maps(inputs)
    maps: list[np.ndarray | None] = [None] * len(rows)
    mapped = [k for k, r in enumerate(rows) if r.sample_index in stored]
    if mapped:
        resized = common_size([stored[rows[k].sample_index] for k in mapped])
        for k, values in zip(mapped, resized, strict=True):
            maps[k] = values
    notes = []
    if len(mapped) < len(rows):
        notes.append(f"{len(rows) - len(mapped)} samples have no stored maps (stored by an "
                     "older camplug): mean maps and groups leave them out.")
    labels = [r.label for r in rows]
    predictions = [r.prediction for r in rows]
    n_classes = max(len(inputs.class_names or ()), 1 + max(max(labels), max(predictions)))
    stats = classes.class_stats([r.sample_index for r in rows], labels, predictions, maps)
    matrix = classes.confusion_matrix(labels, predictions, n_classes)
    summary = inputs.summary
    accuracy = list(zip((c.label for c in summary.per_class), summary.class_table(),
                        strict=True))
    return classes_section(stats, matrix, inputs.class_name,
                           class_examples(inputs, stats, stored), accuracy, notes)


def errors_section(inputs: ReportInputs) -> Section:
    errors = [(r.sample_id, r.error or "") for r in inputs.rows if r.error is not None]
    return table_section(f"Errors ({len(errors)})", ("sample", "error"),
                         errors[:MAX_ERRORS_SHOWN], table_id="errors", empty="No sample failed.")


def notes_section(inputs: ReportInputs) -> Section:
    summary = inputs.summary
    n_errors = sum(r.error is not None for r in inputs.rows)
    notes = [
        f"CAM thresholds: {len(summary.thresholds)} values from {summary.thresholds[0]:g} to "
        f"{summary.thresholds[-1]:g}; maps are min-max normalized, quantized to 255 levels and "
        "binarized strictly above the threshold (camplug.metrics).",
        "Flags: " + "; ".join(f"{k}: {v}" for k, v in summary.flag_rules.items()) + ".",
    ]
    if n_errors > MAX_ERRORS_SHOWN:
        notes.append(f"Only the first {MAX_ERRORS_SHOWN} of {n_errors} errors are listed; "
                     "all are in the results file.")
    return list_section("Notes", notes)


def config_section(inputs: ReportInputs) -> Section:
    return table_section("Configuration", ("setting", "value", "what it means"),
                         config_rows(inputs.run.config.to_dict()), table_id="config")


REPORT_SECTIONS: tuple[Callable[[ReportInputs], Section | None], ...] = (
    summary_section, baselines_placeholder, flags_section, plots, per_class, gallery,
    errors_section, config_section, notes_section,
)


def baselines_section(table: LocalizationTable) -> Section:
    """The baselines table (``camplug.audit.baselines.localization_table``): each method's
    MaxBoxAccV2, its accuracy per IoU threshold, MaxBoxAcc v1 at IoU 0.5 and PxAP (%)."""
    deltas = sorted(table.rows[0].v2.accuracy) if table.rows else []
    header = ("method", "MaxBoxAccV2", *(f"V2 @ IoU {d:g}" for d in deltas),
              "MaxBoxAcc v1 (IoU 0.5)", "PxAP")
    rows = []
    for row in table.rows:
        v1 = row.v1.accuracy.get(0.5)
        rows.append((row.method, metric_table.percent(row.v2.mean),
                     *(metric_table.percent(row.v2.accuracy[d]) for d in deltas),
                     metric_table.percent(v1), metric_table.percent(row.pxap)))
    section = table_section("Baselines", header, rows, table_id="baselines",
                            numeric=set(range(1, len(header))))
    note = (f"<p class=\"legend\">{table.n_samples} images of {html.escape(table.dataset)}; "
            "percentages; every map scored on the labelled class (camplug.audit.baselines "
            "describes each method).</p>")
    return Section(section.title, section.body + note)


def add_baselines(summary: AuditSummary, table: LocalizationTable) -> Path:
    """Put the baselines table into the run's written report (``summary.report_path`` and the
    run's own ``report-<run id>.html``), after the summary; returns ``summary.report_path``.
    Raises ``ValueError`` when the run wrote no report."""
    if summary.report_path is None:
        raise ValueError(f"run {summary.run_id} wrote no report (report=False)")
    section = baselines_section(table)
    own = summary.report_path.with_name(f"report-{summary.run_id}.html")
    for path in (own, summary.report_path):
        if path.exists():
            replace_marker(path, BASELINES_MARKER, section)
    return summary.report_path


def build_report(run: AuditRun, capture, summary: AuditSummary,
                 rows: Sequence[SampleRow]) -> Path:
    """Write the HTML report of a finished run to ``report-<run id>.html``, copy it to
    ``report.html`` (the latest run's report) and return the latter's path."""
    from ...version import __version__

    speed = summary.images_per_second
    run_info = [
        ("model", summary.model), ("dataset", summary.dataset), ("run id", summary.run_id),
        ("map method", run.config.method), ("results", summary.db_path.name),
        ("device", str(run.device)),
        ("throughput", "n/a" if speed is None else f"{speed:.1f} images/s"),
        ("versions", f"camplug {__version__}, torch {torch.__version__}"),
    ]
    inputs = ReportInputs(run, capture, summary, rows)
    sections = [section for build in REPORT_SECTIONS if (section := build(inputs)) is not None]
    content = ReportContent(title=f"camplug audit: {summary.model} on {summary.dataset}",
                            run_info=run_info, sections=sections)
    own = write_html(run.run_report_path, content)
    latest = run.latest_report_path
    tmp = latest.with_suffix(".html.tmp")
    shutil.copyfile(own, tmp)
    tmp.replace(latest)
    return latest
