"""Input validation shared by every CAM backend."""

from __future__ import annotations

import torch

SUPPORTED_OUT_DTYPES = (None, torch.float32, torch.float16, torch.bfloat16, torch.uint8)


def normalize_size(size: int | tuple[int, int] | None, h: int, w: int) -> tuple[int, int]:
    """Return the output (H, W): ``size`` as a pair, or (h, w) when ``size`` is None."""
    if size is None:
        return h, w
    if isinstance(size, int):
        size = (size, size)
    if isinstance(size, torch.Size):
        size = tuple(size)
    if not (isinstance(size, (tuple, list)) and len(size) == 2):
        raise ValueError(f"size must be None, an int or a pair (H, W); got {size!r}")
    out_h, out_w = (int(s) for s in size)
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"size must be positive, got (H, W) = ({out_h}, {out_w})")
    return out_h, out_w


def check_cam_inputs(
    features: torch.Tensor,
    weights: torch.Tensor,
    *,
    normalize: bool,
    out_dtype: torch.dtype | None,
) -> None:
    """Raise TypeError/ValueError naming what is wrong with a ``cam`` call's tensors."""
    if not isinstance(features, torch.Tensor) or not isinstance(weights, torch.Tensor):
        raise TypeError(
            "features and weights must be torch.Tensor, got "
            f"{type(features).__name__} and {type(weights).__name__}"
        )
    if features.dim() != 4:
        raise ValueError(
            f"features must have shape [B, K, h, w] (4 dims), got {tuple(features.shape)}"
        )
    if weights.dim() not in (2, 3):
        raise ValueError(
            f"weights must have shape [C, K] or [B, C, K], got {tuple(weights.shape)}"
        )
    if not features.is_floating_point():
        raise TypeError(f"features must be a floating-point tensor, got {features.dtype}")
    if not weights.is_floating_point():
        raise TypeError(f"weights must be a floating-point tensor, got {weights.dtype}")
    if features.device != weights.device:
        raise ValueError(
            f"features and weights are on different devices: {features.device} and "
            f"{weights.device}"
        )
    b, k = features.shape[:2]
    if weights.shape[-1] != k:
        raise ValueError(
            f"channel mismatch: features have K={k} channels but weights have "
            f"{weights.shape[-1]} (weights shape {tuple(weights.shape)})"
        )
    if weights.dim() == 3 and weights.shape[0] != b:
        raise ValueError(
            f"batch mismatch: features have B={b} samples but weights have "
            f"{weights.shape[0]} (weights shape {tuple(weights.shape)})"
        )
    if out_dtype not in SUPPORTED_OUT_DTYPES:
        raise ValueError(
            f"unsupported out_dtype {out_dtype}; expected None, torch.float32, torch.float16, "
            "torch.bfloat16 or torch.uint8"
        )
    if out_dtype == torch.uint8 and not normalize:
        raise ValueError("out_dtype=torch.uint8 needs normalize=True (maps must lie in [0, 1])")
