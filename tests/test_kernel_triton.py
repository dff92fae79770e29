"""The fused Triton kernel (backend="triton") against the fp64 oracle.

Without a GPU it runs on CPU tensors through Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before triton is imported), which is slow: shapes stay tiny here and the
large shapes live in test_kernel_cuda.py. With a GPU the same cases run on CUDA.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")

from camplug.kernels import cam, triton_cam  # noqa: E402
from kernel_oracle import (  # noqa: E402
    FLOAT_OUT_DTYPES,
    IN_DTYPES,
    OUT_DTYPES,
    OUTPUT_CASES,
    assert_matches_oracle,
    make_inputs,
    oracle_cam,
)
from tolerances import assert_close  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def inputs(*shape, **kw):
    return make_inputs(*shape, device=DEVICE, **kw)


def check(features, weights, size, *, relu=False, normalize=True, out_dtype=None):
    return assert_matches_oracle(
        "triton", features, weights, size, relu=relu, normalize=normalize, out_dtype=out_dtype
    )


@pytest.mark.parametrize("in_dtype", IN_DTYPES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize(("out_dtype", "relu", "normalize"), OUTPUT_CASES)
def test_dtype_layout_and_flag_matrix(in_dtype, channels_last, out_dtype, relu, normalize):
    features, weights = inputs(
        2, 12, 3, 5, 2, dtype=in_dtype, channels_last=channels_last, per_sample_weights=True
    )
    check(features, weights, (7, 4), relu=relu, normalize=normalize, out_dtype=out_dtype)


@pytest.mark.parametrize(
    ("hw", "size"),
    [
        pytest.param((3, 5), (7, 4), id="up-and-down-non-square"),
        pytest.param((6, 5), (3, 2), id="down"),
        pytest.param((4, 3), None, id="same"),
        pytest.param((1, 1), (5, 3), id="1x1"),
        pytest.param((1, 4), (3, 4), id="1-row-same-width"),
        pytest.param((2, 2), 9, id="int-size"),
    ],
)
@pytest.mark.parametrize("per_sample_weights", [False, True], ids=["CK", "BCK"])
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
def test_sizes_and_weight_shapes(hw, size, per_sample_weights, normalize):
    features, weights = inputs(2, 10, *hw, 3, per_sample_weights=per_sample_weights, seed=1)
    check(features, weights, size, normalize=normalize)


@pytest.mark.parametrize("classes", [1, 3, 4, 5, 16, 70], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_class_counts_cover_both_accumulators_and_class_blocks(classes, channels_last):
    """C <= 4 uses the elementwise accumulator, more classes tl.dot; C > 64 takes two blocks."""
    features, weights = inputs(2, 20, 3, 4, classes, channels_last=channels_last, seed=2)
    check(features, weights, (5, 6), relu=True)


@pytest.mark.parametrize("classes", [2, 8], ids=lambda c: f"C{c}")
def test_map_split_over_several_position_blocks(classes):
    """h*w larger than one block of low-res positions (several programs per map)."""
    features, weights = inputs(1, 6, 17, 16, classes, channels_last=True, seed=3)
    p = triton_cam.plan_for(features, weights, (5, 5), relu=False, normalize=True,
                            out_dtype=None)  # fmt: skip
    assert not p.flat and p.position_blocks > 1
    check(features, weights, (5, 5))


@pytest.fixture
def many_splits(monkeypatch):
    """Pretend to run on 132 SMs with 1 K step per split: launch 1 splits K widely."""
    triton_cam.plan.cache_clear()
    monkeypatch.setattr(triton_cam, "_sm_count", lambda device: 132)
    monkeypatch.setattr(triton_cam, "_FLAT_MIN_STEPS", 1)
    yield
    triton_cam.plan.cache_clear()


@pytest.fixture
def flat_path(monkeypatch):
    """Take the flat NCHW path even for short K loops (by default it needs many steps)."""
    triton_cam.plan.cache_clear()
    monkeypatch.setattr(triton_cam, "_FLAT_MIN_STEPS", 1)
    yield
    triton_cam.plan.cache_clear()


@pytest.mark.parametrize("in_dtype", IN_DTYPES, ids=str)
@pytest.mark.parametrize("classes", [1, 3, 4, "positional"], ids=lambda c: f"C{c}")
@pytest.mark.parametrize(("out_dtype", "relu"), [(None, False), (torch.uint8, True)], ids=str)
def test_flat_nchw_path(flat_path, in_dtype, classes, out_dtype, relu):
    """Contiguous NCHW samples streamed as flat vectors (h*w = 15 is not a multiple of the
    vector width), several steps per program, folded per position at the end."""
    positional = classes == "positional"
    features, weights = inputs(2, 300, 3, 5, 2 if positional else classes, dtype=in_dtype,
                               per_sample_weights=not positional,
                               per_position_weights=positional, seed=16)  # fmt: skip
    p = triton_cam.plan_for(features, weights, (6, 7), relu=relu, normalize=True,
                            out_dtype=out_dtype)  # fmt: skip
    assert p.flat and p.split_steps > 1
    check(features, weights, (6, 7), relu=relu, out_dtype=out_dtype)


@pytest.mark.parametrize(
    ("layout", "classes", "flat"),
    [("nchw", 2, True), ("channels_last", 3, False), ("channels_last", 6, False),
     ("positional", 2, True)],
)  # fmt: skip
def test_k_split_over_programs_is_exact_and_reproducible(many_splits, layout, classes, flat):
    """Partial sums of K slices, added in a fixed order by launch 2: matches the oracle and
    gives the same bits on every run."""
    features, weights = inputs(2, 300, 3, 5, classes, dtype=torch.float16,
                               channels_last=layout == "channels_last",
                               per_position_weights=layout == "positional", seed=15)  # fmt: skip
    p = triton_cam.plan_for(features, weights, (6, 7), relu=True, normalize=False,
                            out_dtype=None)  # fmt: skip
    assert p.flat == flat and p.splits > 2
    first = check(features, weights, (6, 7), relu=True, normalize=False)
    again, _ = run_triton(features, weights, (6, 7), relu=True, normalize=False)
    assert torch.equal(first, again)


def test_min_max_over_several_chunks(monkeypatch):
    """A low-res map longer than one step of launch 2's reduction (1056 > 256 values)."""
    triton_cam.plan.cache_clear()
    monkeypatch.setattr(triton_cam, "_MINMAX_CHUNK", 256)
    try:
        features, _ = inputs(1, 3, 33, 32, 1, seed=4)
        weights = torch.tensor([[1.0, 0.5, 0.25]], device=DEVICE)
        features[0, :, 32, 20] = 40.0  # the maximum (70) and minimum (-70) of the map both
        features[0, :, 32, 5] = -40.0  # sit in the last step (flat positions 1044 and 1029)
        p = triton_cam.plan_for(features, weights, (9, 8), relu=False, normalize=True,
                                out_dtype=None)  # fmt: skip
        assert dict(p.map_pass.meta)["BLOCK_HW"] * 4 < 33 * 32
        check(features, weights, (9, 8))
    finally:
        triton_cam.plan.cache_clear()


