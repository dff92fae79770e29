"""Connected components (8- or 4-connected) of binary masks, vectorized in torch (CPU or CUDA).

The core works on superlevel sets: for integer maps ``levels`` [N, H, W] and integer cuts
[N, T] it finds the components of every mask ``levels[n] > cuts[n, t]`` at once, without
materializing the N*T masks. A plain bool mask is the case levels = mask, cut = 0.

Method:
1. Runs. A run is a maximal horizontal stretch of foreground in one row of one mask. Pixel
   (y, x) starts a run at cut c exactly when ``left <= c < level`` (left = the level of
   (y, x - 1), or -inf at x = 0), so each pixel starts runs for a contiguous range of the
   sorted cuts, found by binary search; runs end symmetrically with the right neighbour.
   Runs are keyed by ((n * T + t) * H + y) * W + x of their first (or last) pixel; the i-th
   start and the i-th end in key order belong to the same run.
2. Edges. With 8-connectivity two runs in adjacent rows touch exactly when the lower run's
   first pixel has foreground of the upper run above it or above-left, or the upper run's
   first pixel has foreground of the lower run below-left; with 4-connectivity, directly above
   or directly below. These look-ups per run give every edge; the run holding a looked-up
   pixel is found by binary search over run starts.
3. Union-find over the run graph: every root is hooked to the smallest root it touches, then
   pointers jump until each run points at its root; repeated until no edge joins two roots
   (a convergence check, not a fixed count). A component's root is its first run in raster
   order, so components come out numbered like ``scipy.ndimage.label`` numbers them.

Work is O(N*H*W*log T) for step 1 plus O(R log R) for R runs, and batches are split so that no
chunk holds more than ``_MAX_RUNS_PER_CHUNK`` runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MAX_RUNS_PER_CHUNK = 1 << 22
_MAX_LOOKUP_TABLE = 1 << 16
_BELOW_EVERY_LEVEL = torch.iinfo(torch.int64).min


@dataclass(frozen=True)
class Components:
    """Connected components of M masks (the masks' leading dims flattened).

    ``slot``: int64 [K], index of the mask holding each component (for superlevel sets of
    [N, H, W] levels and [N, T] cuts, slot = n * T + t). ``boxes``: int64 [K, 4],
    (x0, y0, x1, y1) with inclusive corners. ``areas``: int64 [K], pixel counts. Sorted by
    slot, then by the raster position of each component's first pixel.
    """

    slot: torch.Tensor
    boxes: torch.Tensor
    areas: torch.Tensor


@dataclass(frozen=True)
class _Runs:
    start: torch.Tensor  # int64 [R] key of each run's first pixel, ascending
    end: torch.Tensor  # int64 [R] key of each run's last pixel
    root: torch.Tensor  # int64 [R] index of the first run of the run's component


def _shifted(levels: torch.Tensor, step: int) -> torch.Tensor:
    """Level of the left (step=-1) or right (step=+1) neighbour, -inf beyond the border."""
    edge = torch.full_like(levels[..., :1], _BELOW_EVERY_LEVEL)
    if step < 0:
        return torch.cat([edge, levels[..., :-1]], dim=-1)
    return torch.cat([levels[..., 1:], edge], dim=-1)


def _count_cuts_below(cuts: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Per row n, how many of ``cuts[n]`` (sorted) are < each of ``values[n]`` -> int64."""
    low, high = int(cuts.min()), int(cuts.max())
    if high - low + 2 > _MAX_LOOKUP_TABLE:
        return torch.searchsorted(cuts, values, side="left")
    # A table over every value that matters (low .. high + 1) replaces one binary search per
    # pixel by a gather: below low no cut is smaller, above high every cut is.
    grid = torch.arange(low, high + 2, device=cuts.device).expand(cuts.shape[0], -1)
    table = torch.searchsorted(cuts, grid.contiguous(), side="left")
    return table.gather(1, values.clamp(low, high + 1) - low)


def _crossing_counts(levels: torch.Tensor, neighbour: torch.Tensor, cuts: torch.Tensor):
    """Per pixel, the first index and the number of cuts c with neighbour <= c < level."""
    n = levels.shape[0]
    first = _count_cuts_below(cuts, neighbour.reshape(n, -1))
    stop = _count_cuts_below(cuts, levels.reshape(n, -1))
    return first, (stop - first).clamp_min(0)


def _crossing_keys(first: torch.Tensor, count: torch.Tensor, num_cuts: int) -> torch.Tensor:
    """Sorted keys (n * T + t) * H * W + pixel of every (pixel, cut) crossing."""
    n, hw = first.shape
    count = count.reshape(-1)
    total = int(count.sum())
    device = first.device

    def per_crossing(values: torch.Tensor) -> torch.Tensor:
        return values.repeat_interleave(count, output_size=total)

    pixel = per_crossing(torch.arange(n * hw, device=device))
    offset_in_pixel = torch.arange(total, device=device) - per_crossing(count.cumsum(0) - count)
    cut = per_crossing(first.reshape(-1)) + offset_in_pixel
    image = pixel // hw
    keys = (image * num_cuts + cut) * hw + (pixel - image * hw)
    return torch.sort(keys).values


# Look-ups (row offset, column offset) from each run's first pixel that find every pair of
# touching runs in adjacent rows (see the module docstring).
_LOOKUPS = {8: ((-1, -1), (-1, 0), (1, -1)), 4: ((-1, 0), (1, 0))}


def _indices(mask: torch.Tensor) -> torch.Tensor:
    return mask.nonzero().squeeze(1)


def _run_edges(levels: torch.Tensor, cuts: torch.Tensor, start: torch.Tensor, connectivity: int):
    """Index pairs of touching runs, from look-ups around each run's first pixel."""
    _, h, w = levels.shape
    slot = start // (h * w)
    pixel = start - slot * (h * w)
    row = pixel // w
    col = pixel - row * w
    cut = cuts.reshape(-1).index_select(0, slot)
    flat_levels = levels.reshape(-1)
    image_start = (slot // cuts.shape[1]) * (h * w)
    own, other = [], []
    for dy, dx in _LOOKUPS[connectivity]:
        inside = (row + dy >= 0) & (row + dy < h) & (col + dx >= 0)
        target = (image_start + pixel + (dy * w + dx)).clamp(0, flat_levels.numel() - 1)
        hit = _indices(inside & (flat_levels.index_select(0, target) > cut))
        neighbour_key = start.index_select(0, hit) + (dy * w + dx)
        own.append(hit)
        other.append(torch.searchsorted(start, neighbour_key, right=True) - 1)
    return torch.cat(own), torch.cat(other)


def _union_find(num_nodes: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Root (smallest node index) of every node's connected component in the graph (a, b)."""
    parent = torch.arange(num_nodes, device=a.device)
    while a.numel():
        root_a, root_b = parent.index_select(0, a), parent.index_select(0, b)
        apart = _indices(root_a != root_b)
        if apart.numel() == 0:
            break
        a, b, root_a, root_b = (x.index_select(0, apart) for x in (a, b, root_a, root_b))
        parent.scatter_reduce_(
            0, torch.maximum(root_a, root_b), torch.minimum(root_a, root_b), reduce="amin"
        )
        while True:  # pointer jumping until every node points at its root
            grand = parent.index_select(0, parent)
            if torch.equal(grand, parent):
                break
            parent = grand
    return parent


def _label_runs(levels: torch.Tensor, cuts: torch.Tensor, connectivity: int) -> _Runs:
    num_cuts = cuts.shape[1]
    start = _crossing_keys(*_crossing_counts(levels, _shifted(levels, -1), cuts), num_cuts)
    end = _crossing_keys(*_crossing_counts(levels, _shifted(levels, +1), cuts), num_cuts)
    a, b = _run_edges(levels, cuts, start, connectivity)
    return _Runs(start=start, end=end, root=_union_find(start.numel(), a, b))


def _stats_from_runs(runs: _Runs, h: int, w: int) -> Components:
    device = runs.start.device
    root_index = _indices(runs.root == torch.arange(runs.start.numel(), device=device))
    row = (runs.start // w) % h

    def reduce(values: torch.Tensor, how: str) -> torch.Tensor:
        out = values.clone()  # each root starts from its own run; the other runs fold in
        out.scatter_reduce_(0, runs.root, values, reduce=how, include_self=True)
        return out.index_select(0, root_index)

    boxes = torch.stack(
        [
            reduce(runs.start % w, "amin"),
            reduce(row, "amin"),
            reduce(runs.end % w, "amax"),
            reduce(row, "amax"),
        ],
        dim=1,
    )
    areas = torch.zeros_like(runs.start).index_add_(0, runs.root, runs.end - runs.start + 1)
    return Components(
        slot=runs.start.index_select(0, root_index) // (h * w),
        boxes=boxes,
        areas=areas.index_select(0, root_index),
    )


def _check_levels(levels: torch.Tensor, cuts: torch.Tensor, connectivity: int) -> None:
    for name, t, dims in (("levels", levels, "[N, H, W]"), ("cuts", cuts, "[N, T]")):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor {dims}, got dtype {t.dtype}")
        if t.dim() != len(dims.split(",")):
            raise ValueError(f"{name} must have shape {dims}, got {tuple(t.shape)}")
    if levels.shape[0] != cuts.shape[0]:
        raise ValueError(
            f"levels has N={levels.shape[0]} maps but cuts has {cuts.shape[0]} rows"
        )
    if levels.device != cuts.device:
        raise ValueError(f"levels on {levels.device} but cuts on {cuts.device}")
    if cuts.shape[1] > 1 and bool((cuts[:, 1:] < cuts[:, :-1]).any()):
        raise ValueError("cuts must be non-decreasing along T in every row")
    _check_connectivity(connectivity)


def _check_connectivity(connectivity: int) -> None:
    if connectivity not in _LOOKUPS:
        raise ValueError(f"connectivity must be 8 or 4, got {connectivity!r}")


def superlevel_components(
    levels: torch.Tensor, cuts: torch.Tensor, connectivity: int = 8
) -> Components:
    """Components of every mask ``levels[n] > cuts[n, t]``.

    ``levels``: integer [N, H, W]; ``cuts``: integer [N, T], non-decreasing along T;
    ``connectivity``: 8 (diagonal neighbours touch) or 4. Returns ``Components`` with
    slot = n * T + t, on the inputs' device.
    """
    _check_levels(levels, cuts, connectivity)
    levels, cuts = levels.to(torch.int64).contiguous(), cuts.to(torch.int64).contiguous()
    n = levels.shape[0]
    if n == 0 or levels.numel() == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=levels.device)
        return Components(empty, empty.reshape(0, 4), empty)
    # Split the batch so that no chunk holds more than _MAX_RUNS_PER_CHUNK runs.
    _, count = _crossing_counts(levels, _shifted(levels, -1), cuts)
    per_image = count.sum(1).tolist()
    bounds, begin, acc = [], 0, 0
    for i, runs in enumerate(per_image):
        if i > begin and acc + runs > _MAX_RUNS_PER_CHUNK:
            bounds.append((begin, i))
            begin, acc = i, 0
        acc += runs
    bounds.append((begin, n))
    parts = [_chunk_components(levels, cuts, lo, hi, connectivity) for lo, hi in bounds]
    return Components(
        slot=torch.cat([p.slot for p in parts]),
        boxes=torch.cat([p.boxes for p in parts]),
        areas=torch.cat([p.areas for p in parts]),
    )


def _chunk_components(levels, cuts, begin: int, end: int, connectivity: int) -> Components:
    h, w = levels.shape[-2:]
    part = _stats_from_runs(_label_runs(levels[begin:end], cuts[begin:end], connectivity), h, w)
    return Components(part.slot + begin * cuts.shape[1], part.boxes, part.areas)


def _as_levels(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"masks must be a torch.Tensor, got {type(masks).__name__}")
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be a bool tensor [..., H, W], got dtype {masks.dtype}")
    if masks.dim() < 2 or masks.shape[-1] == 0 or masks.shape[-2] == 0:
        raise ValueError(f"masks must have shape [..., H, W] with H, W >= 1, got "
                         f"{tuple(masks.shape)}")
    h, w = masks.shape[-2:]
    levels = masks.reshape(-1, h, w).to(torch.int64)
    return levels, torch.zeros(levels.shape[0], 1, dtype=torch.int64, device=masks.device)


def connected_components(masks: torch.Tensor, connectivity: int = 8) -> Components:
    """Bounding boxes and areas of the connected components of ``masks``.

    ``masks``: bool [..., H, W] on any device (e.g. [N, H, W] or [N, T, H, W]); the leading
    dims are flattened row-major into ``Components.slot``. ``connectivity``: 8 or 4.
    """
    return superlevel_components(*_as_levels(masks), connectivity=connectivity)


def label_components(masks: torch.Tensor, connectivity: int = 8) -> torch.Tensor:
    """Per-pixel component labels of ``masks`` (bool [..., H, W]) -> int64 [..., H, W].

    0 is background; within each mask the components are numbered 1, 2, ... in the raster
    order of their first pixel (the numbering of ``scipy.ndimage.label``).
    """
    levels, cuts = _as_levels(masks)
    _check_connectivity(connectivity)
    runs = _label_runs(levels, cuts, connectivity)
    device = levels.device
    hw = levels.shape[1] * levels.shape[2]
    is_root = runs.root == torch.arange(runs.start.numel(), device=device)
    number = torch.cumsum(is_root, 0)  # 1-based running component number over all masks
    slot = runs.start // hw
    before_slot = torch.zeros(levels.shape[0] + 1, dtype=torch.int64, device=device)
    before_slot.index_add_(0, slot[is_root] + 1, torch.ones_like(slot[is_root]))
    before_slot = torch.cumsum(before_slot, 0)  # components in all earlier masks
    run_label = number[runs.root] - before_slot[slot]
    starts = torch.zeros(levels.numel(), dtype=torch.int64, device=device)
    starts[runs.start] = 1
    run_of_pixel = torch.cumsum(starts, 0) - 1
    flat = masks.reshape(-1)
    labels = torch.zeros(levels.numel(), dtype=torch.int64, device=device)
    labels[flat] = run_label[run_of_pixel[flat]]
    return labels.reshape(masks.shape)
