"""Public entry point: validate, pick a backend, run."""

from __future__ import annotations

import os
from typing import Literal

import torch

from .checks import check_cam_inputs, normalize_size
from .reference import cam_reference

Backend = Literal["auto", "torch", "triton"]


def _triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton backend cannot run on ``device`` (None when it can)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed (pip install triton, Linux x86_64 only)"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return (
        f"the triton backend runs on CUDA tensors, or on CPU tensors when the environment "
        f"variable TRITON_INTERPRET=1 is set before triton is imported; got device "
        f"{device.type!r}. Use backend='torch' (or 'auto') instead"
    )


def cam(
    features: torch.Tensor,
    weights: torch.Tensor,
    size: int | tuple[int, int] | None = None,
    *,
    relu: bool = False,
    normalize: bool = True,
    out_dtype: torch.dtype | None = None,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Class activation maps: ``cam[b, c] = upsample(norm(relu(sum_k W[b, c, k] * A[b, k])))``.

    features: [B, K, h, w], fp32/fp16/bf16, contiguous or channels_last.
    weights: [C, K] (shared by the batch) or [B, C, K], floating point.
    size: output (H, W) (an int means square); None keeps (h, w).
    relu: clamp the weighted sum at 0 before normalizing (default off, as in the CAM paper).
    normalize: min-max normalize each low-resolution map to [0, 1] (eps = 1e-7).
    out_dtype: None/float32, float16, bfloat16, or uint8 (round(255 * v), needs normalize;
        a NaN value, from NaN or inf features, becomes 0).
    backend: "torch" (reference, any device), "triton" (fused kernel), "auto".
    Returns [B, C, H, W] in out_dtype.
    """
    check_cam_inputs(features, weights, normalize=normalize, out_dtype=out_dtype)
    out_size = normalize_size(size, *features.shape[-2:])
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    if backend == "auto":
        use_triton = features.device.type == "cuda" and _triton_unavailable_reason(
            features.device
        ) is None
    else:
        use_triton = backend == "triton"
    if use_triton:
        reason = _triton_unavailable_reason(features.device)
        if reason is not None:
            raise RuntimeError(f"backend='triton' cannot run: {reason}")
        from .triton_cam import cam_triton

        return cam_triton(
            features, weights, out_size, relu=relu, normalize=normalize, out_dtype=out_dtype
        )
    return cam_reference(
        features, weights, out_size, relu=relu, normalize=normalize, out_dtype=out_dtype
    )
