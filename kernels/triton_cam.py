"""Fused CAM in Triton: three launches, features read once, output written once.

Launch 1 (weighted sum) splits the channel reduction over programs: each program sums one
slice of K for one sample, class block and position block and writes an fp32 partial map
[SPLITS, B, C, h*w] (no atomics: the order of every sum is fixed, results are bitwise
reproducible). Two variants:
  * ``_tile_sum_kernel``: a [BLOCK_K, BLOCK_S] tile of the features, any strides; loads are
    16-byte vectors for channels_last and for NCHW when h*w is a multiple of the vector
    width (scalar for NCHW 7x7 rows, which start unaligned). Up to 4 classes accumulate
    elementwise in a tile that keeps its size for any class count, more classes use tl.dot.
  * ``_flat_sum_kernel``: NCHW features whose [K, h*w] sample is contiguous, up to 4 classes:
    the sample is streamed as one flat vector (whole channels per step, so the loads stay
    16-byte aligned even when h*w = 49), accumulated per lane and folded per position once at
    the end. The fold costs ~3.5k instructions per program, so the plan takes this path only
    when a program runs >= _FLAT_MIN_STEPS steps (large batches); the static report
    (benchmarks/kernel_static_report.py) shows the trade-off.
  Both take per-position weights [B, C, K, h, w] (LayerCAM, HiResCAM) as well.
Launch 2 (``_map_kernel``, one program per map) adds the partial maps in split order, applies
ReLU, computes the map's min/max ONCE, normalizes the tiny low-res map in place (exact
division, as the reference), flags NaN/inf maps and interpolates along x: rows [B, C, h, W].
Launch 3 (``_output_kernel``) interpolates along y, the bilinear formula of PyTorch's kernel
``ly0 * row[y0] + ly1 * row[y1]``: per output pixel two contiguous vector loads, a lerp and
one vector store, no division.

Launch settings are pure functions of the shapes, cached (``plan``). ``CudaGraphCam`` replays
repeated calls from a captured CUDA graph (opt-in). Under ``TRITON_INTERPRET=1`` (set before
this module is imported) the kernels run on CPU tensors through Triton's interpreter.
"""

from __future__ import annotations

import contextlib
import functools
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl

from .checks import num_classes
from .environment import triton_interpreter
from .semantics import CONSTANT_RTOL, EPS

_EPS = tl.constexpr(EPS)
_CONSTANT_RTOL = tl.constexpr(CONSTANT_RTOL)
_INTERPRET = triton_interpreter()

# Launch settings: every block size, warp count and split count is chosen here.
_SUM_TILE = 2048  # feature elements per step of launch 1's elementwise tile
_FLAT_TILE = 1024  # feature elements per step of launch 1's flat path (one vector per thread)
_FLAT_MIN_STEPS = 128  # K steps per program that amortize the flat path's lane fold (~3.5k SASS)
_MAX_CLASS_BLOCK = 64  # classes per program of the tl.dot path (features read once per block)
_ELEMENTWISE_CLASSES = 4  # up to this many classes accumulate elementwise
_PROGRAMS_PER_SM = 4  # launch 1 splits K until it has this many programs per SM
_MIN_STEPS_PER_SPLIT = 1  # ... down to one K step per program (batch 1-8: latency rules)
_OUT_TILE = 2048  # output elements per step of launch 3
_OUT_PROGRAMS_PER_SM = 2  # launch 3 splits maps into row groups until it has this many
_ROW_TILE = 1024  # row elements per step of launch 2's x interpolation
_MINMAX_CHUNK = 4096  # partial values (splits x positions) per step of launch 2's reduction
_MAX_SPLITS = 128  # launch 1 splits K into at most this many slices
_VECTOR_BYTES = 16  # widest global load/store
_INT32_LIMIT = 2**31  # per-element offsets at or past this switch to int64


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


# --------------------------------------------------------------------------- launch 1


@triton.jit
def _class_rows(w_ptr, offs_c, c_mask, k, k_mask, w_sc, w_sk):
    """[BLOCK_C, len(k)] fp32 weights of classes offs_c at channels k."""
    offs = offs_c[:, None] * w_sc + k[None, :] * w_sk
    return tl.load(w_ptr + offs, mask=c_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)


