"""The compiled CPU backend of ``components.py`` (numba; the ``fast`` extra).

One union-find sweep per map over its pixels in rank order gives the components of every
cut at once. The pixels are counting-sorted by rank (raster order within a rank). The
foreground sweep adds the ranks from high to low: after rank r the added pixels are exactly
the mask ``rank > r - 1``, so the live components at that moment are those of cut index
r - 1. The hole sweep adds the ranks from low to high: after rank r the added pixels are the
complement ``rank <= r``, the background at cut index r; the padding frame around the map
counts as added there and forms one component, "outside", never reported, so that the
components reported are the holes (those not touching the map's border). A pixel joins the
components of its already-added neighbours (merging them when there are several); each
component keeps its pixel count, first and last raster index and first and last column.

Pixels carry the id of the component they joined; ids of merged components are resolved
through a small union-find over components (path halving, union by size), so the per-pixel
work is one look at the neighbours' ids, most often all equal: a pixel that finds the ids of
merged components around it rewrites them with their root's, and consecutive pixels joining
one component are summed before its stats are written. The grid is padded by one pixel, so
neighbours need no bounds checks.

Output per sweep: int64 arrays slot [K], boxes [K, 4] (x0, y0, x1, y1 inclusive), areas [K],
sorted by slot, then by the raster index of each component's first pixel, like the torch
backend's ``Components``.
"""

from __future__ import annotations

import numba
import numpy as np

# numba is optional (the ``fast`` extra): components.py imports this module only when numba is
# importable, and falls back to torch otherwise (tests/test_packaging.py allows the import here
# only).

_NO_LABEL = -1
_OUTSIDE = 0  # the padding frame's component in a holes-only sweep
# Starting capacity of the rows recorded per map: small, so that growing runs in the tests.
_FIRST_CAPACITY = 16
_SMALL_SORT = 32  # insertion sort below this many live components, argsort above


@numba.njit(cache=True, inline="always")
def _find(parent: np.ndarray, c: int) -> int:
    """Root of component c (path halving)."""
    while parent[c] != c:
        grand = parent[parent[c]]
        parent[c] = grand
        c = grand
    return c


@numba.njit(cache=True)
def _union(stats: np.ndarray, parent: np.ndarray, alive: np.ndarray, a: int, b: int) -> int:
    """Merge the components rooted at a and b (stats rows: area, first, last, left, right);
    the larger one stays root. Returns the root."""
    if stats[a, 0] < stats[b, 0]:
        a, b = b, a
    parent[b] = a
    alive[b] = False
    stats[a, 0] += stats[b, 0]
    stats[a, 1] = min(stats[a, 1], stats[b, 1])
    stats[a, 2] = max(stats[a, 2], stats[b, 2])
    stats[a, 3] = min(stats[a, 3], stats[b, 3])
    stats[a, 4] = max(stats[a, 4], stats[b, 4])
    return a


@numba.njit(cache=True)
def _sort_by_first(live: np.ndarray, count: int, stats: np.ndarray) -> None:
    """Sort live[:count] (component ids) by their first raster index."""
    if count < _SMALL_SORT:
        for i in range(1, count):
            c = live[i]
            key = stats[c, 1]
            j = i - 1
            while j >= 0 and stats[live[j], 1] > key:
                live[j + 1] = live[j]
                j -= 1
            live[j + 1] = c
        return
    keys = np.empty(count, np.int64)
    for i in range(count):
        keys[i] = stats[live[i], 1]
    ranked = np.argsort(keys)
    ids = live[:count].copy()
    for i in range(count):
        live[i] = ids[ranked[i]]


@numba.njit(cache=True, inline="always")
def _flush(stats: np.ndarray, c: int, area: int, first: int, last: int, left: int,
           right: int) -> None:
    """Add a run of pixels (their count, raster and column range) to component c's stats."""
    stats[c, 0] += area
    stats[c, 1] = min(stats[c, 1], first)
    stats[c, 2] = max(stats[c, 2], last)
    stats[c, 3] = min(stats[c, 3], left)
    stats[c, 4] = max(stats[c, 4], right)


