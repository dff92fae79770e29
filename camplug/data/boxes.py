"""Ground-truth boxes: inclusive pixel corners (x0, y0, x1, y1), x to the right, y down."""

from __future__ import annotations

import torch


def clip_boxes(boxes: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, list[str]]:
    """Inclusive pixel boxes [M, 4] clipped to a ``width`` x ``height`` image, and a warning per
    box that was clipped (kind ``box clipped``). A box wholly outside raises ``ValueError``."""
    outside = (boxes[:, 2] < 0) | (boxes[:, 3] < 0) | (boxes[:, 0] > width - 1) | (
        boxes[:, 1] > height - 1)
    if outside.any():
        raise ValueError(f"box {boxes[outside][0].tolist()} lies wholly outside the "
                         f"{width}x{height} image")
    upper = torch.tensor([width - 1, height - 1], dtype=boxes.dtype).repeat(2)
    clipped = boxes.clamp(min=torch.zeros(4, dtype=boxes.dtype), max=upper)
    changed = (clipped != boxes).any(dim=1)
    warnings = [f"box clipped: {b} reached outside the {width}x{height} image"
                for b in boxes[changed].tolist()]
    return clipped, warnings
