"""Compare two audits of the same data (say, two checkpoints) from their results files: what
changed per sample and overall, an HTML report, and threshold gates for CI
(``camplug diff RUN_A RUN_B --fail-if 'accuracy_drop>0.5'``).

Per sample (matched by sample id): the prediction of each run, the probability of the labelled
class (confidence), the agreement of the two stored low-resolution maps of the labelled class
(Spearman rank correlation and IoU of their top-10% pixels, at the larger of the two map sizes,
bilinear), and with boxes the IoU of each run's box with the ground truth at that run's best
MaxBoxAccV2 threshold (IoU 0.5). Samples that are error rows in either run are left out and
counted. Overall: every audit metric of both runs, per class aggregates, and the summary values
the gates read (:data:`MAP_NAMES` and, per audit metric, ``<metric>_a``, ``<metric>_b`` and
``<metric>_drop``).

Units: percentage metrics (accuracy, MaxBoxAccV2, ...) and their drops are in percentage
points; a drop is positive when run B is worse (``a - b`` where higher is better, ``b - a``
where lower is better). Gate names ignore case and underscores (``maxboxaccv2_drop`` is
``max_box_acc_v2_drop``).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .audit.metric_table import METRICS, percent, scalar_summary
from .audit.pipeline import load_summary
from .audit.report.html import (
    Plot,
    ReportContent,
    histogram_plot,
    list_section,
    plots_section,
    png_bytes,
    table_section,
    write_report,
)
from .audit.run import DB_NAME, RunConfig
from .audit.store import ResultStore, RunRecord, SampleRow
from .comparison.agreement import spearman, top_percent_iou

TOP_PERCENT = 10.0
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt,
}
MAP_NAMES: dict[str, str] = {
    "samples": "samples compared (audited in both runs)",
    "map_similarity_mean": "mean Spearman correlation of the two runs' maps",
    "map_similarity_median": "median Spearman correlation of the two runs' maps",
    "map_similarity_p10": "10th percentile of the Spearman correlations (the worst 10%)",
    "map_iou_mean": "mean IoU of the maps' top-10% pixels",
    "map_iou_p10": "10th percentile of the top-10% IoUs",
    "prediction_changed": "samples whose predicted class changed (%)",
    "newly_wrong": "samples right in A, wrong in B (count)",
    "newly_right": "samples wrong in A, right in B (count)",
    "confidence_drop": "mean drop of the labelled class's probability, A - B (points)",
    "iou_drop": "mean drop of the box IoU at each run's best threshold, A - B (samples with "
                "boxes)",
}
_CONDITION = re.compile(
    r"^\s*([A-Za-z][A-Za-z0-9_-]*)\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
    r"\s*$")


class DiffError(ValueError):
    """The two runs cannot be compared (the message says why and what to do)."""


# gates --------------------------------------------------------------------------------------
def metric_names() -> dict[str, str]:
    """Every name a gate may use, with its meaning: :data:`MAP_NAMES`, then
    ``<metric>_a`` / ``_b`` / ``_drop`` for each audit metric with a better direction."""
    names = dict(MAP_NAMES)
    for definition in METRICS:
        if definition.higher_is_better is None:
            continue
        unit = " (points)" if definition.format is percent else ""
        label = definition.label
        names[f"{definition.name}_a"] = f"{label} of run A"
        names[f"{definition.name}_b"] = f"{label} of run B"
        names[f"{definition.name}_drop"] = f"{label}: how much worse B is than A{unit}"
    return names


def canonical(name: str) -> str:
    """The form names are matched in: lower case, no underscores or hyphens."""
    return name.lower().replace("_", "").replace("-", "")


@dataclass(frozen=True)
class Condition:
    """A gate ``name op threshold``: the check fails when it holds."""

    name: str  # the known name it resolved to
    op: str
    threshold: float
    text: str

    def holds(self, value: float) -> bool:
        return OPERATORS[self.op](value, self.threshold)


def parse_condition(text: str) -> Condition:
    """``NAME OP NUMBER`` (OP one of < <= > >=; e.g. ``accuracy_drop>0.5``) -> a
    :class:`Condition`; a clear error for anything else or an unknown name (never evaluated
    as code)."""
    match = _CONDITION.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"--fail-if {text!r}: expected NAME OP NUMBER with OP one of <, <=, >, >= "
            "(e.g. accuracy_drop>0.5 or map_similarity_p10<0.6)")
    name, op, number = match.groups()
    known = {canonical(n): n for n in metric_names()}
    if canonical(name) not in known:
        raise ValueError(f"--fail-if {text!r}: unknown name {name!r}; known names: "
                         f"{', '.join(metric_names())}")
    threshold = float(number)
    if not math.isfinite(threshold):
        raise ValueError(f"--fail-if {text!r}: the threshold must be a finite number")
    return Condition(known[canonical(name)], op, threshold, text.strip())


@dataclass(frozen=True)
class GateResult:
    condition: Condition
    value: float
    failed: bool

    def line(self) -> str:
        word = "FAIL" if self.failed else "ok"
        return (f"{word}: {self.condition.text} ({self.condition.name} = "
                f"{_format(self.value)})")


# runs -----------------------------------------------------------------------------------------
@dataclass
class AuditSide:
    """One of the two runs: where it is stored, its record, configuration and rows."""

    label: str  # "A" or "B"
    db_path: Path
    record: RunRecord
    config: RunConfig
    rows: dict[str, SampleRow]  # by sample id, audited rows only
    errors: list[str]  # sample ids of error rows
    summary: dict[str, float | None]  # scalar_summary of the audit metrics
    best_threshold_index: int | None  # MaxBoxAccV2's best threshold (IoU 0.5), if boxes

    @property
    def name(self) -> str:
        """The model, run id and results file, for display."""
        return f"{self.record.model} ({self.record.run_id}, {self.db_path})"


def results_file(path: str | Path) -> Path:
    """The results file of ``path``: an audit's output folder or its ``audit.sqlite``."""
    path = Path(path)
    if path.is_dir():
        path = path / DB_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no audit results at {path}: give an audit's output folder "
                                f"(holding {DB_NAME}) or the {DB_NAME} file itself")
    return path


