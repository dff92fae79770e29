"""Labels-only audits (no boxes): ImageFolder data, map statistics, per-class results,
warnings, error rows for unreadable files, faithfulness, and ``camplug export``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_audit import TinyNet, reference_cams

from camplug import metrics
from camplug.audit import run_audit
from camplug.audit.store import ResultStore
from camplug.cli import main
from camplug.data.folders import open_dataset

SIZE = 32
GRID = [round(0.1 * i, 1) for i in range(10)]


def make_folder(root):
    """Classes a, b (c empty): 3 + 3 images of several modes, one unreadable file, and the
    same file name in two classes."""
    rng = np.random.default_rng(0)
    for cls, names in (("a", ["x.png", "y.png", "z.png"]), ("b", ["x.png", "p.png", "q.png"])):
        (root / cls).mkdir(parents=True)
        for k, name in enumerate(names):
            pixels = rng.integers(0, 256, size=(SIZE + 4 * k, SIZE, 3), dtype=np.uint8)
            mode = ("RGB", "L", "RGBA")[k]
            Image.fromarray(pixels).convert(mode).save(root / cls / name)
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "c").mkdir()
    return root


@pytest.fixture(scope="module")
def labels_run(tmp_path_factory):
    root = make_folder(tmp_path_factory.mktemp("folder"))
    ds = open_dataset(str(root), image_size=SIZE)
    model = TinyNet(classes=3, seed=1)
    out = tmp_path_factory.mktemp("out")
    summary = run_audit(model, ds, out_dir=out, batch_size=4, thresholds=GRID, report=False,
                        faithfulness=True, faithfulness_steps=2)
    with ResultStore(out / "audit.sqlite") as store:
        rows = store.rows(summary.run_id)
    return model, ds, summary, rows, out


def good_items(ds, rows):
    items = [ds[r.sample_index] for r in rows if r.error is None]
    return (torch.stack([it["image"] for it in items]),
            torch.tensor([it["label"] for it in items]))


def test_every_file_is_a_row_and_the_unreadable_one_an_error(labels_run):
    _, ds, summary, rows, _ = labels_run
    assert [r.sample_id for r in rows] == ["a/x.png", "a/y.png", "a/z.png", "b/broken.png",
                                           "b/p.png", "b/q.png", "b/x.png"]
    (bad,) = [r for r in rows if r.error is not None]
    assert bad.sample_id == "b/broken.png"
    assert bad.error.startswith("UnidentifiedImageError: cannot identify image file")
    assert summary.n_errors == 1 and summary.n_stored == 7
    assert summary.warnings == {"class folder without images": 1}
    assert summary.class_names == ["a", "b", "c"]


def test_labels_only_rows_have_no_box_metrics_and_no_box_summary(labels_run):
    _, _, summary, rows, _ = labels_run
    for row in (r for r in rows if r.error is None):
        assert row.box_ious is None and row.box_ious_v1 is None and row.pixel_counts is None
        assert not {"energy_inside", "cam_paper_hit", "pointing_hit"} & set(row.metrics)
        assert "mass_outside" not in row.flags
    for name in ("max_box_acc_v2", "max_box_acc_v1", "pxap", "cam_paper_gt_known",
                 "cam_paper_top1", "pointing_game", "energy_inside"):
        assert summary.metrics[name] is None, name
    labels = [row[0] for row in summary.table()]
    assert "top-1 accuracy (%)" in labels and "map mass in the border band (%)" in labels
    assert not any("MaxBoxAcc" in label for label in labels)


def test_statistics_and_faithfulness_match_an_independent_computation(labels_run):
    model, ds, summary, rows, _ = labels_run
    good = [r for r in rows if r.error is None]
    images, labels = good_items(ds, good)
    cams = reference_cams(model, images, labels)
    with torch.no_grad():
        probs = model(images).double().softmax(1)
    drop, increase = metrics.average_drop_increase(model, images, cams.float(), labels)
    band = np.ones((SIZE, SIZE), dtype=bool)
    band[3:-3, 3:-3] = False
    for i, row in enumerate(good):
        cam = cams[i].numpy()
        assert row.prediction == int(probs[i].argmax())
        assert row.metrics["border_mass"] == pytest.approx(cam[band].sum() / cam.sum(), abs=1e-5)
        assert row.metrics["average_drop"] == pytest.approx(float(drop[i]), abs=1e-4)
        assert row.metrics["increase_in_confidence"] == bool(increase[i])
        expected = {"wrong_class"} if row.prediction != row.label else set()
        if row.score < 0.5:
            expected.add("low_confidence")
        if row.metrics["border_mass"] >= 0.6:
            expected.add("border_focus")
        if row.prediction != row.label and row.score >= 0.9:
            expected.add("confident_wrong")
        assert set(row.flags) == expected
    assert summary.average_drop == pytest.approx(float(drop.double().mean()), abs=1e-4)
    assert summary.border_mass == pytest.approx(np.mean([r.metrics["border_mass"]
                                                         for r in good]))


def test_per_class_accuracy_and_confusions(labels_run):
    _, _, summary, rows, _ = labels_run
    good = [r for r in rows if r.error is None]
    for stats in summary.per_class:
        mine = [r for r in good if r.label == stats.label]
        assert stats.n == len(mine)
        assert stats.accuracy == pytest.approx(np.mean([r.prediction == r.label for r in mine]))
        wrong = Counter(r.prediction for r in mine if r.prediction != r.label)
        assert dict(stats.confusions) == dict(wrong)
        assert stats.name == "ab"[stats.label]
    assert [s.label for s in summary.per_class] == [0, 1]
    assert [row[0] for row in summary.class_table()] == ["a", "b"]


def test_export_writes_the_stored_maps_and_overlays(labels_run, tmp_path, capsys):
    from camplug.audit.scoring import input_maps
    from camplug.drawing import overlay

    _, ds, summary, rows, out = labels_run
    npz, png = tmp_path / "maps.npz", tmp_path / "png"
    assert main(["export", str(out), "--npz", str(npz), "--png", str(png)]) == 0
    with ResultStore(out / "audit.sqlite") as store:
        stored = store.load_maps(summary.run_id)
    saved = np.load(npz)
    good = [r for r in rows if r.error is None]
    assert list(saved["sample_ids"]) == [r.sample_id for r in good]
    assert list(saved["labels"]) == [r.label for r in good]
    assert list(saved["predictions"]) == [r.prediction for r in good]
    np.testing.assert_array_equal(saved["maps"], np.stack(list(stored.values())))
    files = sorted(p.name for p in png.iterdir())
    assert files == ["000000_a_x.png", "000001_a_y.png", "000002_a_z.png", "000004_b_p.png",
                     "000005_b_q.png", "000006_b_x.png"]
    first = np.asarray(Image.open(png / files[0]))
    cam = input_maps(torch.from_numpy(stored["a/x.png"][:1]), (SIZE, SIZE))[0].numpy()
    np.testing.assert_array_equal(first, overlay(ds.rgb(0), cam))
    assert main(["export", str(out)]) == 2
    assert "nothing to write" in capsys.readouterr().err


def test_the_command_line_audits_an_image_folder(tmp_path, capsys):
    root = make_folder(tmp_path / "data")
    here = str(Path(__file__).parent)
    (tmp_path / "net.py").write_text(
        f"import sys\nsys.path.insert(0, {here!r})\nfrom test_audit import TinyNet\n\n"
        "def build():\n    return TinyNet(classes=3, seed=1)\n")
    out = tmp_path / "out"
    status = main(["audit", "--model", f"{tmp_path / 'net.py'}:build", "--data", str(root),
                   "--out", str(out), "--image-size", str(SIZE), "--no-report",
                   "--no-progress", "--border", "0.2", "--high-confidence", "0.7",
                   "--thresholds-step", "0.25"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "| map mass in the border band (%) |" in printed
    assert "| warning: class folder without images | 1 |" in printed
    with ResultStore(out / "audit.sqlite") as store:
        (run,) = store.runs()
    assert run.config["border_fraction"] == 0.2
    assert run.config["flags"]["high_confidence"] == 0.7
    assert run.config["class_names"] == ["a", "b", "c"]


def test_worker_processes_give_the_same_rows(labels_run, tmp_path):
    model, ds, summary, rows, _ = labels_run
    again = run_audit(model, ds, out_dir=tmp_path, batch_size=4, thresholds=GRID,
                      report=False, faithfulness=True, faithfulness_steps=2, num_workers=1)
    assert again.run_id == summary.run_id  # workers do not change the results
    with ResultStore(tmp_path / "audit.sqlite") as store:
        other = store.rows(again.run_id)
    for a, b in zip(rows, other, strict=True):
        assert (a.sample_id, a.prediction, a.error, a.flags) == (
            b.sample_id, b.prediction, b.error, b.flags)
        assert a.metrics == pytest.approx(b.metrics)


def test_clipped_boxes_are_counted_and_boxes_wholly_outside_are_error_rows(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    rng = np.random.default_rng(3)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / name)
    (root / "annotations.csv").write_text("filename,label,x0,y0,x1,y1\n"
                                          "a.png,0,-5,2,10,40\nb.png,1,40,0,50,9\nc.png,1,,,,\n")
    ds = open_dataset(str(root), image_size=SIZE)
    summary = run_audit(TinyNet(classes=3), ds, out_dir=tmp_path / "out", thresholds=GRID,
                        report=False)
    with ResultStore(summary.db_path) as store:
        a, b, c = store.rows(summary.run_id)
    assert a.warnings == [f"box clipped: [-5.0, 2.0, 10.0, 40.0] reached outside the "
                          f"{SIZE}x{SIZE} image"]
    assert a.box_ious is not None and "energy_inside" in a.metrics
    assert b.error == (f"ValueError: b.png: box [40.0, 0.0, 50.0, 9.0] lies wholly outside the "
                       f"{SIZE}x{SIZE} image")
    assert c.error is None and c.box_ious is None and "border_mass" in c.metrics
    assert summary.warnings == {"box clipped": 1}
    assert summary.max_box_acc_v2 is not None  # over the one sample with a box
