"""Localization metrics of class activation maps against ground-truth boxes and masks.

MaxBoxAcc (v1) and MaxBoxAccV2 (Choe et al., CVPR 2020), the CAM paper's protocol, PxAP,
the pointing game and the energy-based pointing game. Vectorized in torch; CPU or CUDA. The
boxes' connected components run on compiled CPU kernels when numba (the ``fast`` extra) is
installed, with identical results (``components.py``).

Conventions shared by every function here:

- Maps: float [N, H, W] with values in [0, 1] (min-max normalized), at the resolution of the
  ground truth. Masks: bool [N, H, W].
- Boxes: (x0, y0, x1, y1) with inclusive pixel corners; a box covers (x1 - x0 + 1) *
  (y1 - y0 + 1) pixels and IoUs use these "+1" areas, as Choe et al.'s code does.
  Ground truth: a tensor [N, 4], [N, G, 4], or a list of N tensors [M_i, 4] (several objects;
  an image's IoU is the best over its objects).
- Binarization for boxes, as in Choe et al.'s code: levels q = floor(255 * map) (the product
  in float32, or in float64 for float64 maps, then truncated like numpy's astype(uint8));
  at threshold tau the foreground is ``q > floor(tau * max(q))`` (the product in float64),
  i.e. strictly above, like cv2.THRESH_BINARY. The foreground's 8-connected components give
  the predicted boxes: every component in V2 ("multi-contour"), only the largest in v1, where
  largest means most pixels and ties go to the component whose first pixel comes first in
  raster order. A map whose levels are all 0 has no foreground: IoU 0 (but see the protocols).
- Default box thresholds: 0, 0.01, ..., 0.99, bit-identical to numpy.arange(0, 1, 0.01).
- Rates (MaxBoxAcc, PxAP, pointing accuracy) are fractions in [0, 1]; per-sample values are
  float64, so an IoU of exactly 0.7 passes ``>= 0.7``.
- Ground-truth boxes reaching past the map are clipped to it; a box with no pixel inside
  the map is an error (ValueError naming the image, the box and the map size).

Protocols (``protocol=``; the names are ``PROTOCOLS``, the default ``DEFAULT_PROTOCOL``):

- ``"camplug"`` (default): the candidate boxes are the true (tight) bounding boxes of the
  foreground components; a map without foreground scores IoU 0.
- ``"wsolevaluation"``: exactly the candidates of Choe et al.'s code, which uses OpenCV
  contours: boxes end one pixel past the last foreground pixel, clipped to the image
  (x1 = x + w of cv2.boundingRect); V2 also scores the boxes of hole contours
  (cv2.RETR_TREE), i.e. of every 4-connected background region not touching the image
  border, grown by one pixel; a map without foreground scores the box [0, 0, 0, 0]. Scores
  differ from "camplug" by design (up to about 1.3 points of MaxBoxAccV2 seen so far).

One difference from Choe et al.'s v1 remains in either protocol: their v1 picks the contour of
largest polygon area (cv2.contourArea, 0 for any one-pixel-wide shape), ours the component
with the most pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from .components import Components, chunk_bounds, level_set_components
from .validation import BoxesLike, as_box_batch, as_thresholds, check_cams, check_masks

BoxProtocol = Literal["camplug", "wsolevaluation"]
ThresholdsLike = torch.Tensor | Sequence[float] | None

CAM_PAPER_THRESHOLD = 0.2
CAM_PAPER_IOU = 0.5
DEFAULT_IOU_THRESHOLDS = (0.3, 0.5, 0.7)
DEFAULT_PROTOCOL: BoxProtocol = "camplug"
# Every box protocol with a one-line description (for command-line help).
PROTOCOLS: dict[str, str] = {
    "camplug": "tight boxes of the 8-connected foreground components (default)",
    "wsolevaluation": "Choe et al.'s code exactly: OpenCV box ends (one pixel past the "
    "last), hole contours scored in V2, box [0, 0, 0, 0] for an empty map",
}


def default_thresholds(step: float = 0.01) -> torch.Tensor:
    """The grid 0, step, 2 * step, ... below 1 as float64 [T] (numpy.arange(0, 1, step))."""
    if not 0.0 < step <= 1.0:
        raise ValueError(f"step must be in (0, 1], got {step}")
    return torch.arange(math.ceil(1.0 / step), dtype=torch.float64) * step


def default_pixel_thresholds(step: float = 0.01) -> torch.Tensor:
    """PxAP's grid: ``default_thresholds(step)`` followed by 1.0 (Choe et al.'s bin edges)."""
    return torch.cat([default_thresholds(step), torch.ones(1, dtype=torch.float64)])


def quantize_cams(cams: torch.Tensor, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Levels floor(255 * cams) as ``dtype`` (an integer type) [N, H, W] (product in float32,
    or float64)."""
    work = cams if cams.dtype == torch.float64 else cams.float()
    return torch.mul(work, 255).floor_().to(dtype)


