"""Input validation shared by every CAM backend."""

from __future__ import annotations

import operator

import torch

SUPPORTED_OUT_DTYPES = (None, torch.float32, torch.float16, torch.bfloat16, torch.uint8)
SUPPORTED_INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def normalize_size(size: int | tuple[int, int] | None, h: int, w: int) -> tuple[int, int]:
    """Return the output (H, W): ``size`` as a pair, or (h, w) when ``size`` is None."""
    if size is None:
        return h, w
    if not isinstance(size, (tuple, list)) and hasattr(size, "__index__"):
        size = (size, size)
    if not (isinstance(size, (tuple, list)) and len(size) == 2):
        raise ValueError(f"size must be None, an int or a pair (H, W); got {size!r}")
    if any(isinstance(s, bool) or not hasattr(s, "__index__") for s in size):
        raise TypeError(f"size entries must be integers, got {size!r}")
    out_h, out_w = (operator.index(s) for s in size)
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
    for name, tensor in (("features", features), ("weights", weights)):
        if tensor.dtype not in SUPPORTED_INPUT_DTYPES:
            raise TypeError(
                f"{name} must be a floating-point tensor (float32, float16, bfloat16 or "
                f"float64), got {tensor.dtype}"
            )
    if features.device != weights.device:
        raise ValueError(
            f"features and weights are on different devices: {features.device} and "
            f"{weights.device}"
        )
    b, k, h, w = features.shape
    if h <= 0 or w <= 0:
        raise ValueError(f"features must have a spatial size h, w >= 1, got (h, w) = ({h}, {w})")
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
