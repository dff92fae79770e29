"""Property tests: random shapes, layouts, dtypes and flags against the fp64 oracle."""

from __future__ import annotations

import pytest
import torch
from camplug.kernels import cam
from camplug.kernels.reference import cam_reference
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_oracle import IN_DTYPES, expected_output, oracle_cam, tolerance_dtype
from tolerances import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@st.composite
def cam_cases(draw, *, max_batch, max_channels, max_side, max_classes, max_out):
    batch = draw(st.integers(0, max_batch))
    channels = draw(st.integers(1, max_channels))
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    classes = draw(st.integers(1, max_classes))
    size = draw(st.one_of(st.none(), st.tuples(st.integers(1, max_out), st.integers(1, max_out))))
    normalize = draw(st.booleans())
    out_choices = [None, torch.float32, torch.float16, torch.bfloat16]
    out_dtype = draw(st.sampled_from(out_choices + ([torch.uint8] if normalize else [])))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    features = torch.randn(batch, channels, h, w, generator=gen).to(
        draw(st.sampled_from(IN_DTYPES))
    )
    if draw(st.booleans()):
        features = features.to(memory_format=torch.channels_last)
    weight_shape = draw(st.sampled_from([
        (classes, channels), (batch, classes, channels), (batch, classes, channels, h, w)
    ]))  # fmt: skip
    weights = torch.randn(weight_shape, generator=gen)
    return {
        "features": features.to(DEVICE),
        "weights": weights.to(DEVICE),
        "size": size,
        "relu": draw(st.booleans()),
        "normalize": normalize,
        "out_dtype": out_dtype,
    }


def condition_factor(features, weights, *, relu, normalize):
    """How much fp32 rounding of the weighted sum can grow in the result, per map [B, C, 1, 1].

    The sum's rounding error scales with S = max_s sum_k |w_k a_k|; min-max normalization
    divides it by the map's range. A map whose range is tiny next to S is ill-conditioned,
    and no fp32 implementation can meet a fixed tolerance on it.
    """
    abs_sum = oracle_cam(features.abs(), weights.abs(), tuple(features.shape[-2:]),
                         relu=False, normalize=False)  # fmt: skip
    scale = abs_sum.amax(dim=(2, 3), keepdim=True)
    if normalize:
        raw = oracle_cam(features, weights, tuple(features.shape[-2:]), relu=relu,
                         normalize=False)  # fmt: skip
        scale = scale / (raw.amax(dim=(2, 3), keepdim=True) - raw.amin(dim=(2, 3), keepdim=True))
    return scale.clamp_min(1.0).nan_to_num(posinf=1e30)


def check_case(backend, case):
    """``backend``: a ``cam`` backend, or "eager" for the eager reference called directly."""
    features, weights, size = case["features"], case["weights"], case["size"]
    flags = {k: case[k] for k in ("relu", "normalize", "out_dtype")}
    out_size = size or tuple(features.shape[-2:])
    if backend == "eager":
        out, _ = cam_reference(features, weights, out_size, **flags)
    else:
        out = cam(features, weights, size, backend=backend, **flags)
    classes = weights.shape[1] if weights.dim() == 5 else weights.shape[-2]
    assert out.shape == (features.shape[0], classes, *out_size)
    assert out.dtype == (case["out_dtype"] or torch.float32)
    oracle = oracle_cam(features, weights, out_size, relu=case["relu"],
                        normalize=case["normalize"])  # fmt: skip
    want = expected_output(oracle, case["out_dtype"])
    factor = condition_factor(features, weights, relu=case["relu"], normalize=case["normalize"])
    what = f"backend={backend} {features.dtype} {tuple(features.shape)} -> {out_size} " + str(
        {k: v for k, v in flags.items()}
    )
    assert_close(out.double().cpu() / factor, want / factor,
                 tolerance_dtype(case["out_dtype"]), what)  # fmt: skip


@settings(deadline=None, max_examples=60)
@given(cam_cases(max_batch=3, max_channels=48, max_side=9, max_classes=5, max_out=24))
def test_torch_backend_matches_oracle(case):
    check_case("torch", case)


@settings(deadline=None, max_examples=30)
@given(cam_cases(max_batch=3, max_channels=48, max_side=9, max_classes=5, max_out=24))
def test_eager_reference_matches_oracle(case):
    check_case("eager", case)


@settings(deadline=None, max_examples=12)
@given(cam_cases(max_batch=2, max_channels=12, max_side=5, max_classes=6, max_out=8))
def test_triton_backend_matches_oracle(case):
    pytest.importorskip("triton")
    check_case("triton", case)
