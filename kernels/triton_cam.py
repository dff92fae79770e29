"""Fused CAM in Triton: two launches, features read once, output written once.

Launch 1 (``_weighted_sum_kernel``): one program per (sample, block of classes, block of
low-res positions) streams the features over K once and writes the fp32 low-res maps
[B, C, h*w] (ReLU applied). Launch 2 (``_normalize_upsample_kernel``): one program per
(map, tile of output rows and columns) takes the min/max of its tiny low-res map, normalizes,
upsamples bilinearly (F.interpolate, align_corners=False) and stores in the output dtype.

Under ``TRITON_INTERPRET=1`` (set before this module is imported) the kernels run on CPU
tensors through Triton's interpreter; autotuning then uses a single configuration.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl
import triton.testing

from .semantics import CONSTANT_RTOL, EPS, non_finite_maps

_EPS = tl.constexpr(EPS)
_CONSTANT_RTOL = tl.constexpr(CONSTANT_RTOL)
_INTERPRET = os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "yes", "on")

# Launch settings: every block size and warp count is chosen here.
_MAX_CLASS_BLOCK = 64  # classes per program in launch 1: the features are read once per block
_SUM_REGISTER_BUDGET = 4096  # fp32 accumulators per program in launch 1 (~128 regs, 8 warps)
_TILE_ELEMENTS = 2048  # output elements per program in launch 2 (~64 regs, 8 warps)
_MINMAX_CHUNK = 1024  # low-res values per step of launch 2's min/max loop
_INT32_LIMIT = 2**31  # per-element offsets at or past this switch to int64


@dataclass(frozen=True)
class LaunchSettings:
    """Block sizes and grids of both launches (see ``launch_settings``)."""

    block_c: int
    block_k: int
    block_s: int
    use_dot: bool
    class_blocks: int
    position_blocks: int
    block_hw: int
    block_h: int
    block_w: int
    row_tiles: int
    col_tiles: int

    @property
    def sum_grid(self) -> int:
        return self.class_blocks * self.position_blocks

    @property
    def tiles_per_map(self) -> int:
        return self.row_tiles * self.col_tiles


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _tiles(maps: int, out_h: int, out_w: int, block_h: int, block_w: int) -> int:
    return maps * triton.cdiv(out_h, block_h) * triton.cdiv(out_w, block_w)


def launch_settings(
    batch: int, classes: int, channels: int, hw: int, out_h: int, out_w: int, num_sms: int
) -> LaunchSettings:
    """Pick block sizes so that every SM gets work even at batch 1-8.

    Launch 1 keeps all classes of a block in one accumulator (features read once per class
    block); up to 4 classes use an elementwise [C, K, S] accumulator (exact FMA count),
    more classes an fp32 ``tl.dot`` (needs blocks >= 16). Launch 2 tiles each output map.
    """
    block_c = min(_pow2(classes), _MAX_CLASS_BLOCK)
    use_dot = block_c > 4
    if use_dot:
        block_c = max(block_c, 16)
        block_s = max(16, min(_pow2(hw), _SUM_REGISTER_BUDGET // (2 * block_c)))
    else:
        block_s = min(_pow2(hw), 256)
    class_blocks = triton.cdiv(classes, block_c)
    min_block_s = 16 if use_dot else 8
    while batch * class_blocks * triton.cdiv(hw, block_s) < num_sms and block_s > min_block_s:
        block_s //= 2
    if use_dot:
        block_k = 32
    else:
        block_k = max(1, min(_SUM_REGISTER_BUDGET // (block_c * block_s), 256, _pow2(channels)))

    block_w = min(_pow2(out_w), 1024)
    block_h = max(1, min(_pow2(out_h), _TILE_ELEMENTS // block_w))
    while _tiles(batch * classes, out_h, out_w, block_h, block_w) < 4 * num_sms and block_h > 1:
        block_h //= 2
    while _tiles(batch * classes, out_h, out_w, block_h, block_w) < 4 * num_sms and block_w > 64:
        block_w //= 2
    return LaunchSettings(
        block_c=block_c,
        block_k=block_k,
        block_s=block_s,
        use_dot=use_dot,
        class_blocks=class_blocks,
        position_blocks=triton.cdiv(hw, block_s),
        block_hw=min(_pow2(hw), _MINMAX_CHUNK),
        block_h=block_h,
        block_w=block_w,
        row_tiles=triton.cdiv(out_h, block_h),
        col_tiles=triton.cdiv(out_w, block_w),
    )


def _tuning_configs(warps: tuple[int, ...], stages: tuple[int, ...]) -> list[triton.Config]:
    """Autotuning candidates (warps, pipeline stages); one configuration when interpreting."""
    if _INTERPRET:
        return [triton.Config({}, num_warps=4, num_stages=1)]
    return [triton.Config({}, num_warps=w, num_stages=s) for w in warps for s in stages]


def _tuning_bench(fn, quantiles):
    """Autotuning timer: the kernels take microseconds, so short runs suffice."""
    return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


@triton.autotune(
    configs=_tuning_configs(warps=(4, 8), stages=(1, 2, 3)),
    key=["C", "K", "HW", "BLOCK_C", "BLOCK_K", "BLOCK_S", "USE_DOT"],
    do_bench=_tuning_bench,
    cache_results=True,
)
@triton.jit
def _weighted_sum_kernel(
    f_ptr, w_ptr, raw_ptr,
    C, K, HW, W_IN,
    f_sb, f_sk, f_sh, f_sw,
    w_sb, w_sc, w_sk,
    CLASS_BLOCKS, POSITION_BLOCKS,
    RELU: tl.constexpr,
    USE_DOT: tl.constexpr,
    WIDE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_S: tl.constexpr,
):  # fmt: skip
    """raw[b, c, s] = relu?(sum_k w[b, c, k] * f[b, k, s]) in fp32, for one block of (c, s)."""
    pid = tl.program_id(0)
    s_block = pid % POSITION_BLOCKS
    c_block = (pid // POSITION_BLOCKS) % CLASS_BLOCKS
    b = (pid // (POSITION_BLOCKS * CLASS_BLOCKS)).to(tl.int64)

    offs_c = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_s = s_block * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_k = tl.arange(0, BLOCK_K)
    c_mask = offs_c < C
    s_mask = offs_s < HW
    if WIDE:  # offsets inside one sample can pass 2**31
        offs_c = offs_c.to(tl.int64)
        offs_s = offs_s.to(tl.int64)
        offs_k = offs_k.to(tl.int64)
    # Scalar 64-bit bases advance along K; the per-element offsets stay loop-invariant.
    f_base = f_ptr + b * f_sb
    w_base = w_ptr + b * w_sb
    k_step = tl.full([], BLOCK_K, tl.int64) if WIDE else BLOCK_K
    f_offs = offs_k[:, None] * f_sk + ((offs_s // W_IN) * f_sh + (offs_s % W_IN) * f_sw)[None, :]
    w_offs = offs_c[:, None] * w_sc + offs_k[None, :] * w_sk

    if USE_DOT:
        acc = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
    else:
        acc3 = tl.zeros([BLOCK_C, BLOCK_K, BLOCK_S], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        f = tl.load(f_base + f_offs, mask=k_mask[:, None] & s_mask[None, :], other=0.0)
        w = tl.load(w_base + w_offs, mask=c_mask[:, None] & k_mask[None, :], other=0.0)
        f = f.to(tl.float32)
        w = w.to(tl.float32)
        if USE_DOT:
            acc = tl.dot(w, f, acc, input_precision="ieee")
        else:
            acc3 += w[:, :, None] * f[None, :, :]
        f_base += k_step * f_sk
        w_base += k_step * w_sk
    if not USE_DOT:
        acc = tl.sum(acc3, axis=1)
    if RELU:
        acc = tl.where(acc < 0.0, 0.0, acc)  # keeps NaN, unlike maximum()

    raw_base = raw_ptr + b * C * HW
    raw_offs = offs_c[:, None] * HW + offs_s[None, :]
    tl.store(raw_base + raw_offs, acc, mask=c_mask[:, None] & s_mask[None, :])


@triton.autotune(
    configs=_tuning_configs(warps=(4, 8), stages=(1, 2, 3)),
    key=["C", "K", "HW", "BLOCK_K", "BLOCK_S"],
    do_bench=_tuning_bench,
    cache_results=True,
)
@triton.jit
def _positional_sum_kernel(
    f_ptr, w_ptr, raw_ptr,
    C, K, HW, W_IN,
    f_sb, f_sk, f_sh, f_sw,
    w_sb, w_sc, w_sk, w_sh, w_sw,
    POSITION_BLOCKS,
    RELU: tl.constexpr,
    WIDE: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_S: tl.constexpr,
):  # fmt: skip
    """raw[b, c, s] = relu?(sum_k w[b, c, k, s] * f[b, k, s]) in fp32 (per-position weights)."""
    pid = tl.program_id(0)
    s_block = pid % POSITION_BLOCKS
    bc = (pid // POSITION_BLOCKS).to(tl.int64)
    b = bc // C
    c = bc % C
    offs_s = s_block * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_k = tl.arange(0, BLOCK_K)
    s_mask = offs_s < HW
    if WIDE:
        offs_s = offs_s.to(tl.int64)
        offs_k = offs_k.to(tl.int64)
    f_base = f_ptr + b * f_sb
    w_base = w_ptr + b * w_sb + c * w_sc
    k_step = tl.full([], BLOCK_K, tl.int64) if WIDE else BLOCK_K
    row = offs_s // W_IN
    col = offs_s % W_IN
    f_offs = offs_k[:, None] * f_sk + (row * f_sh + col * f_sw)[None, :]
    w_offs = offs_k[:, None] * w_sk + (row * w_sh + col * w_sw)[None, :]
    acc = tl.zeros([BLOCK_K, BLOCK_S], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        mask = (offs_k < K - k0)[:, None] & s_mask[None, :]
        f = tl.load(f_base + f_offs, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_base + w_offs, mask=mask, other=0.0).to(tl.float32)
        acc += w * f
        f_base += k_step * f_sk
        w_base += k_step * w_sk
    out = tl.sum(acc, axis=0)
    if RELU:
        out = tl.where(out < 0.0, 0.0, out)
    tl.store(raw_ptr + bc * HW + offs_s, out, mask=s_mask)


@triton.jit
def _source_index(dst, scale, size_in):
    """Bilinear neighbours along one axis as F.interpolate(align_corners=False) picks them:
    src = scale * (dst + 0.5) - 0.5 clamped at 0; returns (i0, i1) in dst's integer dtype and
    their fp32 weights (l0, l1)."""
    src = scale * (dst.to(tl.float32) + 0.5) - 0.5
    src = tl.where(src < 0.0, 0.0, src)
    i0 = tl.minimum(src.to(dst.dtype), size_in - 1)
    i1 = i0 + (i0 < size_in - 1).to(i0.dtype)
    l1 = src - i0.to(tl.float32)
    return i0, i1, 1.0 - l1, l1


@triton.autotune(
    configs=_tuning_configs(warps=(2, 4, 8), stages=(1,)),
    key=["H_OUT", "W_OUT", "H_IN", "W_IN", "BLOCK_H", "BLOCK_W", "NORMALIZE", "RESAMPLE"],
    do_bench=_tuning_bench,
    cache_results=True,
)
@triton.jit
def _normalize_upsample_kernel(
    raw_ptr, out_ptr,
    H_IN, W_IN, HW_IN, H_OUT, W_OUT,
    scale_h, scale_w,
    COL_TILES, TILES_PER_MAP,
    NORMALIZE: tl.constexpr,
    RESAMPLE: tl.constexpr,
    OUT_UINT8: tl.constexpr,
    WIDE: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):  # fmt: skip
    """out[map, y, x] = convert(bilinear(normalize(raw[map]))) for one tile of (y, x)."""
    pid = tl.program_id(0)
    map_idx = (pid // TILES_PER_MAP).to(tl.int64)
    tile = pid % TILES_PER_MAP
    row_tile = tile // COL_TILES
    col_tile = tile % COL_TILES
    src = raw_ptr + map_idx * HW_IN

    if NORMALIZE:
        lo = tl.full([], float("inf"), tl.float32)
        hi = tl.full([], float("-inf"), tl.float32)
        nans = tl.full([], 0, tl.int32)
        for start in range(0, HW_IN, BLOCK_HW):
            offs = start + tl.arange(0, BLOCK_HW)
            m = offs < HW_IN
            v = tl.load(src + offs, mask=m, other=0.0)
            lo = tl.minimum(lo, tl.min(tl.where(m, v, float("inf")), axis=0))
            hi = tl.maximum(hi, tl.max(tl.where(m, v, float("-inf")), axis=0))
            nans += tl.sum((v != v).to(tl.int32), axis=0)
        # tl.min/tl.max may drop NaN; torch.amin/amax propagate it.
        lo = tl.where(nans > 0, float("nan"), lo)
        rng = hi - lo
        flat = rng <= _CONSTANT_RTOL * tl.maximum(tl.abs(lo), tl.abs(hi))
        span = rng + _EPS

    offs_y = row_tile * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_x = col_tile * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = (offs_y < H_OUT)[:, None] & (offs_x < W_OUT)[None, :]
    if WIDE:  # offsets inside one map can pass 2**31
        offs_y = offs_y.to(tl.int64)
    if RESAMPLE:
        y0, y1, ly0, ly1 = _source_index(offs_y, scale_h, H_IN)
        x0, x1, lx0, lx1 = _source_index(offs_x, scale_w, W_IN)

        row0 = (y0 * W_IN)[:, None]
        row1 = (y1 * W_IN)[:, None]
        v00 = tl.load(src + (row0 + x0[None, :]), mask=mask, other=0.0)
        v01 = tl.load(src + (row0 + x1[None, :]), mask=mask, other=0.0)
        v10 = tl.load(src + (row1 + x0[None, :]), mask=mask, other=0.0)
        v11 = tl.load(src + (row1 + x1[None, :]), mask=mask, other=0.0)
        if NORMALIZE:
            v00 = tl.where(flat, 0.0, (v00 - lo) / span)
            v01 = tl.where(flat, 0.0, (v01 - lo) / span)
            v10 = tl.where(flat, 0.0, (v10 - lo) / span)
            v11 = tl.where(flat, 0.0, (v11 - lo) / span)
        lx0 = lx0[None, :]
        lx1 = lx1[None, :]
        val = ly0[:, None] * (lx0 * v00 + lx1 * v01) + ly1[:, None] * (lx0 * v10 + lx1 * v11)
    else:
        val = tl.load(src + ((offs_y * W_IN)[:, None] + offs_x[None, :]), mask=mask, other=0.0)
        if NORMALIZE:
            val = tl.where(flat, 0.0, (val - lo) / span)

    if OUT_UINT8:
        val = tl.where(val != val, 0.0, val)  # a NaN map has no byte value: 0, as the reference
        val = tl.minimum(tl.maximum(tl.floor(val * 255.0 + 0.5), 0.0), 255.0)
    out_base = out_ptr + map_idx * H_OUT * W_OUT
    out_offs = (offs_y * W_OUT)[:, None] + offs_x[None, :]
    tl.store(out_base + out_offs, val.to(out_ptr.dtype.element_ty), mask=mask)


def _extent(t: torch.Tensor, fixed_dims: int) -> int:
    """1 + the largest element offset inside ``t[i, ...]`` with the first dims fixed."""
    dims = zip(t.shape[fixed_dims:], t.stride()[fixed_dims:], strict=True)
    return 1 + sum((n - 1) * stride for n, stride in dims)


def wide_offsets(
    features: torch.Tensor, weights: torch.Tensor, out_size: tuple[int, int], s: LaunchSettings
) -> tuple[bool, bool]:
    """Whether offsets inside one sample (launch 1) or one map (launch 2) can pass int32.

    Offsets between samples and maps are always 64-bit; these flags switch the per-element
    offsets to int64 only where a single sample or map is that large.
    """
    hw = features.shape[2] * features.shape[3]
    per_sample = max(
        _extent(features, 1) + s.block_k * features.stride(1),
        _extent(weights, weights.dim() - 2)
        + s.block_k * weights.stride(-1)
        + s.block_c * weights.stride(-2),
        s.class_blocks * s.block_c * hw,
    )
    per_map = max(s.row_tiles * s.block_h * out_size[1], hw)
    return per_sample >= _INT32_LIMIT, per_map >= _INT32_LIMIT


def _source_scale(in_size: int, out_size: int) -> float:
    """PyTorch's fp32 ``in_size / out_size`` (an exact fp32 value passed as a float)."""
    return float(np.float32(in_size) / np.float32(out_size))