@numba.njit(cache=True)
def _sweep(order, column, starts, buckets, eight, w2, label, stats, parent, alive, live, records,
           level_start, holes_only):
    """Add the pixels of ``buckets`` (rank values, in sweep order) one rank at a time; after
    each rank append every live component's stats to ``records`` (level i's rows start at
    ``level_start[i]``). The component table (``stats`` rows: area, first, last, left,
    right; ``parent``, ``alive``, and the ids ``live``) has a row per pixel, plus one. With
    ``holes_only`` the padding frame is component 0, "outside", already added and never
    recorded: components touching the map's border join it. Returns ``records`` (grown as
    needed).

    Pixel indices are unsigned (uint64): numba then skips its negative-index wraparound
    code, a large share of the per-pixel work.
    """
    label[:] = _NO_LABEL
    num_components = 0
    if holes_only:
        height = label.shape[0] // w2
        label[:w2] = _OUTSIDE
        label[(height - 1) * w2:] = _OUTSIDE
        for y in range(1, height - 1):
            label[y * w2] = _OUTSIDE
            label[y * w2 + w2 - 1] = _OUTSIDE
        parent[_OUTSIDE] = _OUTSIDE
        alive[_OUTSIDE] = False  # never recorded
        stats[_OUTSIDE, 0] = 1 << 62  # always the larger side of a union: stays the root
        num_components = 1
    offsets = np.array([-w2 - 1, -w2, -w2 + 1, -1, 1, w2 - 1, w2, w2 + 1]) if eight else \
        np.array([-w2, -1, 1, w2])
    one, up, up_left, up_right = np.uint64(1), np.uint64(w2), np.uint64(w2 + 1), np.uint64(w2 - 1)
    num_live = 0
    rows = 0
    for level in range(buckets.shape[0]):
        bucket = buckets[level]
        # Consecutive pixels whose neighbours all carry the label ``run_label`` join
        # component ``run``: their stats are summed here and flushed once.
        run, run_label = -1, -2
        run_area, run_first, run_last, run_left, run_right = 0, 0, 0, 0, 0
        for j in range(starts[bucket], starts[bucket + 1]):
            index = np.int64(order[j])  # for the stats
            p = np.uint64(index)  # for indexing
            x = np.int64(column[j])
            # The neighbours' labels are all equal (or absent) when their min and max agree;
            # -1 (not added) is the largest as uint32 and the smallest as int32.
            if eight:
                v0, v1, v2 = label[p - up_left], label[p - up], label[p - up_right]
                v3, v4 = label[p - one], label[p + one]
                v5, v6, v7 = label[p + up_right], label[p + up], label[p + up_left]
                high = max(max(max(v0, v1), max(v2, v3)), max(max(v4, v5), max(v6, v7)))
                low = min(min(min(np.uint32(v0), np.uint32(v1)),
                              min(np.uint32(v2), np.uint32(v3))),
                          min(min(np.uint32(v4), np.uint32(v5)),
                              min(np.uint32(v6), np.uint32(v7))))
            else:
                v0, v1, v2, v3 = label[p - up], label[p - one], label[p + one], label[p + up]
                high = max(max(v0, v1), max(v2, v3))
                low = min(min(np.uint32(v0), np.uint32(v1)), min(np.uint32(v2), np.uint32(v3)))
            if high == run_label and np.int32(low) == high:  # continues the run
                label[p] = run
                run_area += 1
                run_last = index
                run_left = min(run_left, x)
                run_right = max(run_right, x)
                continue
            if high == _NO_LABEL:  # no added neighbour: a new component
                if run >= 0:
                    _flush(stats, run, run_area, run_first, run_last, run_left, run_right)
                    run, run_label = -1, -2
                c = num_components
                num_components += 1
                parent[c] = c
                alive[c] = True
                stats[c, 0] = 1
                stats[c, 1] = index
                stats[c, 2] = index
                stats[c, 3] = x
                stats[c, 4] = x
                live[num_live] = c
                num_live += 1
                label[p] = c
                continue
            c = _find(parent, high)
            stale = high != c
            if np.int32(low) != high:  # several labels: merge their components
                stale = True
                for k in range(offsets.shape[0]):
                    v = label[index + offsets[k]]
                    if v != _NO_LABEL and v != high:
                        other = _find(parent, v)
                        if other != c:
                            if run in (c, other):  # its stats must be complete
                                _flush(stats, run, run_area, run_first, run_last, run_left,
                                       run_right)
                                run, run_label = -1, -2
                            c = _union(stats, parent, alive, c, other)
            if stale:  # relabel the added neighbours with their root: later pixels see c
                for k in range(offsets.shape[0]):
                    q = index + offsets[k]
                    if label[q] != _NO_LABEL:
                        label[q] = c
            label[p] = c
            run_label = c
            if c == run:
                run_area += 1
                run_last = index
                run_left = min(run_left, x)
                run_right = max(run_right, x)
                continue
            if run >= 0:
                _flush(stats, run, run_area, run_first, run_last, run_left, run_right)
            run = c
            run_area, run_first, run_last, run_left, run_right = 1, index, index, x, x
        if run >= 0:
            _flush(stats, run, run_area, run_first, run_last, run_left, run_right)
        kept = 0
        for i in range(num_live):
            if alive[live[i]]:
                live[kept] = live[i]
                kept += 1
        num_live = kept
        _sort_by_first(live, num_live, stats)
        level_start[level] = rows
        if rows + num_live > records.shape[0]:
            grown = np.empty((max(2 * records.shape[0], rows + num_live), 5), records.dtype)
            grown[:rows] = records[:rows]
            records = grown
        for i in range(num_live):
            records[rows] = stats[live[i]]
            rows += 1
    level_start[buckets.shape[0]] = rows
    return records


