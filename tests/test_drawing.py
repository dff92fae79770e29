"""camplug.overlay (camplug.drawing): image layouts and dtypes, the bilinear resize against a
NumPy reference, the blend formula, and the errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

import camplug
from camplug.drawing import cam_values, heatmap, image_rgb, overlay


def bilinear_matrix(out: int, size: int) -> np.ndarray:
    """[out, size] weights of a half-pixel-centre bilinear resize (align_corners=False; source
    coordinates below 0 clamp to 0, the last index repeats past the end)."""
    matrix = np.zeros((out, size))
    for i in range(out):
        source = max((i + 0.5) * size / out - 0.5, 0.0)
        low = min(int(np.floor(source)), size - 1)
        high = min(low + 1, size - 1)
        weight = source - low
        matrix[i, low] += 1.0 - weight
        matrix[i, high] += weight
    return matrix


def reference_resize(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return bilinear_matrix(size[0], cam.shape[0]) @ cam @ bilinear_matrix(size[1], cam.shape[1]).T


def reference_overlay(rgb: np.ndarray, values: np.ndarray, alpha: float, name: str) -> np.ndarray:
    heat = colormaps[name](values)[..., :3] * 255.0
    return np.round((1 - alpha) * rgb.astype(np.float64) + alpha * heat).astype(np.uint8)


@pytest.mark.parametrize(("small", "size"), [((3, 5), (7, 11)), ((9, 8), (4, 3)),
                                              ((12, 12), (96, 96)), ((1, 1), (5, 6))])
def test_resize_matches_reference(small, size):
    rng = np.random.default_rng(0)
    cam = rng.random(small)
    np.testing.assert_allclose(cam_values(cam, size), reference_resize(cam, size), atol=1e-12)
    np.testing.assert_array_equal(cam_values(cam), cam)  # no size: unchanged


def test_overlay_formula_and_layouts():
    rng = np.random.default_rng(1)
    hwc = rng.integers(0, 256, size=(10, 14, 3), dtype=np.uint8)
    cam = rng.random((5, 7))
    values = reference_resize(cam, (10, 14))
    for alpha, name in ((0.5, "jet"), (0.3, "viridis"), (0.0, "jet"), (1.0, "gray")):
        expected = reference_overlay(hwc, values, alpha, name)
        got = overlay(hwc, cam, alpha=alpha, colormap=name)
        assert got.dtype == np.uint8 and got.shape == (10, 14, 3)
        assert np.abs(got.astype(int) - expected).max() <= 1  # rounding of .5 ties only
    base = overlay(hwc, cam)
    chw_float = torch.from_numpy(hwc).permute(2, 0, 1).double() / 255.0
    for image in (chw_float, chw_float.float(), chw_float.numpy().transpose(1, 2, 0),
                  torch.from_numpy(hwc), torch.from_numpy(hwc).permute(2, 0, 1),
                  Image.fromarray(hwc)):
        np.testing.assert_array_equal(overlay(image, cam), base)
    np.testing.assert_array_equal(overlay(hwc, torch.from_numpy(cam)[None, None]), base)
    np.testing.assert_array_equal(overlay(hwc, cam, alpha=0.0), hwc)


def test_grey_and_ambiguous_layouts():
    grey = np.linspace(0, 1, 12).reshape(3, 4)
    rgb = image_rgb(grey)
    assert rgb.shape == (3, 4, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    assert rgb[2, 3, 1] == 255 and rgb[0, 0, 0] == 0
    np.testing.assert_array_equal(image_rgb(grey[None]), rgb)  # [1, H, W]
    np.testing.assert_array_equal(image_rgb(grey[..., None]), rgb)  # [H, W, 1]
    # [3, 4, 3]: a tensor is channels-first, an array channels-last
    data = np.arange(36, dtype=np.uint8).reshape(3, 4, 3)
    assert image_rgb(torch.from_numpy(data)).shape == (4, 3, 3)
    assert image_rgb(data).shape == (3, 4, 3)
    np.testing.assert_array_equal(image_rgb(torch.from_numpy(data)), data.transpose(1, 2, 0))
    palette = Image.fromarray(data).convert("P")  # any PIL mode goes through RGB
    assert image_rgb(palette).shape == (3, 4, 3)


def test_uint8_and_nan_maps():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    levels = rng.integers(0, 256, size=(3, 3), dtype=np.uint8)
    np.testing.assert_array_equal(overlay(rgb, levels), overlay(rgb, levels / 255.0))
    with_nan = rng.random((3, 3))
    with_nan[1, 1] = np.nan
    zeroed = np.where(np.isnan(with_nan), 0.0, with_nan)
    np.testing.assert_array_equal(overlay(rgb, with_nan), overlay(rgb, zeroed))
    bf16 = torch.rand(3, 3).to(torch.bfloat16)
    np.testing.assert_array_equal(overlay(rgb, bf16), overlay(rgb, bf16.float().numpy()))


def test_heatmap_colours():
    cam = np.array([[0.0, 1.0]])
    jet = heatmap(cam)
    assert jet[0, 0, 2] > 100 and jet[0, 0, 0] == 0  # jet(0): dark blue
    assert jet[0, 1, 0] > 100 and jet[0, 1, 2] == 0  # jet(1): dark red
    big = heatmap(cam, size=(4, 8), colormap="viridis")
    expected = np.round(colormaps["viridis"](reference_resize(cam, (4, 8)))[..., :3] * 255)
    np.testing.assert_array_equal(big, expected.astype(np.uint8))


@pytest.mark.parametrize(("image", "cam", "kwargs", "message"), [
    (np.zeros((2, 5, 5)), np.zeros((2, 2)), {}, r"no dimension of size 1 or 3"),
    (np.zeros((1, 3, 5, 5)), np.zeros((2, 2)), {}, r"expected \[3, H, W\]"),
    (np.zeros((0, 5, 3)), np.zeros((2, 2)), {}, r"empty"),
    (np.full((4, 4, 3), -0.5), np.zeros((2, 2)), {}, r"un-normalized first"),
    (np.full((4, 4, 3), np.nan), np.zeros((2, 2)), {}, r"NaN or infinite"),
    (np.zeros((4, 4, 3), np.int64), np.zeros((2, 2)), {}, r"dtype int64"),
    (np.zeros((4, 4, 3)), np.full((2, 2), 3.0), {}, r"cam values must lie in \[0, 1\]"),
    (np.zeros((4, 4, 3)), np.array([[0.5, np.inf]]), {}, r"cam values must lie in \[0, 1\]"),
    (np.zeros((4, 4, 3)), np.zeros((2, 3, 3)), {}, r"expected one non-empty map"),
    (np.zeros((4, 4, 3)), np.zeros((2, 0)), {}, r"expected one non-empty map"),
    (np.zeros((4, 4, 3)), np.zeros((2, 2), np.int32), {}, r"cam dtype int32"),
    (np.zeros((4, 4, 3)), np.zeros((2, 2)), {"colormap": "nope"}, r"unknown colormap 'nope'"),
    (np.zeros((4, 4, 3)), np.zeros((2, 2)), {"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
])
def test_errors(image, cam, kwargs, message):
    with pytest.raises(ValueError, match=message):
        overlay(image, cam, **kwargs)


def test_public_name_is_the_function():
    """``camplug.overlay`` is ``camplug.drawing.overlay`` (no module of that name shadows it)."""
    import camplug.drawing

    assert camplug.overlay is camplug.drawing.overlay
    rgb = np.zeros((4, 4, 3), np.uint8)
    assert (camplug.overlay(rgb, np.eye(2), alpha=0.4) == overlay(rgb, np.eye(2), alpha=0.4)).all()


# CamResult in notebooks ----------------------------------------------------------------------
def tiny_result(batch: int = 6, **kwargs) -> camplug.CamResult:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 5)).eval()
    return camplug.explain(model, torch.randn(batch, 3, 10, 10), **kwargs)


def decode(data: str) -> np.ndarray:
    import base64
    import io

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def test_camresult_html_grid():
    import re

    result = tiny_result(topk=5, size=(6, 7))
    page = result._repr_html_()
    cells = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]+)">', page)
    assert len(cells) == 4 * 3  # the first 4 samples x the first 3 classes
    probs = result.logits.double().softmax(dim=1)
    for k, (data, caption) in enumerate(cells):
        i, j = divmod(k, 3)
        cls = int(result.targets[i, j])
        logit = float(result.logits[i, cls])
        assert caption == f"#{i} class {cls}: logit {logit:.2f}, p {probs[i, cls]:.2f}"
        values = result.maps[i, j].double().numpy()
        scaled = (values - values.min()) / (values.max() - values.min())
        expected = np.round(colormaps["jet"](reference_resize(scaled, (112, 112)))[..., :3] * 255)
        assert np.abs(decode(data).astype(int) - expected).max() <= 1
    assert "4 of 6 samples x 3 of 5 classes, method cam" in page


def test_camresult_png_and_other_maps():
    import io

    result = tiny_result()
    png = Image.open(io.BytesIO(result._repr_png_()))
    assert png.format == "PNG" and png.size == (4 + 1 * 116, 4 * 130 + 4 + 14)
    for kwargs in ({"normalize": False}, {"out_dtype": torch.uint8}, {"topk": 2}):
        other = tiny_result(batch=2, **kwargs)
        assert other._repr_html_().count("<img ") == 2 * other.maps.shape[1]
        assert Image.open(io.BytesIO(other._repr_png_())).size[0] == 4 + 116 * min(
            3, other.maps.shape[1])
    hostile = result._replace(method='<script>alert("x")</script>')
    assert "<script>" not in hostile._repr_html_()
    empty = result._replace(maps=result.maps[:0], logits=result.logits[:0],
                            targets=result.targets[:0])
    assert "<img " not in empty._repr_html_() and empty._repr_png_().startswith(b"\x89PNG")