def test_long_channel_loop():
    features, weights = inputs(1, 600, 2, 3, 2, dtype=torch.float16, seed=5)
    check(features, weights, (4, 4))


def test_non_contiguous_inputs():
    features, _ = inputs(2, 16, 4, 3, 1, seed=6)
    features = features[:, ::2]
    weights = torch.randn(8, 3, device=DEVICE).t()
    assert not features.is_contiguous() and not weights.is_contiguous()
    check(features, weights, (6, 5), out_dtype=torch.float16)


def test_float64_inputs_are_accepted():
    features, weights = inputs(2, 8, 3, 3, 2, dtype=torch.float64, seed=7)
    check(features, weights.double(), (5, 4))


# The interpreter computes masked-off lanes too (here (0 - min) / eps, too large for fp16).
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=str)
def test_constant_map_gives_zeros(out_dtype):
    features = torch.full((2, 4, 3, 2), -1.5, device=DEVICE)
    out = cam(features, torch.randn(3, 4, device=DEVICE), (4, 5), out_dtype=out_dtype,
              backend="triton")  # fmt: skip
    assert out.shape == (2, 3, 4, 5)
    assert not out.float().isnan().any()
    assert (out.float() == 0).all()


@pytest.mark.parametrize("out_dtype", [None, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("classes", [2, 6], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("relu", [False, True], ids=["", "relu"])
def test_nan_in_one_sample_stays_in_that_sample(out_dtype, classes, relu):
    features, weights = inputs(3, 8, 3, 4, classes, seed=8)
    clean = cam(features, weights, (5, 5), relu=relu, out_dtype=out_dtype, backend="triton")
    features[1, 2, 1, 3] = float("nan")
    out = cam(features, weights, (5, 5), relu=relu, out_dtype=out_dtype, backend="triton")
    assert out[1].isnan().all()
    assert torch.equal(out[0], clean[0]) and torch.equal(out[2], clean[2])


def test_nan_without_normalization_matches_interpolate_pattern():
    """A NaN reaches every output pixel whose four taps include it, as in F.interpolate."""
    features, weights = inputs(2, 5, 3, 3, 2, seed=9)
    features[0, 1, 1, 1] = float("nan")
    out = cam(features, weights, (5, 4), normalize=False, backend="triton")
    ref = oracle_cam(features, weights, (5, 4), relu=False, normalize=False)
    assert torch.equal(out.isnan().cpu(), ref.isnan())
    assert 0 < out[0].isnan().sum() < out[0].numel()
    assert not out[1].isnan().any()


def test_nan_isolation_for_uint8_output():
    features, weights = inputs(3, 8, 3, 3, 2, seed=10)
    clean = cam(features, weights, (4, 4), out_dtype=torch.uint8, backend="triton")
    features[0, 0, 0, 0] = float("nan")
    out = cam(features, weights, (4, 4), out_dtype=torch.uint8, backend="triton")
    assert torch.equal(out[1:], clean[1:])
    assert torch.equal(out[0], torch.zeros_like(out[0])), "a NaN map is 0 in uint8"


def test_uint8_is_round_half_up_of_float_output():
    features, weights = inputs(2, 12, 4, 5, 3, seed=13)
    as_float = cam(features, weights, (9, 11), backend="triton")
    as_u8 = cam(features, weights, (9, 11), out_dtype=torch.uint8, backend="triton")
    want = torch.floor(as_float * 255 + 0.5)
    diff = (as_u8.float() - want).abs()
    # A GPU may fuse 255 * v + 0.5 into one FMA: ties can then round the other way.
    assert diff.max() <= 1 and (diff == 0).float().mean() >= 0.99
    assert as_u8.max() - as_u8.min() > 128  # the maps span most of the range


@pytest.mark.parametrize(("batch", "classes"), [(0, 2), (3, 0)], ids=["B0", "C0"])
def test_empty_result_launches_nothing(monkeypatch, batch, classes):
    def no_launch(*args, **kwargs):
        raise AssertionError("an empty result must not launch a kernel")

    for kernel in ("_tile_sum_kernel", "_flat_sum_kernel", "_map_kernel", "_output_kernel"):
        monkeypatch.setattr(triton_cam, kernel, no_launch)
    features, weights = inputs(batch, 8, 3, 3, classes)
    out = cam(features, weights, (6, 7), out_dtype=torch.uint8, backend="triton")
    assert out.shape == (batch, classes, 6, 7) and out.dtype == torch.uint8


def test_inputs_are_not_modified():
    features, weights = inputs(2, 8, 3, 3, 2, dtype=torch.bfloat16, seed=11)
    f_copy, w_copy = features.clone(), weights.clone()
    cam(features, weights, (5, 5), relu=True, backend="triton")
    assert torch.equal(features, f_copy) and torch.equal(weights, w_copy)


def test_matches_torch_backend_closely():
    """Same fp32 semantics: the two backends agree to fp32 rounding, uint8 to one level."""
    features, weights = inputs(2, 24, 4, 5, 3, dtype=torch.float16, seed=12)
    for out_dtype in (None, torch.uint8):
        ours = cam(features, weights, (9, 7), out_dtype=out_dtype, backend="triton").float()
        ref = cam(features, weights, (9, 7), out_dtype=out_dtype, backend="torch").float()
        assert (ours - ref).abs().max() <= (1 if out_dtype == torch.uint8 else 1e-6)


def plan_of(features, weights, size, **kw):
    flags = {"relu": False, "normalize": True, "out_dtype": None, **kw}
    return triton_cam.plan_for(features, weights, size, **flags)


def wide_flags(p):
    return dict(p.weighted_sum.meta)["WIDE"], dict(p.output.meta)["WIDE"]


class TestOffsets:
    """Offsets between samples and maps are always 64-bit; inside one sample or map they
    switch to 64-bit only when that sample or map passes 2**31 elements."""

    def test_big_batch_keeps_32_bit_offsets_inside_samples(self):
        features = torch.empty(257, 2048, 64, 64, device="meta")  # B*K*h*w > 2**31
        weights = torch.empty(257, 64, 2048, device="meta")
        p = plan_of(features, weights, (1024, 1024))  # B*C*H*W > 2**31 as well
        assert wide_flags(p) == (False, False)

    def test_huge_sample_or_map_switches_to_64_bit(self):
        features = torch.empty(1, 2**19, 64, 64, device="meta").to(
            memory_format=torch.channels_last
        )
        weights = torch.empty(3, 2**19, device="meta")
        assert wide_flags(plan_of(features, weights, (8, 8))) == (True, False)
        small = torch.empty(1, 4, 7, 7, device="meta")
        assert wide_flags(plan_of(small, weights[:, :4], (50_000, 50_000))) == (False, True)

    @pytest.mark.parametrize(
        ("classes", "layout"),
        [(2, "nchw"), (2, "channels_last"), (6, "channels_last"), (2, "positional")],
    )
    @pytest.mark.parametrize(("size", "out_dtype"), [((5, 7), None), (None, torch.uint8)])
    def test_64_bit_offset_path(self, monkeypatch, classes, layout, size, out_dtype):
        """Force the int64 path on tiny tensors: same results as the int32 path."""
        triton_cam.plan.cache_clear()
        monkeypatch.setattr(triton_cam, "_INT32_LIMIT", 1)
        try:
            features, weights = inputs(2, 9, 3, 4, classes, seed=14,
                                       channels_last=layout == "channels_last",
                                       per_sample_weights=layout != "positional",
                                       per_position_weights=layout == "positional")  # fmt: skip
            assert wide_flags(plan_of(features, weights, size or (3, 4))) == (True, True)
            check(features, weights, size, relu=True, out_dtype=out_dtype)
        finally:
            triton_cam.plan.cache_clear()


class TestLaunchSettings:
    """``plan``: the one cached function that picks block sizes, splits and grids."""

    def setup(self, batch, classes, channels=2048, hw=(7, 7), size=(224, 224), **kw):
        features = torch.empty(batch, channels, *hw, dtype=torch.float16, device="meta")
        if kw.pop("channels_last", False):
            features = features.to(memory_format=torch.channels_last)
        weights = torch.empty(classes, channels, device="meta")
        return triton_cam.plan(
            tuple(features.shape), features.stride(), 2, (1, *weights.shape),
            (0, *weights.stride()), size, 132, False, True, False,
        )  # fmt: skip

    @pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
    def test_small_batch_still_fills_an_h100(self, channels_last):
        p = self.setup(1, 1, channels_last=channels_last)
        assert p.splits > 1 and p.weighted_sum.grid[0] >= 64  # K is split across programs
        assert math.prod(p.output.grid) >= 132

    @pytest.mark.parametrize("batch", [8, 256, 1024])
    def test_flat_path_only_when_each_program_has_many_steps(self, batch):
        p = self.setup(batch, 1)
        assert p.flat == (batch == 1024)
        assert p.flat == (p.split_steps >= triton_cam._FLAT_MIN_STEPS)
        assert not self.setup(batch, 1, channels_last=True).flat

    def test_large_batch_walks_whole_rows(self):
        p = self.setup(256, 1)
        assert p.block_w == 256 and p.col_tiles == 1  # 224 px rows in one vector pass
        assert p.block_h * p.block_w == triton_cam._OUT_TILE
        assert (
            (p.row_groups - 1) * p.row_steps * p.block_h
            < 224
            <= (p.row_groups * p.row_steps * p.block_h)
        )
        assert p.weighted_sum.grid[0] >= triton_cam._PROGRAMS_PER_SM * 132

    @pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
    def test_tile_does_not_shrink_for_up_to_four_classes(self, channels_last):
        tiles = set()
        for classes in (1, 2, 3, 4):
            meta = dict(self.setup(8, classes, channels_last=channels_last).weighted_sum.meta)
            tile = meta["BLOCK_L"] if "BLOCK_L" in meta else meta["BLOCK_K"] * meta["BLOCK_S"]
            tiles.add(tile)
        assert tiles == {triton_cam._SUM_TILE}

    @pytest.mark.parametrize("classes", [1, 4, 5, 64, 65, 200])
    @pytest.mark.parametrize("hw", [(1, 1), (7, 7), (14, 14), (64, 64)], ids=str)
    @pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
    def test_blocks_cover_every_class_position_and_channel(self, classes, hw, channels_last):
        p = self.setup(8, classes, 512, hw, (1024, 1000), channels_last=channels_last)
        meta = dict(p.weighted_sum.meta)
        assert meta["BLOCK_C"] * p.class_blocks >= classes and meta["BLOCK_C"] <= 64
        k_step = meta["CHANNELS"] if p.flat else meta["BLOCK_K"]
        assert p.splits * p.split_steps * k_step >= 512
        assert (p.splits - 1) * p.split_steps * k_step < 512  # no empty split
        if p.flat:
            assert meta["CHANNELS"] * hw[0] * hw[1] <= meta["BLOCK_L"]
            assert meta["CHANNELS"] % meta["VEC"] == 0 and meta["VEC"] == 16 // 2
        else:
            assert meta["BLOCK_S"] * p.position_blocks >= hw[0] * hw[1]
            if meta["USE_DOT"]:
                assert min(meta["BLOCK_C"], meta["BLOCK_K"], meta["BLOCK_S"]) >= 16
        assert p.block_h * p.row_steps * p.row_groups >= 1024
        assert p.block_w * p.col_tiles >= 1000

    def test_features_are_read_once_for_up_to_64_classes(self):
        for classes in (1, 7, 64):
            assert self.setup(4, classes).class_blocks == 1

    def test_repeated_shapes_hit_the_cache(self):
        first = self.setup(3, 2)
        hits = triton_cam.plan.cache_info().hits
        assert self.setup(3, 2) is first
        assert triton_cam.plan.cache_info().hits == hits + 1


def run_triton(features, weights, size, *, relu=False, normalize=True, out_dtype=None):
    """The backend entry itself: (maps, nan_maps)."""
    return triton_cam.cam_triton(
        features, weights, size, relu=relu, normalize=normalize, out_dtype=out_dtype
    )


class TestNearConstantMaps:
    """Contract with kernels/semantics.py: hi - lo <= CONSTANT_RTOL * max(|lo|, |hi|) -> 0."""

    def features(self, noise):
        gen = torch.Generator().manual_seed(20)
        level = torch.randn(2, 6, 1, 1, generator=gen) * 3 + 5
        jitter = torch.randn(2, 6, 4, 3, generator=gen) * noise
        return (level + level * jitter).to(DEVICE)

    @pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
    @pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=str)
    @pytest.mark.parametrize("relu", [False, True], ids=["", "relu"])
    def test_tiny_noise_normalizes_to_zero_as_on_torch(self, out_dtype, relu):
        features = self.features(noise=1e-6)  # ~8 fp32 ulps: the maps are not exactly flat
        weights = torch.rand(3, 6, device=DEVICE) + 0.5  # positive maps: relu keeps them
        assert features.amax((2, 3)).ne(features.amin((2, 3))).all()
        ours, _ = run_triton(features, weights, (5, 7), relu=relu, out_dtype=out_dtype)
        assert (ours.float() == 0).all()
        ref = cam(features, weights, (5, 7), relu=relu, out_dtype=out_dtype, backend="torch")
        assert torch.equal(ours, ref)

    def test_range_above_the_threshold_is_normalized(self):
        from camplug.kernels.semantics import CONSTANT_RTOL

        features = self.features(noise=1e-3)
        weights = torch.rand(3, 6, device=DEVICE) + 0.5
        raw = torch.einsum("ck,bkhw->bchw", weights.double(), features.double())
        span = raw.amax((2, 3)) - raw.amin((2, 3))
        assert (span > 10 * CONSTANT_RTOL * raw.abs().amax((2, 3))).all()
        ours, _ = run_triton(features, weights, (5, 7))
        assert torch.allclose(ours.amax((2, 3)), torch.ones(2, 3, device=DEVICE), atol=1e-3)


class TestPerPositionWeights:
    """Contract: weights [B, C, K, h, w] give cam[b, c, s] = sum_k W[b, c, k, s] A[b, k, s]."""

    @pytest.mark.parametrize("in_dtype", IN_DTYPES, ids=str)
    @pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
    @pytest.mark.parametrize(("out_dtype", "relu", "normalize"), OUTPUT_CASES)
    def test_matches_oracle(self, in_dtype, channels_last, out_dtype, relu, normalize):
        features, weights = inputs(2, 12, 3, 5, 3, dtype=in_dtype, channels_last=channels_last,
                                   per_position_weights=True, seed=21)  # fmt: skip
        check(features, weights, (7, 4), relu=relu, normalize=normalize, out_dtype=out_dtype)

    def test_strided_weights_and_long_channel_loop(self):
        features, _ = inputs(1, 300, 4, 6, 1, dtype=torch.float16, seed=23)
        gen = torch.Generator().manual_seed(24)
        weights = torch.randn(1, 300, 2, 6, 4, generator=gen).permute(0, 2, 1, 4, 3).to(DEVICE)
        assert not weights.is_contiguous()
        check(features, weights, (9, 9))

    def test_equals_per_channel_weights_broadcast_over_positions(self):
        features, weights = inputs(2, 10, 3, 4, 2, per_sample_weights=True, seed=25)
        spread = weights[..., None, None].expand(-1, -1, -1, 3, 4)
        ours, _ = run_triton(features, spread, (5, 6))
        per_channel, _ = run_triton(features, weights, (5, 6))
        assert_close(ours, per_channel, torch.float32)


class TestNanReport:
    """Contract: cam_triton returns (maps, nan_maps); nan_maps only for uint8 output."""

    @pytest.mark.parametrize("out_dtype", FLOAT_OUT_DTYPES, ids=str)
    def test_float_outputs_report_nothing(self, out_dtype):
        features, weights = inputs(2, 6, 3, 3, 2, seed=26)
        features[0, 0, 0, 0] = float("nan")
        maps, nan_maps = run_triton(features, weights, (4, 4), out_dtype=out_dtype)
        assert nan_maps is None and maps[0].isnan().all()

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=str)
    @pytest.mark.parametrize("positional", [False, True], ids=["BCK", "BCKhw"])
    def test_uint8_flags_exactly_the_maps_with_nan_or_inf(self, bad, positional):
        """A NaN map is NaN, an inf map counts as constant (inf <= CONSTANT_RTOL * inf) and is
        0: both are flagged, as their bytes are 0."""
        features, weights = inputs(3, 6, 3, 3, 2, per_sample_weights=True, seed=27)
        if positional:
            weights = weights[..., None, None].expand(-1, -1, -1, 3, 3)
        features[2, 4, 1, 1] = bad
        maps, nan_maps = run_triton(features, weights, (5, 5), out_dtype=torch.uint8)
        want = torch.zeros(3, 2, dtype=torch.bool)
        want[2] = True
        assert nan_maps.dtype == torch.bool and nan_maps.device == maps.device
        assert torch.equal(nan_maps.cpu(), want)
        assert (maps[2] == 0).all() and maps[:2].any()
        floats, _ = run_triton(features, weights, (5, 5))
        if bad != bad:
            assert floats[2].isnan().all() and not floats[:2].isnan().any()
        else:
            assert (floats[2] == 0).all()

    def test_empty_batch_reports_an_empty_mask(self):
        features, weights = inputs(0, 4, 3, 3, 2)
        maps, nan_maps = run_triton(features, weights, (4, 4), out_dtype=torch.uint8)
        assert maps.shape == (0, 2, 4, 4) and nan_maps.shape == (0, 2)


def test_cuda_graph_replay_refuses_cpu_tensors():
    """CudaGraphCam (opt-in CUDA-graph replay) is exercised in test_kernel_cuda.py."""
    features, weights = make_inputs(1, 4, 3, 3, 1)
    with pytest.raises(ValueError, match="CUDA tensors"):
        triton_cam.CudaGraphCam()(features, weights, (4, 4), relu=False, normalize=True,
                                  out_dtype=None)  # fmt: skip
