"""Eager PyTorch CAM (einsum + F.interpolate): the reference semantics every backend matches.

The torch backend uses it on devices other than the CPU (the CPU has ``cpu_cam.cam_cpu``);
the tests and benchmarks use it as the eager baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .semantics import min_max_normalize, non_finite_maps


def to_out_dtype(maps: torch.Tensor, out_dtype: torch.dtype | None) -> torch.Tensor:
    """Cast fp32 maps to the output dtype; uint8 is round(255 * v), half rounded up, NaN -> 0."""
    if out_dtype is None or out_dtype == torch.float32:
        return maps
    if out_dtype == torch.uint8:
        scaled = torch.floor(maps.nan_to_num(nan=0.0) * 255.0 + 0.5)
        return scaled.clamp_(0, 255).to(torch.uint8)
    return maps.to(out_dtype)


def weighted_sum_reference(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """fp32 ``sum_k W[b, c, k(, i, j)] * A[b, k, i, j]`` -> [B, C, h, w] by einsum.

    features [B, K, h, w]; weights [C, K], [B, C, K] or per-position [B, C, K, h, w].
    """
    f32, w32 = features.float(), weights.float()
    if w32.dim() == 5:
        return torch.einsum("bckhw,bkhw->bchw", w32, f32)
    if w32.dim() == 2:
        w32 = w32.unsqueeze(0).expand(features.shape[0], -1, -1)
    return torch.einsum("bck,bkhw->bchw", w32, f32)


def cam_reference(
    features: torch.Tensor,
    weights: torch.Tensor,
    out_size: tuple[int, int],
    *,
    relu: bool,
    normalize: bool,
    out_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CAM in eager PyTorch.

    features [B, K, h, w] (fp32/fp16/bf16/fp64, any strides), weights [C, K], [B, C, K] or
    [B, C, K, h, w]; inputs must be validated. Returns ``(maps, nan_maps)``: maps [B, C, H, W]
    in ``out_dtype`` (fp32 when None); nan_maps bool [B, C] for uint8 output (True where the
    low-res map's range is not finite, see ``semantics.non_finite_maps``), else None.
    """
    maps = weighted_sum_reference(features, weights)
    if relu:
        maps = maps.clamp_min(0)
    nan_maps = non_finite_maps(maps) if out_dtype == torch.uint8 else None
    if normalize:
        maps = min_max_normalize(maps)
    if tuple(maps.shape[-2:]) != tuple(out_size) and maps.numel() > 0:
        maps = F.interpolate(maps, size=out_size, mode="bilinear", align_corners=False)
    elif maps.numel() == 0:
        maps = maps.new_empty((*maps.shape[:2], *out_size))
    return to_out_dtype(maps.contiguous(), out_dtype), nan_maps