def open_side(path: str | Path, run_id: str | None, label: str) -> AuditSide:
    """Load run ``run_id`` (a prefix is enough; None: the file's latest run) of the results at
    ``path``; a clear error when it is absent or not complete."""
    db = results_file(path)
    with ResultStore(db, read_only=True) as store:
        runs = store.runs()
        if not runs:
            raise DiffError(f"{db} holds no audit run")
        if run_id is None:
            record = runs[-1]
        else:
            matches = [r for r in runs if r.run_id.startswith(run_id)]
            if len(matches) != 1:
                found = "no run" if not matches else f"{len(matches)} runs"
                raise DiffError(f"{db}: {found} with id {run_id!r}; its runs: "
                                f"{', '.join(r.run_id for r in runs)}")
            record = matches[0]
        stored = store.count(record.run_id)
        if record.status != "complete":
            what = {"running": "is still running (or was killed before it finished)",
                    "interrupted": "was interrupted", "failed": "failed"}.get(
                        record.status, f"has status {record.status!r}")
            raise DiffError(
                f"run {label} ({record.run_id} in {db}) {what}: {stored} of "
                f"{record.n_samples} samples stored. Diff compares complete audits: let it "
                "finish, or run the same audit command again to resume it")
        rows = store.rows(record.run_id)
    audited = [r for r in rows if r.error is None]
    by_id = {r.sample_id: r for r in audited}
    if len(by_id) != len(audited):
        raise DiffError(f"run {label} ({record.run_id} in {db}) has repeated sample ids: "
                        "samples are matched by id")
    summary = load_summary(db, record.run_id)
    best = None
    if summary.metrics.get("max_box_acc_v2") is not None:
        thresholds = np.asarray(summary.thresholds, dtype=np.float64)
        best = int(np.argmin(np.abs(thresholds - summary.best_threshold())))
    return AuditSide(label, db, record, RunConfig.from_dict(record.config), by_id,
                     [r.sample_id for r in rows if r.error is not None],
                     scalar_summary(summary.metrics), best)