@numba.njit(cache=True)
def _emit(records, level_start, first_slot, slot_step, w2, out, size):
    """Append the recorded levels to ``out`` = (slot, boxes, areas) holding ``size`` rows,
    level i at slot first_slot + i * slot_step, visiting the slots in increasing order.
    Returns the (possibly grown) arrays and the new size."""
    out_slot, out_boxes, out_areas = out
    levels = level_start.shape[0] - 1
    need = size + level_start[levels]
    if need > out_slot.shape[0]:
        capacity = max(need, 2 * out_slot.shape[0])
        grown_slot = np.empty(capacity, np.int64)
        grown_slot[:size] = out_slot[:size]
        grown_boxes = np.empty((capacity, 4), np.int64)
        grown_boxes[:size] = out_boxes[:size]
        grown_areas = np.empty(capacity, np.int64)
        grown_areas[:size] = out_areas[:size]
        out_slot, out_boxes, out_areas = grown_slot, grown_boxes, grown_areas
    for step in range(levels):
        level = step if slot_step > 0 else levels - 1 - step
        slot = first_slot + level * slot_step
        for i in range(level_start[level], level_start[level + 1]):
            out_slot[size] = slot
            out_boxes[size, 0] = records[i, 3] - 1  # padded columns and rows
            out_boxes[size, 1] = records[i, 1] // w2 - 1
            out_boxes[size, 2] = records[i, 4] - 1
            out_boxes[size, 3] = records[i, 2] // w2 - 1
            out_areas[size] = records[i, 0]
            size += 1
    return (out_slot, out_boxes, out_areas), size


