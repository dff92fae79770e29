"""Input validation shared by every CAM backend."""

from __future__ import annotations

import math
import operator
import os

import torch

SUPPORTED_OUT_DTYPES = (None, torch.float32, torch.float16, torch.bfloat16, torch.uint8)
SUPPORTED_INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Outputs below this many bytes skip the free-memory look-up of ``check_output_fits``.
_CHECKED_BYTES = 256 * 2**20


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


def num_classes(weights: torch.Tensor) -> int:
    """C of validated weights [C, K], [B, C, K] or per-position [B, C, K, h, w]."""
    return weights.shape[1] if weights.dim() == 5 else weights.shape[-2]


def _check_weight_shape(features: torch.Tensor, weights: torch.Tensor) -> None:
    """Raise ValueError unless ``weights`` fits ``features`` [B, K, h, w]."""
    b, k, h, w = features.shape
    if weights.dim() not in (2, 3, 5):
        raise ValueError(
            "weights must have shape [C, K], [B, C, K] or per-position [B, C, K, h, w], got "
            f"{tuple(weights.shape)}"
        )
    k_dim = 2 if weights.dim() == 5 else -1
    if weights.shape[k_dim] != k:
        raise ValueError(
            f"channel mismatch: features have K={k} channels but weights have "
            f"{weights.shape[k_dim]} (weights shape {tuple(weights.shape)})"
        )
    if weights.dim() in (3, 5) and weights.shape[0] != b:
        raise ValueError(
            f"batch mismatch: features have B={b} samples but weights have "
            f"{weights.shape[0]} (weights shape {tuple(weights.shape)})"
        )
    if weights.dim() == 5 and tuple(weights.shape[3:]) != (h, w):
        raise ValueError(
            f"position mismatch: per-position weights must have shape [B, C, K, h, w] = "
            f"[{b}, C, {k}, {h}, {w}] to match features of shape {tuple(features.shape)}; got "
            f"{tuple(weights.shape)}"
        )


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
    for name, tensor in (("features", features), ("weights", weights)):
        if tensor.dtype not in SUPPORTED_INPUT_DTYPES:
            raise TypeError(
                f"{name} must be a floating-point tensor (float32, float16, bfloat16 or "
                f"float64), got {tensor.dtype}"
            )
    if features.device != weights.device:
        raise ValueError(
            f"features and weights are on different devices: {features.device} and {weights.device}"
        )
    _, k, h, w = features.shape
    if h <= 0 or w <= 0:
        raise ValueError(f"features must have a spatial size h, w >= 1, got (h, w) = ({h}, {w})")
    _check_weight_shape(features, weights)
    if k == 0:
        raise ValueError(
            f"features have K=0 channels (shape {tuple(features.shape)}): a CAM is a weighted sum "
            "over channels and needs K >= 1"
        )
    if out_dtype not in SUPPORTED_OUT_DTYPES:
        raise ValueError(
            f"unsupported out_dtype {out_dtype}; expected None, torch.float32, torch.float16, "
            "torch.bfloat16 or torch.uint8"
        )
    if out_dtype == torch.uint8 and not normalize:
        raise ValueError("out_dtype=torch.uint8 needs normalize=True (maps must lie in [0, 1])")


class OutputTooLargeError(ValueError, MemoryError):
    """A ``cam`` call whose output and work buffers cannot fit in the device's free memory."""


def available_bytes(device: torch.device) -> int | None:
    """Memory a new allocation on ``device`` can use now, in bytes (None when unknown).

    CPU: MemAvailable from /proc/meminfo, else free physical pages (os.sysconf). CUDA: the
    driver's free memory plus what PyTorch's caching allocator holds but does not use.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def check_output_fits(
    device: torch.device, shape: tuple[int, ...], out_dtype: torch.dtype | None
) -> None:
    """Refuse a ``cam`` output of ``shape`` [B, C, H, W] that cannot fit, before allocating.

    Counts the output plus one fp32 buffer of the same size (the torch backend's resize result
    before a cast to a narrower out_dtype). Checks only requests above ``_CHECKED_BYTES`` (a
    smaller one costs no look-up). Raises OutputTooLargeError (a ValueError and MemoryError).
    """
    elements = math.prod(shape)
    itemsize = (out_dtype or torch.float32).itemsize
    needed = elements * (itemsize + (4 if itemsize != 4 else 0))
    if needed < _CHECKED_BYTES:
        return
    available = available_bytes(device)
    if available is not None and needed > available:
        raise OutputTooLargeError(
            f"cam output of shape {tuple(shape)} in {out_dtype or torch.float32} needs "
            f"{needed:,} bytes ({needed / 2**30:.1f} GiB, output and work buffer) but only "
            f"{available:,} bytes ({available / 2**30:.1f} GiB) are available on {device}; "
            "ask for a smaller size or fewer samples/classes per call"
        )
