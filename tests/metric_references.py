"""Slow, independent references for camplug.metrics: numpy, python loops, scipy.ndimage.

Written from the definitions (docs and notes), not from the library code: components come
from scipy.ndimage.label with an 8-connectivity structure, thresholds are handled one at a
time, IoUs and rankings with plain python.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=int)


def component_backends() -> list:
    """The backends of camplug.metrics.components to test, as pytest parameters: "torch",
    and "numba" (skipped when numba, the 'fast' extra, is not installed)."""
    import pytest

    from camplug.metrics import components

    compiled = components._compiled_backend() is not None
    return ["torch", pytest.param("numba", marks=pytest.mark.skipif(
        not compiled, reason="needs numba (the 'fast' extra)"))]
FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def components(mask: np.ndarray, structure=EIGHT_CONNECTED) -> list[tuple[list[int], int]]:
    """[(box (x0, y0, x1, y1) inclusive, area)] of the components (8-connected by default),
    in scipy's order."""
    labels, count = ndimage.label(mask, structure=structure)
    out = []
    for index, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1):
        area = int((labels == index).sum())
        out.append(([cols.start, rows.start, cols.stop - 1, rows.stop - 1], area))
    assert len(out) == count
    return out


def holes(mask: np.ndarray, structure=FOUR_CONNECTED) -> list[tuple[list[int], int]]:
    """[(box, area)] of the background regions (4-connected by default) that touch no image
    border, in scipy's order."""
    height, width = mask.shape
    return [(box, area) for box, area in components(~mask, structure)
            if box[0] > 0 and box[1] > 0 and box[2] < width - 1 and box[3] < height - 1]


def hole_borders(mask: np.ndarray) -> list[list[int]]:
    """Boxes of OpenCV's hole contours: 4-connected background regions away from the image
    border, grown by one pixel (the ring of foreground pixels around each hole)."""
    return [[x0 - 1, y0 - 1, x1 + 1, y1 + 1] for (x0, y0, x1, y1), _ in holes(mask)]


def threshold_boxes(cam: np.ndarray, thresholds, multi_contour: bool, protocol: str):
    """Boxes per threshold: numpy uint8 quantization, ``q > int(tau * max q)``, scipy labels.

    protocol="wsolevaluation": box ends one past the last pixel (clipped), hole borders added in
    V2, [0, 0, 0, 0] when nothing is foreground.
    """
    levels = (cam * 255).astype(np.uint8)  # product in the map's own float dtype
    height, width = cam.shape
    result = []
    for tau in thresholds:
        foreground = levels > int(float(tau) * int(levels.max()))
        found = components(foreground)
        if not multi_contour and found:
            best_area = max(area for _, area in found)
            found = [next(c for c in found if c[1] == best_area)]  # first in raster order
        boxes = [box for box, _ in found]
        if protocol == "wsolevaluation":
            if multi_contour:
                boxes += hole_borders(foreground)
            boxes = [[x0, y0, min(x1 + 1, width - 1), min(y1 + 1, height - 1)]
                     for x0, y0, x1, y1 in boxes] or [[0, 0, 0, 0]]
        result.append(boxes)
    return result


def iou(a, b) -> float:
    """IoU of two inclusive-corner boxes with "+1" areas."""
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = inter_w * inter_h
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area_a + area_b - inter)


def box_ious(cams, gt_boxes, thresholds, multi_contour: bool, protocol: str = "camplug"):
    """[N][T] best IoU; ``gt_boxes[i]`` is a list of boxes of image i."""
    table = []
    for cam, objects in zip(cams, gt_boxes, strict=True):
        row = []
        for boxes in threshold_boxes(cam, thresholds, multi_contour, protocol):
            row.append(max((iou(p, g) for p in boxes for g in objects), default=0.0))
        table.append(row)
    return table


def max_box_acc(ious, thresholds, deltas):
    """(accuracy per delta, best threshold per delta) from [N][T] IoU rows."""
    accuracy, best = {}, {}
    for delta in deltas:
        rates = [sum(1 for row in ious if row[t] >= delta) / len(ious)
                 for t in range(len(thresholds))]
        top = max(rates)
        accuracy[delta] = top
        best[delta] = min(float(tau) for tau, r in zip(thresholds, rates, strict=True) if r == top)
    return accuracy, best


