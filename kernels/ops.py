"""CAM as a PyTorch custom operator, ``torch.ops.camplug.cam``: one opaque node for
torch.compile and torch.export.

``torch.ops.camplug.cam(features, weights, out_h, out_w, relu, normalize, out_dtype)`` takes
the tensors of ``camplug.kernels.cam`` (features [B, K, h, w]; weights [C, K], [B, C, K] or
[B, C, K, h, w]) and returns the maps [B, C, out_h, out_w] in ``out_dtype`` (fp32 when None).
CUDA tensors run the fused Triton kernel (``triton_cam.cam_triton``), other devices the eager
reference (``reference.cam_reference``). A uint8 output's NaN/inf report is not returned (an
operator cannot return None); ``camplug.kernels.cam`` gives the warning.

It is a ``torch.library.custom_op`` with a fake (meta) implementation for tracing, so a
compiled or exported graph keeps the whole CAM as one call instead of tracing into it.
"""

from __future__ import annotations

import torch

from .checks import check_cam_inputs, num_classes
from .reference import cam_reference


@torch.library.custom_op("camplug::cam", mutates_args=())
def cam_op(
    features: torch.Tensor,
    weights: torch.Tensor,
    out_h: int,
    out_w: int,
    relu: bool,
    normalize: bool,
    out_dtype: torch.dtype | None,
) -> torch.Tensor:
    """Maps [B, C, out_h, out_w]; see the module docstring."""
    check_cam_inputs(features, weights, normalize=normalize, out_dtype=out_dtype)
    kw = {"relu": relu, "normalize": normalize, "out_dtype": out_dtype}
    if features.device.type == "cuda":
        from .triton_cam import cam_triton

        maps, _ = cam_triton(features, weights, (out_h, out_w), **kw)
    else:
        maps, _ = cam_reference(features, weights, (out_h, out_w), **kw)
    return maps


@cam_op.register_fake
def _cam_fake(features, weights, out_h, out_w, relu, normalize, out_dtype):
    shape = (features.shape[0], num_classes(weights), out_h, out_w)
    return features.new_empty(shape, dtype=out_dtype or torch.float32)
