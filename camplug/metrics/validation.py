"""Input checks shared by the localization and faithfulness metrics (clear ValueErrors)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

BoxesLike = torch.Tensor | Sequence[torch.Tensor]


def check_cams(cams: torch.Tensor, name: str = "cams") -> None:
    """``cams`` must be a floating tensor [N, H, W] with finite values in [0, 1]."""
    if not isinstance(cams, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [N, H, W], got {type(cams).__name__}")
    if not cams.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor with values in [0, 1], got {cams.dtype}"
        )
    if cams.dim() != 3:
        raise ValueError(f"{name} must have shape [N, H, W], got {tuple(cams.shape)}")
    if cams.shape[0] == 0 or cams.shape[1] == 0 or cams.shape[2] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(cams.shape)}")
    low, high = (float(v) for v in torch.aminmax(cams))  # one pass; NaN propagates
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name} contain NaN or infinite values")
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"{name} must lie in [0, 1] (min-max normalized maps), got values in "
            f"[{low:.6g}, {high:.6g}]"
        )


def check_masks(masks: torch.Tensor, cams: torch.Tensor, name: str = "masks") -> None:
    """``masks`` must be bool with the same [N, H, W] shape as ``cams``."""
    if not isinstance(masks, torch.Tensor) or masks.dtype != torch.bool:
        got = masks.dtype if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise TypeError(f"{name} must be a bool tensor [N, H, W], got {got}")
    if masks.shape != cams.shape:
        raise ValueError(
            f"{name} must have the cams' shape {tuple(cams.shape)}, got {tuple(masks.shape)}"
        )


def as_box_batch(boxes: BoxesLike, n: int, size: tuple[int, int], device: torch.device):
    """Ground-truth boxes clipped to the map -> (float64 [N, G, 4], bool [N, G] validity).

    ``boxes``: a tensor [N, 4] (one box per image), a tensor [N, G, 4], or a sequence of N
    tensors [M_i, 4] (or [4]); boxes are (x0, y0, x1, y1) with inclusive pixel corners.
    ``size``: the maps' (H, W). A box reaching past the map is clipped to
    [0, W - 1] x [0, H - 1]; a box with no pixel inside it is an error.
    """
    if isinstance(boxes, torch.Tensor):
        if boxes.dim() == 2:
            boxes = boxes.unsqueeze(1)
        if boxes.dim() != 3 or boxes.shape[-1] != 4:
            raise ValueError(
                f"boxes must have shape [N, 4] or [N, G, 4], got {tuple(boxes.shape)}"
            )
        per_image = list(boxes)
    elif isinstance(boxes, Sequence) and not isinstance(boxes, str):
        per_image = [torch.as_tensor(b) for b in boxes]
    else:
        raise TypeError(
            f"boxes must be a tensor [N, 4] or a list of [M_i, 4] tensors, got "
            f"{type(boxes).__name__}"
        )
    if len(per_image) != n:
        raise ValueError(f"got boxes for {len(per_image)} images but {n} maps")
    rows = []
    for i, b in enumerate(per_image):
        b = b.reshape(1, 4) if b.shape == (4,) else b
        if b.dim() != 2 or b.shape[1] != 4 or b.shape[0] == 0:
            raise ValueError(
                f"boxes of image {i} must have shape [M, 4] with M >= 1, got {tuple(b.shape)}"
            )
        rows.append(b.to(device=device, dtype=torch.float64))
    width = max(r.shape[0] for r in rows)
    batch = torch.zeros(n, width, 4, dtype=torch.float64, device=device)
    valid = torch.zeros(n, width, dtype=torch.bool, device=device)
    for i, r in enumerate(rows):
        batch[i, : r.shape[0]] = r
        valid[i, : r.shape[0]] = True
    if not bool(torch.isfinite(batch).all()):
        raise ValueError("boxes contain NaN or infinite coordinates")
    inverted = valid & ((batch[..., 2] < batch[..., 0]) | (batch[..., 3] < batch[..., 1]))
    if bool(inverted.any()):
        i, j = (int(v) for v in inverted.nonzero()[0])
        raise ValueError(
            f"box {j} of image {i} is {batch[i, j].tolist()}: expected (x0, y0, x1, y1) "
            "with x1 >= x0 and y1 >= y0 (inclusive corners)"
        )
    h, w = size
    x0, y0, x1, y1 = batch.unbind(-1)
    outside = valid & ((x0 > w - 1) | (x1 < 0) | (y0 > h - 1) | (y1 < 0))
    if bool(outside.any()):
        i, j = (int(v) for v in outside.nonzero()[0])
        raise ValueError(
            f"box {j} of image {i} is {batch[i, j].tolist()}: it lies wholly outside the "
            f"{h}x{w} (HxW) map, whose pixels span x in [0, {w - 1}], y in [0, {h - 1}]"
        )
    low = torch.zeros(4, dtype=torch.float64, device=device)
    high = torch.tensor([w - 1, h - 1, w - 1, h - 1], dtype=torch.float64, device=device)
    return torch.minimum(torch.maximum(batch, low), high), valid


def as_thresholds(thresholds: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Thresholds as a non-empty 1-D float64 CPU tensor with values in [0, 1]."""
    t = torch.as_tensor(thresholds, dtype=torch.float64).detach().cpu()
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"thresholds must be a non-empty 1-D sequence, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("thresholds contain NaN or infinite values")
    if not bool(((t >= 0.0) & (t <= 1.0)).all()):
        raise ValueError(
            f"thresholds must lie in [0, 1], got values in [{float(t.min())}, {float(t.max())}]"
        )
    return t
