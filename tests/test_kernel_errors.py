"""Bad input to ``cam`` fails with a specific ValueError/TypeError, on every backend."""

from __future__ import annotations

import sys

import pytest
import torch
from camplug.kernels import cam

BACKENDS = ["torch", "triton", "auto"]


def good_inputs(batch=2, channels=8, h=4, w=5, classes=3):
    return torch.randn(batch, channels, h, w), torch.randn(classes, channels)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("features", "weights", "message"),
    [
        pytest.param(torch.randn(8, 4, 5), torch.randn(3, 8), r"features must have shape "
                     r"\[B, K, h, w\] \(4 dims\), got \(8, 4, 5\)", id="features-3d"),
        pytest.param(torch.randn(1, 2, 8, 4, 5), torch.randn(3, 8), r"4 dims",
                     id="features-5d"),
        pytest.param(torch.randn(2, 8, 4, 5), torch.randn(8), r"weights must have shape "
                     r"\[C, K\] or \[B, C, K\], got \(8,\)", id="weights-1d"),
        pytest.param(torch.randn(2, 8, 4, 5), torch.randn(1, 2, 3, 8), r"weights must have shape",
                     id="weights-4d"),
        pytest.param(torch.randn(2, 8, 4, 5), torch.randn(3, 7), r"channel mismatch: features "
                     r"have K=8 channels but weights have 7", id="K-mismatch-CK"),
        pytest.param(torch.randn(2, 8, 4, 5), torch.randn(2, 3, 9), r"K=8 .* weights have 9",
                     id="K-mismatch-BCK"),
        pytest.param(torch.randn(2, 8, 4, 5), torch.randn(3, 3, 8), r"batch mismatch: features "
                     r"have B=2 samples but weights have 3", id="B-mismatch"),
        pytest.param(torch.randn(2, 8, 0, 5), torch.randn(3, 8), r"spatial size h, w >= 1, "
                     r"got \(h, w\) = \(0, 5\)", id="empty-height"),
    ],
)  # fmt: skip
def test_shape_errors(features, weights, message, backend):
    with pytest.raises(ValueError, match=message):
        cam(features, weights, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("which", "dtype"),
    [("features", torch.int64), ("features", torch.bool), ("features", torch.uint8),
     ("features", torch.complex64), ("features", torch.float8_e4m3fn), ("weights", torch.int32)],
)  # fmt: skip
def test_non_floating_inputs(which, dtype, backend):
    features, weights = good_inputs()
    if which == "features":
        features = features.to(dtype)
    else:
        weights = weights.to(dtype)
    with pytest.raises(TypeError, match=rf"{which} must be a floating-point tensor .* got {dtype}"):
        cam(features, weights, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_tensor_inputs(backend):
    features, weights = good_inputs()
    with pytest.raises(TypeError, match=r"must be torch.Tensor, got ndarray and Tensor"):
        cam(features.numpy(), weights, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_different_devices(backend):
    features, weights = good_inputs()
    with pytest.raises(ValueError, match=r"different devices: cpu and meta"):
        cam(features, weights.to("meta"), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [0, -3, (4, 0), (-1, 5)], ids=str)
def test_non_positive_sizes(size, backend):
    features, weights = good_inputs()
    with pytest.raises(ValueError, match=r"size must be positive, got \(H, W\) = "):
        cam(features, weights, size, backend=backend)


@pytest.mark.parametrize(
    ("size", "error", "message"),
    [
        ((4, 5, 6), ValueError, r"size must be None, an int or a pair \(H, W\)"),
        ("224", ValueError, r"size must be None, an int or a pair"),
        ((2.5, 4), TypeError, r"size entries must be integers, got \(2.5, 4\)"),
        (True, TypeError, r"size entries must be integers"),
    ],
    ids=str,
)
def test_malformed_sizes(size, error, message):
    features, weights = good_inputs()
    with pytest.raises(error, match=message):
        cam(features, weights, size, backend="torch")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("out_dtype", [torch.float64, torch.int32, torch.int8, "float16"], ids=str)
def test_unsupported_out_dtype(out_dtype, backend):
    features, weights = good_inputs()
    with pytest.raises(ValueError, match=r"unsupported out_dtype .*; expected None, torch.float32"):
        cam(features, weights, out_dtype=out_dtype, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_uint8_needs_normalization(backend):
    features, weights = good_inputs()
    with pytest.raises(ValueError, match=r"out_dtype=torch.uint8 needs normalize=True"):
        cam(features, weights, normalize=False, out_dtype=torch.uint8, backend=backend)


def test_unknown_backend():
    features, weights = good_inputs()
    with pytest.raises(ValueError, match=r"backend must be 'auto', 'torch' or 'triton', got 'gpu'"):
        cam(features, weights, backend="gpu")


def test_triton_on_cpu_without_interpreter_says_how_to_enable_it(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    features, weights = good_inputs()
    with pytest.raises(RuntimeError, match=r"backend='triton' cannot run: .*TRITON_INTERPRET=1"
                       r".*got device 'cpu'.*backend='torch'"):  # fmt: skip
        cam(features, weights, backend="triton")


def test_triton_on_meta_device_is_refused():
    pytest.importorskip("triton")
    features, weights = good_inputs()
    with pytest.raises(RuntimeError, match=r"got device 'meta'"):
        cam(features.to("meta"), weights.to("meta"), backend="triton")


def test_triton_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` fail
    features, weights = good_inputs()
    with pytest.raises(RuntimeError, match=r"triton is not installed \(pip install triton"):
        cam(features, weights, backend="triton")


def test_auto_uses_torch_for_cpu_tensors(monkeypatch):
    """Even with the interpreter enabled, "auto" never sends CPU tensors to Triton."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(sys.modules, "camplug.kernels.triton_cam", None)  # import would fail
    features, weights = good_inputs()
    out = cam(features, weights, (6, 6), backend="auto")
    assert out.shape == (2, 3, 6, 6)
