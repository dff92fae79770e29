"""Independent fp64 oracle and input builders for the CAM kernel tests.

The oracle follows ../shared/notes/cam-semantics.md step by step in float64 on CPU; it never
calls camplug, so it can judge the torch backend as well as the Triton kernel.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

EPS = 1e-7
CONSTANT_RTOL = 1e-5  # a range <= CONSTANT_RTOL * max(|lo|, |hi|) is a constant map
FLOAT_OUT_DTYPES = (None, torch.float32, torch.float16, torch.bfloat16)
OUT_DTYPES = (*FLOAT_OUT_DTYPES, torch.uint8)
IN_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# (out_dtype, relu, normalize): every valid combination (uint8 needs normalize=True).
OUTPUT_CASES = [
    pytest.param(out_dtype, relu, normalize, id=f"{out_dtype}-relu{int(relu)}-norm{int(normalize)}")
    for out_dtype in OUT_DTYPES
    for relu in (False, True)
    for normalize in (True, False)
    if normalize or out_dtype != torch.uint8
]


def oracle_cam(
    features: torch.Tensor,
    weights: torch.Tensor,
    out_size: tuple[int, int],
    *,
    relu: bool,
    normalize: bool,
) -> torch.Tensor:
    """fp64 CAM on CPU: weighted sum, ReLU, per-map min-max on the low-res map (constant and
    near-constant maps, range <= CONSTANT_RTOL * max(|lo|, |hi|), give 0), bilinear resize.

    weights [C, K], [B, C, K] or per-position [B, C, K, h, w].
    """
    f = features.detach().cpu().double()
    w = weights.detach().cpu().double()
    if w.dim() == 2:
        w = w.expand(f.shape[0], -1, -1)
    if w.dim() == 3:
        w = w[..., None, None]
    maps = (w * f[:, None]).sum(dim=2)
    if relu:
        maps = torch.where(maps < 0, torch.zeros_like(maps), maps)
    if normalize:
        lo = maps.amin(dim=(2, 3), keepdim=True)
        hi = maps.amax(dim=(2, 3), keepdim=True)
        constant = hi - lo <= CONSTANT_RTOL * torch.maximum(lo.abs(), hi.abs())
        maps = torch.where(constant, 0.0, (maps - lo) / (hi - lo + EPS))
    if maps.numel() == 0:
        return maps.new_zeros((*maps.shape[:2], *out_size))
    if tuple(maps.shape[-2:]) != tuple(out_size):
        maps = F.interpolate(maps, size=out_size, mode="bilinear", align_corners=False)
    return maps


def expected_output(oracle: torch.Tensor, out_dtype: torch.dtype | None) -> torch.Tensor:
    """The oracle as the output dtype would express it (uint8: round half up of 255 * v,
    NaN as 0)."""
    if out_dtype == torch.uint8:
        return torch.floor(oracle.nan_to_num(nan=0.0) * 255.0 + 0.5).clamp(0, 255)
    return oracle


def tolerance_dtype(out_dtype: torch.dtype | None) -> torch.dtype:
    """Key into tests/tolerances.py: the output dtype decides (inputs are exact in fp64)."""
    return torch.float32 if out_dtype is None else out_dtype


def make_inputs(
    batch: int,
    channels: int,
    h: int,
    w: int,
    classes: int,
    *,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    per_sample_weights: bool = False,
    per_position_weights: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random features [B, K, h, w] in ``dtype`` and fp32 weights [C, K], [B, C, K]
    (``per_sample_weights``) or [B, C, K, h, w] (``per_position_weights``)."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, channels, h, w, generator=gen).to(dtype)
    if channels_last:
        features = features.to(memory_format=torch.channels_last)
    if per_position_weights:
        shape = (batch, classes, channels, h, w)
    elif per_sample_weights:
        shape = (batch, classes, channels)
    else:
        shape = (classes, channels)
    weights = torch.randn(shape, generator=gen)
    return features.to(device), weights.to(device)


def numpy_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Hand-written bilinear resize of one [h, w] map, the index formula of cam-semantics.md.

    Indices and weights in float32 as PyTorch computes them, the sum in float64, one output
    pixel at a time.
    """
    in_h, in_w = image.shape

    def taps(in_size: int, out_size: int, dst: int) -> tuple[int, int, float, float]:
        scale = np.float32(in_size) / np.float32(out_size)
        src = scale * (np.float32(dst) + np.float32(0.5)) - np.float32(0.5)
        src = max(src, np.float32(0.0))
        i0 = int(np.floor(src))
        i1 = i0 + (1 if i0 < in_size - 1 else 0)
        l1 = np.float32(src - np.float32(i0))
        return i0, i1, float(np.float32(1.0) - l1), float(l1)

    out = np.empty((out_h, out_w), dtype=np.float64)
    for y in range(out_h):
        y0, y1, ly0, ly1 = taps(in_h, out_h, y)
        for x in range(out_w):
            x0, x1, lx0, lx1 = taps(in_w, out_w, x)
            out[y, x] = ly0 * (lx0 * image[y0, x0] + lx1 * image[y0, x1]) + ly1 * (
                lx0 * image[y1, x0] + lx1 * image[y1, x1]
            )
    return out


def assert_matches_oracle(
    backend: str,
    features: torch.Tensor,
    weights: torch.Tensor,
    size: int | tuple[int, int] | None,
    *,
    relu: bool,
    normalize: bool,
    out_dtype: torch.dtype | None,
) -> torch.Tensor:
    """Run ``cam`` with ``backend`` and compare with the oracle at the output's tolerance."""
    from camplug.kernels import cam

    out = cam(
        features, weights, size, relu=relu, normalize=normalize, out_dtype=out_dtype,
        backend=backend,
    )  # fmt: skip
    check_against_oracle(
        out, features, weights, size, relu=relu, normalize=normalize, out_dtype=out_dtype,
        label=f"backend={backend}",
    )  # fmt: skip
    return out


def check_against_oracle(
    out: torch.Tensor,
    features: torch.Tensor,
    weights: torch.Tensor,
    size: int | tuple[int, int] | None,
    *,
    relu: bool,
    normalize: bool,
    out_dtype: torch.dtype | None,
    label: str,
) -> None:
    """Check a CAM output's shape, dtype, device, layout and values against the oracle."""
    from tolerances import assert_close

    h, w = features.shape[-2:]
    out_size = (h, w) if size is None else (size, size) if isinstance(size, int) else size
    classes = weights.shape[1] if weights.dim() == 5 else weights.shape[-2]
    assert out.shape == (features.shape[0], classes, *out_size)
    assert out.dtype == (out_dtype or torch.float32)
    assert out.device == features.device
    assert out.is_contiguous()
    want = expected_output(
        oracle_cam(features, weights, out_size, relu=relu, normalize=normalize), out_dtype
    )
    what = (
        f"{label} features {features.dtype} {tuple(features.shape)} "
        f"stride {features.stride()} weights {tuple(weights.shape)} -> {out_size} "
        f"relu={relu} normalize={normalize} out_dtype={out_dtype}"
    )
    assert_close(out, want, tolerance_dtype(out_dtype), what)
