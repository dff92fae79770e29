"""Public entry point: validate, pick a backend, run, report NaN maps of a uint8 output."""

from __future__ import annotations

import warnings
from typing import Literal, get_args

import torch

from .checks import check_cam_inputs, check_output_fits, normalize_size, num_classes
from .cpu_cam import cam_cpu
from .environment import triton_interpreter
from .reference import cam_reference

Backend = Literal["auto", "torch", "triton"]
BACKENDS: tuple[str, ...] = get_args(Backend)


def check_backend(backend: object) -> None:
    """Raise ValueError unless ``backend`` names a backend of ``cam``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
_NAN_PAIRS_SHOWN = 10  # (sample, class) pairs a NaN-map warning lists


def _triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton backend cannot run on ``device`` (None when it can)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed (pip install triton, Linux x86_64 only)"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and triton_interpreter():
        return None
    return (
        f"the triton backend runs on CUDA tensors, or on CPU tensors when the environment "
        f"variable TRITON_INTERPRET=1 is set before triton is imported; got device "
        f"{device.type!r}. Use backend='torch' (or 'auto') instead"
    )


def _warn_nan_maps(nan_maps: torch.Tensor) -> None:
    """RuntimeWarning naming the (sample, class) pairs of ``nan_maps`` [B, C] that are True."""
    if not nan_maps.any():  # host sync: only for uint8 output
        return
    pairs = nan_maps.nonzero().tolist()
    shown = ", ".join(f"({b}, {c})" for b, c in pairs[:_NAN_PAIRS_SHOWN])
    more = f" and {len(pairs) - _NAN_PAIRS_SHOWN} more" if len(pairs) > _NAN_PAIRS_SHOWN else ""
    warnings.warn(
        f"cam: {len(pairs)} of {nan_maps.numel()} maps hold NaN or inf (from NaN or inf "
        f"features or weights, or a range beyond fp32) and are 0 in the uint8 output, like a "
        f"constant map; "
        f"(sample, class): {shown}{more}",
        RuntimeWarning,
        stacklevel=3,
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

    features: [B, K, h, w] (K >= 1), fp32/fp16/bf16/fp64, contiguous or channels_last.
    weights: [C, K] (shared by the batch), [B, C, K], or per-position [B, C, K, h, w]
        (LayerCAM, HiResCAM: ``cam[b, c, i, j] = sum_k W[b, c, k, i, j] * A[b, k, i, j]``);
        floating point. The weighted sum accumulates in fp32.
    size: output (H, W) (an int means square); None keeps (h, w).
    relu: clamp the weighted sum at 0 before normalizing (default off, as in the CAM paper).
    normalize: min-max normalize each low-resolution map: ``(x - lo) / (hi - lo + 1e-7)``.
        A constant or near-constant map, range ``hi - lo <= 1e-5 * max(|lo|, |hi|)``
        (``semantics.CONSTANT_RTOL``; fp32 summation noise stays far below), is 0 everywhere,
        as is a map holding an infinity (infinite range); a map holding a NaN is NaN.
    out_dtype: None/float32, float16, bfloat16, or uint8 (round(255 * v), needs normalize).
        In uint8 a NaN or inf map is 0 like a constant map, so ``cam`` then issues a
        RuntimeWarning naming those (sample, class) pairs (not while torch.compile traces).
    backend: "torch" (eager PyTorch on any device; on CPU a matmul fast path), "triton"
        (fused kernel), "auto" (Triton on CUDA when installed, else torch).
    Resizing is bilinear, ``F.interpolate(mode="bilinear", align_corners=False)``.
    Returns [B, C, H, W] in out_dtype. Raises OutputTooLargeError (a ValueError and a
    MemoryError) before allocating an output that the device's free memory cannot hold.
    """
    check_cam_inputs(features, weights, normalize=normalize, out_dtype=out_dtype)
    out_size = normalize_size(size, *features.shape[-2:])
    check_backend(backend)
    if backend == "auto":
        use_triton = (
            features.device.type == "cuda" and _triton_unavailable_reason(features.device) is None
        )
    else:
        use_triton = backend == "triton"
    if use_triton:
        reason = _triton_unavailable_reason(features.device)
        if reason is not None:
            raise RuntimeError(f"backend='triton' cannot run: {reason}")
    compiling = torch.compiler.is_compiling()
    if not compiling:
        out_shape = (features.shape[0], num_classes(weights), *out_size)
        check_output_fits(features.device, out_shape, out_dtype)
    kw = {"relu": relu, "normalize": normalize, "out_dtype": out_dtype}
    if use_triton:
        from .triton_cam import cam_triton

        maps, nan_maps = cam_triton(features, weights, out_size, **kw)
    elif features.device.type == "cpu":
        maps, nan_maps = cam_cpu(features, weights, out_size, **kw)
    else:
        maps, nan_maps = cam_reference(features, weights, out_size, **kw)
    if nan_maps is not None and not compiling:
        _warn_nan_maps(nan_maps)
    return maps
