"""Assemble the report of a finished run: ``REPORT_SECTIONS`` builds each section from
``ReportInputs`` (the run, its capture, summary and rows): the summary table, flag counts, plots
from the stored rows, a gallery of the best, worst and flagged samples whose CAMs are recomputed
with the still-attached capture, the error rows and notes."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from camplug import metrics

from ..batches import Sample, canonical_sample
from ..scoring import forward, label_maps
from ..store import SampleRow
from ..summary import AuditSummary
from .html import (
    GalleryItem,
    Plot,
    ReportContent,
    Section,
    gallery_section,
    histogram_plot,
    list_section,
    plots_section,
    table_section,
    threshold_curve_plot,
)
from .html import write_report as write_html

if TYPE_CHECKING:
    from ..run import AuditRun

FLAG_SEVERITY = {"wrong_class": 0, "mass_outside": 1, "low_confidence": 2}
MAX_ERRORS_SHOWN = 200


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


def select_gallery(rows: Sequence[SampleRow], column: int, k: int) -> dict[str, list[SampleRow]]:
    """The ``k`` best and worst samples by IoU at threshold ``column`` (V2 boxes), and up to
    ``k`` flagged samples (misclassified first, then CAM mass outside, then low confidence;
    least confident in the labelled class first)."""
    ok = [r for r in rows if r.error is None]
    by_iou = sorted(ok, key=lambda r: (-float(r.box_ious[column]), r.sample_index))
    worst = sorted(ok, key=lambda r: (float(r.box_ious[column]), r.sample_index))
    flagged = sorted(
        (r for r in ok if r.flags),
        key=lambda r: (min(FLAG_SEVERITY[f] for f in r.flags), r.label_score, r.sample_index),
    )
    return {
        "Best localized (highest IoU)": by_iou[:k],
        "Worst localized (lowest IoU)": worst[:k],
        "Flagged": flagged[:k],
    }


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


def gallery_items(
    chosen: Sequence[SampleRow], *, run: AuditRun, capture, threshold: float, column: int,
    class_names: Sequence[str] | None,
) -> list[GalleryItem]:
    """Recompute the CAMs of ``chosen`` samples and draw their boxes at ``threshold``."""
    data = run.data
    samples = [canonical_sample(r.sample_index, data[r.sample_index]) for r in chosen]
    cams = sample_cams(samples, model=run.model, capture=capture, device=run.device,
                       method=run.config.method)
    items = []
    for row, sample, cam in zip(chosen, samples, cams, strict=True):
        predicted = metrics.threshold_boxes(cam, [threshold], multi_contour=True)[0]
        caption = [
            f"label {_class_name(class_names, row.label)}",
            f"predicted {_class_name(class_names, row.prediction)}, p = {row.score:.2f}",
            f"IoU {float(row.box_ious[column]):.2f} at threshold {threshold:.2f}",
            f"CAM mass inside box {row.metrics['energy_inside']:.2f}",
        ]
        if row.flags:
            caption.append("flags: " + ", ".join(row.flags))
        items.append(GalleryItem(
            row.sample_id, display_rgb(data, row.sample_index, sample.image),
            cam.cpu().numpy(), sample.boxes.numpy(), predicted.cpu().numpy(), caption,
        ))
    return items


def _plots(summary: AuditSummary, ok: Sequence[SampleRow], column: int) -> list[Plot]:
    v2, v1 = summary.max_box_acc_v2, summary.max_box_acc_v1
    curves = {f"V2, IoU >= {d:g}": np.asarray(c) for d, c in v2.curves.items()}
    curves.update({f"v1, IoU >= {d:g}": np.asarray(c) for d, c in v1.curves.items()})
    threshold = summary.best_threshold()
    ious = [float(r.box_ious[column]) for r in ok]
    return [
        Plot("accuracy vs threshold", threshold_curve_plot(
            summary.thresholds, curves, "Box accuracy against the CAM threshold"),
            "MaxBoxAcc is each curve's maximum; solid: all boxes (V2), dashed: largest box (v1)."),
        Plot("IoU histogram", histogram_plot(
            np.asarray(ious), "Best IoU per sample (V2 boxes)", "IoU",
            marker=(0.5, "IoU 0.5"), value_range=(0.0, 1.0)),
            f"At the CAM threshold {threshold:.2f} (MaxBoxAccV2's best at IoU 0.5)."),
        Plot("energy histogram", histogram_plot(
            np.asarray([r.metrics["energy_inside"] for r in ok]),
            "CAM mass inside the box", "fraction of the CAM's mass",
            marker=(summary.box_area_fraction, f"chance {summary.box_area_fraction:.2f}")),
            "Energy-based pointing game; chance is the mean box area fraction."),
        Plot("confidence histogram", histogram_plot(
            np.asarray([r.score for r in ok]), "Confidence of the prediction",
            "softmax probability of the predicted class"),
            "Low-confidence samples are flagged."),
    ]


@dataclass(frozen=True)
class ReportInputs:
    """What section builders read: the run (config, model, data, device), its attached
    ``capture``, the ``summary`` and every stored row (``ok``: those without an error)."""

    run: AuditRun
    capture: Any
    summary: AuditSummary
    rows: Sequence[SampleRow]

    @property
    def ok(self) -> list[SampleRow]:
        return [r for r in self.rows if r.error is None]

    @property
    def column(self) -> int:
        """The threshold-grid column of the summary's best threshold."""
        return int(np.argmin(np.abs(self.summary.thresholds - self.summary.best_threshold())))


def summary_section(inputs: ReportInputs) -> Section:
    rows = [row for row in inputs.summary.table() if not row[0].startswith("flagged")]
    return table_section("Summary", ("metric", "value", "what it means"), rows,
                         table_id="summary", numeric={1})


def flags_section(inputs: ReportInputs) -> Section:
    summary = inputs.summary
    rows = [(k, v, summary.flag_rules[k]) for k, v in summary.flag_counts.items()]
    return table_section("Flags", ("flag", "samples", "rule"), rows, table_id="flags",
                         numeric={1})


def plots(inputs: ReportInputs) -> Section:
    return plots_section("Plots", _plots(inputs.summary, inputs.ok, inputs.column)
                         if inputs.ok else [])


def gallery(inputs: ReportInputs) -> Section:
    ok = inputs.ok
    parts: dict[str, list[GalleryItem]] = {}
    if ok:
        run, summary = inputs.run, inputs.summary
        class_names = (getattr(run.data, "class_names", None)
                       or getattr(run.model, "class_names", None))
        chosen = select_gallery(ok, inputs.column, run.options.gallery_size)
        unique = {r.sample_index: r for rows in chosen.values() for r in rows}
        items = dict(zip(unique, gallery_items(
            list(unique.values()), run=run, capture=inputs.capture,
            threshold=summary.best_threshold(), column=inputs.column,
            class_names=class_names), strict=True))
        parts = {title: [items[r.sample_index] for r in rows] for title, rows in chosen.items()}
    return gallery_section("Gallery", parts)


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
        f"Configuration: {inputs.run.config.to_dict()}",
    ]
    if n_errors > MAX_ERRORS_SHOWN:
        notes.append(f"Only the first {MAX_ERRORS_SHOWN} of {n_errors} errors are listed; "
                     "all are in the results file.")
    return list_section("Notes", notes)


REPORT_SECTIONS: tuple[Callable[[ReportInputs], Section | None], ...] = (
    summary_section, flags_section, plots, gallery, errors_section, notes_section,
)


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
