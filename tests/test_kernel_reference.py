"""The torch backend (``cam_reference``) against the independent fp64 oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from camplug.kernels import cam
from kernel_oracle import (
    IN_DTYPES,
    OUT_DTYPES,
    OUTPUT_CASES,
    assert_matches_oracle,
    make_inputs,
    numpy_bilinear,
    oracle_cam,
)
from tolerances import assert_close

# (h, w) -> size: non-square up, down, same size, 1x1, mixed up/down, int size.
SIZES = [
    pytest.param((5, 7), (11, 9), id="5x7-up-11x9"),
    pytest.param((9, 6), (4, 3), id="9x6-down-4x3"),
    pytest.param((6, 4), None, id="6x4-same"),
    pytest.param((6, 4), (6, 4), id="6x4-same-explicit"),
    pytest.param((1, 1), (8, 5), id="1x1-up"),
    pytest.param((4, 10), (9, 3), id="up-and-down"),
    pytest.param((3, 3), 7, id="int-size"),
    pytest.param((7, 7), (224, 224), id="7x7-224"),
]


@pytest.mark.parametrize("in_dtype", IN_DTYPES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize(("out_dtype", "relu", "normalize"), OUTPUT_CASES)
def test_dtype_layout_and_flag_matrix(in_dtype, channels_last, out_dtype, relu, normalize):
    features, weights = make_inputs(
        2, 24, 5, 7, 3, dtype=in_dtype, channels_last=channels_last, per_sample_weights=True
    )
    assert_matches_oracle(
        "torch", features, weights, (11, 9), relu=relu, normalize=normalize, out_dtype=out_dtype
    )


@pytest.mark.parametrize(("hw", "size"), SIZES)
@pytest.mark.parametrize("per_sample_weights", [False, True], ids=["CK", "BCK"])
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
def test_sizes_and_weight_shapes(hw, size, per_sample_weights, normalize):
    features, weights = make_inputs(
        3, 16, *hw, 4, per_sample_weights=per_sample_weights, seed=1
    )
    assert_matches_oracle(
        "torch", features, weights, size, relu=False, normalize=normalize, out_dtype=None
    )


@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=str)
def test_non_contiguous_inputs(out_dtype):
    """Arbitrary strides: a channel-sliced feature map and transposed weights."""
    features, _ = make_inputs(2, 32, 6, 5, 1, seed=2)
    features = features[:, ::2]
    weights = torch.randn(16, 3).t()
    assert not features.is_contiguous() and not weights.is_contiguous()
    assert_matches_oracle(
        "torch", features, weights, (8, 13), relu=False, normalize=True, out_dtype=out_dtype
    )


def test_float64_inputs_are_accepted():
    features, weights = make_inputs(2, 8, 4, 4, 2, dtype=torch.float64, seed=3)
    assert_matches_oracle(
        "torch", features, weights.double(), (6, 6), relu=False, normalize=True, out_dtype=None
    )


@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=str)
def test_constant_map_gives_zeros(out_dtype):
    features = torch.full((2, 4, 5, 3), 0.75)
    weights = torch.randn(3, 4)
    out = cam(features, weights, (7, 4), out_dtype=out_dtype, backend="torch")
    assert out.shape == (2, 3, 7, 4)
    assert not out.float().isnan().any()
    assert (out.float() == 0).all()


def test_relu_is_off_by_default():
    features, weights = make_inputs(2, 8, 4, 4, 2, seed=4)
    raw = cam(features, weights, normalize=False, backend="torch")
    assert (raw < 0).any(), "without relu, negative weighted sums stay negative"
    clipped = cam(features, weights, normalize=False, relu=True, backend="torch")
    assert (clipped >= 0).all()
    assert torch.equal(clipped, raw.clamp_min(0))


def test_normalization_happens_before_upsampling():
    """Min-max on the low-res map: the upsampled map stays in [0, 1] and hits both ends."""
    features, weights = make_inputs(2, 8, 4, 5, 3, seed=5)
    out = cam(features, weights, (13, 17), backend="torch")
    low = cam(features, weights, backend="torch")
    assert out.min() >= 0 and out.max() <= 1
    assert torch.allclose(low.amin(dim=(2, 3)), torch.zeros(2, 3))
    assert torch.allclose(low.amax(dim=(2, 3)), torch.ones(2, 3), atol=1e-6)
    # Normalizing after upsampling instead would give a different map.
    raw_up = torch.nn.functional.interpolate(
        cam(features, weights, normalize=False, backend="torch"), size=(13, 17),
        mode="bilinear", align_corners=False,
    )  # fmt: skip
    lo, hi = raw_up.amin(dim=(2, 3), keepdim=True), raw_up.amax(dim=(2, 3), keepdim=True)
    assert not torch.allclose(out, (raw_up - lo) / (hi - lo + 1e-7), atol=1e-4)


def test_uint8_is_round_half_up_of_float_output():
    features, weights = make_inputs(3, 12, 5, 6, 2, seed=6)
    as_float = cam(features, weights, (9, 11), backend="torch")
    as_u8 = cam(features, weights, (9, 11), out_dtype=torch.uint8, backend="torch")
    assert torch.equal(as_u8, torch.floor(as_float * 255 + 0.5).to(torch.uint8))
    assert as_u8.max() - as_u8.min() > 128  # the maps span most of the range


@pytest.mark.parametrize("out_dtype", [None, torch.float16, torch.bfloat16], ids=str)
def test_nan_in_one_sample_stays_in_that_sample(out_dtype):
    features, weights = make_inputs(3, 8, 4, 4, 2, seed=7)
    clean = cam(features, weights, (6, 5), out_dtype=out_dtype, backend="torch")
    features[1, 3, 2, 1] = float("nan")
    out = cam(features, weights, (6, 5), out_dtype=out_dtype, backend="torch")
    assert out[1].isnan().all(), "normalizing a map that holds a NaN gives NaN everywhere"
    assert torch.equal(out[0], clean[0]) and torch.equal(out[2], clean[2])


def test_nan_isolation_for_uint8_output():
    features, weights = make_inputs(3, 8, 4, 4, 2, seed=7)
    clean = cam(features, weights, (6, 5), out_dtype=torch.uint8, backend="torch")
    features[2, 0, 0, 0] = float("nan")
    out = cam(features, weights, (6, 5), out_dtype=torch.uint8, backend="torch")
    assert torch.equal(out[:2], clean[:2])
    assert torch.equal(out[2], torch.zeros_like(out[2])), "a NaN map is 0 in uint8"


@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=str)
@pytest.mark.parametrize("per_sample_weights", [False, True], ids=["CK", "BCK"])
def test_empty_batch(out_dtype, per_sample_weights):
    features, weights = make_inputs(0, 8, 4, 4, 3, per_sample_weights=per_sample_weights)
    out = cam(features, weights, (9, 7), out_dtype=out_dtype, backend="torch")
    assert out.shape == (0, 3, 9, 7)
    assert out.dtype == (out_dtype or torch.float32)


def test_no_classes_gives_an_empty_result():
    features, weights = make_inputs(2, 8, 4, 4, 0)
    out = cam(features, weights, (5, 5), backend="torch")
    assert out.shape == (2, 0, 5, 5)


def test_inputs_are_not_modified():
    features, weights = make_inputs(2, 8, 4, 4, 2, dtype=torch.float16, seed=8)
    f_copy, w_copy = features.clone(), weights.clone()
    cam(features, weights, (8, 8), relu=True, backend="torch")
    assert torch.equal(features, f_copy) and torch.equal(weights, w_copy)


@pytest.mark.parametrize(
    ("in_hw", "out_hw"),
    [((4, 6), (9, 13)), ((7, 5), (3, 2)), ((5, 5), (5, 12)), ((1, 3), (4, 7)), ((6, 6), (6, 6))],
)
def test_bilinear_index_formula_by_hand(in_hw, out_hw):
    """Identity weights make each map one feature channel, so the output is the resized input:
    compare with a loop-by-loop numpy bilinear written from the formula in cam-semantics.md."""
    gen = torch.Generator().manual_seed(9)
    features = torch.rand(1, 3, *in_hw, generator=gen)
    out = cam(features, torch.eye(3), out_hw, normalize=False, backend="torch")
    want = np.stack([numpy_bilinear(features[0, k].double().numpy(), *out_hw) for k in range(3)])
    assert_close(out[0], torch.from_numpy(want), torch.float32, f"{in_hw} -> {out_hw}")


def test_oracle_agrees_with_hand_bilinear():
    """The oracle's resize path is itself checked against the hand-written formula."""
    gen = torch.Generator().manual_seed(10)
    features = torch.rand(1, 2, 5, 3, generator=gen)
    got = oracle_cam(features, torch.eye(2), (11, 4), relu=False, normalize=False)
    want = np.stack([numpy_bilinear(features[0, k].double().numpy(), 11, 4) for k in range(2)])
    assert_close(got[0], torch.from_numpy(want), torch.float32, "oracle resize")
