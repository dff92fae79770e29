"""The report's per-class section from ``classes.ClassStats``: the accuracy table (the
summary's, with the number of map groups), the top confusions and, for few classes, the whole
confusion matrix, then one block per class with the mean map of its correctly classified
samples and its groups of look-alike maps, each with its mean map and representative samples.
Every string is escaped here."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from camplug.drawing import heatmap

from . import classes
from .html import Section, image_tag, png_bytes, table_html

MAX_MATRIX_CLASSES = 20  # the whole confusion matrix up to this many classes
MAX_CONFUSIONS = 10
MAX_CLASS_BLOCKS = 50  # classes shown with maps and groups (by label)
HEAT_SIZE = 64  # mean maps drawn at this many pixels (bilinear), shown at 128

GROUPING_RULE = (
    f"Groups: each map of the class (the labelled class's map) is min-max scaled, "
    f"area-averaged to {classes.GROUP_MAP_SIZE}x{classes.GROUP_MAP_SIZE} and scaled to unit "
    f"length; k-means runs for k = 2 to {classes.MAX_GROUPS}, and the k with the highest mean "
    f"silhouette is kept when that silhouette is at least {classes.MIN_SILHOUETTE:g}, else the "
    f"class is one group (classes under {classes.MIN_GROUP_SAMPLES} samples are one group). "
    f"Representatives: the {classes.REPRESENTATIVES} samples nearest each group's centre. Two "
    "groups in one class mean two kinds of maps, e.g. the object for some samples and a "
    "corner, a watermark or the background for others. Mean maps share one colour scale "
    "(0 to 1): a faint mean map means the maps disagree on where the evidence is."
)


@dataclass(frozen=True)
class Example:
    """A representative sample as shown: its id and the map over the image (uint8 [H, W, 3])."""

    sample_id: str
    picture: np.ndarray


def _heat(values: np.ndarray, alt: str) -> str:
    """A mean map (values in [0, 1]) as an ``<img class="heat">``."""
    png = png_bytes(heatmap(np.clip(values, 0.0, 1.0), size=(HEAT_SIZE, HEAT_SIZE)))
    return image_tag(png, alt, "heat")


def _percent(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{100 * value:.1f}"


def confusion_rows(matrix: np.ndarray, name: Callable[[int], str]) -> list[tuple[str, ...]]:
    """The top confusions: (label, predicted as, samples, share of the label %)."""
    totals = matrix.sum(axis=1)
    return [(name(t), name(p), str(n), _percent(n / totals[t]))
            for t, p, n in classes.top_confusions(matrix, MAX_CONFUSIONS)]


def matrix_table(matrix: np.ndarray, name: Callable[[int], str]) -> str:
    """The whole confusion matrix (rows: label, columns: prediction); the diagonal shaded
    green, non-zero confusions red."""
    n = len(matrix)
    header = ["label \\ predicted", *(name(k) for k in range(n))]
    rows = [[name(t), *(str(int(v)) for v in matrix[t])] for t in range(n)]
    shades = {(t, p + 1): "diag" if t == p else "off"
              for t in range(n) for p in range(n) if t == p or matrix[t, p] > 0}
    return table_html(header, rows, numeric=set(range(1, n + 1)), table_id="confusion-matrix",
                      cell_classes=shades)


def _group_html(stats: classes.ClassStats, k: int, group: classes.MapGroup,
                examples: dict[int, Example], name: str) -> str:
    share = len(group.members) / len(stats.samples)
    text = (f"group {k + 1}: {len(group.members)} samples ({100 * share:.0f}%), accuracy "
            f"{_percent(stats.group_accuracy(group))}%")
    thumbs = []
    for member in group.representatives:
        example = examples.get(stats.samples[member])
        if example is not None:
            thumbs.append(f"<figure>{image_tag(png_bytes(example.picture), example.sample_id)}"
                          f"<figcaption>{html.escape(example.sample_id)}</figcaption></figure>")
    # one group: its mean map is the class's, already shown
    heat = ("" if len(group.members) == len(stats.samples)
            else _heat(group.mean_map, f"{name}: mean map of group {k + 1}"))
    return (f'<div class="group" data-group="{k}"><figure>{heat}'
            f"<figcaption>{html.escape(text)}</figcaption></figure>"
            f'<div class="thumbs">{"".join(thumbs)}</div></div>')


def class_block(stats: classes.ClassStats, name: str, examples: dict[int, Example]) -> str:
    """One class: its counts, the mean map of its correct samples and its groups."""
    grouping = stats.grouping
    if grouping.silhouettes:
        tried = ", ".join(f"k={k}: {v:.2f}" for k, v in sorted(grouping.silhouettes.items()))
        rule = f"{len(grouping.groups)} group(s); silhouettes {tried}"
    elif grouping.groups:
        rule = f"one group (fewer than {classes.MIN_GROUP_SAMPLES} samples or identical maps)"
    else:
        rule = "no maps stored"
    summary = (f"{len(stats.samples)} samples, {stats.correct} correct "
               f"({_percent(stats.accuracy)}%); {rule}")
    parts = []
    if stats.mean_correct_map is not None:
        parts.append(f"<figure>{_heat(stats.mean_correct_map, f'{name}: mean map')}"
                     "<figcaption>mean map of the correctly classified samples</figcaption>"
                     "</figure>")
    parts += [_group_html(stats, k, g, examples, name)
              for k, g in enumerate(grouping.groups)]
    return (f'<div class="class-block" id="class-{stats.label}" data-groups='
            f'"{len(grouping.groups)}"><h3>{html.escape(name)}</h3>'
            f'<p>{html.escape(summary)}</p><div class="groups">{"".join(parts)}</div></div>')


def classes_section(stats: Sequence[classes.ClassStats], matrix: np.ndarray,
                    name: Callable[[int], str], examples: dict[int, Example],
                    accuracy: Sequence[tuple[int, Sequence[str]]],
                    notes: Sequence[str] = ()) -> Section:
    """The per-class section. ``matrix``: the confusion matrix (``classes.confusion_matrix``);
    ``name``: a class index's display name (escaped here); ``examples``: sample index ->
    its picture, for the groups' representatives; ``accuracy``: (label, (class, samples,
    accuracy %, top confusions)) per class, as ``AuditSummary.class_table`` gives them (a map
    groups column is added); ``notes``: extra lines under the rule."""
    groups = {s.label: len(s.grouping.groups) for s in stats}
    rows = [(*cells, str(groups.get(label) or "-")) for label, cells in accuracy]
    parts = [table_html(("class", "samples", "accuracy (%)", "top confusions (samples)",
                         "map groups"), rows, numeric={1, 2}, table_id="class-accuracy")]
    confusions = confusion_rows(matrix, name)
    parts.append("<h3>Top confusions</h3>" + (
        table_html(("label", "predicted as", "samples", "share of the label (%)"), confusions,
                   numeric={2, 3}, table_id="top-confusions")
        if confusions else '<p id="top-confusions">No sample is misclassified.</p>'))
    if 0 < len(matrix) <= MAX_MATRIX_CLASSES:
        parts.append("<h3>Confusion matrix</h3>" + matrix_table(matrix, name))
    parts.append("<h3>Maps per class</h3>")
    parts += [f'<p class="legend">{html.escape(line)}</p>' for line in (GROUPING_RULE, *notes)]
    shown = list(stats)[:MAX_CLASS_BLOCKS]
    parts += [class_block(s, name(s.label), examples) for s in shown]
    if len(stats) > len(shown):
        parts.append(f"<p>{len(stats) - len(shown)} more classes are left out of the maps "
                     "(their numbers are in the tables above).</p>")
    return Section("Classes", "".join(parts))