def _check_same_data(a: AuditSide, b: AuditSide, check_dataset: bool) -> None:
    ids_a = set(a.rows) | set(a.errors)
    ids_b = set(b.rows) | set(b.errors)
    if ids_a != ids_b:
        only_a, only_b = sorted(ids_a - ids_b), sorted(ids_b - ids_a)

        def some(ids: list[str]) -> str:
            return ", ".join(ids[:5]) + (f" (and {len(ids) - 5} more)" if len(ids) > 5 else "")

        raise DiffError(
            "the runs are not audits of the same data: their sample ids differ "
            f"({len(only_a)} only in A{': ' + some(only_a) if only_a else ''}; "
            f"{len(only_b)} only in B{': ' + some(only_b) if only_b else ''}). "
            f"A: {a.record.dataset}; B: {b.record.dataset}")
    if check_dataset and a.config.dataset_fingerprint != b.config.dataset_fingerprint:
        raise DiffError(
            f"the runs' datasets differ although their sample ids match (A: "
            f"{a.record.dataset}, fingerprint {a.config.dataset_fingerprint}; B: "
            f"{b.record.dataset}, fingerprint {b.config.dataset_fingerprint}): images, "
            "annotations or loading options changed. Pass --ignore-dataset-fingerprint "
            "(check_dataset=False) to compare them anyway")


def _load_maps(side: AuditSide, ids: list[str]) -> dict[str, np.ndarray]:
    with ResultStore(side.db_path, read_only=True) as store:
        maps = store.load_maps(side.record.run_id)
    missing = [i for i in ids if i not in maps]
    if len(missing) == len(ids) and ids:
        raise DiffError(
            f"run {side.label} ({side.record.run_id} in {side.db_path}) has no stored maps: it "
            "was audited by a camplug version that did not store them. Audit again (same "
            "command with --fresh) to compare maps")
    if missing:
        raise DiffError(f"run {side.label} ({side.record.run_id}) lacks the maps of "
                        f"{len(missing)} audited sample(s), e.g. {', '.join(missing[:5])}")
    return {i: maps[i] for i in ids}


# the comparison ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleDiff:
    """One sample in both runs. ``label_score_*``: the labelled class's probability;
    ``map_spearman`` / ``map_iou``: agreement of the two maps of the labelled class (NaN:
    a constant map); ``iou_*``: box IoU at the run's best threshold (None without boxes)."""

    sample_id: str
    label: int
    prediction_a: int
    prediction_b: int
    label_score_a: float
    label_score_b: float
    map_spearman: float
    map_iou: float
    iou_a: float | None = None
    iou_b: float | None = None

    @property
    def change(self) -> str:
        right_a, right_b = self.prediction_a == self.label, self.prediction_b == self.label
        if right_a != right_b:
            return "newly right" if right_b else "newly wrong"
        return "same" if self.prediction_a == self.prediction_b else "changed (both wrong)"

    @property
    def confidence_drop(self) -> float:
        return self.label_score_a - self.label_score_b


@dataclass
class ClassDiff:
    label: int
    name: str
    n: int
    accuracy_a: float
    accuracy_b: float
    map_similarity: float
    map_iou: float
    iou_drop: float | None


