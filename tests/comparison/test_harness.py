"""The comparison harness: its statistics against scipy/numpy, its measurements, its table."""

from __future__ import annotations

import math
import os
import sys
import warnings
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from models import DenseNetLike, ResNetLike, TupleOutputNet, ViTLike, images, randomize_norms
from scipy import stats
from torch_threads import single_intra_op_thread

from camplug.comparison.harness import (
    DEFAULT_METHODS,
    ComparisonRow,
    ComparisonTable,
    average_ranks,
    canonical_method,
    compare,
    known_methods,
    peak_memory_bytes,
    spearman,
    time_call,
    top_percent_iou,
    top_percent_mask,
)

FAST = {"warmup": 0, "faithfulness_steps": 4}


one_thread = pytest.fixture(autouse=True, scope="module")(single_intra_op_thread)


def tiny_resnet(seed: int = 0) -> ResNetLike:
    torch.manual_seed(seed)
    return randomize_norms(ResNetLike(), seed).eval()


def model_state(model: torch.nn.Module) -> list[tuple]:
    """Everything compare() must leave alone: flags, hooks, gradients, parameter values."""
    state = []
    for name, module in model.named_modules():
        state.append((name, module.training, len(module._forward_hooks),
                      len(module._forward_pre_hooks), len(module._backward_hooks)))
    for name, param in model.named_parameters():
        state.append((name, param.requires_grad, param.grad is None, param.detach().clone()))
    return state