def _positional_sums(
    features: torch.Tensor, weights: torch.Tensor, raw: torch.Tensor, relu: bool
) -> None:
    """Launch 1 for per-position weights [B, C, K, h, w]: fills ``raw`` [B, C, h*w]."""
    batch, channels, h, w = features.shape
    classes = weights.shape[1]
    block_s = min(_pow2(h * w), 128)
    block_k = max(1, min(2048 // block_s, _pow2(channels)))
    position_blocks = triton.cdiv(h * w, block_s)
    wide = max(
        _extent(features, 1) + block_k * features.stride(1),
        _extent(weights, 2) + block_k * weights.stride(2),
    ) >= _INT32_LIMIT
    _positional_sum_kernel[(batch * classes * position_blocks,)](
        features, weights, raw,
        classes, channels, h * w, w,
        *features.stride(),
        *weights.stride(),
        position_blocks,
        RELU=relu, WIDE=wide, BLOCK_K=block_k, BLOCK_S=block_s,
        enable_fp_fusion=True,
    )  # fmt: skip


def cam_triton(
    features: torch.Tensor,
    weights: torch.Tensor,
    out_size: tuple[int, int],
    *,
    relu: bool,
    normalize: bool,
    out_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CAM with the fused Triton kernels; same semantics as ``cam_reference``.

    features [B, K, h, w] (fp32/fp16/bf16, any strides, read in place); weights [C, K],
    [B, C, K] or per-position [B, C, K, h, w]. Inputs must already be validated
    (``checks.check_cam_inputs``). Returns ``(maps, nan_maps)``: maps a contiguous
    [B, C, H, W] tensor in ``out_dtype`` (fp32 when None); nan_maps, for uint8 output only
    (else None), a bool [B, C] tensor, True where the low-res map's range is not finite
    (``semantics.non_finite_maps``: it holds a NaN or an inf; its bytes are 0).
    """
    batch, channels, h, w = features.shape
    classes = weights.shape[1] if weights.dim() == 5 else weights.shape[-2]
    out_h, out_w = out_size
    out = torch.empty(
        (batch, classes, out_h, out_w), dtype=out_dtype or torch.float32, device=features.device
    )
    want_nan = out.dtype == torch.uint8
    if out.numel() == 0:
        nan_maps = torch.zeros((batch, classes), dtype=torch.bool, device=out.device)
        return out, nan_maps if want_nan else None
    raw = torch.empty((batch, classes, h * w), dtype=torch.float32, device=features.device)
    s = launch_settings(batch, classes, channels, h * w, out_h, out_w, _sm_count(features.device))
    guard = (
        torch.cuda.device(features.device)
        if features.device.type == "cuda"
        else contextlib.nullcontext()
    )
    with guard:
        if weights.dim() == 5:
            _positional_sums(features, weights, raw, relu)
            wide_map = max(s.row_tiles * s.block_h * out_w, h * w) >= _INT32_LIMIT
        else:
            w_sb = weights.stride(0) if weights.dim() == 3 else 0
            wide_sum, wide_map = wide_offsets(features, weights, out_size, s)
            _weighted_sum_kernel[(batch * s.sum_grid,)](
                features, weights, raw,
                classes, channels, h * w, w,
                *features.stride(),
                w_sb, weights.stride(-2), weights.stride(-1),
                s.class_blocks, s.position_blocks,
                RELU=relu, USE_DOT=s.use_dot, WIDE=wide_sum,
                BLOCK_C=s.block_c, BLOCK_K=s.block_k, BLOCK_S=s.block_s,
                enable_fp_fusion=True,
            )  # fmt: skip
        nan_maps = non_finite_maps(raw[..., None]) if want_nan else None
        _normalize_upsample_kernel[(batch * classes * s.tiles_per_map,)](
            raw, out,
            h, w, h * w, out_h, out_w,
            _source_scale(h, out_h), _source_scale(w, out_w),
            s.col_tiles, s.tiles_per_map,
            NORMALIZE=normalize, RESAMPLE=(h, w) != (out_h, out_w),
            OUT_UINT8=want_nan, WIDE=wide_map,
            BLOCK_HW=s.block_hw, BLOCK_H=s.block_h, BLOCK_W=s.block_w,
            enable_fp_fusion=True,  # FMAs, as nvcc compiles PyTorch's upsampling
        )  # fmt: skip
    return out, nan_maps
