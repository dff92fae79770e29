"""camplug.audit: per-sample rows and aggregates against an independent computation, error
rows, flags, run identity, and the user's model left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tolerances import assert_close
from torch import nn
from torch.utils.data import Dataset

import camplug
from camplug import metrics
from camplug.audit import FlagThresholds, load_summary, run_audit
from camplug.audit.store import ResultStore
from camplug.data.synthetic import SyntheticLocalization

GRID = [round(0.05 * i, 2) for i in range(20)]  # a coarser CAM threshold grid keeps tests fast
PIXEL_GRID = GRID + [1.0]


class TinyNet(nn.Module):
    """conv-ReLU-conv-ReLU, global average pooling, linear: an exact-CAM model."""

    def __init__(self, classes: int = 8, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)

    def forward(self, x):
        return self.fc(self.pool(self.body(x)).flatten(1))


def reference_cams(model: TinyNet, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The labelled class's CAM, written out in fp64: weighted feature sum, min-max on the
    low-resolution map (eps 1e-7), bilinear upsampling. [N, H, W]."""
    with torch.no_grad():
        features = model.body.double()(images.double())
        model.body.float()
        weights = model.fc.weight.double()[labels]  # [N, K]
        low = torch.einsum("nk,nkhw->nhw", weights, features)
        flat = low.flatten(1)
        low_min = flat.min(1).values[:, None, None]
        low_max = flat.max(1).values[:, None, None]
        normalized = (low - low_min) / (low_max - low_min + 1e-7)
        return F.interpolate(normalized[:, None], size=images.shape[-2:], mode="bilinear",
                             align_corners=False)[:, 0]


