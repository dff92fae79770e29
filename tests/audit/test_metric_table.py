"""The metric table: one definition per metric feeds scoring, summary, report and SQLite; the
run records its map method and its throughput."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_audit import GRID, TinyNet

from camplug.audit import load_summary, metric_table, run_audit
from camplug.audit.metric_table import MetricDefinition, mean_of
from camplug.audit.store import ResultStore
from camplug.data.synthetic import SyntheticLocalization


def _centre_value(batch) -> torch.Tensor:
    """A made-up metric: the CAM's value at the image centre, per sample [N]."""
    _, height, width = batch.cams.shape
    return batch.cams[:, height // 2, width // 2]


CENTRE = MetricDefinition(
    "centre_value", "CAM at the centre", mean_of("centre_value"), meaning="made up for a test",
    per_sample=_centre_value, format=lambda v: f"{v:.4f}", higher_is_better=False)


def test_a_new_metric_is_one_definition(tmp_path, monkeypatch):
    """Adding one entry to METRICS puts the metric in the rows, the summary (attribute and
    table), the report and the runs row of SQLite."""
    monkeypatch.setattr(metric_table, "METRICS", (*metric_table.METRICS, CENTRE))
    model = TinyNet()
    ds = SyntheticLocalization(n=5, image_size=32, seed=6)
    summary = run_audit(model, ds, out_dir=tmp_path, thresholds=GRID, gallery_size=1)
    with ResultStore(summary.db_path) as store:
        rows = store.rows(summary.run_id)
        run = store.get_run(summary.run_id)
    items = [ds[i] for i in range(5)]
    images = torch.stack([it["image"] for it in items])
    labels = torch.tensor([it["label"] for it in items])
    import camplug

    maps = camplug.explain(model, images, target=labels).maps[:, 0].clamp(0, 1)
    expected = maps[:, 16, 16].double().numpy()  # independent: the plugin's maps at (16, 16)
    got = np.array([r.metrics["centre_value"] for r in rows])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert summary.centre_value == pytest.approx(expected.mean(), abs=1e-6)
    row = f"| CAM at the centre | {expected.mean():.4f} | made up for a test; lower is better |"
    assert row in summary.to_markdown()
    assert run.summary["centre_value"] == pytest.approx(expected.mean(), abs=1e-6)
    assert "CAM at the centre" in summary.report_path.read_text()


def test_every_metric_reaches_the_rows_the_summary_and_sqlite(tmp_path):
    summary = run_audit(TinyNet(), SyntheticLocalization(n=4, image_size=32, seed=2),
                        out_dir=tmp_path, thresholds=GRID, report=False, faithfulness=True,
                        faithfulness_steps=3)
    with ResultStore(summary.db_path) as store:
        rows = store.rows(summary.run_id)
        run = store.get_run(summary.run_id)
    for definition in metric_table.METRICS:
        assert definition.name in summary.metrics
        if definition.per_sample is not None:
            assert all(definition.sample_key in r.metrics for r in rows), definition.name
        assert definition.name in run.summary
    # the runs row holds the aggregates as numbers: MaxBoxAcc by its mean
    assert run.summary["max_box_acc_v2"] == pytest.approx(summary.max_box_acc_v2.mean)
    assert run.summary["accuracy"] == pytest.approx(summary.accuracy)
    assert run.summary["best_iou"] is None  # a per-sample value with no aggregate


def test_without_faithfulness_its_metrics_are_not_computed(tmp_path):
    summary = run_audit(TinyNet(), SyntheticLocalization(n=2, image_size=32), out_dir=tmp_path,
                        thresholds=GRID, report=False)
    with ResultStore(summary.db_path) as store:
        (row, _) = store.rows(summary.run_id)
    assert "deletion_auc" not in row.metrics and summary.deletion_auc is None
    assert "deletion AUC" not in summary.to_markdown()
    with pytest.raises(AttributeError, match="no attribute 'no_such_metric'"):
        summary.no_such_metric  # noqa: B018


def test_the_run_records_its_method_and_throughput(tmp_path):
    model = TinyNet()
    ds = SyntheticLocalization(n=6, image_size=32, seed=1)
    first = run_audit(model, ds, out_dir=tmp_path, thresholds=GRID, report=False)
    assert first.images_per_second is not None and first.images_per_second > 0
    with ResultStore(first.db_path) as store:
        run = store.get_run(first.run_id)
    assert run.config["method"] == "cam"
    assert run.images_per_second == pytest.approx(first.images_per_second)
    assert f"| throughput (images/s) | {first.images_per_second:.1f} |" in first.to_markdown()
    assert load_summary(first.db_path).images_per_second == pytest.approx(run.images_per_second)
    # resumed with nothing left to audit: the stored throughput stays
    again = run_audit(model, ds, out_dir=tmp_path, thresholds=GRID, report=False)
    assert again.run_id == first.run_id
    assert again.images_per_second == pytest.approx(first.images_per_second)
    with pytest.raises(ValueError, match="unknown method 'nosuchcam'"):
        run_audit(model, ds, out_dir=tmp_path, thresholds=GRID, method="nosuchcam")


def test_the_method_is_passed_to_the_maps_and_is_part_of_the_identity(tmp_path):
    import camplug
    from camplug import metrics

    model = TinyNet()
    ds = SyntheticLocalization(n=4, image_size=32, seed=8)
    cam = run_audit(model, ds, out_dir=tmp_path, thresholds=GRID, report=False)
    grad = run_audit(model, ds, out_dir=tmp_path, thresholds=GRID, report=False,
                     method="GradCAM")
    assert grad.run_id != cam.run_id
    with ResultStore(tmp_path / "audit.sqlite") as store:
        assert store.get_run(grad.run_id).config["method"] == "gradcam"
        rows = store.rows(grad.run_id)
    items = [ds[i] for i in range(4)]
    images = torch.stack([it["image"] for it in items])
    labels = torch.tensor([it["label"] for it in items])
    boxes = torch.stack([it["box"] for it in items])
    maps = camplug.explain(model, images, target=labels, method="gradcam").maps[:, 0]
    _, ious_v2 = metrics.box_ious_v1_v2(maps.clamp(0, 1), boxes, GRID)
    for row, expected in zip(rows, ious_v2, strict=True):
        np.testing.assert_array_equal(row.box_ious, expected.numpy())


def test_metric_definitions_are_unique_and_documented():
    names = [m.name for m in metric_table.METRICS]
    assert len(set(names)) == len(names)
    keys = [m.sample_key for m in metric_table.METRICS if m.per_sample is not None]
    assert len(set(keys)) == len(keys)
    for definition in metric_table.METRICS:
        assert dataclasses.is_dataclass(definition) and definition.label
