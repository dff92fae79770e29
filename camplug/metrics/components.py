"""Connected components (8- or 4-connected) of binary masks: vectorized torch (CPU or CUDA),
and compiled CPU kernels (numba, the optional ``fast`` extra; ``components_compiled.py``).

The core works on superlevel sets: for integer maps ``levels`` [N, H, W] and integer cuts
[N, T] it finds the components of every mask ``levels[n] > cuts[n, t]`` at once, in one pass
over the pixels, without materializing the N*T masks (and, on request, the holes: the
components of the complements ``levels[n] <= cuts[n, t]`` that touch no border). A plain
bool mask is the case levels = mask, cut = 0.

Backends: "auto" (the default) runs the compiled kernels on CPU tensors when numba is
installed, torch otherwise (always on CUDA). Both share the ranking of the pixels
(``_rank_lookup``) and give identical ``Components``. The compiled kernels sweep each map's
pixels in rank order with a union-find (see their module); the torch method follows. The
first call in a fresh environment compiles the kernels (tens of seconds); numba caches them
on disk.

Torch method (a component tree built from ascent basins):
1. Ranks. A pixel's rank r is the number of cuts below its level: it is foreground at cut
   index t exactly when t < r. Pixels of rank 0 are never foreground and take no part.
2. Basins. Every pixel points at the neighbour (or itself) with the largest key
   (level, flat index); keys grow strictly along these pointers, so following them
   ends at a pixel that points at itself, the basin's root, and pointer jumping finds every
   pixel's root in O(log length) rounds. Ranks never decrease along a chain and consecutive
   pixels touch, so at every cut where a pixel is foreground its whole chain is foreground
   and connected to the root: the foreground part of a basin is always connected. (Keying
   by level rather than rank breaks ties on plateaus of equal rank uphill: fewer basins.)
3. Per basin and rank: pixel count, first and last raster index, leftmost and rightmost
   column; reverse cumulative reductions over the ranks give each basin's foreground box and
   area at every cut index.
4. Merges. Two basins touch at cut index t when some pair of neighbouring pixels, one in
   each, are both foreground, i.e. min(r_p, r_q) > t; the largest such min per pair of
   basins is their saddle. One union-find over the nodes (basin, t), with one edge per
   touching pair and cut index below the saddle, gives every cut's components at once: every
   root is hooked to the smallest root it touches, then pointers jump until each node points
   at its root; repeated until no edge joins two roots (a convergence check, not a fixed
   count).

Work is O(N*H*W * log chain length) for the pixel passes, run over chunks of about
``_PIXELS_PER_CHUNK`` pixels so that they stay in cache, plus O(B*T) over the B basins and T
cuts and O(K log K) to sort the K components found. Output components come out sorted by
mask, then by the raster position of their first pixel (the order of
``scipy.ndimage.label``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

_PIXELS_PER_CHUNK = 1 << 18
_MAX_LOOKUP_TABLE = 1 << 16
# Offsets (dy, dx) to the neighbours after a pixel in raster order; each touching pair of
# pixels is one of these.
_FORWARD_NEIGHBOURS = {8: ((0, 1), (1, -1), (1, 0), (1, 1)), 4: ((0, 1), (1, 0))}


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
class _Tree:
    """Components of one chunk of n maps at T cut indices.

    ``basin``: int32 (int64 for huge chunks) [n*H*W], each pixel's basin, numbered from 1
    in raster order of the roots (0 for rank 0). ``group``: int64 [B*T], the
    root node (basin * T + t) of each node's component. ``present``: bool [B, T], whether the
    basin has foreground at cut index t. ``stats``: int64 [5, B, T], the basin's foreground
    at t: pixel count, first and last raster index, first and last column.
    ``basin_image``: int64 [B], the map of each basin.
    """

    basin: torch.Tensor
    group: torch.Tensor
    present: torch.Tensor
    stats: torch.Tensor
    basin_image: torch.Tensor


def _rank_lookup(
    levels: torch.Tensor, cuts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """How both backends find ranks -> (values, table, low): the rank of a pixel (the number
    of its map's cuts below its level) is ``table[n, clamp(values - low, 0, L - 1)]``.

    ``values``: the levels [n, H, W] themselves, with ``table`` int64 [n, L] tabulating every
    level that matters (low = min cut .. max cut + 1; below it no cut is smaller, above it
    every cut is); when that range is too wide for a table, the ranks by binary search, with
    the identity table [n, T + 1] and low = 0.
    """
    n = levels.shape[0]
    low, high = int(cuts.min()), int(cuts.max())
    if high - low + 2 > _MAX_LOOKUP_TABLE:
        rank = torch.searchsorted(cuts, levels.reshape(n, -1).to(cuts.dtype), side="left")
        identity = torch.arange(cuts.shape[1] + 1, device=cuts.device).expand(n, -1)
        return rank.view(levels.shape), identity.contiguous(), 0
    grid = torch.arange(low, high + 2, device=cuts.device).expand(n, -1)
    return levels, torch.searchsorted(cuts, grid.contiguous(), side="left"), low


def _ranks(levels: torch.Tensor, cuts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel, the number of cuts of its map below its level, and an order of the pixels
    consistent with it -> (rank, order), int64 [n, H, W] each.

    ``order`` is the clamped lookup position of ``_rank_lookup`` (it keeps every rank).
    """
    n = levels.shape[0]
    values, table, low = _rank_lookup(levels, cuts)
    order = (values - low).clamp_(0, table.shape[1] - 1)
    return table.gather(1, order.reshape(n, -1)).view(levels.shape), order


def _neighbourhood_max(key: torch.Tensor, connectivity: int) -> torch.Tensor:
    """Max of ``key`` [n, H, W] over each pixel and its 8 (or 4) neighbours."""
    pad = F.pad(key, (1, 1, 1, 1), value=-1)
    if connectivity == 8:  # separable: max over three columns, then over three rows
        rows = torch.maximum(torch.maximum(pad[..., :-2], pad[..., 1:-1]), pad[..., 2:])
        return torch.maximum(torch.maximum(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])
    best = torch.maximum(key, pad[:, :-2, 1:-1])
    best = torch.maximum(best, pad[:, 2:, 1:-1])
    best = torch.maximum(best, pad[:, 1:-1, :-2])
    return torch.maximum(best, pad[:, 1:-1, 2:])


def _basin_roots(rank: torch.Tensor, order: torch.Tensor, connectivity: int) -> torch.Tensor:
    """Flat index of each pixel's basin root -> int32 (or int64) [n*H*W].

    Pointers follow the key (order, flat index); ``order`` (int64 >= 0) grows with the
    rank, so a pixel of rank >= 1 never points at a lower rank. Pixels of rank 0 form basins
    of their own too; the caller leaves them out.
    """
    n, h, w = rank.shape
    total = n * h * w
    fits = (2 * int(order.max()) + 2) * total < 1 << 31
    dtype = torch.int32 if fits else torch.int64
    flat = torch.arange(total, device=rank.device, dtype=dtype).view(n, h, w)
    order = order.to(dtype)  # may be the caller's tensor (even ``rank``): not modified
    # Within a plateau of equal order, pixels next to a higher one come first: chains leave
    # plateaus uphill instead of wandering in raster order (fewer basins).
    uphill = _neighbourhood_max(order, connectivity) > order
    key = (order * 2).add_(uphill).mul_(total).add_(flat)
    pointer = _neighbourhood_max(key, connectivity).remainder_(total).reshape(-1)
    while True:  # pointer jumping, two jumps per convergence check
        pointer = pointer.index_select(0, pointer)
        jumped = pointer.index_select(0, pointer)
        if torch.equal(jumped, pointer):
            return pointer
        pointer = jumped


def _reverse_cumulative(table: torch.Tensor, how: str) -> torch.Tensor:
    """[..., B, R] -> [..., B, R - 1]: column t reduces columns t + 1 .. R - 1 (ranks > t)."""
    flipped = table.flip(-1)
    if how == "sum":
        done = flipped.cumsum(-1)
    elif how == "min":
        done = flipped.cummin(-1).values
    else:
        done = flipped.cummax(-1).values
    return done.flip(-1)[..., 1:]


def _basin_stats(rank: torch.Tensor, basin: torch.Tensor, num_basins: int, num_cuts: int):
    """Per basin and cut index: count, first/last raster index, first/last column over the
    basin's pixels of rank > t -> int64 [5, B, T]."""
    _, h, w = rank.shape
    hw = h * w
    ranks = num_cuts + 1
    # Buckets basin * ranks + rank; those of "basin 0" (rank-0 pixels) are dropped below.
    bucket = (basin.to(torch.int64) * ranks).add_(rank.reshape(-1))
    size = (num_basins + 1) * ranks
    dtype = basin.dtype
    position = torch.arange(basin.numel(), device=basin.device, dtype=dtype).remainder_(hw)
    column = position % w

    def reduce(values: torch.Tensor, how: str, start: int) -> torch.Tensor:
        out = torch.full((size,), start, dtype=dtype, device=basin.device)
        return out.scatter_reduce_(0, bucket, values, reduce=how, include_self=True)

    tables = torch.stack([
        torch.bincount(bucket, minlength=size).to(dtype),
        reduce(position, "amin", hw),
        reduce(position, "amax", -1),
        reduce(column, "amin", hw),
        reduce(column, "amax", -1),
    ])[:, ranks:].reshape(5, num_basins, ranks).to(torch.int64)
    return torch.stack([
        _reverse_cumulative(tables[0], "sum"),
        _reverse_cumulative(tables[1], "min"),
        _reverse_cumulative(tables[2], "max"),
        _reverse_cumulative(tables[3], "min"),
        _reverse_cumulative(tables[4], "max"),
    ])


def _saddles(rank: torch.Tensor, basin: torch.Tensor, num_basins: int, connectivity: int):
    """Touching pairs of basins and their saddle rank -> (a, b, saddle), int64 [E] each."""
    _, h, w = rank.shape
    flat_rank = rank.reshape(-1)
    none = torch.zeros(0, dtype=torch.int64, device=basin.device)
    here, there = [none], [none]
    for dy, dx in _FORWARD_NEIGHBOURS[connectivity]:
        if (dx and w == 1) or (dy and h == 1):
            continue
        step = dy * w + dx  # > 0: the neighbour comes later in raster order
        pixel = (basin[:-step] != basin[step:]).nonzero().squeeze(1)  # basin borders only
        local = pixel % (h * w)
        column = local % w
        valid = (local < h * w - w) if dy else torch.ones_like(pixel, dtype=torch.bool)
        if dx:
            valid &= (column < w - 1) if dx > 0 else (column > 0)
        pixel = pixel[valid]
        here.append(pixel)
        there.append(pixel + step)
    here, there = torch.cat(here), torch.cat(there)
    a, b = basin.index_select(0, here).long() - 1, basin.index_select(0, there).long() - 1
    keep = ((a >= 0) & (b >= 0)).nonzero().squeeze(1)  # basin 0 (now -1): rank-0 pixels
    a, b = a.index_select(0, keep), b.index_select(0, keep)
    level = torch.minimum(flat_rank.index_select(0, here.index_select(0, keep)),
                          flat_rank.index_select(0, there.index_select(0, keep)))
    pair = torch.minimum(a, b) * num_basins + torch.maximum(a, b)
    if num_basins * num_basins <= 4 * basin.numel():  # a dense table of pairs: no sort
        table = torch.zeros(num_basins * num_basins, dtype=level.dtype, device=level.device)
        table.scatter_reduce_(0, pair, level, reduce="amax")
        pairs = table.nonzero().squeeze(1)  # every saddle is >= 1: both pixels have rank >= 1
        saddle = table.index_select(0, pairs)
    else:
        pairs, inverse = torch.unique(pair, return_inverse=True)
        saddle = torch.zeros_like(pairs).scatter_reduce_(0, inverse, level, reduce="amax")
    return pairs // num_basins, pairs % num_basins, saddle


def _union_find(num_nodes: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Root (smallest node index) of every node's connected component in the graph (a, b)."""
    parent = torch.arange(num_nodes, device=a.device)
    while a.numel():
        root_a, root_b = parent.index_select(0, a), parent.index_select(0, b)
        apart = (root_a != root_b).nonzero().squeeze(1)
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


def _component_tree(levels: torch.Tensor, cuts: torch.Tensor, connectivity: int) -> _Tree:
    """The components of one chunk's masks ``levels[n] > cuts[n, t]`` (see module doc)."""
    n, h, w = levels.shape
    num_cuts = cuts.shape[1]
    rank, order = _ranks(levels, cuts)
    roots = _basin_roots(rank, order, connectivity)
    device = levels.device
    outside = rank.reshape(-1) == 0
    is_root = (roots == torch.arange(roots.numel(), device=device, dtype=roots.dtype))
    is_root.masked_fill_(outside, False)
    number = torch.cumsum(is_root, 0, dtype=roots.dtype)  # basins 1, 2, ...; 0: none
    basin = number.index_select(0, roots).masked_fill_(outside, 0)
    root_pixels = is_root.nonzero().squeeze(1)
    num_basins = root_pixels.numel()
    stats = _basin_stats(rank, basin, num_basins, num_cuts)
    a, b, saddle = _saddles(rank, basin, num_basins, connectivity)
    # One edge per touching pair and cut index t < saddle, between nodes basin * T + t.
    count = int(saddle.sum())
    first = torch.repeat_interleave(saddle.cumsum(0) - saddle, saddle, output_size=count)
    t = torch.arange(count, device=device) - first
    a = torch.repeat_interleave(a, saddle, output_size=count) * num_cuts + t
    b = torch.repeat_interleave(b, saddle, output_size=count) * num_cuts + t
    return _Tree(
        basin=basin,
        group=_union_find(num_basins * num_cuts, a, b),
        present=stats[0] > 0,
        stats=stats,
        basin_image=root_pixels // (h * w),
    )


def _tree_components(tree: _Tree, num_cuts: int, h: int, w: int) -> tuple[Components, torch.Tensor]:
    """Components of a chunk's tree and the root node of each (in output order)."""
    nodes = tree.present.reshape(-1).nonzero().squeeze(1)
    group = tree.group.index_select(0, nodes)
    stats = tree.stats.reshape(5, -1).index_select(1, nodes)
    size = tree.group.numel()
    device = nodes.device

    def reduce(values: torch.Tensor, how: str) -> torch.Tensor:
        out = torch.zeros(size, dtype=torch.int64, device=device)
        return out.scatter_reduce_(0, group, values, reduce=how, include_self=False)

    roots = nodes[group == nodes]
    area, first, last, left, right = (
        reduce(stats[0], "sum"), reduce(stats[1], "amin"), reduce(stats[2], "amax"),
        reduce(stats[3], "amin"), reduce(stats[4], "amax"),
    )
    area, first, last, left, right = (x.index_select(0, roots) for x in (area, first, last,
                                                                         left, right))
    slot = tree.basin_image.index_select(0, roots // num_cuts) * num_cuts + roots % num_cuts
    order = torch.argsort(slot * (h * w) + first)
    boxes = torch.stack([left, first // w, right, last // w], dim=1)
    found = Components(slot=slot[order], boxes=boxes[order], areas=area[order])
    return found, roots[order]


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
    if connectivity not in _FORWARD_NEIGHBOURS:
        raise ValueError(f"connectivity must be 8 or 4, got {connectivity!r}")


def chunk_bounds(n: int, h: int, w: int, scale: int = 1) -> list[tuple[int, int]]:
    """(begin, end) of chunks of n maps [H, W] holding about ``scale * _PIXELS_PER_CHUNK``
    pixels."""
    step = max(1, scale * _PIXELS_PER_CHUNK // (h * w))
    return [(begin, min(begin + step, n)) for begin in range(0, n, step)]


ComponentsBackend = Literal["auto", "torch", "numba"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "numba")


@functools.cache
def _compiled_backend():
    """The numba kernels (``components_compiled``), or None when numba is not installed.
    Imported on first use: importing numba takes a while."""
    try:
        from . import components_compiled
    except ImportError:
        return None
    return components_compiled


def _use_compiled(backend: str, levels: torch.Tensor) -> bool:
    """Whether ``backend`` resolves to the compiled kernels for ``levels`` [N, H, W]."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "torch":
        return False
    h, w = levels.shape[-2:]
    eligible = levels.device.type == "cpu" and (h + 2) * (w + 2) < 1 << 31
    if backend == "auto":
        return eligible and _compiled_backend() is not None
    if levels.device.type != "cpu":
        raise ValueError(f"backend='numba' runs on CPU tensors, got {levels.device}")
    if not eligible:
        raise ValueError(f"backend='numba' takes maps of fewer than 2**31 pixels, got {h}x{w}")
    if _compiled_backend() is None:
        raise ImportError("backend='numba' needs numba: pip install 'camplug[fast]'")
    return True


def _torch_superlevel(levels: torch.Tensor, cuts: torch.Tensor, connectivity: int) -> Components:
    n, h, w = levels.shape
    num_cuts = cuts.shape[1]
    parts = []
    for begin, end in chunk_bounds(n, h, w):
        tree = _component_tree(levels[begin:end], cuts[begin:end], connectivity)
        found, _ = _tree_components(tree, num_cuts, h, w)
        parts.append(Components(found.slot + begin * num_cuts, found.boxes, found.areas))
    return Components(
        slot=torch.cat([p.slot for p in parts]),
        boxes=torch.cat([p.boxes for p in parts]),
        areas=torch.cat([p.areas for p in parts]),
    )


def _torch_holes(levels: torch.Tensor, cuts: torch.Tensor, connectivity: int) -> Components:
    """The components of ``levels <= cut`` that do not touch the map's border."""
    # levels <= cut  <=>  -levels > -cut - 1; T is flipped to keep the cuts ascending.
    _, h, w = levels.shape
    num_cuts = cuts.shape[1]
    flipped = _torch_superlevel(-levels, (-cuts - 1).flip(1), connectivity)
    boxes = flipped.boxes
    enclosed = (boxes[:, 0] > 0) & (boxes[:, 1] > 0) & (boxes[:, 2] < w - 1) & (boxes[:, 3] < h - 1)
    slot, boxes, areas = flipped.slot[enclosed], boxes[enclosed], flipped.areas[enclosed]
    t = slot % num_cuts
    slot = slot - t + (num_cuts - 1 - t)
    order = torch.argsort(slot, stable=True)  # within a mask: still by first pixel
    return Components(slot[order], boxes[order], areas[order])


def level_set_components(
    levels: torch.Tensor,
    cuts: torch.Tensor,
    connectivity: int = 8,
    hole_connectivity: int | None = None,
    *,
    backend: ComponentsBackend = "auto",
) -> tuple[Components, Components | None]:
    """Components of every mask ``levels[n] > cuts[n, t]`` and, when ``hole_connectivity``
    (8 or 4) is given, its holes: the components of the complement ``levels[n] <=
    cuts[n, t]`` that do not touch the map's border (None otherwise).

    ``levels``: integer [N, H, W]; ``cuts``: integer [N, T], non-decreasing along T.
    Returns ``Components`` with slot = n * T + t, on the inputs' device. ``backend``:
    "numba" (the compiled CPU kernels of the ``fast`` extra), "torch" (any device), or
    "auto": numba for CPU tensors when it is installed, else torch. Both give identical
    results; both share one ranking of the pixels for the components and the holes.
    """
    _check_levels(levels, cuts, connectivity)
    if hole_connectivity is not None:
        _check_connectivity(hole_connectivity)
    compiled = _use_compiled(backend, levels)
    if not compiled or levels.dtype != torch.int32:  # the kernels take int32 or int64
        levels = levels.to(torch.int64)
    levels, cuts = levels.contiguous(), cuts.to(torch.int64).contiguous()
    n, h, w = levels.shape
    num_cuts = cuts.shape[1]
    if n == 0 or levels.numel() == 0 or num_cuts == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=levels.device)
        none = Components(empty, empty.reshape(0, 4), empty)
        return none, (None if hole_connectivity is None else none)
    if compiled:
        values, table, low = _rank_lookup(levels, cuts)
        found = _compiled_backend().level_set_sweeps(
            values.contiguous().numpy(), table.contiguous().numpy(), low, num_cuts,
            connectivity, hole_connectivity or 0,
        )
        found = [torch.from_numpy(x) for x in found]
        holes = None if hole_connectivity is None else Components(*found[3:])
        return Components(*found[:3]), holes
    holes = None if hole_connectivity is None else _torch_holes(levels, cuts, hole_connectivity)
    return _torch_superlevel(levels, cuts, connectivity), holes


def superlevel_components(
    levels: torch.Tensor,
    cuts: torch.Tensor,
    connectivity: int = 8,
    *,
    backend: ComponentsBackend = "auto",
) -> Components:
    """Components of every mask ``levels[n] > cuts[n, t]``.

    ``levels``: integer [N, H, W]; ``cuts``: integer [N, T], non-decreasing along T;
    ``connectivity``: 8 (diagonal neighbours touch) or 4. Returns ``Components`` with
    slot = n * T + t, on the inputs' device. ``backend``: see ``level_set_components``.
    """
    return level_set_components(levels, cuts, connectivity, backend=backend)[0]


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


def connected_components(
    masks: torch.Tensor, connectivity: int = 8, *, backend: ComponentsBackend = "auto"
) -> Components:
    """Bounding boxes and areas of the connected components of ``masks``.

    ``masks``: bool [..., H, W] on any device (e.g. [N, H, W] or [N, T, H, W]); the leading
    dims are flattened row-major into ``Components.slot``. ``connectivity``: 8 or 4.
    ``backend``: see ``level_set_components``.
    """
    return superlevel_components(*_as_levels(masks), connectivity=connectivity, backend=backend)


def label_components(masks: torch.Tensor, connectivity: int = 8) -> torch.Tensor:
    """Per-pixel component labels of ``masks`` (bool [..., H, W]) -> int64 [..., H, W].

    0 is background; within each mask the components are numbered 1, 2, ... in the raster
    order of their first pixel (the numbering of ``scipy.ndimage.label``).
    """
    levels, cuts = _as_levels(masks)
    _check_connectivity(connectivity)
    n, h, w = levels.shape
    labels = torch.zeros(levels.numel(), dtype=torch.int64, device=levels.device)
    for begin, end in chunk_bounds(n, h, w):
        tree = _component_tree(levels[begin:end], cuts[begin:end], connectivity)
        found, roots = _tree_components(tree, 1, h, w)
        # Number each mask's components 1, 2, ... in output order (sorted by mask).
        index = torch.arange(roots.numel(), device=roots.device)
        starts = torch.searchsorted(found.slot, found.slot, side="left")
        label_of_root = torch.zeros_like(tree.group)
        label_of_root[roots] = index - starts + 1
        inside = tree.basin.nonzero().squeeze(1)
        node = tree.group.index_select(0, tree.basin.index_select(0, inside) - 1)  # T = 1
        labels[begin * h * w + inside] = label_of_root.index_select(0, node)
    return labels.reshape(masks.shape)