def pxap(cams: np.ndarray, masks: np.ndarray, thresholds, ignore=None) -> float:
    """Step-rule average precision over all pixels, thresholds visited from high to low;
    background pixels marked in ``ignore`` are left out."""
    keep = np.ones(masks.shape, dtype=bool) if ignore is None else (masks | ~ignore)
    scores, truth = cams.astype(np.float64)[keep], masks[keep]
    positives = truth.sum()
    total, previous_recall = 0.0, 0.0
    for tau in sorted((float(t) for t in thresholds), reverse=True):
        predicted = scores >= tau
        tp = int((predicted & truth).sum())
        fp = int((predicted & ~truth).sum())
        recall = tp / positives
        if tp + fp:
            total += tp / (tp + fp) * (recall - previous_recall)
        previous_recall = recall
    return total


def box_union_mask(objects, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    for y in range(height):
        for x in range(width):
            mask[y, x] = any(b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in objects)
    return mask


def pointing_game(cam: np.ndarray, inside: np.ndarray, tolerance: float = 0.0) -> bool:
    """Every pixel holding the maximum lies within ``tolerance`` (Euclidean) of ``inside``."""
    object_pixels = list(zip(*np.nonzero(inside), strict=True))
    peaks = zip(*np.nonzero(cam == cam.max()), strict=True)
    return all(any(math.hypot(y - oy, x - ox) <= tolerance for oy, ox in object_pixels)
               for y, x in peaks)


def energy(cam: np.ndarray, inside: np.ndarray) -> tuple[float, float]:
    fraction = inside.sum() / inside.size
    total = float(cam.astype(np.float64).sum())
    if total == 0:
        return fraction, fraction
    return float(cam.astype(np.float64)[inside].sum()) / total, fraction


def bilinear(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """align_corners=False bilinear resize, one output pixel at a time, in float64."""
    in_h, in_w = cam.shape
    out = np.zeros((height, width))

    def taps(dst: int, in_size: int, out_size: int):
        src = max((dst + 0.5) * in_size / out_size - 0.5, 0.0)
        low = min(int(math.floor(src)), in_size - 1)
        high = min(low + 1, in_size - 1)
        frac = src - low
        return low, high, frac

    for y in range(height):
        y0, y1, fy = taps(y, in_h, height)
        for x in range(width):
            x0, x1, fx = taps(x, in_w, width)
            top = (1 - fx) * cam[y0, x0] + fx * cam[y0, x1]
            bottom = (1 - fx) * cam[y1, x0] + fx * cam[y1, x1]
            out[y, x] = (1 - fy) * top + fy * bottom
    return out


def linear_probability(weight, bias, image: np.ndarray, target: int) -> float:
    """Softmax probability of ``target`` for a linear model on the flattened image."""
    pixels = image.ravel()
    logits = [float(np.dot(row, pixels) + b) for row, b in zip(weight, bias, strict=True)]
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    return exps[target] / sum(exps)


def perturbation_auc(weight, bias, image, cam, target, steps, mode, baseline=0.0, sigma=5.0):
    """Deletion or insertion AUC and curve for one image, with explicit loops."""
    channels, height, width = image.shape
    saliency = bilinear(cam.astype(np.float64), height, width)
    pixels = sorted(range(height * width), key=lambda p: (-saliency.flat[p], p))
    if mode == "deletion":
        revealed = np.broadcast_to(np.asarray(baseline, dtype=np.float64), image.shape)
        hidden = image
    else:
        revealed = image
        hidden = np.stack([ndimage.gaussian_filter(image[c].astype(np.float64), sigma,
                                                   mode="nearest", truncate=3.0)
                           for c in range(channels)])
    fractions, curve = [], []
    for k in range(steps + 1):
        count = (k * height * width) // steps
        current = np.array(hidden, dtype=np.float64)
        for p in pixels[:count]:
            y, x = divmod(p, width)
            current[:, y, x] = revealed[:, y, x]
        fractions.append(count / (height * width))
        curve.append(linear_probability(weight, bias, current, target))
    area = sum((fractions[i + 1] - fractions[i]) * (curve[i] + curve[i + 1]) / 2
               for i in range(steps))
    return area, curve


def drop_increase(weight, bias, image, cam, target) -> tuple[float, bool]:
    channels, height, width = image.shape
    explanation = image * bilinear(cam.astype(np.float64), height, width)[None]
    y = linear_probability(weight, bias, image, target)
    o = linear_probability(weight, bias, explanation, target)
    return max(0.0, y - o) / y, y < o
