"""The torch backend against the independent fp64 oracle: the CPU fast path (``cam_cpu``, what
``cam(backend="torch")`` runs on CPU) and the eager reference (``cam_reference``, the torch
backend on other devices and the benchmarks' baseline)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from camplug.kernels import cam, cpu_cam
from camplug.kernels.checks import normalize_size
from camplug.kernels.cpu_cam import cam_cpu, interpolation_matrix
from camplug.kernels.reference import cam_reference
from kernel_oracle import (
    IN_DTYPES,
    OUT_DTYPES,
    OUTPUT_CASES,
    assert_matches_oracle,
    check_against_oracle,
    make_inputs,
    numpy_bilinear,
    oracle_cam,
)
from tolerances import assert_close

TORCH_IN_DTYPES = (*IN_DTYPES, torch.float64)
IMPLEMENTATIONS = {"cpu_fast": cam_cpu, "eager": cam_reference}
WEIGHT_KINDS = {
    "CK": {},
    "BCK": {"per_sample_weights": True},
    "BCKhw": {"per_position_weights": True},
}


def run(impl, features, weights, size=None, *, relu=False, normalize=True, out_dtype=None):
    """Call one torch implementation directly; check its ``nan_maps`` and return the maps."""
    out_size = normalize_size(size, *features.shape[-2:])
    maps, nan_maps = IMPLEMENTATIONS[impl](
        features, weights, out_size, relu=relu, normalize=normalize, out_dtype=out_dtype
    )
    if out_dtype == torch.uint8:
        assert nan_maps.dtype == torch.bool and nan_maps.shape == maps.shape[:2]
    else:
        assert nan_maps is None
    return maps


def check_impl(impl, features, weights, size, *, relu, normalize, out_dtype):
    out = run(impl, features, weights, size, relu=relu, normalize=normalize, out_dtype=out_dtype)
    check_against_oracle(
        out, features, weights, size, relu=relu, normalize=normalize, out_dtype=out_dtype,
        label=impl,
    )  # fmt: skip
    return out


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


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("in_dtype", TORCH_IN_DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize(("out_dtype", "relu", "normalize"), OUTPUT_CASES)
def test_dtype_layout_and_flag_matrix(impl, in_dtype, channels_last, out_dtype, relu, normalize):
    features, weights = make_inputs(
        2, 24, 5, 7, 3, dtype=in_dtype, channels_last=channels_last, per_sample_weights=True
    )
    check_impl(
        impl, features, weights, (11, 9), relu=relu, normalize=normalize, out_dtype=out_dtype
    )


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(("hw", "size"), SIZES)
@pytest.mark.parametrize("weight_kind", WEIGHT_KINDS)
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
def test_sizes_and_weight_shapes(impl, hw, size, weight_kind, normalize):
    features, weights = make_inputs(3, 16, *hw, 4, seed=1, **WEIGHT_KINDS[weight_kind])
    check_impl(impl, features, weights, size, relu=False, normalize=normalize, out_dtype=None)


@pytest.mark.parametrize("in_dtype", TORCH_IN_DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize(("out_dtype", "relu", "normalize"), OUTPUT_CASES)
def test_per_position_weights_through_cam(in_dtype, channels_last, out_dtype, relu, normalize):
    """[B, C, K, h, w] weights, in a non-contiguous layout, through the public entry point."""
    features, weights = make_inputs(
        2, 12, 4, 6, 3, dtype=in_dtype, channels_last=channels_last, per_position_weights=True
    )
    weights = weights.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    assert not weights.is_contiguous()
    assert_matches_oracle(
        "torch", features, weights, (9, 5), relu=relu, normalize=normalize, out_dtype=out_dtype
    )


def test_per_position_weights_that_do_not_vary_equal_channel_weights():
    features, weights = make_inputs(2, 10, 3, 4, 3, per_sample_weights=True, seed=11)
    spread = weights[..., None, None].expand(-1, -1, -1, 3, 4)
    by_position = cam(features, spread, (7, 6), normalize=False)
    assert_close(by_position, cam(features, weights, (7, 6), normalize=False), torch.float32)
    assert not torch.equal(by_position, cam(features, weights.flip(1), (7, 6), normalize=False))


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


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=str)
def test_constant_map_gives_zeros(impl, out_dtype):
    features = torch.full((2, 4, 5, 3), 0.75)
    weights = torch.randn(3, 4)
    out = run(impl, features, weights, (7, 4), out_dtype=out_dtype)
    assert out.shape == (2, 3, 7, 4)
    assert not out.float().isnan().any()
    assert (out.float() == 0).all()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=str)
def test_features_constant_over_space_give_zero_maps(impl, out_dtype):
    """The issue's case: every channel constant over space, K=2048; per-position channel sums
    may round differently, which must not turn into a full-contrast map."""
    gen = torch.Generator().manual_seed(12)
    level = torch.randn(2, 2048, 1, 1, generator=gen)
    features = level.expand(-1, -1, 7, 7).contiguous().to(memory_format=torch.channels_last)
    weights = torch.randn(3, 2048, generator=gen)
    out = run(impl, features, weights, (20, 20), out_dtype=out_dtype)
    assert (out.float() == 0).all()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    ("high", "constant"),
    [(1000.0001, True), (1 + 8e-6, True), (1 + 4e-5, False), (-1 - 8e-6, True)],
    ids=["rel-range-6e-8", "rel-range-8e-6", "rel-range-4e-5", "negative-8e-6"],
)
def test_near_constant_maps_normalize_to_zero(impl, high, constant):
    """A range <= 1e-5 * max(|lo|, |hi|) is constant (0); a larger one is min-max normalized."""
    low = 1000.0 if high > 100 else (1.0 if high > 0 else -1.0)
    features = torch.tensor([[[[low, high], [low, low]]]])
    out = run(impl, features, torch.ones(1, 1))
    span = torch.tensor(high) - torch.tensor(low)  # the fp32 range
    want = 0.0 if constant else (span / (span + 1e-7)).item()
    assert out[0, 0, 0, 1].item() == pytest.approx(want, abs=1e-6)
    assert (out[0, 0].flatten()[[0, 2, 3]] == 0).all()
    if not constant:
        assert out.max() > 0.99


def test_oracle_treats_near_constant_maps_as_constant():
    features = torch.tensor([[[[1.0, 1 + 8e-6], [1.0, 1.0]]]])
    assert (oracle_cam(features, torch.ones(1, 1), (2, 2), relu=False, normalize=True) == 0).all()
    features[0, 0, 0, 1] = 1 + 4e-5
    assert oracle_cam(features, torch.ones(1, 1), (2, 2), relu=False, normalize=True).max() > 0.99


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=str)
def test_normalized_map_with_a_non_finite_value(impl, value):
    """An infinity makes the range infinite: the map counts as constant (0 everywhere).
    A NaN makes the whole normalized map NaN."""
    features, weights = make_inputs(1, 4, 3, 3, 2, seed=13)
    features[0, 1, 1, 2] = value
    weights[:, 1] = weights[:, 1].abs()  # both maps hold ``value`` at (1, 2)
    out = run(impl, features, weights, (5, 5))
    if value != value:
        assert out.isnan().all()
        return
    assert (out == 0).all()
    weights[1, 1] = 0.0  # 0 * inf = NaN in map 1; map 0 keeps its infinity
    out = run(impl, features, weights, (5, 5))
    assert (out[0, 0] == 0).all() and out[0, 1].isnan().all()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_nan_maps_flag_non_finite_ranges_only(impl):
    """uint8 output: nan_maps is True exactly for the maps holding NaN or an infinity."""
    features, weights = make_inputs(3, 4, 3, 3, 2, seed=14)
    weights = weights.abs()
    features[0, 2, 0, 0] = float("nan")
    features[2, 1, 2, 1] = float("inf")
    features[1] = 0.5  # constant maps: 0 in uint8 but not flagged
    out_size = (6, 6)
    maps, nan_maps = IMPLEMENTATIONS[impl](
        features, weights, out_size, relu=False, normalize=True, out_dtype=torch.uint8
    )
    assert nan_maps.tolist() == [[True, True], [False, False], [True, True]]
    assert (maps == 0).all()


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


@pytest.mark.parametrize("size", [(9, 11), None], ids=["resized", "same-size"])
def test_uint8_is_round_half_up_of_float_output(size):
    """Eager: exactly floor(255 * v + 0.5) of its float output. The CPU fast path scales
    before resizing and adds the 0.5 inside its GEMM: a rounding tie may land 1 off, never
    more, and no pixel is truncated instead of rounded (that would miss by 1 on about half)."""
    features, weights = make_inputs(3, 12, 5, 6, 2, seed=6)
    for impl in IMPLEMENTATIONS:
        as_float = run(impl, features, weights, size)
        as_u8 = run(impl, features, weights, size, out_dtype=torch.uint8)
        want = torch.floor(as_float * 255 + 0.5)
        diff = (as_u8.float() - want).abs()
        assert as_u8.max() - as_u8.min() > 128, impl  # the maps span most of the range
        if impl == "eager" or size is None:
            assert torch.equal(as_u8, want.to(torch.uint8)), impl
        assert diff.max() <= 1 and (diff == 0).float().mean() > 0.99, impl


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
    with pytest.warns(
        RuntimeWarning,
        match=r"cam: 2 of 6 maps hold NaN or inf .* are 0 in the "
        r"uint8 output, like a constant map; \(sample, class\): \(2, 0\), \(2, 1\)$",
    ):
        out = cam(features, weights, (6, 5), out_dtype=torch.uint8, backend="torch")
    assert torch.equal(out[:2], clean[:2])
    assert torch.equal(out[2], torch.zeros_like(out[2])), "a NaN map is 0 in uint8"


def test_nan_warning_lists_ten_pairs_and_counts_the_rest():
    features, weights = make_inputs(5, 6, 3, 3, 3, seed=15)
    features[1:5, 0, 1, 1] = float("nan")  # 4 samples x 3 classes = 12 NaN maps
    with pytest.warns(RuntimeWarning) as record:
        out = cam(features, weights, (4, 4), out_dtype=torch.uint8)
    assert len(record) == 1
    pairs = ", ".join(f"({b}, {c})" for b in range(1, 5) for c in range(3))
    first_ten = pairs.rsplit(", (", 2)[0]
    assert str(record[0].message).endswith(f"(sample, class): {first_ten} and 2 more")
    assert "12 of 15 maps" in str(record[0].message)
    assert (out[1:] == 0).all() and out[0].max() == 255


def test_inf_map_is_reported_in_uint8():
    features, weights = make_inputs(2, 4, 3, 3, 1, seed=16)
    features[1, 0, 0, 0] = float("inf")
    with pytest.warns(RuntimeWarning, match=r"1 of 2 maps .*: \(1, 0\)$"):
        cam(features, weights, (5, 5), out_dtype=torch.uint8)


@pytest.mark.parametrize("out_dtype", [None, torch.float16, torch.uint8], ids=str)
def test_no_warning_without_a_uint8_nan_map(out_dtype):
    """Float outputs carry their NaN themselves; clean or constant uint8 maps warn nothing."""
    features, weights = make_inputs(2, 4, 3, 3, 2, seed=17)
    features[0] = 1.0
    if out_dtype != torch.uint8:
        features[1, 0, 0, 0] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = cam(features, weights, (5, 5), out_dtype=out_dtype)
    assert (out[0].float() == 0).all()


def test_raw_map_with_nan_on_the_fast_path():
    """normalize=False: F.interpolate spreads a NaN to neighbouring pixels, the fast path's
    matmul to the whole map; every other map is unaffected on both."""
    features, weights = make_inputs(2, 4, 4, 4, 2, seed=18)
    clean = run("cpu_fast", features, weights, (8, 8), normalize=False)
    features[1, 2, 0, 0] = float("nan")
    fast = run("cpu_fast", features, weights, (8, 8), normalize=False)
    eager = run("eager", features, weights, (8, 8), normalize=False)
    assert fast[1].isnan().all()
    assert eager[1].isnan().any() and not eager[1].isnan().all()
    assert torch.equal(fast[0], clean[0])


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


@pytest.mark.parametrize(("n_in", "n_out"), [(7, 224), (5, 11), (9, 4), (6, 6), (1, 5), (3, 1)])
def test_interpolation_matrix_follows_the_index_formula(n_in, n_out):
    """Column x holds PyTorch's two taps of output x: the hand formula on each unit vector."""
    matrix = interpolation_matrix(n_in, n_out)
    assert matrix.shape == (n_in, n_out) and matrix.dtype == torch.float32
    want = np.stack([numpy_bilinear(row[None, :], 1, n_out)[0] for row in np.eye(n_in)])
    assert_close(matrix, torch.from_numpy(want), torch.float32, f"{n_in} -> {n_out}")
    assert ((matrix != 0).sum(dim=0) <= 2).all()
    assert interpolation_matrix(n_in, n_out) is matrix, "built once per (in, out) and cached"