def stacked(ds: Dataset, indices) -> dict[str, torch.Tensor]:
    items = [ds[i] for i in indices]
    return {
        "images": torch.stack([it["image"] for it in items]),
        "labels": torch.tensor([it["label"] for it in items]),
        "boxes": torch.stack([it["box"] for it in items]),
        "masks": torch.stack([it["mask"] for it in items]),
    }


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One audit of a tiny model on 10 synthetic 32 px images, in batches of 4."""
    out = tmp_path_factory.mktemp("audit")
    model = TinyNet()
    ds = SyntheticLocalization(n=10, image_size=32, seed=5)
    summary = run_audit(model, ds, out_dir=out, batch_size=4, thresholds=GRID, report=False)
    with ResultStore(out / "audit.sqlite") as store:
        rows = store.rows(summary.run_id)
    return model, ds, summary, rows


def test_one_row_per_sample_with_the_datasets_ids(small_run):
    _, ds, summary, rows = small_run
    assert [r.sample_index for r in rows] == list(range(10))
    assert [r.sample_id for r in rows] == [ds.sample_id(i) for i in range(10)]
    assert all(r.error is None for r in rows)
    assert summary.n_samples == summary.n_stored == 10 and summary.n_errors == 0
    with ResultStore(summary.db_path) as store:
        run = store.get_run(summary.run_id)
    assert run.status == "complete" and run.finished_at is not None
    assert run.torch_version == torch.__version__ and run.camplug_version == camplug.__version__
    assert run.config["thresholds"] == GRID and run.n_samples == 10


def test_a_stored_run_summarizes_the_same_without_the_model(small_run):
    _, _, summary, _ = small_run
    again = load_summary(summary.db_path)
    assert again.run_id == summary.run_id
    assert again.table() == summary.table()


def test_rows_match_an_independent_computation(small_run):
    model, ds, summary, rows = small_run
    data = stacked(ds, range(10))
    with torch.no_grad():
        probs = model(data["images"]).double().softmax(1)
    # the audit used the CAM of the labelled class: the plugin's maps match a written-out fp64
    # reference, and the stored metrics are the metrics of those maps
    explained = camplug.explain(model, data["images"], target=data["labels"]).maps[:, 0]
    reference = reference_cams(model, data["images"], data["labels"])
    assert_close(explained, reference, torch.float32, "labelled-class CAM")
    maps = explained.clamp(0, 1)
    ious_v1, ious_v2 = metrics.box_ious_v1_v2(maps, data["boxes"], GRID)
    hits = metrics.cam_paper_localization(maps, data["boxes"])
    tp, fp, fn = metrics.pixel_pr_counts(maps, data["masks"], PIXEL_GRID)
    for i, row in enumerate(rows):
        assert row.label == int(data["labels"][i])
        assert row.prediction == int(probs[i].argmax())
        assert row.score == pytest.approx(float(probs[i].max()), abs=1e-6)
        assert row.label_score == pytest.approx(float(probs[i, row.label]), abs=1e-6)
        np.testing.assert_array_equal(row.box_ious, ious_v2[i].numpy())
        np.testing.assert_array_equal(row.box_ious_v1, ious_v1[i].numpy())
        np.testing.assert_array_equal(row.pixel_counts,
                                      torch.stack([tp[i], fp[i], fn[i]]).numpy())
        assert row.metrics["cam_paper_hit"] == bool(hits[i])
        # energy and pointing written out directly on the fp64 reference map
        cam = reference[i].numpy()
        x0, y0, x1, y1 = (int(v) for v in data["boxes"][i])
        inside = cam[y0:y1 + 1, x0:x1 + 1].sum() / cam.sum()
        assert row.metrics["energy_inside"] == pytest.approx(inside, abs=1e-5)
        area = (x1 - x0 + 1) * (y1 - y0 + 1) / cam.size
        assert row.metrics["box_area_fraction"] == pytest.approx(area, abs=1e-12)
        peak = np.unravel_index(np.argmax(cam), cam.shape)
        assert row.metrics["pointing_hit"] == bool(data["masks"][i][peak])
        # map statistics that need no boxes, written out on the reference map (32 px: a
        # 10% band is 3 pixels per side)
        band = np.ones_like(cam, dtype=bool)
        band[3:-3, 3:-3] = False
        assert row.metrics["border_mass"] == pytest.approx(cam[band].sum() / cam.sum(),
                                                           abs=1e-5)
        p = cam.ravel() / cam.sum()
        entropy = -np.sum(p[p > 0] * np.log(p[p > 0]))
        assert row.metrics["effective_area"] == pytest.approx(np.exp(entropy) / cam.size,
                                                              rel=1e-5)
        ys, xs = np.mgrid[0:32, 0:32]
        assert row.metrics["centroid_x"] == pytest.approx(
            ((xs + 0.5) / 32 * cam).sum() / cam.sum(), abs=1e-5)
        assert row.metrics["centroid_y"] == pytest.approx(
            ((ys + 0.5) / 32 * cam).sum() / cam.sum(), abs=1e-5)


def test_aggregates_match_an_independent_computation(small_run):
    model, ds, summary, rows = small_run
    data = stacked(ds, range(10))
    maps = camplug.explain(model, data["images"], target=data["labels"]).maps[:, 0].clamp(0, 1)
    with torch.no_grad():
        predictions = model(data["images"]).argmax(1)
    correct = (predictions == data["labels"]).numpy()
    assert summary.accuracy == pytest.approx(correct.mean())
    v2 = metrics.max_box_acc(maps, data["boxes"], thresholds=GRID)
    v1 = metrics.max_box_acc(maps, data["boxes"], thresholds=GRID, multi_contour=False)
    assert summary.max_box_acc_v2.accuracy == v2.accuracy
    assert summary.max_box_acc_v2.best_threshold == v2.best_threshold
    assert summary.max_box_acc_v1.accuracy == v1.accuracy
    assert summary.pxap == pytest.approx(metrics.pxap(maps, data["masks"], PIXEL_GRID), abs=1e-12)
    hits = metrics.cam_paper_localization(maps, data["boxes"]).numpy()
    assert summary.cam_paper_gt_known == pytest.approx(hits.mean())
    assert summary.cam_paper_top1 == pytest.approx((hits & correct).mean())
    pointing = metrics.pointing_game(maps, data["masks"]).numpy()
    assert summary.pointing_game == pytest.approx(pointing.mean())
    energy, fraction = metrics.energy_pointing_game(maps, data["boxes"])
    assert summary.energy_inside == pytest.approx(float(energy.mean()), abs=1e-6)
    assert summary.box_area_fraction == pytest.approx(float(fraction.mean()), abs=1e-12)
    table = summary.to_markdown()
    assert f"| MaxBoxAccV2 (%) | {100 * v2.mean:.1f} |" in table
    assert f"| top-1 accuracy (%) | {100 * correct.mean():.1f} |" in table


def test_flags_follow_their_documented_rules(small_run):
    _, _, summary, rows = small_run
    rules = FlagThresholds()
    for row in rows:
        expected = set()
        if row.prediction != row.label:
            expected.add("wrong_class")
        if row.score < rules.low_confidence:
            expected.add("low_confidence")
        inside, area = row.metrics["energy_inside"], row.metrics["box_area_fraction"]
        if row.prediction == row.label and inside < 0.5 and inside < 2.0 * area:
            expected.add("mass_outside")
        if row.metrics["border_mass"] >= 0.6:
            expected.add("border_focus")
        if row.prediction != row.label and row.score >= 0.9:
            expected.add("confident_wrong")
        assert set(row.flags) == expected
    assert summary.flag_counts == {
        name: sum(name in r.flags for r in rows)
        for name in ("wrong_class", "low_confidence", "mass_outside", "border_focus",
                     "confident_wrong")}


def test_flag_thresholds_are_configurable(tmp_path):
    model = TinyNet()
    ds = SyntheticLocalization(n=6, image_size=32, seed=1)
    strict = run_audit(model, ds, out_dir=tmp_path, thresholds=GRID, report=False,
                   flags=FlagThresholds(min_mass_inside=1.0, min_lift=1e9, low_confidence=1.0,
                                        max_border_mass=0.0, high_confidence=0.0))
    lax = run_audit(model, ds, out_dir=tmp_path, thresholds=GRID, report=False,
                flags=FlagThresholds(min_mass_inside=0.0, low_confidence=0.0,
                                     max_border_mass=1.0, high_confidence=1.0))
    assert strict.run_id != lax.run_id  # flag rules are part of the run's identity
    with ResultStore(tmp_path / "audit.sqlite") as store:
        strict_rows, lax_rows = store.rows(strict.run_id), store.rows(lax.run_id)
    for s, la in zip(strict_rows, lax_rows, strict=True):
        assert "low_confidence" in s.flags  # every probability is below 1
        assert ("mass_outside" in s.flags) == (s.prediction == s.label)
        assert "border_focus" in s.flags  # every share is >= 0
        assert ("confident_wrong" in s.flags) == (s.prediction != s.label)
        assert set(la.flags) - {"border_focus", "confident_wrong"} == (
            {"wrong_class"} if la.prediction != la.label else set())
        assert ("border_focus" in la.flags) == (la.metrics["border_mass"] >= 1.0)
        assert ("confident_wrong" in la.flags) == (la.prediction != la.label and la.score >= 1)
    with pytest.raises(ValueError, match="min_mass_inside must be in"):
        FlagThresholds(min_mass_inside=1.5)
    with pytest.raises(ValueError, match="min_lift must be >= 0"):
        FlagThresholds(min_lift=-1.0)
    with pytest.raises(ValueError, match="high_confidence must be in"):
        FlagThresholds(high_confidence=2.0)


class Faulty(Dataset):
    """A synthetic set where sample 3 cannot be read, sample 5 has a label the model lacks
    and sample 6 has another image size."""

    def __init__(self) -> None:
        self.inner = SyntheticLocalization(n=8, image_size=32, seed=2)
        self.other = SyntheticLocalization(n=8, image_size=40, seed=2)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index):
        if index == 3:
            raise OSError("image file is truncated")
        item = dict(self.other[index] if index == 6 else self.inner[index])
        if index == 5:
            item["label"] = 99
        return item


def test_bad_samples_become_error_rows_and_the_run_goes_on(tmp_path):
    summary = run_audit(TinyNet(), Faulty(), out_dir=tmp_path, batch_size=8, thresholds=GRID,
                    report=False)
    with ResultStore(tmp_path / "audit.sqlite") as store:
        rows = {r.sample_index: r for r in store.rows(summary.run_id)}
    assert sorted(rows) == list(range(8))
    assert rows[3].error == "OSError: image file is truncated"
    assert "label 99 is not a class of the model (it has 8 outputs)" in rows[5].error
    assert "image shape (3, 40, 40) differs from the batch's (3, 32, 32)" in rows[6].error
    good = [r for i, r in rows.items() if i not in (3, 5, 6)]
    assert all(r.error is None and r.box_ious is not None for r in good)
    assert summary.n_errors == 3 and summary.n_stored == 8
    assert summary.accuracy == pytest.approx(np.mean([r.prediction == r.label for r in good]))


def test_the_users_model_is_left_as_it_was(tmp_path):
    model = TinyNet().train()
    model.body[0].eval()  # a mixed state must come back exactly
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {name: m.training for name, m in model.named_modules()}
    run_audit(model, SyntheticLocalization(n=4, image_size=32), out_dir=tmp_path, thresholds=GRID,
          report=False)
    assert {name: m.training for name, m in model.named_modules()} == modes
    for name, module in model.named_modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, name
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert next(model.parameters()).device.type == "cpu"


def test_same_configuration_resumes_and_fresh_restarts(tmp_path):
    model = TinyNet()
    ds = SyntheticLocalization(n=5, image_size=32, seed=3)
    first = run_audit(model, ds, out_dir=tmp_path, thresholds=GRID, report=False)
    again = run_audit(model, ds, out_dir=tmp_path, thresholds=GRID, report=False)
    assert again.run_id == first.run_id and again.n_stored == 5
    with ResultStore(tmp_path / "audit.sqlite") as store:
        assert store.get_run(first.run_id).attempts == 2
        assert store.count(first.run_id) == 5
    fresh = run_audit(model, ds, out_dir=tmp_path, thresholds=GRID, report=False, fresh=True)
    with ResultStore(tmp_path / "audit.sqlite") as store:
        assert store.get_run(fresh.run_id).attempts == 1 and store.count(fresh.run_id) == 5
    # another model (other weights) is another run in the same file
    other = run_audit(TinyNet(seed=1), ds, out_dir=tmp_path, thresholds=GRID, report=False)
    assert other.run_id != first.run_id
    with ResultStore(tmp_path / "audit.sqlite") as store:
        assert len(store.runs()) == 2


def test_faithfulness_metrics_on_request(tmp_path):
    model = TinyNet()
    ds = SyntheticLocalization(n=3, image_size=32, seed=4)
    summary = run_audit(model, ds, out_dir=tmp_path, thresholds=GRID, report=False,
                    faithfulness=True, faithfulness_steps=4)
    with ResultStore(tmp_path / "audit.sqlite") as store:
        rows = store.rows(summary.run_id)
    data = stacked(ds, range(3))
    maps = camplug.explain(model, data["images"], target=data["labels"]).maps[:, 0].clamp(0, 1)
    deletion = metrics.deletion_auc(model, data["images"], maps, data["labels"], steps=4)
    insertion = metrics.insertion_auc(model, data["images"], maps, data["labels"], steps=4)
    for i, row in enumerate(rows):
        assert row.metrics["deletion_auc"] == pytest.approx(float(deletion[i]), abs=1e-6)
        assert row.metrics["insertion_auc"] == pytest.approx(float(insertion[i]), abs=1e-6)
    assert summary.deletion_auc == pytest.approx(float(deletion.mean()), abs=1e-6)
    assert "deletion AUC" in summary.to_markdown()


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_models_get_a_clear_error(tmp_path):
    scripted = torch.jit.script(TinyNet().eval())
    with pytest.raises(TypeError, match="TorchScript.*forward hooks.*Workaround"):
        run_audit(scripted, SyntheticLocalization(n=2, image_size=32), out_dir=tmp_path)
    assert not (tmp_path / "audit.sqlite").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"thresholds": [0.5, 0.2]}, "increasing sequence in \\[0, 1\\)"),
    ({"thresholds": [0.0, 1.0]}, "increasing sequence in \\[0, 1\\)"),
    ({"iou_thresholds": (0.0,)}, "iou_thresholds must be values in \\(0, 1\\]"),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_audit(TinyNet(), SyntheticLocalization(n=2, image_size=32), out_dir=tmp_path, **kwargs)


def test_stored_maps_are_the_low_resolution_maps_of_the_label_and_the_prediction(small_run):
    model, ds, summary, rows = small_run
    data = stacked(ds, range(10))
    with torch.no_grad():
        features = model.body.double()(data["images"].double())
        model.body.float()
        predictions = model(data["images"]).argmax(1)
    with ResultStore(summary.db_path) as store:
        maps = store.load_maps(summary.run_id)
    assert list(maps) == [r.sample_id for r in rows]
    for i, row in enumerate(rows):
        stored = maps[row.sample_id]
        assert stored.dtype == np.float32 and stored.shape == (2, 8, 8)
        for channel, target in enumerate((data["labels"][i], predictions[i])):
            # written out: the class's weights times the features, no bias, no normalization
            want = torch.einsum("k,khw->hw", model.fc.weight.detach().double()[target],
                                features[i])
            span = float(want.max() - want.min())
            assert np.abs(stored[channel] - want.numpy()).max() <= span * 2.0**-11 + 1e-5


def test_the_box_protocol_is_part_of_the_run_and_reaches_the_metrics(tmp_path):
    model = TinyNet()
    ds = SyntheticLocalization(n=6, image_size=32, seed=5)
    summary = run_audit(model, ds, out_dir=tmp_path, batch_size=6, thresholds=GRID,
                        report=False, protocol="wsolevaluation")
    default = run_audit(model, ds, out_dir=tmp_path, batch_size=6, thresholds=GRID,
                        report=False)
    assert summary.run_id != default.run_id  # two runs, neither resumes the other
    for run, protocol in ((summary, "wsolevaluation"), (default, "camplug")):
        assert run.protocol == protocol and run.method == "cam"
        assert ("box protocol", protocol, metrics.PROTOCOLS[protocol]) in run.table()
        assert f"| box protocol | {protocol} |" in run.to_markdown()
        assert load_summary(tmp_path / "audit.sqlite", run.run_id).protocol == protocol
    with ResultStore(tmp_path / "audit.sqlite") as store:
        rows = store.rows(summary.run_id)
    data = stacked(ds, range(6))
    maps = camplug.explain(model, data["images"], target=data["labels"]).maps[:, 0].clamp(0, 1)
    ious_v1, ious_v2 = metrics.box_ious_v1_v2(maps, data["boxes"], GRID,
                                              protocol="wsolevaluation")
    hits = metrics.cam_paper_localization(maps, data["boxes"], protocol="wsolevaluation")
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(row.box_ious, ious_v2[i].numpy())
        np.testing.assert_array_equal(row.box_ious_v1, ious_v1[i].numpy())
        assert row.metrics["cam_paper_hit"] == bool(hits[i])
    with pytest.raises(ValueError, match=r"protocol must be one of \['camplug', 'wsolevaluation'"):
        run_audit(model, ds, out_dir=tmp_path / "x", report=False, protocol="voc")
