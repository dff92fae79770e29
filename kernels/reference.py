"""Pure-PyTorch CAM: the reference semantics every backend matches (any device)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .semantics import EPS


def to_out_dtype(maps: torch.Tensor, out_dtype: torch.dtype | None) -> torch.Tensor:
    """Cast fp32 maps to the output dtype; uint8 is round(255 * v), half rounded up, NaN -> 0."""
    if out_dtype is None or out_dtype == torch.float32:
        return maps
    if out_dtype == torch.uint8:
        scaled = torch.floor(maps.nan_to_num(nan=0.0) * 255.0 + 0.5)
        return scaled.clamp_(0, 255).to(torch.uint8)
    return maps.to(out_dtype)


def cam_reference(
    features: torch.Tensor,
    weights: torch.Tensor,
    out_size: tuple[int, int],
    *,
    relu: bool,
    normalize: bool,
    out_dtype: torch.dtype | None,
) -> torch.Tensor:
    """CAM in eager PyTorch.

    features [B, K, h, w] (fp32/fp16/bf16, any strides), weights [C, K] or [B, C, K];
    returns [B, C, H, W] in ``out_dtype`` (fp32 when None). Inputs must be validated.
    """
    w32 = weights.float()
    if w32.dim() == 2:
        w32 = w32.unsqueeze(0).expand(features.shape[0], -1, -1)
    maps = torch.einsum("bck,bkhw->bchw", w32, features.float())
    if relu:
        maps = maps.clamp_min(0)
    if normalize:
        lo = maps.amin(dim=(2, 3), keepdim=True)
        hi = maps.amax(dim=(2, 3), keepdim=True)
        maps = (maps - lo) / (hi - lo + EPS)
    if tuple(maps.shape[-2:]) != tuple(out_size) and maps.numel() > 0:
        maps = F.interpolate(maps, size=out_size, mode="bilinear", align_corners=False)
    elif maps.numel() == 0:
        maps = maps.new_empty((*maps.shape[:2], *out_size))
    return to_out_dtype(maps.contiguous(), out_dtype)
