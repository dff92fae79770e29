"""Large shapes on a GPU: the Triton kernel against the fp64 oracle or the torch reference.

Skipped without CUDA. The >2**31-element cases need about 10 GB of GPU memory.
"""

from __future__ import annotations

import pytest
import torch
from camplug.kernels import cam
from kernel_oracle import assert_matches_oracle, make_inputs
from tolerances import assert_close

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def gpu_inputs(*shape, **kw):
    return make_inputs(*shape, device="cuda", **kw)


def gpu_memory_gib() -> float:
    return torch.cuda.get_device_properties(0).total_memory / 2**30


@pytest.mark.parametrize("out_dtype", [None, torch.float16, torch.uint8], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_benchmark_shape_b256_k2048_7x7_to_224(out_dtype, channels_last):
    features, weights = gpu_inputs(
        256, 2048, 7, 7, 1, dtype=torch.float16, channels_last=channels_last
    )
    assert_matches_oracle(
        "triton", features, weights, (224, 224), relu=False, normalize=True, out_dtype=out_dtype
    )


@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_b64_per_sample_weights_relu(in_dtype):
    features, weights = gpu_inputs(64, 512, 7, 7, 3, dtype=in_dtype, per_sample_weights=True)
    assert_matches_oracle(
        "triton", features, weights, (224, 224), relu=True, normalize=True, out_dtype=None
    )


@pytest.mark.parametrize("classes", [64, 65, 130], ids=lambda c: f"C{c}")
def test_many_classes(classes):
    features, weights = gpu_inputs(4, 1024, 14, 14, classes, channels_last=True)
    assert_matches_oracle(
        "triton", features, weights, (112, 96), relu=False, normalize=True, out_dtype=None
    )


@pytest.mark.parametrize(
    ("hw", "size"),
    [((64, 64), (1024, 1024)), ((32, 24), (1024, 768)), ((64, 64), (17, 9)), ((1, 1), (1024, 3)),
     ((48, 40), None)],
    ids=str,
)  # fmt: skip
@pytest.mark.parametrize("out_dtype", [None, torch.bfloat16], ids=str)
def test_large_and_odd_outputs(hw, size, out_dtype):
    features, weights = gpu_inputs(2, 256, *hw, 5, dtype=torch.float16)
    assert_matches_oracle(
        "triton", features, weights, size, relu=False, normalize=True, out_dtype=out_dtype
    )


def test_raw_maps_large_k():
    features, weights = gpu_inputs(8, 2048, 7, 7, 4)
    weights = weights / 2048**0.5  # raw sums of order 1, so fp32 rtol/atol are meaningful
    assert_matches_oracle(
        "triton", features, weights, (50, 60), relu=False, normalize=False, out_dtype=None
    )


@pytest.mark.parametrize("relu", [False, True], ids=["", "relu"])
def test_nan_isolation(relu):
    features, weights = gpu_inputs(16, 512, 7, 7, 2)
    clean = cam(features, weights, (224, 224), relu=relu, backend="triton")
    features[5, 100, 3, 3] = float("nan")
    out = cam(features, weights, (224, 224), relu=relu, backend="triton")
    assert out[5].isnan().all()
    others = torch.arange(16, device="cuda") != 5
    assert torch.equal(out[others], clean[others])


def test_output_over_2_to_the_31_elements():
    """B*C*H*W > 2**31: the far end of the output must be addressed correctly."""
    if gpu_memory_gib() < 16:
        pytest.skip("needs a GPU with >= 16 GiB (uses ~3 GB)")
    batch, classes = 33, 64
    assert batch * classes * 1024 * 1024 > 2**31
    features, weights = gpu_inputs(batch, 16, 32, 32, classes, per_sample_weights=True)
    out = cam(features, weights, (1024, 1024), out_dtype=torch.uint8, backend="triton")
    for b in (0, batch - 1):
        ref = cam(features[b : b + 1], weights[b : b + 1], (1024, 1024), out_dtype=torch.uint8,
                  backend="torch")  # fmt: skip
        assert_close(out[b : b + 1], ref, torch.uint8, f"sample {b} of {batch}")


def test_features_over_2_to_the_31_elements():
    """B*K*h*w > 2**31 (fp16, ~4.3 GB): the last sample is read from the right place."""
    if gpu_memory_gib() < 24:
        pytest.skip("needs a GPU with >= 24 GiB (uses ~5 GB)")
    batch, channels = 257, 2048
    assert batch * channels * 64 * 64 > 2**31
    features = torch.empty(batch, channels, 64, 64, dtype=torch.float16, device="cuda")
    features.normal_(generator=torch.Generator("cuda").manual_seed(0))
    weights = torch.randn(2, channels, device="cuda")
    out = cam(features, weights, backend="triton")
    for b in (0, batch - 1):
        ref = cam(features[b : b + 1], weights, backend="torch")
        assert_close(out[b : b + 1], ref, torch.float32, f"sample {b} of {batch}")
    del features


def test_auto_backend_uses_triton_on_cuda(monkeypatch):
    from camplug.kernels import triton_cam

    calls = []
    original = triton_cam.cam_triton

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(triton_cam, "cam_triton", spy)
    features, weights = gpu_inputs(2, 64, 7, 7, 1)
    cam(features, weights, (32, 32))
    assert calls == [1]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_gpu():
    features, weights = make_inputs(2, 64, 7, 7, 3, device="cuda:1")
    assert_matches_oracle(
        "triton", features, weights, (64, 64), relu=False, normalize=True, out_dtype=None
    )


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_split_k_is_bitwise_reproducible(channels_last):
    """Launch 1 splits K over programs; launch 2 adds the parts in a fixed order."""
    from camplug.kernels import triton_cam

    features, weights = gpu_inputs(8, 2048, 7, 7, 3, dtype=torch.float16,
                                   channels_last=channels_last)  # fmt: skip
    p = triton_cam.plan_for(features, weights, (224, 224), relu=False, normalize=False,
                            out_dtype=None)  # fmt: skip
    assert p.splits > 1
    runs = [cam(features, weights, (224, 224), normalize=False, backend="triton")
            for _ in range(3)]  # fmt: skip
    assert all(torch.equal(runs[0], r) for r in runs[1:])


def test_uint8_nan_maps_on_gpu():
    from camplug.kernels import triton_cam

    features, weights = gpu_inputs(4, 256, 7, 7, 2)
    features[2, 7, 3, 3] = float("nan")
    maps, nan_maps = triton_cam.cam_triton(features, weights, (64, 64), relu=False,
                                           normalize=True, out_dtype=torch.uint8)  # fmt: skip
    want = torch.zeros(4, 2, dtype=torch.bool, device="cuda")
    want[2] = True
    assert torch.equal(nan_maps, want) and (maps[2] == 0).all()


class TestCudaGraph:
    """triton_cam.CudaGraphCam: opt-in replay of repeated calls from captured graphs."""

    def test_replay_matches_eager_and_follows_new_data(self):
        from camplug.kernels import triton_cam

        graphed = triton_cam.CudaGraphCam()
        features, weights = gpu_inputs(16, 512, 7, 7, 2, dtype=torch.float16)
        kw = {"relu": True, "normalize": True, "out_dtype": torch.uint8}
        first, _ = graphed(features, weights, (224, 224), **kw)
        eager, _ = triton_cam.cam_triton(features, weights, (224, 224), **kw)
        assert torch.equal(first, eager)
        features.copy_(torch.randn_like(features))  # same addresses: the graph replays
        again, nan_maps = graphed(features, weights, (224, 224), **kw)
        assert len(graphed._graphs) == 1 and again.data_ptr() == first.data_ptr()
        eager, eager_nan = triton_cam.cam_triton(features, weights, (224, 224), **kw)
        assert torch.equal(again, eager) and torch.equal(nan_maps, eager_nan)

    def test_new_addresses_capture_new_graphs_up_to_the_limit(self):
        from camplug.kernels import triton_cam

        graphed = triton_cam.CudaGraphCam(max_graphs=2)
        kw = {"relu": False, "normalize": True, "out_dtype": None}
        tensors = [gpu_inputs(2, 64, 7, 7, 1, seed=s) for s in range(3)]
        for features, weights in tensors:
            maps, _ = graphed(features, weights, (32, 32), **kw)
            eager, _ = triton_cam.cam_triton(features, weights, (32, 32), **kw)
            assert torch.equal(maps, eager)
        assert len(graphed._graphs) == 2