@triton.jit
def _tile_sum_kernel(
    f_ptr, w_ptr, part_ptr,
    B, C, K, HW, W_IN,
    f_sb, f_sk, f_sh, f_sw,
    w_sb, w_sc, w_sk, w_sh, w_sw,
    CLASS_BLOCKS, POSITION_BLOCKS, SPLITS, SPLIT_STEPS,
    POSITIONAL: tl.constexpr,
    USE_DOT: tl.constexpr,
    MERGED: tl.constexpr,
    WIDE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_S: tl.constexpr,
):  # fmt: skip
    """part[split, b, c, s] = sum over this split's k of w[b, c, k(, s)] * f[b, k, s], fp32."""
    pid = tl.program_id(0)
    split = pid % SPLITS
    rest = pid // SPLITS
    s_block = rest % POSITION_BLOCKS
    rest = rest // POSITION_BLOCKS
    c_block = rest % CLASS_BLOCKS
    b = (rest // CLASS_BLOCKS).to(tl.int64)

    offs_c = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_s = s_block * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_k = tl.arange(0, BLOCK_K)
    c_mask = offs_c < C
    s_mask = offs_s < HW
    if WIDE:  # offsets inside one sample can pass 2**31
        offs_c = offs_c.to(tl.int64)
        offs_s = offs_s.to(tl.int64)
        offs_k = offs_k.to(tl.int64)
    if MERGED:  # (h, w) is one strided axis: contiguous when f_sw == 1, so loads vectorize
        f_pos = offs_s * f_sw
        w_pos = offs_s * w_sw
    else:
        f_pos = (offs_s // W_IN) * f_sh + (offs_s % W_IN) * f_sw
        w_pos = (offs_s // W_IN) * w_sh + (offs_s % W_IN) * w_sw
    k_start = split * SPLIT_STEPS * BLOCK_K
    k_end = tl.minimum(k_start + SPLIT_STEPS * BLOCK_K, K)
    f_base = f_ptr + b * f_sb + k_start * f_sk
    w_base = w_ptr + b * w_sb + k_start * w_sk
    if POSITIONAL:
        w_base += (c_block * BLOCK_C).to(tl.int64) * w_sc  # one class per program
    f_offs = offs_k[:, None] * f_sk + f_pos[None, :]
    k_step = tl.full([], BLOCK_K, tl.int64) if WIDE else BLOCK_K

    if USE_DOT:
        acc = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
    elif POSITIONAL:
        acc2 = tl.zeros([BLOCK_K, BLOCK_S], dtype=tl.float32)
    else:
        acc3 = tl.zeros([BLOCK_C, BLOCK_K, BLOCK_S], dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        k_mask = offs_k < k_end - k0
        tile_mask = k_mask[:, None] & s_mask[None, :]
        f = tl.load(f_base + f_offs, mask=tile_mask, other=0.0).to(tl.float32)
        if POSITIONAL:
            w_offs = offs_k[:, None] * w_sk + w_pos[None, :]
            w = tl.load(w_base + w_offs, mask=tile_mask, other=0.0).to(tl.float32)
            acc2 += w * f
        else:
            w = _class_rows(w_base, offs_c, c_mask, offs_k, k_mask, w_sc, w_sk)
            if USE_DOT:
                acc = tl.dot(w, f, acc, input_precision="ieee")
            else:
                acc3 += w[:, :, None] * f[None, :, :]
        f_base += k_step * f_sk
        w_base += k_step * w_sk
    if POSITIONAL:
        acc = tl.sum(acc2, axis=0)[None, :]
    elif not USE_DOT:
        acc = tl.sum(acc3, axis=1)

    map_row = (split * B + b) * C + offs_c.to(tl.int64)
    part_offs = map_row[:, None] * HW + offs_s[None, :]
    tl.store(part_ptr + part_offs, acc, mask=c_mask[:, None] & s_mask[None, :])


@triton.jit
def _flat_sum_kernel(
    f_ptr, w_ptr, part_ptr,
    B, C, K, HW,
    f_sb, w_sb, w_sc, w_sk,
    CLASS_BLOCKS, SPLITS, SPLIT_STEPS,
    POSITIONAL: tl.constexpr,
    WIDE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    CHANNELS: tl.constexpr,
    BLOCK_L: tl.constexpr,
    VEC: tl.constexpr,
    CHANNELS_P2: tl.constexpr,
    HW_P2: tl.constexpr,
):  # fmt: skip
    """Launch 1 for a contiguous [K, h*w] sample: each step loads CHANNELS whole channels as
    one flat vector (CHANNELS * HW <= BLOCK_L elements; CHANNELS is a multiple of VEC, the
    16-byte vector width, so every step starts aligned). Lane j always holds channel j // HW
    and position j % HW: it accumulates in place and the lanes of one position are added
    once, at the end, through a register gather. A VEC-lane group spans at most two channels
    (HW >= VEC): its weights are two loads and a select."""
    pid = tl.program_id(0)
    split = pid % SPLITS
    rest = pid // SPLITS
    c_block = rest % CLASS_BLOCKS
    b = (rest // CLASS_BLOCKS).to(tl.int64)

    GROUPS: tl.constexpr = BLOCK_L // VEC
    group = tl.arange(0, GROUPS) * VEC
    lane = group[:, None] + tl.arange(0, VEC)[None, :]  # [GROUPS, VEC], lane = flat offset
    first_k = group // HW
    last_k = (group + VEC - 1) // HW
    is_first = (lane // HW) == first_k[:, None]
    offs_c = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    step = CHANNELS * HW
    k_start = split * SPLIT_STEPS * CHANNELS
    k_end = tl.minimum(k_start + SPLIT_STEPS * CHANNELS, K)
    if WIDE:
        k_start = k_start.to(tl.int64)
        offs_c = offs_c.to(tl.int64)
        first_k = first_k.to(tl.int64)
        last_k = last_k.to(tl.int64)
    end = (k_end - k_start) * HW
    f_base = f_ptr + b * f_sb + k_start * HW
    w_base = w_ptr + b * w_sb
    if POSITIONAL:
        # one class per program; its [K, h*w] weights are laid out as the features
        w_base += (c_block * BLOCK_C).to(tl.int64) * w_sc + k_start * HW
    else:
        w_base += k_start * w_sk
        w_first = offs_c[:, None] * w_sc + first_k[None, :] * w_sk  # [BLOCK_C, GROUPS]
        w_last = offs_c[:, None] * w_sc + last_k[None, :] * w_sk

    acc = tl.zeros([BLOCK_C, GROUPS, VEC], dtype=tl.float32)
    for start in range(0, end, step):
        m = (lane < step) & (lane < end - start)
        f = tl.load(f_base + start + lane, mask=m, other=0.0).to(tl.float32)
        if POSITIONAL:
            w = tl.load(w_base + start + lane, mask=m, other=0.0).to(tl.float32)
            acc += (w * f)[None, :, :]
        else:
            g_mask = c_mask[:, None] & (group < tl.minimum(step, end - start))[None, :]
            w0 = tl.load(w_base + w_first, mask=g_mask, other=0.0).to(tl.float32)
            w1 = tl.load(w_base + w_last, mask=g_mask, other=0.0).to(tl.float32)
            w = tl.where(is_first[None, :, :], w0[:, :, None], w1[:, :, None])
            acc += w * f[None, :, :]
            w_base += CHANNELS * w_sk

    # Fold the lanes of each position: [BLOCK_C, BLOCK_L] -> [BLOCK_C, CHANNELS_P2, HW_P2].
    q = tl.arange(0, CHANNELS_P2 * HW_P2)
    q_k = q // HW_P2
    q_s = q % HW_P2
    valid = (q_k < CHANNELS) & (q_s < HW)
    src = tl.where(valid, q_k * HW + q_s, 0)
    idx = tl.broadcast_to(src[None, :], (BLOCK_C, CHANNELS_P2 * HW_P2))
    flat = tl.reshape(acc, (BLOCK_C, BLOCK_L))
    folded = tl.where(valid[None, :], tl.gather(flat, idx, axis=1), 0.0)
    sums = tl.sum(tl.reshape(folded, (BLOCK_C, CHANNELS_P2, HW_P2)), axis=1)

    offs_s = tl.arange(0, HW_P2)
    map_row = (split * B + b) * C + offs_c.to(tl.int64)
    part_offs = map_row[:, None] * HW + offs_s[None, :]
    tl.store(part_ptr + part_offs, sums, mask=c_mask[:, None] & (offs_s < HW)[None, :])


# --------------------------------------------------------------------------- launches 2, 3


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


@triton.jit
def _map_kernel(
    low_ptr, rows_ptr, nan_ptr,
    SPLITS, SPLIT_STRIDE, HW, H_IN, W_IN, W_OUT,
    scale_w,
    RELU: tl.constexpr,
    NORMALIZE: tl.constexpr,
    RESAMPLE: tl.constexpr,
    NAN_FLAGS: tl.constexpr,
    SPLITS_P2: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_X: tl.constexpr,
):  # fmt: skip
    """One low-res map: low = relu?(sum of its partial maps), written over split 0; then,
    once per map, min/max and the normalization in place; then rows[i, x] =
    l0(x) * low[i, x0(x)] + l1(x) * low[i, x1(x)] for the W_OUT output columns."""
    m = tl.program_id(0).to(tl.int64)
    low = low_ptr + m * HW
    lo = tl.full([], float("inf"), tl.float32)
    hi = tl.full([], float("-inf"), tl.float32)
    nans = tl.full([], 0, tl.int32)
    for start in range(0, HW, BLOCK_HW):
        offs = start + tl.arange(0, BLOCK_HW)
        mask = offs < HW
        # All partial maps of these positions in one load (one memory round trip, not one
        # per split), added by a reduction tree of fixed shape: bitwise reproducible.
        split = tl.arange(0, SPLITS_P2)
        parts_mask = (split < SPLITS)[:, None] & mask[None, :]
        parts = low + split[:, None].to(tl.int64) * SPLIT_STRIDE + offs[None, :]
        v = tl.sum(tl.load(parts, mask=parts_mask, other=0.0), axis=0)
        if RELU:
            v = tl.where(v < 0.0, 0.0, v)  # keeps NaN, unlike maximum()
        tl.store(low + offs, v, mask=mask)
        if NORMALIZE:
            lo = tl.minimum(lo, tl.min(tl.where(mask, v, float("inf")), axis=0))
            hi = tl.maximum(hi, tl.max(tl.where(mask, v, float("-inf")), axis=0))
            nans += tl.sum((v != v).to(tl.int32), axis=0)
    if NORMALIZE:
        lo = tl.where(nans > 0, float("nan"), lo)  # tl.min/max may drop NaN; amin/amax keep it
        rng = hi - lo
        flat = rng <= _CONSTANT_RTOL * tl.maximum(tl.abs(lo), tl.abs(hi))
        span = rng + _EPS
        if NAN_FLAGS:  # semantics.non_finite_maps: the range is NaN or infinite
            tl.store(nan_ptr + m, (~(tl.abs(rng) < float("inf"))).to(tl.uint8))
        tl.debug_barrier()
        for start in range(0, HW, BLOCK_HW):
            offs = start + tl.arange(0, BLOCK_HW)
            mask = offs < HW
            v = tl.load(low + offs, mask=mask, other=0.0)
            tl.store(low + offs, tl.where(flat, 0.0, (v - lo) / span), mask=mask)
    if RESAMPLE:
        tl.debug_barrier()  # the gathers below read values other threads wrote
        rows = rows_ptr + m * H_IN * W_OUT
        for x_start in range(0, W_OUT, BLOCK_X):
            offs_x = x_start + tl.arange(0, BLOCK_X)
            x0, x1, lx0, lx1 = _source_index(offs_x, scale_w, W_IN)
            x_mask = offs_x < W_OUT
            for i_start in range(0, H_IN, BLOCK_I):
                offs_i = i_start + tl.arange(0, BLOCK_I)
                mask = (offs_i < H_IN)[:, None] & x_mask[None, :]
                row = (offs_i * W_IN)[:, None]
                v0 = tl.load(low + (row + x0[None, :]), mask=mask, other=0.0)
                v1 = tl.load(low + (row + x1[None, :]), mask=mask, other=0.0)
                val = lx0[None, :] * v0 + lx1[None, :] * v1
                tl.store(rows + ((offs_i * W_OUT)[:, None] + offs_x[None, :]), val, mask=mask)


@triton.jit
def _output_kernel(
    rows_ptr, out_ptr,
    H_IN, H_OUT, W_OUT,
    scale_h,
    ROW_STEPS,
    RESAMPLE: tl.constexpr,
    OUT_UINT8: tl.constexpr,
    WIDE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):  # fmt: skip
    """out[map, y, x] = convert(ly0(y) * rows[map, y0(y), x] + ly1(y) * rows[map, y1(y), x])
    (rows[map, y, x] itself when nothing is resampled). Grid (map, column tile, row group):
    no index division; each program walks ROW_STEPS blocks of BLOCK_H rows."""
    m = tl.program_id(0).to(tl.int64)
    offs_x = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    x_mask = (offs_x < W_OUT)[None, :]
    src = rows_ptr + m * H_IN * W_OUT + offs_x[None, :]
    dst = out_ptr + m * H_OUT * W_OUT + offs_x[None, :]
    y_first = tl.program_id(2) * ROW_STEPS * BLOCK_H
    for step in range(0, ROW_STEPS):
        offs_y = y_first + step * BLOCK_H + tl.arange(0, BLOCK_H)
        mask = (offs_y < H_OUT)[:, None] & x_mask
        if WIDE:  # offsets inside one map can pass 2**31
            offs_y = offs_y.to(tl.int64)
        if RESAMPLE:
            y0, y1, ly0, ly1 = _source_index(offs_y, scale_h, H_IN)
            top = tl.load(src + (y0 * W_OUT)[:, None], mask=mask, other=0.0)
            bottom = tl.load(src + (y1 * W_OUT)[:, None], mask=mask, other=0.0)
            val = ly0[:, None] * top + ly1[:, None] * bottom
        else:
            val = tl.load(src + (offs_y * W_OUT)[:, None], mask=mask, other=0.0)
        if OUT_UINT8:
            # v in [0, 1] (normalized; rounding stays inside [-0.5, 255.5) after scaling):
            # truncation is floor, NaN maps to 0 as in the reference.
            val = val * 255.0 + 0.5
            val = tl.where(val == val, val, 0.0)
        tl.store(dst + (offs_y * W_OUT)[:, None], val.to(dst.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- host side


@dataclass(frozen=True)
class Launch:
    """One kernel launch: grid size, constexpr arguments and compile options."""

    grid: tuple[int, ...]
    meta: tuple[tuple[str, int | bool], ...]
    num_warps: int
    num_stages: int = 1

    @property
    def kwargs(self) -> dict:
        return {**dict(self.meta), "num_warps": self.num_warps, "num_stages": self.num_stages}


@dataclass(frozen=True)
class Plan:
    """Everything a call computes from shapes and strides alone (cached by ``plan``)."""

    flat: bool  # launch 1 variant: _flat_sum_kernel, else _tile_sum_kernel
    splits: int
    split_steps: int
    class_blocks: int
    position_blocks: int
    weighted_sum: Launch
    map_pass: Launch
    output: Launch
    block_h: int
    block_w: int
    row_steps: int  # launch 3: BLOCK_H-row steps per program
    row_groups: int
    col_tiles: int
    resample: bool
    scale_h: float
    scale_w: float


def _extent(shape: tuple[int, ...], strides: tuple[int, ...]) -> int:
    """1 + the largest element offset of a tensor with these shape and strides."""
    return 1 + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))


def _source_scale(in_size: int, out_size: int) -> float:
    """PyTorch's fp32 ``in_size / out_size`` (an exact fp32 value passed as a float)."""
    return float(np.float32(in_size) / np.float32(out_size))


def _splits(programs: int, steps: int, num_sms: int) -> tuple[int, int]:
    """(splits, steps per split) of a K loop of ``steps`` steps, ``programs`` programs each."""
    want = triton.cdiv(_PROGRAMS_PER_SM * num_sms, max(programs, 1))
    splits = max(1, min(want, steps // _MIN_STEPS_PER_SPLIT, _MAX_SPLITS))
    split_steps = triton.cdiv(steps, splits)
    return triton.cdiv(steps, split_steps), split_steps


def _output_layout(maps: int, out_h: int, out_w: int, num_sms: int) -> tuple[int, ...]:
    """Launch 3's (BLOCK_H, BLOCK_W, row steps, row groups, column tiles): whole rows up to
    256 wide per step (8 contiguous pixels per thread); a small batch gets smaller tiles, a
    large one row groups of several steps, so that every SM has a few programs."""
    block_w = min(_pow2(out_w), 256)
    block_h = max(1, min(_OUT_TILE // block_w, _pow2(out_h)))
    target = _OUT_PROGRAMS_PER_SM * num_sms
    while maps * triton.cdiv(out_h, block_h) * triton.cdiv(out_w, block_w) < target:
        if block_h > 1:  # a small batch: smaller tiles, more programs
            block_h //= 2
        elif block_w > 64:
            block_w //= 2
        else:
            break
    col_tiles = triton.cdiv(out_w, block_w)
    steps = triton.cdiv(out_h, block_h)
    want = triton.cdiv(target, maps * col_tiles)
    row_steps = triton.cdiv(steps, max(1, min(want, steps)))
    return block_h, block_w, row_steps, triton.cdiv(steps, row_steps), col_tiles


@functools.lru_cache(maxsize=256)
def plan(
    features_shape: tuple[int, int, int, int],
    features_strides: tuple[int, int, int, int],
    features_itemsize: int,
    weights_shape: tuple[int, ...],
    weights_strides: tuple[int, ...],
    out_size: tuple[int, int],
    num_sms: int,
    relu: bool,
    normalize: bool,
    out_uint8: bool,
) -> Plan:
    """Launch settings of one call, from shapes and strides only (cached: a repeated shape
    costs a dictionary look-up). Weights are [1 or B, C, K] (a [C, K] matrix gets a batch
    stride of 0) or per-position [B, C, K, h, w]."""
    batch, channels, h, w = features_shape
    hw = h * w
    out_h, out_w = out_size
    positional = len(weights_shape) == 5
    classes = weights_shape[1]
    f_sb, f_sk, f_sh, f_sw = features_strides
    w_sb, w_sc, w_sk = weights_strides[:3]
    w_sh, w_sw = weights_strides[3:] if positional else (0, 0)
    vec = _VECTOR_BYTES // features_itemsize
    dense = f_sk == hw and (h == 1 or f_sh == w) and (w == 1 or f_sw == 1)
    w_dense = not positional or (w_sk == hw and (h == 1 or w_sh == w) and (w == 1 or w_sw == 1))
    flat_channels = vec * (_FLAT_TILE // (vec * hw))
    flat = (
        dense
        and w_dense
        and flat_channels > 0
        and hw >= vec  # a vector of lanes spans at most two channels
        and (positional or classes <= _ELEMENTWISE_CLASSES)
        and (hw % vec != 0 or f_sk % 16 != 0)  # else the tile path's rows are aligned already
    )
    use_dot = not positional and classes > _ELEMENTWISE_CLASSES
    if positional:
        block_c = 1
    elif use_dot:
        block_c = max(16, min(_pow2(classes), _MAX_CLASS_BLOCK))
    else:
        block_c = _pow2(classes)
    class_blocks = triton.cdiv(classes, block_c)
    per_sample = max(
        _extent(features_shape[1:], features_strides[1:]),
        _extent(weights_shape[1:], weights_strides[1:]),
    )
    if flat:  # worth it only when the lane fold at the end is amortized over many steps
        steps = triton.cdiv(channels, flat_channels)
        splits, split_steps = _splits(batch * class_blocks, steps, num_sms)
        flat = split_steps >= _FLAT_MIN_STEPS
    if flat:
        wide = per_sample + flat_channels * hw >= _INT32_LIMIT
        weighted_sum = Launch(
            grid=(batch * class_blocks * splits,),
            meta=(("POSITIONAL", positional), ("WIDE", wide), ("BLOCK_C", block_c),
                  ("CHANNELS", flat_channels), ("BLOCK_L", _FLAT_TILE), ("VEC", vec),
                  ("CHANNELS_P2", _pow2(flat_channels)), ("HW_P2", _pow2(hw))),
            num_warps=4,
        )  # fmt: skip
        position_blocks = 1
    else:
        merged = (h == 1 or f_sh == w * f_sw) and (h == 1 or w_sh == w * w_sw)
        if use_dot:
            block_s, block_k = max(16, min(_pow2(hw), 64)), 32
        else:
            block_s = min(_pow2(hw), 128)
            block_k = min(_SUM_TILE // block_s, _pow2(channels))
        position_blocks = triton.cdiv(hw, block_s)
        steps = triton.cdiv(channels, block_k)
        splits, split_steps = _splits(batch * class_blocks * position_blocks, steps, num_sms)
        wide = (
            per_sample + block_k * max(f_sk, w_sk) + block_c * w_sc >= _INT32_LIMIT
            or class_blocks * block_c * hw >= _INT32_LIMIT
        )
        weighted_sum = Launch(
            grid=(batch * class_blocks * position_blocks * splits,),
            meta=(("POSITIONAL", positional), ("USE_DOT", use_dot), ("MERGED", merged),
                  ("WIDE", wide), ("BLOCK_C", block_c), ("BLOCK_K", block_k),
                  ("BLOCK_S", block_s)),
            num_warps=4,
            num_stages=3 if not _INTERPRET else 1,
        )  # fmt: skip

    resample = (h, w) != (out_h, out_w)
    block_x = min(_pow2(out_w), 256)
    map_pass = Launch(
        grid=(batch * classes,),
        meta=(("RELU", relu), ("NORMALIZE", normalize), ("RESAMPLE", resample),
              ("NAN_FLAGS", out_uint8), ("SPLITS_P2", _pow2(splits)),
              ("BLOCK_HW", max(16, min(_pow2(hw), _MINMAX_CHUNK // _pow2(splits)))),
              ("BLOCK_I", max(1, min(_pow2(h), _ROW_TILE // block_x))), ("BLOCK_X", block_x)),
        num_warps=4,
    )  # fmt: skip
    block_h, block_w, row_steps, row_groups, col_tiles = _output_layout(
        batch * classes, out_h, out_w, num_sms
    )
    output = Launch(
        grid=(batch * classes, col_tiles, row_groups),
        meta=(("RESAMPLE", resample), ("OUT_UINT8", out_uint8),
              ("WIDE", row_groups * row_steps * block_h * out_w >= _INT32_LIMIT),
              ("BLOCK_H", block_h), ("BLOCK_W", block_w)),
        num_warps=4,
    )  # fmt: skip
    return Plan(
        flat=flat,
        splits=splits,
        split_steps=split_steps,
        class_blocks=class_blocks,
        position_blocks=position_blocks,
        weighted_sum=weighted_sum,
        map_pass=map_pass,
        output=output,
        block_h=block_h,
        block_w=block_w,
        row_steps=row_steps,
        row_groups=row_groups,
        col_tiles=col_tiles,
        resample=resample,
        scale_h=_source_scale(h, out_h),
        scale_w=_source_scale(w, out_w),
    )


def plan_for(
    features: torch.Tensor,
    weights: torch.Tensor,
    out_size: tuple[int, int],
    *,
    relu: bool,
    normalize: bool,
    out_dtype: torch.dtype | None,
) -> Plan:
    """``plan`` for these tensors (a [C, K] weight matrix counts as [1, C, K], batch stride 0)."""
    if weights.dim() == 2:
        w_shape, w_strides = (1, *weights.shape), (0, *weights.stride())
    else:
        w_shape, w_strides = tuple(weights.shape), weights.stride()
        if weights.dim() == 3 and weights.shape[0] == 1:
            w_strides = (0, *w_strides[1:])
    return plan(
        tuple(features.shape), features.stride(), features.element_size(), w_shape, w_strides,
        tuple(out_size), _sm_count(features.device), relu, normalize, out_dtype == torch.uint8,
    )  # fmt: skip


def launch_list(
    features: torch.Tensor,
    weights: torch.Tensor,
    p: Plan,
    partial: torch.Tensor,
    rows: torch.Tensor,
    out: torch.Tensor,
    nan_flags: torch.Tensor,
) -> list[tuple[triton.JITFunction, int, tuple, dict]]:
    """The three launches of one call as (kernel, grid, arguments, keyword arguments); the
    static report compiles exactly these ahead of time from meta tensors."""
    batch, channels, h, w = features.shape
    classes = out.shape[1]
    out_h, out_w = out.shape[-2:]
    hw = h * w
    w_sb = 0 if weights.dim() == 2 or weights.shape[0] == 1 else weights.stride(0)
    w_sc, w_sk = weights.stride()[-2:] if weights.dim() < 5 else weights.stride()[1:3]
    w_sh, w_sw = weights.stride()[3:] if weights.dim() == 5 else (0, 0)
    if p.flat:
        first = (_flat_sum_kernel, (
            features, weights, partial,
            batch, classes, channels, hw,
            features.stride(0), w_sb, w_sc, w_sk,
            p.class_blocks, p.splits, p.split_steps,
        ))  # fmt: skip
    else:
        first = (_tile_sum_kernel, (
            features, weights, partial,
            batch, classes, channels, hw, w,
            *features.stride(),
            w_sb, w_sc, w_sk, w_sh, w_sw,
            p.class_blocks, p.position_blocks, p.splits, p.split_steps,
        ))  # fmt: skip
    nan_arg = nan_flags if nan_flags.numel() else partial
    second = (_map_kernel, (
        partial, rows if p.resample else partial, nan_arg,
        p.splits, batch * classes * hw, hw, h, w, out_w,
        p.scale_w,
    ))  # fmt: skip
    third = (_output_kernel, (
        rows if p.resample else partial, out,
        h, out_h, out_w,
        p.scale_h,
        p.row_steps,
    ))  # fmt: skip
    launches = zip((first, second, third), (p.weighted_sum, p.map_pass, p.output), strict=True)
    # fp fusion: FMAs, as nvcc compiles PyTorch's upsampling
    return [(kernel, launch.grid, args, {**launch.kwargs, "enable_fp_fusion": True})
            for (kernel, args), launch in launches]  # fmt: skip


def _launch(features, weights, p, partial, rows, out, nan_flags) -> None:
    for kernel, grid, args, kwargs in launch_list(
        features, weights, p, partial, rows, out, nan_flags
    ):
        kernel[grid](*args, **kwargs)


def _buffers(
    features: torch.Tensor, classes: int, p: Plan, out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scratch of one call: partial maps, x-interpolated rows, NaN flags."""
    batch, _, h, w = features.shape
    device = features.device
    partial = torch.empty((p.splits, batch, classes, h * w), dtype=torch.float32, device=device)
    rows_shape = (batch, classes, h, out.shape[-1]) if p.resample else (0,)
    rows = torch.empty(rows_shape, dtype=torch.float32, device=device)
    nan_shape = (batch, classes) if dict(p.map_pass.meta)["NAN_FLAGS"] else (0,)
    nan_flags = torch.empty(nan_shape, dtype=torch.uint8, device=device)
    return partial, rows, nan_flags


def _device_guard(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


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

    features [B, K, h, w] (fp32/fp16/bf16/fp64, any strides, read in place); weights [C, K],
    [B, C, K] or per-position [B, C, K, h, w]. Inputs must already be validated
    (``checks.check_cam_inputs``). Returns ``(maps, nan_maps)``: maps a contiguous
    [B, C, H, W] tensor in ``out_dtype`` (fp32 when None); nan_maps, for uint8 output only
    (else None), a bool [B, C] tensor, True where the low-res map's range is not finite
    (``semantics.non_finite_maps``: it holds a NaN or an inf; its bytes are 0).

    Normalization divides exactly as the reference does; the upsampling is PyTorch's
    separable formula (x first, then y) with fused multiply-adds, so float outputs agree with
    the reference to fp32 rounding (a few ulp) and uint8 to one level where 255 * v + 0.5
    lands on an integer.
    """
    batch, _, h, w = features.shape
    classes = num_classes(weights)
    want_nan = out_dtype == torch.uint8
    out = torch.empty(
        (batch, classes, *out_size), dtype=out_dtype or torch.float32, device=features.device
    )
    if out.numel() == 0:
        nan_maps = torch.zeros((batch, classes), dtype=torch.bool, device=out.device)
        return out, nan_maps if want_nan else None
    p = plan_for(features, weights, out_size, relu=relu, normalize=normalize, out_dtype=out_dtype)
    partial, rows, nan_flags = _buffers(features, classes, p, out)
    with _device_guard(features.device):
        _launch(features, weights, p, partial, rows, out, nan_flags)
    return out, nan_flags.view(torch.bool) if want_nan else None


class CudaGraphCam:
    """Opt-in: replay ``cam_triton`` from CUDA graphs captured per call signature.

    A call whose tensors have the same addresses, shapes, strides, dtypes and flags as an
    earlier one replays that call's graph (one launch instead of three, no host work); other
    calls capture a new graph (kept in an LRU of ``max_graphs``). Inference loops that reuse
    buffers, or whose caching allocator hands back the same blocks, hit the cache.

    The returned maps (and nan_maps) are the graph's own output buffers: the next replay of the
    same signature overwrites them, so clone what must outlive that call.
    """

    def __init__(self, max_graphs: int = 8) -> None:
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple, tuple] = OrderedDict()

    def __call__(
        self,
        features: torch.Tensor,
        weights: torch.Tensor,
        out_size: tuple[int, int],
        *,
        relu: bool,
        normalize: bool,
        out_dtype: torch.dtype | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if features.device.type != "cuda":
            raise ValueError(f"CudaGraphCam needs CUDA tensors, got device {features.device}")
        key = tuple(
            (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype) for t in (features, weights)
        ) + (tuple(out_size), relu, normalize, out_dtype, features.device)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(features, weights, out_size, relu, normalize, out_dtype)
            self._graphs[key] = entry
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        graph, maps, nan_maps = entry
        graph.replay()
        return maps, nan_maps

    @staticmethod
    def _capture(features, weights, out_size, relu, normalize, out_dtype):
        kw = {"relu": relu, "normalize": normalize, "out_dtype": out_dtype}
        with _device_guard(features.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                cam_triton(features, weights, out_size, **kw)  # compiles outside the capture
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                maps, nan_maps = cam_triton(features, weights, out_size, **kw)
        return graph, maps, nan_maps