@dataclass
class RunDiff:
    """The comparison of two runs; :meth:`table` is the per-sample table, ``values`` the
    numbers the gates read (None: not measurable for these runs)."""

    a: AuditSide
    b: AuditSide
    samples: list[SampleDiff]
    maps_a: dict[str, np.ndarray]  # labelled-class maps float32 [h, w] by sample id
    maps_b: dict[str, np.ndarray]
    values: dict[str, float | None] = field(default_factory=dict)
    per_class: list[ClassDiff] = field(default_factory=list)

    def table(self) -> list[dict[str, Any]]:
        """One dict per compared sample (sample-index order of run A)."""
        return [{"sample_id": s.sample_id, "label": s.label, "prediction_a": s.prediction_a,
                 "prediction_b": s.prediction_b, "change": s.change,
                 "label_score_a": s.label_score_a, "label_score_b": s.label_score_b,
                 "confidence_drop": s.confidence_drop, "map_spearman": s.map_spearman,
                 "map_iou": s.map_iou, "iou_a": s.iou_a, "iou_b": s.iou_b}
                for s in self.samples]

    def most_moved(self, k: int) -> list[SampleDiff]:
        """The ``k`` samples whose maps agree least (lowest Spearman; constant maps first)."""
        return sorted(self.samples, key=lambda s: (-math.inf if math.isnan(s.map_spearman)
                                                   else s.map_spearman, s.sample_id))[:k]

    def check(self, conditions: Iterable[Condition]) -> list[GateResult]:
        """Evaluate gates; a name not measurable for these runs (e.g. MaxBoxAccV2 without
        boxes) raises a clear error."""
        out = []
        for condition in conditions:
            value = self.values.get(condition.name)
            if value is None or math.isnan(value):
                raise DiffError(f"--fail-if {condition.text!r}: {condition.name} is not "
                                "measurable for these runs (e.g. no boxes, masks or "
                                "faithfulness metrics in the audits, or no comparable maps)")
            out.append(GateResult(condition, value, condition.holds(value)))
        return out

    def summary_rows(self) -> list[tuple[str, str, str, str]]:
        """(metric, A, B, drop) of every audit metric measured in either run."""
        rows = []
        for definition in METRICS:
            a = self.a.summary.get(definition.name)
            b = self.b.summary.get(definition.name)
            if a is None and b is None:
                continue
            drop = self.values.get(f"{definition.name}_drop")
            rows.append((definition.label, _metric(definition, a), _metric(definition, b),
                         "n/a" if drop is None else f"{drop:+.3g}"))
        return rows

    def value_rows(self) -> list[tuple[str, str, str]]:
        """(name, value, meaning) of the map and prediction values."""
        return [(name, _format(self.values.get(name)), meaning)
                for name, meaning in MAP_NAMES.items()]

    def to_markdown(self) -> str:
        lines = ["| metric | A | B | drop (B worse: +) |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {m} | {a} | {b} | {d} |" for m, a, b, d in self.summary_rows()]
        lines += ["", "| value | | meaning |", "| --- | ---: | --- |"]
        lines += [f"| {n} | {v} | {m} |" for n, v, m in self.value_rows()]
        return "\n".join(lines)


def _format(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4g}"


def _metric(definition, value: float | None) -> str:
    return definition.format(value) if value is not None else "n/a"


