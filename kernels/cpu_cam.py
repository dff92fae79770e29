"""CPU fast path of the torch backend: one bmm, two small matmuls, one cast.

1. Low-res maps [B, C, h*w] = W [B, C, K] @ A [B, K, h*w] in fp32 (one bmm; per-position
   weights use an einsum), then ReLU and min-max normalization on these small maps.
2. Bilinear resize as two matrix products with interpolation matrices: ``rows = Mh @ maps``
   [B*C, H, w] (one small GEMM), then one GEMM ``[B*C*H, w] @ [w, W]`` writes the output
   once, in blocks of rows. The matrices are F.interpolate(mode="linear",
   align_corners=False) applied to an identity, so they hold PyTorch's own source indices and
   weights; they are built once per (in, out) size and cached.
3. uint8: the low-res maps become ``255 * v + 0.5`` (each output's bilinear weights sum to 1,
   up to fp32 rounding), so the GEMM yields ``255 * v' + 0.5`` and a cast (truncation) gives
   ``floor(255 * v' + 0.5)``: no scale, offset, floor or clamp pass over the output. A narrow
   output's (uint8, fp16, bf16) fp32 GEMM block is cast while in cache (not while tracing:
   the compiler fuses the cast itself).

Finite maps match F.interpolate to fp32 rounding. A NaN or infinity in a raw map
(``normalize=False``) makes the whole resized map NaN, where F.interpolate spreads it to the
neighbouring pixels only (normalized maps are finite or NaN everywhere, so they agree).
No Python branch depends on tensor values: the function traces under torch.compile and
torch.export (the matrix cache is bypassed while tracing).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .semantics import min_max_normalize, non_finite_maps

_GEMM_BLOCK_BYTES = 2**19  # fp32 result of one block of rows of the output GEMM


def _build_interpolation_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """fp32 [n_in, n_out]: column x holds the weights of the inputs for output x."""
    eye = torch.eye(n_in, dtype=torch.float32).unsqueeze(0)
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0]


@functools.lru_cache(maxsize=64)
def _cached_interpolation_matrix(n_in: int, n_out: int) -> torch.Tensor:
    # A normal tensor even when first asked for under inference_mode: an inference tensor
    # could not be saved for backward by a later differentiable call.
    with torch.inference_mode(False):
        return _build_interpolation_matrix(n_in, n_out)


def interpolation_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """fp32 CPU [n_in, n_out] bilinear (align_corners=False) weights along one axis: for a
    row vector ``v`` of length n_in, ``v @ M`` is ``F.interpolate`` of v to n_out. Cached;
    never modify the returned tensor."""
    if torch.compiler.is_compiling():
        return _build_interpolation_matrix(n_in, n_out)
    return _cached_interpolation_matrix(n_in, n_out)


def weighted_sum(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """fp32 low-res maps [B, C, h, w] from features [B, K, h, w] and weights [C, K],
    [B, C, K] or [B, C, K, h, w]; one bmm for channel weights (no copy of fp32 NCHW or
    channels_last features)."""
    batch, channels, h, w = features.shape
    f32 = features.float()
    if weights.dim() == 5:
        return torch.einsum("bckhw,bkhw->bchw", weights.float(), f32)
    w32 = weights.float()
    if w32.dim() == 2:
        w32 = w32.expand(batch, -1, -1)
    classes = w32.shape[1]
    return torch.bmm(w32, f32.reshape(batch, channels, h * w)).reshape(batch, classes, h, w)


def resize_and_cast(
    maps: torch.Tensor, out_size: tuple[int, int], out_dtype: torch.dtype | None
) -> torch.Tensor:
    """Bilinear resize of fp32 ``maps`` [B, C, h, w] to ``out_size`` and cast to ``out_dtype``.

    uint8 expects normalized maps (in [0, 1] or NaN): a NaN map gives 0, others
    ``floor(255 * v + 0.5)``. Returns a contiguous [B, C, H, W] tensor.
    """
    batch, classes, h, w = maps.shape
    out_h, out_w = out_size
    if out_dtype == torch.uint8:  # on the small maps: resize(255 * v + 0.5) = 255 * v' + 0.5
        maps = maps.nan_to_num(nan=0.0).mul_(255.0).add_(0.5)
    if (h, w) == (out_h, out_w):
        return _cast(maps, out_dtype).contiguous()
    # Rows first, as one GEMM over all maps: [H, h] @ [h, B*C*w] -> [B*C, H, w].
    by_row = maps.permute(2, 0, 1, 3).reshape(h, -1)
    rows = (interpolation_matrix(h, out_h).t() @ by_row).view(out_h, -1, w).transpose(0, 1)
    out = _gemm_and_cast(rows.reshape(-1, w), interpolation_matrix(w, out_w), out_dtype)
    return out.view(batch, classes, out_h, out_w)


def _cast(maps: torch.Tensor, out_dtype: torch.dtype | None) -> torch.Tensor:
    """fp32 -> out_dtype; for uint8 ``maps`` hold 255 * v + 0.5 in [0.5, 256), so truncation is
    the floor. Through int16: the direct fp32 -> uint8 cast is not vectorized (3x slower)."""
    if out_dtype is None or maps.dtype == out_dtype:
        return maps
    if out_dtype == torch.uint8:
        return maps.to(torch.int16).to(torch.uint8)
    return maps.to(out_dtype)


def _gemm_and_cast(
    rows: torch.Tensor, cols: torch.Tensor, out_dtype: torch.dtype | None
) -> torch.Tensor:
    """``rows @ cols`` [N, W] in ``out_dtype``, made in blocks of rows: MKL's GEMM with a tiny
    inner dimension slows down on tall outputs, and a narrow output's fp32 block stays in
    cache until cast, so only the narrow result travels to memory."""
    block = max(1, _GEMM_BLOCK_BYTES // (4 * cols.shape[1]))
    if rows.shape[0] <= block or torch.compiler.is_compiling() or rows.requires_grad:
        return _cast(torch.mm(rows, cols), out_dtype)  # mm(out=) does not differentiate
    out = rows.new_empty((rows.shape[0], cols.shape[1]), dtype=out_dtype or torch.float32)
    for start in range(0, rows.shape[0], block):
        part = slice(start, start + block)
        if out.dtype == torch.float32:
            torch.mm(rows[part], cols, out=out[part])
        else:
            out[part] = _cast(torch.mm(rows[part], cols), out_dtype)
    return out


def cam_cpu(
    features: torch.Tensor,
    weights: torch.Tensor,
    out_size: tuple[int, int],
    *,
    relu: bool,
    normalize: bool,
    out_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CAM on CPU tensors; same semantics and return value as ``reference.cam_reference``.

    features [B, K, h, w] (fp32/fp16/bf16/fp64, any strides), weights [C, K], [B, C, K] or
    [B, C, K, h, w]; inputs must be validated. Returns ``(maps, nan_maps)``: maps [B, C, H, W]
    in ``out_dtype`` (fp32 when None); nan_maps bool [B, C] for uint8 output, else None.
    """
    maps = weighted_sum(features, weights)
    if relu:
        maps = maps.clamp_min(0)
    nan_maps = non_finite_maps(maps) if out_dtype == torch.uint8 else None
    if normalize:
        maps = min_max_normalize(maps)
    return resize_and_cast(maps, out_size, out_dtype), nan_maps
