"""Bad input to ``cam`` fails with a specific ValueError/TypeError, on every backend."""

from __future__ import annotations

import sys

import pytest
import torch
from camplug.kernels import OutputTooLargeError, cam, checks

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
                     r"\[C, K\], \[B, C, K\] or per-position \[B, C, K, h, w\], got \(8,\)",
                     id="weights-1d"),
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
        pytest.param(torch.randn(2, 8, 4, 5), torch.randn(2, 3, 8, 4, 6), r"position mismatch: "
                     r"per-position weights must have shape \[B, C, K, h, w\] = \[2, C, 8, 4, 5\] "
                     r"to match features of shape \(2, 8, 4, 5\); got \(2, 3, 8, 4, 6\)",
                     id="per-position-hw-mismatch"),
        pytest.param(torch.randn(2, 8, 4, 5), torch.randn(2, 3, 7, 4, 5), r"channel mismatch: "
                     r"features have K=8 channels but weights have 7", id="per-position-K"),
        pytest.param(torch.randn(2, 8, 4, 5), torch.randn(1, 3, 8, 4, 5), r"batch mismatch: "
                     r"features have B=2 samples but weights have 1", id="per-position-B"),
        pytest.param(torch.randn(2, 8, 4, 5), torch.randn(2, 8, 4, 5), r"weights must have shape",
                     id="weights-4d-like-features"),
        pytest.param(torch.randn(2, 0, 4, 5), torch.randn(3, 0), r"features have K=0 channels "
                     r"\(shape \(2, 0, 4, 5\)\): a CAM is a weighted sum over channels and needs "
                     r"K >= 1", id="no-channels"),
        pytest.param(torch.randn(2, 0, 4, 5), torch.randn(2, 3, 0), r"K=0 channels",
                     id="no-channels-BCK"),
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


def _refuse_to_compute(*args, **kwargs):
    raise AssertionError("the backend ran: the size check must refuse before allocating")


@pytest.mark.parametrize("out_dtype", [None, torch.float16, torch.uint8], ids=str)
def test_output_too_large_is_refused_before_allocating(monkeypatch, out_dtype):
    """With 1 GiB available, a 20000 x 20000 output (400M elements) cannot fit."""
    monkeypatch.setattr(checks, "available_bytes", lambda device: 2**30)
    monkeypatch.setattr(sys.modules["camplug.kernels.cam"], "cam_cpu", _refuse_to_compute)
    features, weights = good_inputs(batch=1, classes=1)
    per_element = {None: 4, torch.float16: 2 + 4, torch.uint8: 1 + 4}[out_dtype]
    needed = 20000 * 20000 * per_element
    with pytest.raises(OutputTooLargeError, match=(
        rf"cam output of shape \(1, 1, 20000, 20000\) in .* needs {needed:,} bytes "
        rf"\({needed / 2**30:.1f} GiB, output and work buffer\) but only 1,073,741,824 bytes "
        r"\(1.0 GiB\) are available on cpu; ask for a smaller size")):  # fmt: skip
        cam(features, weights, (20000, 20000), out_dtype=out_dtype, backend="torch")


def test_absurd_output_is_refused_on_any_machine():
    """100000 x 100000 x 8 samples x 3 classes in fp32: 960 GB, a ValueError and MemoryError."""
    features, weights = good_inputs(batch=8, classes=3)
    with pytest.raises(ValueError, match=r"needs 960,000,000,000 bytes"):
        cam(features, weights, 100000, backend="torch")
    with pytest.raises(MemoryError):
        cam(features, weights, 100000, backend="auto")


def test_small_outputs_skip_the_memory_look_up(monkeypatch):
    monkeypatch.setattr(checks, "available_bytes", _refuse_to_compute)
    features, weights = good_inputs()
    assert cam(features, weights, (64, 64), backend="torch").shape == (2, 3, 64, 64)


def test_cpu_available_bytes_is_plausible():
    available = checks.available_bytes(torch.device("cpu"))
    assert available is not None and 2**20 < available < 2**50


def test_cuda_available_bytes_counts_the_caching_allocator(monkeypatch):
    """Free memory is the driver's free bytes plus what the allocator holds but does not use."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (5 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 2**30)
    assert checks.available_bytes(torch.device("cuda", 0)) == 7 * 2**30
    assert checks.available_bytes(torch.device("meta")) is None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_output_too_large_is_refused():
    features, weights = good_inputs()
    with pytest.raises(OutputTooLargeError, match=r"are available on cuda"):
        cam(features.cuda(), weights.cuda(), 200000, backend="torch")