def _three_outputs(features, channel_weights, position_weights):
    """cam on fixed shapes: fp32 with ReLU, uint8 (NaN report path; eager would run its output
    GEMM in blocks), per-position fp16."""
    return (
        cam(features, channel_weights, (24, 20), relu=True),
        cam(features, channel_weights, (224, 224), out_dtype=torch.uint8),  # a blocked GEMM
        cam(features, position_weights, (3, 4), out_dtype=torch.float16, backend="torch"),
    )


def _traceable_inputs():
    features, channel_weights = make_inputs(2, 16, 5, 6, 3, channels_last=True, seed=19)
    _, position_weights = make_inputs(2, 16, 5, 6, 2, per_position_weights=True, seed=20)
    return features, channel_weights, position_weights


def test_torch_compile_fullgraph_matches_eager():
    """The CPU path compiles as one graph (no data-dependent branch, no NaN-report host sync,
    no cache look-up while tracing) and matches eager; a NaN map warns nothing while traced."""
    torch.compiler.reset()
    compiled = torch.compile(_three_outputs, fullgraph=True)
    inputs = _traceable_inputs()
    for got, want in zip(compiled(*inputs), _three_outputs(*inputs), strict=True):
        assert got.dtype == want.dtype
        assert_close(got, want, torch.uint8 if got.dtype == torch.uint8 else torch.float32)
    clean = compiled(*inputs)[1]
    inputs[0][1, 3, 2, 2] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        maps = compiled(*inputs)[1]
    assert (maps[1] == 0).all() and torch.equal(maps[0], clean[0]) and clean[1].max() > 0