def same_state(a: list[tuple], b: list[tuple]) -> bool:
    if len(a) != len(b):
        return False
    def equal(u: object, v: object) -> bool:
        return torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v

    return all(all(map(equal, x, y)) and len(x) == len(y) for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------ statistics
def test_average_ranks_match_scipy_with_ties():
    generator = torch.Generator().manual_seed(0)
    values = torch.randint(0, 6, (5, 40), generator=generator).float()
    values[2] = 3.0  # all tied
    ranks = average_ranks(values)
    for row, got in zip(values, ranks, strict=True):
        np.testing.assert_array_equal(got.numpy(), stats.rankdata(row.numpy()))


def test_spearman_matches_scipy():
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(6, 7, 9, generator=generator)
    b = a + 0.8 * torch.randn(6, 7, 9, generator=generator)
    b[1] = b[1].round()  # ties
    b[2] = -a[2]
    got = spearman(a, b)
    for i in range(6):
        want = stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert got[i].item() == pytest.approx(want, abs=1e-12)
    assert got[2].item() == pytest.approx(-1.0)
    assert math.isnan(spearman(torch.ones(1, 4, 4), a[:1, :4, :4])[0].item())


def numpy_top_mask(m: np.ndarray, percent: float) -> np.ndarray:
    flat = np.sort(m.ravel())[::-1]
    k = max(1, math.ceil(percent / 100 * flat.size))
    return m >= flat[k - 1]


@pytest.mark.parametrize("percent", [1, 10, 33.3, 100])
def test_top_percent_iou_matches_a_numpy_loop(percent):
    generator = torch.Generator().manual_seed(2)
    a = torch.randn(4, 10, 12, generator=generator)
    b = 0.5 * a + torch.randn(4, 10, 12, generator=generator)
    got = top_percent_iou(a, b, percent)
    for i in range(4):
        ma, mb = numpy_top_mask(a[i].numpy(), percent), numpy_top_mask(b[i].numpy(), percent)
        assert got[i].item() == pytest.approx((ma & mb).sum() / (ma | mb).sum())
    assert torch.equal(top_percent_iou(a, a, percent), torch.ones(4, dtype=torch.float64))


def test_top_percent_mask_keeps_ties_and_checks_its_arguments():
    maps = torch.tensor([[[3.0, 3.0], [1.0, 0.0]]])
    assert top_percent_mask(maps, 25).sum() == 2  # k = 1 pixel, but both 3s are tied
    assert top_percent_mask(torch.zeros(1, 3, 3), 10).all()
    with pytest.raises(ValueError, match=r"percent must lie in \(0, 100\]"):
        top_percent_mask(maps, 0)
    with pytest.raises(ValueError, match="same shape"):
        top_percent_iou(maps, torch.zeros(1, 2, 3), 10)


# ------------------------------------------------------------------ measurements
def test_peak_memory_counts_the_largest_simultaneous_allocation():
    mib = 2**20

    def allocate() -> torch.Tensor:
        a = torch.empty(4 * mib, dtype=torch.uint8)
        b = torch.empty(8 * mib, dtype=torch.uint8)  # 12 MiB live here
        del a, b
        return torch.empty(2 * mib, dtype=torch.uint8)

    peak = peak_memory_bytes(allocate, torch.device("cpu"))
    assert peak is not None
    assert 12 * mib <= peak < 12 * mib + 64 * 1024


def test_peak_memory_keeps_the_calls_stderr_and_drops_the_profilers_log(capfd):
    def noisy() -> torch.Tensor:
        print("message from the measured call", file=sys.stderr, flush=True)
        os.write(2, b"native write from the measured call\n")
        return torch.empty(1024)

    assert peak_memory_bytes(noisy, torch.device("cpu")) is not None
    err = capfd.readouterr().err
    assert "message from the measured call" in err
    assert "native write from the measured call" in err
    assert "profiler_start" not in err and "profiler_stop" not in err
    print("stderr still works afterwards", file=sys.stderr, flush=True)
    assert "stderr still works afterwards" in capfd.readouterr().err


def test_time_call_runs_warmup_and_repeats():
    calls = []
    result, seconds = time_call(lambda: calls.append(1) or len(calls), torch.device("cpu"),
                                warmup=2, repeats=3)
    assert len(calls) == 5 and result == 5
    assert len(seconds) == 3 and all(s >= 0 for s in seconds)
    with pytest.raises(ValueError, match="repeats >= 1"):
        time_call(lambda: None, torch.device("cpu"), repeats=0)


# ------------------------------------------------------------------ compare
def test_compare_tabulates_every_method_in_valid_ranges():
    model = tiny_resnet()
    x = images(2, 16, seed=3)
    before = model_state(model)
    methods = [*DEFAULT_METHODS, "vargrad:CAM"]
    table = compare(model, x, methods=methods, method_kwargs={"IntegratedGradients":
                                                              {"n_steps": 8}}, **FAST)
    assert same_state(before, model_state(model))
    assert [row.method for row in table.rows] == ["CAM", *DEFAULT_METHODS[1:], "vargrad:CAM"]
    with torch.no_grad():
        assert torch.equal(table.targets, model(x).argmax(1))
    for row in table.rows:
        assert row.seconds > 0 and row.peak_memory_bytes is not None
        assert row.peak_memory_bytes >= 0
        assert row.maps.shape == (2, 16, 16) and row.maps.dtype == torch.float32
        finite = row.spearman[~row.spearman.isnan()]
        assert ((finite >= -1 - 1e-12) & (finite <= 1 + 1e-12)).all()
        assert ((row.top_iou >= 0) & (row.top_iou <= 1)).all()
        for auc in (row.deletion_auc, row.insertion_auc):
            assert auc.shape == (2,) and ((auc >= 0) & (auc <= 1)).all()
    cam, grad_cam = table.rows[0], table.rows[1]
    assert torch.equal(cam.spearman, torch.ones(2, dtype=torch.float64))
    assert torch.equal(cam.top_iou, torch.ones(2, dtype=torch.float64))
    # The CAM row is the layer map brought bilinearly to the input; LayerGradCam's is the same.
    reference = LayerGradCam(model, model.layer2).attribute(x, target=table.targets).detach()
    upsampled = F.interpolate(reference, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(cam.maps, upsampled[:, 0], atol=1e-6, rtol=1e-6)
    assert (grad_cam.spearman > 0.999).all()
    torch.testing.assert_close(grad_cam.deletion_auc, cam.deletion_auc, atol=1e-6, rtol=0)


def test_compare_with_an_explicit_target_and_no_faithfulness():
    model = tiny_resnet()
    calls = []
    table = compare(model, images(3, 16), target=4, methods=["Saliency", "InputXGradient"],
                    faithfulness=False, measure_memory=False, warmup=0, repeats=3,
                    progress=lambda *call: calls.append(call))
    assert table.targets.tolist() == [4, 4, 4]
    assert [row.method for row in table.rows] == ["CAM", "Saliency", "InputXGradient"]
    assert calls == [(0, 3, "CAM"), (1, 3, "Saliency"), (2, 3, "InputXGradient")]
    for row in table.rows:  # each method timed 3 times; the table shows the median and range
        assert len(row.times) == 3 and row.seconds == sorted(row.times)[1]
        cells = next(line for line in table.to_markdown().splitlines()
                     if line.startswith(f"| {row.method} |")).split(" | ")
        assert cells[1] == f"{1000 * row.seconds:.1f}"
        assert cells[2] == f"{1000 * min(row.times):.1f}-{1000 * max(row.times):.1f}"
    assert "median and range of 3 timed call(s) after 0 warm-up call(s)" in table.to_markdown()
    assert all(r.deletion_auc is None and r.peak_memory_bytes is None for r in table.rows)
    assert "n/a" in table.to_markdown()


def test_compare_extra_methods_and_tuple_outputs():
    torch.manual_seed(0)
    model = randomize_norms(TupleOutputNet()).eval()
    table = compare(model, images(2, 16), methods=["GuidedBackprop", "Deconvolution",
                                                   "Occlusion", "smoothgrad_sq:LayerGradCam"],
                    output=0, method_kwargs={"Occlusion": {"sliding_window_shapes": (3, 8, 8),
                                                           "strides": (3, 8, 8)}}, **FAST)
    assert [r.method for r in table.rows] == ["CAM", "GuidedBackprop", "Deconvolution",
                                              "Occlusion", "smoothgrad_sq:LayerGradCam"]
    assert all(torch.isfinite(r.maps).all() for r in table.rows)


def one_row_table() -> ComparisonTable:
    row = ComparisonRow(
        method="a<b|c", times=(0.0131, 0.0123, 0.0119), peak_memory_bytes=3 * 2**20,
        spearman=torch.tensor([0.5, float("nan")], dtype=torch.float64),
        top_iou=torch.tensor([0.25, 0.75], dtype=torch.float64),
        deletion_auc=torch.tensor([0.1, 0.3], dtype=torch.float64),
        insertion_auc=None, maps=torch.zeros(2, 4, 4),
    )
    return ComparisonTable([row], torch.tensor([1, 2]), (4, 4), 10.0, "cpu", warmup=1)


def test_rendering_markdown_and_html():
    table = one_row_table()
    markdown = table.to_markdown().splitlines()
    assert markdown[0].startswith("2 images at 4x4 on cpu")
    assert markdown[2].startswith(
        "| method | time (ms) | time range (ms) | peak mem (MiB) | Spearman vs CAM")
    assert "top-10% IoU vs CAM" in markdown[2]
    assert markdown[4] == "| a<b\\|c | 12.3 | 11.9-13.1 | 3.0 | 0.500 | 0.500 | 0.200 | n/a |"

    class Cells(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.cells: list[str] = []
            self.rows = 0

        def handle_starttag(self, tag, attrs):  # noqa: ANN001
            self.rows += tag == "tr"

        def handle_data(self, data):  # noqa: ANN001
            self.cells.append(data)

    parser = Cells()
    parser.feed(table.to_html())
    assert parser.rows == 2  # header and one row
    assert "a<b|c" in parser.cells and "12.3" in parser.cells
    assert "&lt;" in table.to_html()
    assert str(table) == table.to_markdown()


def test_write_picks_the_format_from_the_suffix(tmp_path):
    table = one_row_table()
    assert table.write(tmp_path / "t.md").read_text() == table.to_markdown()
    nested = tmp_path / "new" / "folder" / "T.HTML"
    assert table.write(nested) == nested
    page = nested.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert table.to_html() in page and '<meta charset="utf-8">' in page
    with pytest.raises(ValueError, match="t.txt: the format follows the suffix, one of .md"):
        table.write(tmp_path / "t.txt")
    assert not (tmp_path / "t.txt").exists()


# ------------------------------------------------------------------ names and errors
def test_method_names():
    known = known_methods()
    assert {"CAM", "LayerGradCam", "GuidedGradCam", "Saliency", "IntegratedGradients",
            "InputXGradient"} <= set(known)
    assert canonical_method("saliency") == "Saliency"
    assert canonical_method("SmoothGrad:integratedgradients") == "smoothgrad:IntegratedGradients"
    with pytest.raises(ValueError, match="unknown method 'Sailency'.*Known methods: CAM, "):
        canonical_method("Sailency")
    with pytest.raises(ValueError, match="captum has DeepLift, but compare\\(\\) has no recipe"):
        canonical_method("DeepLift")
    with pytest.raises(ValueError, match="'blur' is not a NoiseTunnel type.*'smoothgrad:'"):
        canonical_method("blur:Saliency")


def test_bad_arguments_are_refused_before_running_anything():
    model = tiny_resnet()
    x = images(2, 16)
    before = model_state(model)
    with pytest.raises(ValueError, match="unknown method 'HiResCAM'.*gradcam\\+\\+.*Saliency"):
        compare(model, x, methods=["Saliency", "HiResCAM"])
    with pytest.raises(ValueError, match="method_kwargs names \\['Occlusion'\\]"):
        compare(model, x, methods=["Saliency"], method_kwargs={"Occlusion": {}})
    with pytest.raises(ValueError, match="shape \\[N, C, H, W\\]"):
        compare(model, x[0])
    with pytest.raises(ValueError, match="out of range"):
        compare(model, x, target=99, methods=["Saliency"], **FAST)
    with pytest.raises(ValueError, match="top_percent"):
        compare(model, x, top_percent=0)
    with pytest.raises(ValueError, match="repeats must be an int >= 1, got 0"):
        compare(model, x, methods=["Saliency"], repeats=0)
    with pytest.raises(ValueError, match="warmup must be an int >= 0, got -1"):
        compare(model, x, methods=["Saliency"], warmup=-1)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="need autograd"):
        compare(model, x)
    assert same_state(before, model_state(model))


def test_layer_methods_need_a_module_holding_the_pooled_tensor():
    model = build_densenet()  # pools F.relu(features): no module outputs the pooled map
    x = images(2, 16)
    with pytest.raises(ValueError, match="LayerGradCam needs the module.*Pass layer="):
        compare(model, x, methods=["LayerGradCam"], **FAST)
    with pytest.warns(UserWarning, match="LayerGradCam and GuidedGradCam left out"):
        table = compare(model, x, faithfulness=False, measure_memory=False, warmup=0,
                        method_kwargs={"IntegratedGradients": {"n_steps": 4},
                                       "smoothgrad:Saliency": {"nt_samples": 2}})
    expected = [m for m in DEFAULT_METHODS if m not in ("LayerGradCam", "GuidedGradCam")]
    assert [r.method for r in table.rows] == expected


def build_densenet() -> DenseNetLike:
    torch.manual_seed(0)
    return randomize_norms(DenseNetLike()).eval()


def test_a_model_in_training_mode_gets_a_warning_and_keeps_its_mode():
    model = tiny_resnet().train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compare(model, images(2, 16), methods=[], faithfulness=False, warmup=0)
    assert any("training mode" in str(w.message) for w in caught)
    assert all(m.training for m in model.modules())


def test_token_models_compare_without_layer_methods():
    torch.manual_seed(0)
    model = randomize_norms(ViTLike()).eval()
    x = images(2, 32)
    with pytest.raises(ValueError, match="tokens, not an \\[N, K, h, w\\] map"):
        compare(model, x, methods=["GuidedGradCam"], **FAST)
    table = compare(model, x, methods=["InputXGradient"], **FAST)
    assert [r.method for r in table.rows] == ["CAM", "InputXGradient"]
    assert table.rows[0].maps.shape == (2, 32, 32)


def test_camplug_methods_are_entries_of_the_same_registry():
    """camplug's methods run beside Captum's; on a GAP head Grad-CAM ranks pixels as CAM."""
    model = tiny_resnet()
    x = images(2, 16)
    table = compare(model, x, methods=["gradcam", "LayerGradCam", "eigencam"], **FAST)
    rows = {row.method: row for row in table.rows}
    assert list(rows) == ["CAM", "gradcam", "LayerGradCam", "eigencam"]
    assert torch.allclose(rows["gradcam"].spearman, torch.ones(2, dtype=torch.float64))
    assert torch.allclose(rows["LayerGradCam"].spearman, torch.ones(2, dtype=torch.float64))
