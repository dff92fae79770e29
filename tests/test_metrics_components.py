"""The two backends of camplug.metrics.components (torch, and the compiled numba kernels of
the ``fast`` extra): each against scipy.ndimage.label per cut, and against each other, on
components and on holes (background regions that touch no border)."""

from __future__ import annotations

import metric_references as ref
import numpy as np
import pytest
import torch

from camplug import metrics
from camplug.metrics import components

BACKENDS = ref.component_backends()
STRUCTURES = {8: ref.EIGHT_CONNECTED, 4: ref.FOUR_CONNECTED}


def rows(found: metrics.Components) -> list[tuple[int, list[int], int]]:
    return list(zip(found.slot.tolist(), found.boxes.tolist(), found.areas.tolist(),
                    strict=True))


def expected_rows(levels: torch.Tensor, cuts: torch.Tensor, connectivity: int, holes: bool):
    """Per mask levels[i] > cuts[i, t] (or its holes), scipy's components in scipy's order."""
    n, t = cuts.shape
    out = []
    for i in range(n):
        for j in range(t):
            mask = (levels[i] > cuts[i, j]).numpy()
            found = (ref.holes(mask, STRUCTURES[connectivity]) if holes
                     else ref.components(mask, STRUCTURES[connectivity]))
            out += [(i * t + j, box, area) for box, area in found]
    return out


def case(seed: int, n: int, h: int, w: int, low: int, high: int, t: int):
    """Tied integer levels [n, h, w] in [low, high) and sorted cuts [n, t] around them,
    with repeats and cuts outside the levels' range."""
    rng = np.random.default_rng(seed)
    levels = torch.from_numpy(rng.integers(low, high, (n, h, w)))
    cuts = torch.from_numpy(np.sort(rng.integers(low - 2, high + 2, (n, t)), axis=1))
    return levels, cuts


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hole_connectivity", [4, 8])
@pytest.mark.parametrize("connectivity", [8, 4])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (6, 1), (9, 11), (14, 13)])
def test_components_and_holes_equal_scipy_per_cut(shape, connectivity, hole_connectivity,
                                                  backend):
    levels, cuts = case(31, 3, *shape, low=-1, high=5, t=7)
    found, holes = components.level_set_components(levels, cuts, connectivity,
                                                   hole_connectivity, backend=backend)
    assert rows(found) == expected_rows(levels, cuts, connectivity, holes=False)
    assert rows(holes) == expected_rows(levels, cuts, hole_connectivity, holes=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rings_have_nested_holes_at_every_cut(backend):
    # Concentric square rings of rising level: at each cut, the rings above it enclose the
    # lower ones, so every cut has holes, nested ones included.
    size = 15
    ys, xs = np.mgrid[0:size, 0:size]
    ring = np.maximum(np.abs(ys - 7), np.abs(xs - 7))
    levels = torch.from_numpy(np.where(ring % 2 == 0, ring, 0))[None]
    cuts = torch.arange(-1, 8)[None]
    found, holes = components.level_set_components(levels, cuts, 8, 4, backend=backend)
    assert rows(found) == expected_rows(levels, cuts, 8, holes=False)
    assert rows(holes) == expected_rows(levels, cuts, 4, holes=True)
    assert len({slot for slot, _, _ in rows(holes)}) >= 5


def test_backends_agree_on_noise_with_many_components():
    pytest.importorskip("numba")
    # i.i.d. levels: hundreds of components per mask (the compiled tables grow many times),
    # int32 and int64 levels, and a range of cuts too wide for a lookup table.
    levels, cuts = case(32, 4, 48, 61, low=0, high=40, t=25)
    per_mask = torch.bincount(metrics.superlevel_components(levels, cuts).slot)
    assert int(per_mask.sum()) > 4 * cuts.numel() and int(per_mask.max()) > 100
    for lv, ct in ((levels, cuts), (levels.to(torch.int32), cuts),
                   (levels * 100_003, cuts * 100_003)):
        for connectivity in (8, 4):
            by_torch = components.level_set_components(lv, ct, connectivity, 4,
                                                       backend="torch")
            by_numba = components.level_set_components(lv, ct, connectivity, 4,
                                                       backend="numba")
            for a, b in zip(by_torch, by_numba, strict=True):
                assert rows(a) == rows(b)
    assert int(cuts.max() - cuts.min()) * 100_003 > components._MAX_LOOKUP_TABLE


def test_auto_backend_falls_back_to_torch_without_numba(monkeypatch):
    levels, cuts = case(33, 2, 8, 9, low=0, high=4, t=3)
    expected = expected_rows(levels, cuts, 8, holes=False)
    monkeypatch.setattr(components, "_compiled_backend", lambda: None)
    assert rows(metrics.superlevel_components(levels, cuts)) == expected
    with pytest.raises(ImportError, match=r"camplug\[fast\]"):
        metrics.superlevel_components(levels, cuts, backend="numba")


def test_backend_and_hole_connectivity_are_checked():
    levels, cuts = case(34, 1, 4, 4, low=0, high=3, t=2)
    with pytest.raises(ValueError, match="backend must be one of"):
        metrics.superlevel_components(levels, cuts, backend="cython")
    with pytest.raises(ValueError, match="connectivity must be 8 or 4"):
        components.level_set_components(levels, cuts, 8, 6)
    found, holes = components.level_set_components(levels, cuts)
    assert holes is None and found.slot.numel() > 0
    empty, no_holes = components.level_set_components(levels, cuts[:, :0], 8, 4)
    assert empty.boxes.shape == (0, 4) and no_holes.boxes.shape == (0, 4)