@numba.njit(cache=True)
def level_set_sweeps(values, table, low, num_cuts, connectivity, hole_connectivity):
    """Components of ``rank > t`` and, when hole_connectivity > 0, the holes (components of
    ``rank <= t`` not touching the map's border) for t = 0 .. num_cuts - 1, where
    rank = table[n, clamp(values[n] - low, 0, L - 1)].

    ``values``: integer [n, H, W]; ``table``: int64 [n, L] with ranks in 0 .. num_cuts;
    connectivities 8 or 4 (0: no hole sweep). Returns (slot, boxes, areas) of the components,
    then of the holes (empty without a hole sweep), slot = n * T + t.
    """
    n, h, w = values.shape
    w2 = w + 2
    size2 = (h + 2) * w2
    pixels = h * w
    top = table.shape[1] - 1
    one = np.uint64(1)
    counts = np.zeros(num_cuts + 2, np.uint64)
    starts = np.zeros(num_cuts + 2, np.uint64)
    rank = np.empty(pixels, np.uint32)
    order = np.empty(pixels, np.uint32)
    column = np.empty(pixels, np.uint32)
    label = np.empty(size2, np.int32)
    # Component tables: at most one component per pixel, plus "outside" (untouched pages of
    # np.empty cost nothing).
    stats = np.empty((pixels + 1, 5), np.int64)
    parent = np.empty(pixels + 1, np.int64)
    alive = np.empty(pixels + 1, np.bool_)
    live = np.empty(pixels + 1, np.int64)
    records = np.empty((_FIRST_CAPACITY, 5), np.int64)
    foreground_levels = np.arange(num_cuts, 0, -1)  # ranks T .. 1: cut indices T - 1 .. 0
    hole_levels = np.arange(0, num_cuts)  # ranks 0 .. T - 1: cut indices 0 .. T - 1
    level_start = np.empty(num_cuts + 1, np.int64)
    capacity = n * num_cuts  # one component per mask; grown as needed
    out = (np.empty(capacity, np.int64), np.empty((capacity, 4), np.int64),
           np.empty(capacity, np.int64))
    size = 0
    back_capacity = capacity if hole_connectivity else 0
    back = (np.empty(back_capacity, np.int64), np.empty((back_capacity, 4), np.int64),
            np.empty(back_capacity, np.int64))
    back_size = 0
    for m in range(n):
        # Counting sort of the pixels by rank, raster order within a rank (unsigned indices:
        # see _sweep).
        counts[:] = 0
        flat = values[m].reshape(pixels)
        lookup = table[m]
        for i in range(pixels):
            r = lookup[np.uint64(min(max(flat[i] - low, 0), top))]
            rank[i] = r
            counts[np.uint64(r)] += one
        starts[0] = 0
        for r in range(num_cuts + 1):
            starts[r + 1] = starts[r] + counts[r]
        counts[:num_cuts + 1] = starts[:num_cuts + 1]  # next free position per rank
        i = 0
        for y in range(h):
            row = (y + 1) * w2 + 1
            for x in range(w):
                r = np.uint64(rank[i])
                position = counts[r]
                counts[r] = position + one
                order[position] = row + x
                column[position] = x + 1
                i += 1
        for sweep in range(2 if hole_connectivity else 1):
            holes = sweep == 1  # (a runtime value: one compiled _sweep serves both sweeps)
            records = _sweep(order, column, starts, hole_levels if holes else foreground_levels,
                             (hole_connectivity if holes else connectivity) == 8, w2, label,
                             stats, parent, alive, live, records, level_start, holes)
            # Level i is cut index i for the holes, T - 1 - i for the components.
            first_slot = m * num_cuts + (0 if holes else num_cuts - 1)
            step = 1 if holes else -1
            if holes:
                back, back_size = _emit(records, level_start, first_slot, step, w2, back,
                                        back_size)
            else:
                out, size = _emit(records, level_start, first_slot, step, w2, out, size)
    return (out[0][:size], out[1][:size], out[2][:size],
            back[0][:back_size], back[1][:back_size], back[2][:back_size])