def test_torch_export_matches_eager():
    class ThreeOutputs(torch.nn.Module):
        def forward(self, features, channel_weights, position_weights):
            return _three_outputs(features, channel_weights, position_weights)

    inputs = _traceable_inputs()
    exported = torch.export.export(ThreeOutputs(), inputs)
    for got, want in zip(exported.module()(*inputs), _three_outputs(*inputs), strict=True):
        assert got.dtype == want.dtype
        assert_close(got, want, torch.uint8 if got.dtype == torch.uint8 else torch.float32)


@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=str)
def test_output_gemm_in_blocks_matches_oracle(out_dtype):
    """2 x 3 maps of 224 rows: the fast path makes its output GEMM (and a narrow dtype's cast)
    in blocks of rows, the last one partial."""
    rows_per_block = cpu_cam._GEMM_BLOCK_BYTES // (4 * 224)
    assert rows_per_block < 2 * 3 * 224 and (2 * 3 * 224) % rows_per_block != 0
    features, weights = make_inputs(2, 16, 7, 7, 3, channels_last=True, seed=21)
    check_impl("cpu_fast", features, weights, 224, relu=True, normalize=True, out_dtype=out_dtype)


@pytest.mark.parametrize("weight_kind", WEIGHT_KINDS)
def test_fast_path_is_differentiable_like_eager(weight_kind):
    """backend="torch" is the one to differentiate through: the fast path's gradients (on a
    size whose output GEMM would run in blocks) equal the eager reference's."""
    features, weights = make_inputs(2, 6, 7, 7, 3, seed=22, **WEIGHT_KINDS[weight_kind])
    probe = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(23))
    grads = []
    for impl in IMPLEMENTATIONS:
        f, w = features.clone().requires_grad_(), weights.clone().requires_grad_()
        (run(impl, f, w, 224, relu=True) * probe).sum().backward()
        grads.append((f.grad, w.grad))
    for fast, eager in zip(grads[0], grads[1], strict=True):
        # Each gradient sums 2 x 224 x 224 products in fp32, in a different order per path.
        scale = eager.abs().max().item()
        torch.testing.assert_close(fast, eager, rtol=1e-4, atol=1e-4 * scale)
        assert scale > 0


def test_matrices_cached_under_inference_mode_serve_differentiable_calls():
    features, weights = make_inputs(1, 4, 5, 3, 2, seed=24)
    with torch.inference_mode():
        cam(features, weights, (41, 43))  # a size no other test asks for: built here
    weights.requires_grad_()
    cam(features, weights, (41, 43)).sum().backward()
    assert weights.grad is not None