def map_agreement(maps_a: Sequence[np.ndarray], maps_b: Sequence[np.ndarray],
                  top: float = TOP_PERCENT) -> tuple[np.ndarray, np.ndarray]:
    """(Spearman fp64 [N], IoU of the top ``top``% pixels fp64 [N]) of paired maps [h, w]
    (each run's own size; both resized bilinearly to the larger when they differ)."""
    if not len(maps_a):
        return np.zeros(0), np.zeros(0)
    a = torch.from_numpy(np.stack(maps_a)).double()
    b = torch.from_numpy(np.stack(maps_b)).double()
    size = (max(a.shape[-2], b.shape[-2]), max(a.shape[-1], b.shape[-1]))
    if a.shape[-2:] != size:
        a = F.interpolate(a[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    if b.shape[-2:] != size:
        b = F.interpolate(b[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return spearman(a, b).numpy(), top_percent_iou(a, b, top).numpy()


def _nan_stat(values: np.ndarray, how: Callable[[np.ndarray], float]) -> float | None:
    finite = values[np.isfinite(values)]
    return float(how(finite)) if finite.size else None


def compare_runs(
    a: str | Path,
    b: str | Path,
    *,
    run_a: str | None = None,
    run_b: str | None = None,
    check_dataset: bool = True,
) -> RunDiff:
    """Compare the audit at ``a`` (an output folder or its audit.sqlite; ``run_a``: a run id
    or prefix, default the latest run there) with the one at ``b``. Both must be complete runs
    of the same data (same sample ids; same dataset fingerprint unless ``check_dataset`` is
    False) with stored maps. Returns a :class:`RunDiff`."""
    side_a, side_b = open_side(a, run_a, "A"), open_side(b, run_b, "B")
    if (side_a.db_path.resolve(), side_a.record.run_id) == (
            side_b.db_path.resolve(), side_b.record.run_id):
        raise DiffError(f"A and B are the same run ({side_a.record.run_id} in "
                        f"{side_a.db_path}); pick another with --run-a / --run-b")
    _check_same_data(side_a, side_b, check_dataset)
    ids = [i for i in side_a.rows if i in side_b.rows]
    maps_a = {i: m[0] for i, m in _load_maps(side_a, ids).items()}
    maps_b = {i: m[0] for i, m in _load_maps(side_b, ids).items()}
    rho, overlap = map_agreement([maps_a[i] for i in ids], [maps_b[i] for i in ids])
    samples = []
    for k, sample_id in enumerate(ids):
        ra, rb = side_a.rows[sample_id], side_b.rows[sample_id]
        samples.append(SampleDiff(
            sample_id, int(ra.label), int(ra.prediction), int(rb.prediction),
            float(ra.label_score), float(rb.label_score), float(rho[k]), float(overlap[k]),
            _best_iou(side_a, ra), _best_iou(side_b, rb)))
    diff = RunDiff(side_a, side_b, samples, maps_a, maps_b)
    diff.values = _values(diff, rho, overlap)
    diff.per_class = _per_class(diff)
    return diff


def _best_iou(side: AuditSide, row: SampleRow) -> float | None:
    if side.best_threshold_index is None or row.box_ious is None:
        return None
    return float(row.box_ious[side.best_threshold_index])


def _values(diff: RunDiff, rho: np.ndarray, overlap: np.ndarray) -> dict[str, float | None]:
    samples = diff.samples
    n = len(samples)
    ious = [(s.iou_a, s.iou_b) for s in samples if s.iou_a is not None and s.iou_b is not None]
    values: dict[str, float | None] = {
        "samples": float(n),
        "map_similarity_mean": _nan_stat(rho, np.mean),
        "map_similarity_median": _nan_stat(rho, np.median),
        "map_similarity_p10": _nan_stat(rho, lambda v: np.quantile(v, 0.1)),
        "map_iou_mean": _nan_stat(overlap, np.mean),
        "map_iou_p10": _nan_stat(overlap, lambda v: np.quantile(v, 0.1)),
        "prediction_changed": 100 * sum(s.prediction_a != s.prediction_b for s in samples) / n
        if n else None,
        "newly_wrong": float(sum(s.change == "newly wrong" for s in samples)),
        "newly_right": float(sum(s.change == "newly right" for s in samples)),
        "confidence_drop": 100 * float(np.mean([s.confidence_drop for s in samples]))
        if n else None,
        "iou_drop": float(np.mean([x - y for x, y in ious])) if ious else None,
    }
    for definition in METRICS:
        if definition.higher_is_better is None:
            continue
        scale = 100.0 if definition.format is percent else 1.0
        a, b = diff.a.summary.get(definition.name), diff.b.summary.get(definition.name)
        values[f"{definition.name}_a"] = None if a is None else scale * a
        values[f"{definition.name}_b"] = None if b is None else scale * b
        drop = None if a is None or b is None else scale * (a - b)
        if drop is not None and not definition.higher_is_better:
            drop = -drop
        values[f"{definition.name}_drop"] = drop
    return values


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _per_class(diff: RunDiff) -> list[ClassDiff]:
    names = list(diff.a.config.class_names or ())
    out = []
    for label in sorted({s.label for s in diff.samples}):
        group = [s for s in diff.samples if s.label == label]
        rho = np.array([s.map_spearman for s in group])
        overlap = np.array([s.map_iou for s in group])
        ious = [s.iou_a - s.iou_b for s in group if s.iou_a is not None and s.iou_b is not None]
        out.append(ClassDiff(
            label, names[label] if 0 <= label < len(names) else str(label), len(group),
            float(np.mean([s.prediction_a == label for s in group])),
            float(np.mean([s.prediction_b == label for s in group])),
            _or_nan(_nan_stat(rho, np.mean)), _or_nan(_nan_stat(overlap, np.mean)),
            float(np.mean(ious)) if ious else None))
    return out


# the report -------------------------------------------------------------------------------------
TILE_SIZE = 112


def _heat(map_: np.ndarray) -> np.ndarray:
    """A map [h, w] as a jet-coloured uint8 [TILE_SIZE, TILE_SIZE, 3] (min-max, bilinear)."""
    from .audit.report.classes import minmax_maps
    from .drawing import heatmap

    return heatmap(minmax_maps(np.asarray(map_)[None])[0], size=(TILE_SIZE, TILE_SIZE))


def pair_image(map_a: np.ndarray, map_b: np.ndarray) -> bytes:
    """PNG of two maps side by side (A left, B right), each min-max normalized."""
    gap = np.full((TILE_SIZE, 6, 3), 255, dtype=np.uint8)
    return png_bytes(np.concatenate([_heat(map_a), gap, _heat(map_b)], axis=1))


def report_content(diff: RunDiff, gates: Sequence[GateResult] = (),
                   gallery_size: int = 12) -> ReportContent:
    """The diff report: gates, the audit metrics of both runs, map agreement, per class, the
    samples whose maps moved most (A and B side by side), and the per-sample table of them."""
    a, b = diff.a, diff.b
    info = [("run A", a.name), ("run B", b.name), ("dataset", a.record.dataset),
            ("methods", f"A: {a.config.method}, B: {b.config.method}"),
            ("samples compared", str(len(diff.samples))),
            ("left out (error rows)", f"A: {len(a.errors)}, B: {len(b.errors)}")]
    moved = diff.most_moved(gallery_size)
    sections = []
    if gates:
        sections.append(list_section("Gates (--fail-if)", [g.line() for g in gates]))
    rho = np.array([s.map_spearman for s in diff.samples])
    sections += [
        table_section("Audit metrics", ("metric", "A", "B", "drop (B worse: +)"),
                      diff.summary_rows(), table_id="metrics", numeric={1, 2, 3}),
        table_section("Maps and predictions", ("value", "", "meaning"), diff.value_rows(),
                      table_id="values", numeric={1}),
        plots_section("Map agreement", [Plot(
            "Spearman", histogram_plot(rho[np.isfinite(rho)], "maps of A vs B",
                                       "Spearman rank correlation", value_range=(-1.0, 1.0)),
            "per sample, the labelled class's maps of the two runs")]),
        table_section("Per class", ("class", "samples", "accuracy A (%)", "accuracy B (%)",
                                    "map Spearman", "map top-10% IoU", "IoU drop"),
                      [(c.name, c.n, percent(c.accuracy_a), percent(c.accuracy_b),
                        _format(c.map_similarity), _format(c.map_iou), _format(c.iou_drop))
                       for c in diff.per_class], table_id="classes", numeric={1, 2, 3, 4, 5, 6}),
        plots_section(f"The {len(moved)} samples whose maps moved most (A left, B right)", [
            Plot(s.sample_id, pair_image(diff.maps_a[s.sample_id], diff.maps_b[s.sample_id]),
                 f"{s.sample_id}: label {s.label}; A predicts {s.prediction_a} "
                 f"(p(label) {s.label_score_a:.2f}), B {s.prediction_b} "
                 f"({s.label_score_b:.2f}); Spearman {_format(s.map_spearman)}, top-10% IoU "
                 f"{_format(s.map_iou)}") for s in moved]),
        table_section("Those samples", ("sample", "label", "pred A", "pred B", "change",
                                        "p(label) A", "p(label) B", "Spearman", "top-10% IoU",
                                        "box IoU A", "box IoU B"),
                      [(s.sample_id, s.label, s.prediction_a, s.prediction_b, s.change,
                        f"{s.label_score_a:.3f}", f"{s.label_score_b:.3f}",
                        _format(s.map_spearman), _format(s.map_iou), _format(s.iou_a),
                        _format(s.iou_b)) for s in moved],
                      table_id="moved", numeric={1, 2, 3, 5, 6, 7, 8, 9, 10}),
    ]
    return ReportContent("camplug diff", info, sections)


def write_diff_report(diff: RunDiff, path: str | Path, gates: Sequence[GateResult] = (),
                      gallery_size: int = 12) -> Path:
    """Write the diff report (one self-contained HTML file) and return its path."""
    return write_report(path, report_content(diff, gates, gallery_size))


__all__ = [
    "MAP_NAMES", "OPERATORS", "TOP_PERCENT", "AuditSide", "ClassDiff", "Condition",
    "DiffError", "GateResult", "RunDiff", "SampleDiff", "canonical", "compare_runs",
    "map_agreement", "metric_names", "open_side", "pair_image", "parse_condition",
    "report_content", "results_file", "write_diff_report",
]