def iou_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every pair of boxes: a [A, 4], b [B, 4] -> float64 [A, B] ("+1" areas)."""
    return _iou(a.double()[:, None, :], b.double()[None, :, :])


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise IoU of broadcastable float64 boxes [..., 4] with inclusive corners."""
    width = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0]) + 1)
    height = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1]) + 1)
    inter = width.clamp_min(0) * height.clamp_min(0)
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    return inter / (area_a + area_b - inter)


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")


@dataclass(frozen=True)
class _Candidates:
    """Candidate boxes of N maps at T thresholds; slot = n * T + index in sorted order."""

    components: Components  # one box per foreground component
    holes: Components | None  # hole-border boxes (protocol "wsolevaluation" only)
    order: torch.Tensor  # int64 [T]: sorted position j holds thresholds[order[j]]
    num_thresholds: int


def _wsolevaluation_ends(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """x1, y1 one past the last pixel, clipped to the image (x + w of cv2.boundingRect)."""
    ends = torch.stack(
        [(boxes[:, 2] + 1).clamp_max(w - 1), (boxes[:, 3] + 1).clamp_max(h - 1)], dim=1
    )
    return torch.cat([boxes[:, :2], ends], dim=1)


def _hole_borders(holes: Components) -> Components:
    """Boxes of the hole contours cv2.RETR_TREE reports: every 4-connected background
    component that does not touch the image border (``holes``), grown by one pixel on each
    side."""
    grow = torch.tensor([-1, -1, 1, 1], device=holes.boxes.device)
    return Components(holes.slot, holes.boxes + grow, holes.areas)


def _candidates(cams: torch.Tensor, thresholds: torch.Tensor, protocol: str) -> _Candidates:
    n, h, w = cams.shape
    ascending, order = torch.sort(thresholds, stable=True)
    ascending = ascending.to(cams.device)
    t = thresholds.numel()
    holes_too = protocol == "wsolevaluation"
    found, holes = [], []
    # Chunks of maps quantized at once: larger than the components' own chunks (they split
    # them as they need), as fewer calls cost less; the levels are int32.
    for begin, end in chunk_bounds(n, h, w, scale=4):
        levels = quantize_cams(cams[begin:end], torch.int32)
        top = levels.amax(dim=(1, 2)).to(torch.float64)
        cuts = torch.floor(ascending[None, :] * top[:, None]).to(torch.int64)
        part, enclosed = level_set_components(levels, cuts, 8, 4 if holes_too else None)
        found.append(Components(part.slot + begin * t, part.boxes, part.areas))
        if holes_too:
            part = _hole_borders(enclosed)
            holes.append(Components(part.slot + begin * t, part.boxes, part.areas))
    found = _concatenate(found)
    if not holes_too:
        return _Candidates(found, None, order.to(cams.device), t)
    holes = _concatenate(holes)
    return _Candidates(
        Components(found.slot, _wsolevaluation_ends(found.boxes, h, w), found.areas),
        Components(holes.slot, _wsolevaluation_ends(holes.boxes, h, w), holes.areas),
        order.to(cams.device),
        t,
    )


def _concatenate(parts: list[Components]) -> Components:
    return Components(
        slot=torch.cat([p.slot for p in parts]),
        boxes=torch.cat([p.boxes for p in parts]),
        areas=torch.cat([p.areas for p in parts]),
    )


def _largest_per_slot(components: Components, num_slots: int) -> torch.Tensor:
    """Index of each slot's largest component (ties: first in raster order), K if none."""
    slot, areas = components.slot, components.areas
    count = slot.numel()
    largest = torch.zeros(num_slots, dtype=torch.int64, device=slot.device)
    largest.scatter_reduce_(0, slot, areas, reduce="amax", include_self=True)
    candidate = areas == largest[slot]
    chosen = torch.full((num_slots,), count, dtype=torch.int64, device=slot.device)
    index = torch.arange(count, device=slot.device)
    chosen.scatter_reduce_(0, slot[candidate], index[candidate], reduce="amin", include_self=True)
    return chosen


def _best_over_objects(boxes: torch.Tensor, image: torch.Tensor, gt, valid) -> torch.Tensor:
    """float64 [K]: IoU of each box with the best-matching object of its image."""
    per_object = _iou(boxes.double()[:, None, :], gt[image])
    return per_object.masked_fill(~valid[image], 0.0).amax(dim=1)


def _ious_per_slot(
    found: _Candidates, gt: torch.Tensor, valid: torch.Tensor, multi_contour: bool
) -> torch.Tensor:
    """Best IoU per (image, threshold) -> float64 [N, T] in the caller's threshold order."""
    n, t = gt.shape[0], found.num_thresholds
    comps = found.components
    per_component = _best_over_objects(comps.boxes, comps.slot // t, gt, valid)
    best = torch.zeros(n * t, dtype=torch.float64, device=gt.device)
    if multi_contour:
        best.scatter_reduce_(0, comps.slot, per_component, reduce="amax", include_self=True)
        if found.holes is not None:
            holes = found.holes
            per_hole = _best_over_objects(holes.boxes, holes.slot // t, gt, valid)
            best.scatter_reduce_(0, holes.slot, per_hole, reduce="amax", include_self=True)
    else:
        chosen = _largest_per_slot(comps, n * t)
        has = chosen < comps.slot.numel()
        best[has] = per_component[chosen[has]]
    if found.holes is not None:  # wsolevaluation scores the box [0, 0, 0, 0] when empty
        empty = torch.ones(n * t, dtype=torch.bool, device=gt.device)
        empty[comps.slot] = False
        slots = empty.nonzero().squeeze(1)
        origin = torch.zeros(slots.numel(), 4, dtype=torch.float64, device=gt.device)
        best[slots] = _best_over_objects(origin, slots // t, gt, valid)
    out = torch.empty(n, t, dtype=torch.float64, device=gt.device)
    out[:, found.order] = best.reshape(n, t)
    return out


def _prepare(cams, boxes, thresholds, protocol):
    check_cams(cams)
    _check_protocol(protocol)
    gt, valid = as_box_batch(boxes, cams.shape[0], tuple(cams.shape[-2:]), cams.device)
    grid = default_thresholds() if thresholds is None else as_thresholds(thresholds)
    return gt, valid, _candidates(cams, grid, protocol)


def box_ious(
    cams: torch.Tensor,
    boxes: BoxesLike,
    thresholds: ThresholdsLike = None,
    multi_contour: bool = True,
    *,
    protocol: BoxProtocol = DEFAULT_PROTOCOL,
) -> torch.Tensor:
    """Best IoU between predicted and ground-truth boxes, per image and threshold.

    ``cams`` float [N, H, W] in [0, 1]; ``boxes`` [N, 4], [N, G, 4] or a list of [M_i, 4];
    ``thresholds`` (default ``default_thresholds()``) in [0, 1]. ``multi_contour=True`` is
    V2 (every component's box), False is v1 (the largest component's box). ``protocol``: see
    the module docstring. Returns float64 [N, T] on the cams' device.
    """
    gt, valid, found = _prepare(cams, boxes, thresholds, protocol)
    return _ious_per_slot(found, gt, valid, multi_contour)


def box_ious_v1_v2(
    cams: torch.Tensor,
    boxes: BoxesLike,
    thresholds: ThresholdsLike = None,
    *,
    protocol: BoxProtocol = DEFAULT_PROTOCOL,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(box_ious(..., multi_contour=False), box_ious(..., multi_contour=True))`` sharing
    one connected-component pass."""
    gt, valid, found = _prepare(cams, boxes, thresholds, protocol)
    return _ious_per_slot(found, gt, valid, False), _ious_per_slot(found, gt, valid, True)


def threshold_boxes(
    cam: torch.Tensor,
    thresholds: ThresholdsLike = None,
    multi_contour: bool = True,
    *,
    protocol: BoxProtocol = DEFAULT_PROTOCOL,
) -> list[torch.Tensor]:
    """The predicted boxes of one map at each threshold.

    ``cam`` float [H, W] in [0, 1]. Returns one int64 tensor [K_t, 4] per threshold (in the
    given order): every component's box in raster order of first pixels (V2; with
    protocol="wsolevaluation" followed by the hole-border boxes), or the largest component's
    box (v1). Without foreground: [0, 4], or [[0, 0, 0, 0]] with protocol="wsolevaluation".
    """
    if not isinstance(cam, torch.Tensor) or cam.dim() != 2:
        shape = tuple(cam.shape) if isinstance(cam, torch.Tensor) else type(cam).__name__
        raise ValueError(f"cam must be a tensor [H, W], got {shape}")
    cams = cam.unsqueeze(0)
    check_cams(cams, name="cam")
    _check_protocol(protocol)
    grid = default_thresholds() if thresholds is None else as_thresholds(thresholds)
    found = _candidates(cams, grid, protocol)
    comps = found.components
    if not multi_contour:
        chosen = _largest_per_slot(comps, found.num_thresholds)
        keep = chosen[chosen < comps.slot.numel()]
        comps = Components(comps.slot[keep], comps.boxes[keep], comps.areas[keep])
    out = []
    for j in torch.argsort(found.order).tolist():
        boxes = comps.boxes[comps.slot == j]
        if found.holes is not None:
            if multi_contour:
                boxes = torch.cat([boxes, found.holes.boxes[found.holes.slot == j]])
            if boxes.shape[0] == 0:
                boxes = torch.zeros(1, 4, dtype=torch.int64, device=cam.device)
        out.append(boxes)
    return out


@dataclass(frozen=True)
class MaxBoxAccResult:
    """MaxBoxAcc per IoU threshold delta and its mean over deltas (MaxBoxAccV2 when computed
    with multi_contour=True at deltas 0.3, 0.5, 0.7).

    ``accuracy[delta]``: max over thresholds of the fraction of images with IoU >= delta.
    ``best_threshold[delta]``: the map threshold reaching it (the smallest one on ties).
    ``curves[delta]``: the fraction at every threshold of ``thresholds`` (same order).
    """

    accuracy: dict[float, float]
    mean: float
    best_threshold: dict[float, float]
    thresholds: tuple[float, ...]
    curves: dict[float, tuple[float, ...]]


def max_box_acc_from_ious(
    ious: torch.Tensor,
    thresholds: ThresholdsLike = None,
    iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
) -> MaxBoxAccResult:
    """MaxBoxAcc from per-image IoU rows ``ious`` [N, T] (as ``box_ious`` returns them).

    ``thresholds`` [T] labels the columns (default ``default_thresholds()``).
    """
    if not isinstance(ious, torch.Tensor) or ious.dim() != 2 or ious.shape[0] == 0:
        shape = tuple(ious.shape) if isinstance(ious, torch.Tensor) else type(ious).__name__
        raise ValueError(f"ious must be a non-empty tensor [N, T], got {shape}")
    grid = default_thresholds() if thresholds is None else as_thresholds(thresholds)
    if grid.numel() != ious.shape[1]:
        raise ValueError(f"ious have {ious.shape[1]} columns but {grid.numel()} thresholds")
    values = ious.detach().to("cpu", torch.float64)
    if not bool(((values >= 0) & (values <= 1)).all()):
        raise ValueError("ious must lie in [0, 1] (and not be NaN)")
    deltas = [float(d) for d in iou_thresholds]
    if not deltas or not all(0.0 < d <= 1.0 for d in deltas):
        raise ValueError(f"iou_thresholds must be a non-empty list in (0, 1], got {deltas}")
    accuracy, best, curves = {}, {}, {}
    for delta in deltas:
        curve = (values >= delta).double().mean(dim=0)
        top = curve.max()
        accuracy[delta] = float(top)
        best[delta] = float(grid[curve == top].min())
        curves[delta] = tuple(curve.tolist())
    return MaxBoxAccResult(
        accuracy=accuracy,
        mean=sum(accuracy.values()) / len(accuracy),
        best_threshold=best,
        thresholds=tuple(grid.tolist()),
        curves=curves,
    )


def max_box_acc(
    cams: torch.Tensor,
    boxes: BoxesLike,
    iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
    thresholds: ThresholdsLike = None,
    multi_contour: bool = True,
    *,
    protocol: BoxProtocol = DEFAULT_PROTOCOL,
) -> MaxBoxAccResult:
    """MaxBoxAcc over a set of maps: V2 with the defaults, v1 with multi_contour=False."""
    grid = default_thresholds() if thresholds is None else as_thresholds(thresholds)
    ious = box_ious(cams, boxes, grid, multi_contour, protocol=protocol)
    return max_box_acc_from_ious(ious, grid, iou_thresholds)


def cam_paper_localization(
    cams: torch.Tensor,
    boxes: BoxesLike,
    correct_class: torch.Tensor | None = None,
    *,
    protocol: BoxProtocol = DEFAULT_PROTOCOL,
) -> torch.Tensor:
    """The CAM paper's hit per image -> bool [N].

    Threshold at 20% of the map's max (binarized as in ``box_ious``), take the box of the
    largest connected component, hit when its IoU with a ground-truth box is >= 0.5 and,
    when ``correct_class`` (bool [N]) is given, the predicted class is right.
    """
    ious = box_ious(cams, boxes, [CAM_PAPER_THRESHOLD], False, protocol=protocol)
    hit = ious[:, 0] >= CAM_PAPER_IOU
    if correct_class is not None:
        if not isinstance(correct_class, torch.Tensor) or correct_class.dtype != torch.bool:
            raise TypeError("correct_class must be a bool tensor [N]")
        if correct_class.shape != hit.shape:
            raise ValueError(
                f"correct_class must have shape {tuple(hit.shape)}, got "
                f"{tuple(correct_class.shape)}"
            )
        hit = hit & correct_class.to(hit.device)
    return hit


def pixel_pr_counts(
    cams: torch.Tensor,
    masks: torch.Tensor,
    thresholds: ThresholdsLike = None,
    *,
    ignore: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image pixel counts at each threshold -> (tp, fp, fn), int64 [N, T] each.

    A pixel is predicted foreground at threshold tau when ``map >= tau`` (map in float64,
    no quantization). ``thresholds`` (default ``default_pixel_thresholds()``) must be
    strictly increasing. ``ignore`` (bool [N, H, W], optional): background pixels left out
    of the counts, like the ignore masks of Choe et al.'s PxAP (where a pixel is both
    foreground and ignored, foreground wins). Sum the rows over any set of images and pass
    them to ``pxap_from_counts``.
    """
    check_cams(cams)
    check_masks(masks, cams)
    if ignore is not None:
        check_masks(ignore, cams, name="ignore")
    grid = default_pixel_thresholds() if thresholds is None else as_thresholds(thresholds)
    if grid.numel() > 1 and not bool((grid[1:] > grid[:-1]).all()):
        raise ValueError("thresholds for pixel counts must be strictly increasing")
    grid = grid.to(cams.device)
    table = _bucket_table(grid)
    hist = torch.cat([
        _pass_histogram(
            grid,
            table,
            cams[begin:end],
            masks[begin:end].to(cams.device),
            None if ignore is None else ignore[begin:end].to(cams.device),
        )
        for begin, end in chunk_bounds(*cams.shape)
    ])
    at_or_above = hist.flip(2).cumsum(2).flip(2)[:, :, 1:]  # [..., j]: pixels passing j
    tp, fp = at_or_above[:, 1], at_or_above[:, 0]
    fn = hist[:, 1].sum(1, keepdim=True) - tp
    return tp, fp, fn


_FINE_BUCKETS = 1 << 10  # powers of two: score * buckets is exact in any float dtype
_MAX_FINE_BUCKETS = 1 << 14


@dataclass(frozen=True)
class _BucketTable:
    """Scores in [0, 1] cut into ``size`` fine buckets [b / size, (b + 1) / size) (the last,
    b = size, holds 1.0 alone). ``below``: int64 [size + 1], the thresholds <= b / size,
    which every score of bucket b passes. ``inside``: float64 [m, size + 1], the thresholds
    strictly inside bucket b in increasing order, padded with +inf (m the most in a bucket).
    """

    size: int
    below: torch.Tensor
    inside: torch.Tensor


def _bucket_table(grid: torch.Tensor) -> _BucketTable:
    """The coarsest table (from ``_FINE_BUCKETS`` up to ``_MAX_FINE_BUCKETS`` buckets) with
    at most one threshold of ``grid`` (float64 [T], increasing) strictly inside a bucket, or
    the finest one."""
    size = _FINE_BUCKETS
    while True:
        starts = torch.arange(size + 1, device=grid.device, dtype=torch.float64) / size
        below = torch.searchsorted(grid, starts, right=True)
        # Thresholds in (b / size, (b + 1) / size): from below[b] to first_at_next_start.
        ends = torch.cat([torch.searchsorted(grid, starts[1:], right=False),
                          below[-1:]])  # bucket `size` (score 1.0) has none inside
        count = ends - below
        most = int(count.max())
        if most <= 1 or size >= _MAX_FINE_BUCKETS:
            break
        size *= 2
    padded = torch.cat([grid, grid.new_full((1,), math.inf)])
    steps = torch.arange(max(most, 1), device=grid.device)
    index = (below[None, :] + steps[:, None]).clamp_max(grid.numel())
    index = torch.where(steps[:, None] < count[None, :], index, grid.numel())
    return _BucketTable(size, below, padded[index])


def _at_least(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The smallest ``dtype`` numbers >= float64 ``values``: for a score x of that dtype,
    x >= value exactly when x >= the result (the comparison of float64 numbers, made in the
    scores' own dtype)."""
    rounded = values.to(dtype)
    up = torch.nextafter(rounded, torch.full_like(rounded, math.inf))
    return torch.where(rounded.to(torch.float64) < values, up, rounded)


def _pass_histogram(grid, table: _BucketTable, cams, masks, ignore) -> torch.Tensor:
    """Pixels of each map by category and by how many thresholds they pass -> int64
    [n, 3, T + 1]; category 0 background, 1 foreground, 2 ignored background.

    ``passed = searchsorted(grid, score, right=True)`` (comparisons in float64) without a
    binary search per pixel: a score of fine bucket b passes ``below[b]`` thresholds plus
    those inside the bucket it reaches (``table``, see ``_BucketTable``); one bincount over
    (map, category, bucket, thresholds passed inside) then gives the histogram.
    """
    n = cams.shape[0]
    t = grid.numel()
    steps = table.inside.shape[0] + 1  # thresholds passed inside a bucket: 0 .. m
    bins = (table.size + 1) * steps
    small = torch.int32 if n * 3 * bins < 1 << 31 else torch.int64
    scores = cams.reshape(n, -1)
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.float()  # exact for float16 and bfloat16
    bucket = (scores * table.size).to(small)  # truncation is floor: scores >= 0
    flat = bucket.view(-1)
    key = bucket * steps
    for inside in _at_least(table.inside, scores.dtype):  # one pass for the default grids
        key += scores >= inside.index_select(0, flat).view(n, -1)
    foreground = masks.reshape(n, -1)
    key.add_(foreground, alpha=bins)
    if ignore is not None:
        key.add_(ignore.reshape(n, -1) & ~foreground, alpha=2 * bins)
    key += torch.arange(0, 3 * bins * n, 3 * bins, device=cams.device, dtype=small)[:, None]
    counts = torch.bincount(key.view(-1), minlength=n * 3 * bins).view(n * 3, bins)
    passed = table.below[:, None] + torch.arange(steps, device=cams.device)  # [size + 1, m + 1]
    hist = torch.zeros(n * 3, t + 1, dtype=torch.int64, device=cams.device)
    hist.index_add_(1, passed.view(-1).clamp_max(t), counts)
    return hist.view(n, 3, t + 1)


def pxap_from_counts(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> float:
    """PxAP from per-image counts [N, T] (or totals [T]) at increasing thresholds.

    Totals over images give precision P_j and recall R_j at threshold j; with R_T = 0 past the
    highest threshold, PxAP = sum_j P_j * (R_j - R_{j+1}) (the step rule of average precision,
    as in Choe et al.'s code; thresholds with no predicted pixel add nothing).
    """
    shapes = {tuple(x.shape) for x in (tp, fp, fn)}
    if len(shapes) != 1 or tp.dim() not in (1, 2):
        raise ValueError(f"tp, fp, fn must share one shape [N, T] or [T], got {sorted(shapes)}")
    totals = [x.detach().to("cpu", torch.float64) for x in (tp, fp, fn)]
    tp_sum, fp_sum, fn_sum = (x.sum(0) if x.dim() == 2 else x for x in totals)
    positives = tp_sum + fn_sum
    if bool((positives != positives[0]).any()) or bool((torch.stack(totals) < 0).any()):
        raise ValueError("inconsistent counts: tp + fn must be the same at every threshold")
    if float(positives[0]) == 0:
        raise ValueError("the masks have no foreground pixel: PxAP is undefined")
    if bool((tp_sum[1:] > tp_sum[:-1]).any()) or bool((fp_sum[1:] > fp_sum[:-1]).any()):
        raise ValueError("counts must come from increasing thresholds (tp, fp non-increasing)")
    predicted = tp_sum + fp_sum
    precision = torch.where(predicted > 0, tp_sum / predicted.clamp_min(1), 0.0)
    recall = tp_sum / positives
    recall_above = torch.cat([recall[1:], torch.zeros(1, dtype=torch.float64)])
    return float((precision * (recall - recall_above)).sum())


def pxap(
    cams: torch.Tensor,
    masks: torch.Tensor,
    thresholds: ThresholdsLike = None,
    *,
    ignore: torch.Tensor | None = None,
) -> float:
    """Pixel average precision of ``cams`` [N, H, W] against bool ``masks`` over the set;
    ``ignore``: background pixels to leave out (see ``pixel_pr_counts``)."""
    return pxap_from_counts(*pixel_pr_counts(cams, masks, thresholds, ignore=ignore))


def _object_masks(target: torch.Tensor | BoxesLike, cams: torch.Tensor) -> torch.Tensor:
    """Bool [N, H, W]: the given masks, or the union of each image's boxes' pixels."""
    if isinstance(target, torch.Tensor) and target.dtype == torch.bool:
        check_masks(target, cams)
        return target.to(cams.device)
    boxes, valid = as_box_batch(target, cams.shape[0], tuple(cams.shape[-2:]), cams.device)
    h, w = cams.shape[-2:]
    ys = torch.arange(h, device=cams.device, dtype=torch.float64)[:, None]
    xs = torch.arange(w, device=cams.device, dtype=torch.float64)[None, :]
    b = boxes[..., None, None]  # [N, G, 4, 1, 1]
    inside = (xs >= b[:, :, 0]) & (xs <= b[:, :, 2]) & (ys >= b[:, :, 1]) & (ys <= b[:, :, 3])
    return (inside & valid[..., None, None]).any(dim=1)


def _all_within(points: torch.Tensor, target: torch.Tensor, radius: float) -> torch.Tensor:
    """Per map, whether every True pixel of ``points`` lies at Euclidean distance <= ``radius``
    from a True pixel of ``target`` (both bool [N, H, W]) -> bool [N].

    The disk around a point is one horizontal segment per row offset dy, of half-width
    isqrt(floor(radius^2) - dy^2); prefix sums along the rows of ``target`` count its pixels
    in each segment, so the work is one pass over the maps plus O(radius) per point.
    """
    n, h, w = target.shape
    reach_squared = math.floor(radius * radius)
    reach = math.isqrt(reach_squared)
    prefix = torch.zeros(n, h, w + 1, dtype=torch.int32, device=target.device)
    prefix[..., 1:] = target.cumsum(-1, dtype=torch.int32)
    image, y, x = points.nonzero().unbind(1)
    hit = torch.zeros_like(image, dtype=torch.bool)
    for dy in range(-reach, reach + 1):
        half = math.isqrt(reach_squared - dy * dy)
        row = y + dy
        inside = (row >= 0) & (row < h)
        row = row.clamp(0, h - 1)
        low, high = (x - half).clamp(0, w), (x + half + 1).clamp(0, w)
        hit |= inside & (prefix[image, row, high] > prefix[image, row, low])
    missed = torch.zeros(n, dtype=torch.bool, device=target.device)
    missed[image[~hit]] = True
    return ~missed


def pointing_game(
    cams: torch.Tensor, target: torch.Tensor | BoxesLike, *, tolerance: float = 0.0
) -> torch.Tensor:
    """Pointing-game hit per image -> bool [N].

    ``target``: bool masks [N, H, W], or boxes as in ``box_ious``. A hit when the map's
    maximum lies on the object, or within ``tolerance`` pixels of it (Euclidean distance
    between pixel centres <= tolerance; Zhang et al. use 15 px at 224 px); when several
    pixels share the maximum, all of them must hit (so a flat map cannot score).
    """
    check_cams(cams)
    finite = isinstance(tolerance, int | float) and not isinstance(tolerance, bool)
    if not (finite and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number of pixels >= 0, got {tolerance!r}")
    peaks = cams == cams.amax(dim=(1, 2), keepdim=True)
    return _all_within(peaks, _object_masks(target, cams), float(tolerance))


def energy_pointing_game(
    cams: torch.Tensor, boxes: BoxesLike
) -> tuple[torch.Tensor, torch.Tensor]:
    """Energy-based pointing game -> (energy, box_area_fraction), float64 [N] each.

    energy = the map's mass inside the boxes (their union) / its total mass; its chance
    level, reported beside it, is the fraction of the image the boxes cover. A map with no
    mass counts as uniform: its energy is the box area fraction.
    """
    check_cams(cams)
    inside = _object_masks(boxes, cams)
    mass = cams.double()
    total = mass.sum(dim=(1, 2))
    in_box = (mass * inside).sum(dim=(1, 2))
    fraction = inside.sum(dim=(1, 2)).double() / inside[0].numel()
    energy = torch.where(total > 0, in_box / total.clamp_min(torch.finfo(torch.float64).tiny),
                         fraction)
    return energy, fraction
