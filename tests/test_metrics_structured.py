"""The component tree behind MaxBoxAcc against the slow per-threshold references on maps built
to break it: ties and plateaus, diagonal-only contacts, rings with holes, maps touching the
border, all-equal maps, i.i.d. noise; in both box protocols, across chunk boundaries, and on
both backends of the components (torch, numba)."""

from __future__ import annotations

import metric_references as ref
import numpy as np
import pytest
import torch
from scipy import ndimage

from camplug import metrics
from camplug.metrics import components

H, W = 13, 15
THRESHOLDS = np.concatenate([np.arange(0, 1, 0.07), [0.5, 0.999]])


def structured_maps() -> dict[str, np.ndarray]:
    """float32 [H, W] maps in [0, 1], one per pitfall."""
    rng = np.random.default_rng(20)
    ys, xs = np.mgrid[0:H, 0:W]
    smooth = ndimage.gaussian_filter(rng.random((H, W)), 1.5)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    radius = np.hypot(ys - 6.2, xs - 7.1)
    maps = {
        "noise": rng.random((H, W)),
        "ties": rng.integers(0, 4, (H, W)) / 3,  # four levels: plateaus everywhere
        "plateaus": np.round(smooth * 3) / 3,
        "diagonals": (((xs + ys) % 3 == 0) * (0.5 + 0.5 * (xs % 2))).astype(float),
        "rings": np.where(radius.astype(int) % 4 < 2, 1.0 - radius / 20, 0.0),  # holes
        "border": np.maximum(np.abs(xs - 7) / 7, np.abs(ys - 6) / 6),  # high on the frame
        "corners": (((xs < 3) | (xs > W - 4)) & ((ys < 2) | (ys > H - 3))) * 1.0,
        "all_zero": np.zeros((H, W)),
        "all_half": np.full((H, W), 0.5),
        "all_one": np.ones((H, W)),
        "single_pixel": np.eye(H, W)[::-1] * (xs == 4),
    }
    return {k: np.asarray(v, dtype=np.float32).clip(0, 1) for k, v in maps.items()}


MAPS = structured_maps()


@pytest.fixture(params=ref.component_backends())
def backend(request, monkeypatch) -> str:
    """Runs the metrics on one backend of the components: "torch" hides numba."""
    if request.param == "torch":
        monkeypatch.setattr(components, "_compiled_backend", lambda: None)
    return request.param


def ground_truth(seed: int, n: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        rows = []
        for _ in range(rng.integers(1, 3)):
            x0, x1 = sorted(rng.integers(0, W, 2))
            y0, y1 = sorted(rng.integers(0, H, 2))
            rows.append([x0, y0, x1, y1])
        out.append(torch.tensor(rows, dtype=torch.float64))
    return out


@pytest.mark.parametrize("protocol", ["camplug", "wsolevaluation"])
def test_box_ious_equal_the_reference_on_structured_maps(protocol, backend):
    names = sorted(MAPS)
    cams = torch.from_numpy(np.stack([MAPS[k] for k in names]))
    boxes = ground_truth(seed=21, n=len(names))
    v1, v2 = metrics.box_ious_v1_v2(cams, boxes, THRESHOLDS, protocol=protocol)
    lists = [b.tolist() for b in boxes]
    for multi_contour, got in ((False, v1), (True, v2)):
        want = ref.box_ious(cams.numpy(), lists, THRESHOLDS, multi_contour, protocol)
        for i, name in enumerate(names):
            assert got[i].tolist() == want[i], f"{name}, multi_contour={multi_contour}"


@pytest.mark.parametrize("protocol", ["camplug", "wsolevaluation"])
@pytest.mark.parametrize("name", sorted(MAPS))
def test_threshold_boxes_equal_the_reference_on_structured_maps(name, protocol, backend):
    cam = torch.from_numpy(MAPS[name])
    for multi_contour in (False, True):
        got = metrics.threshold_boxes(cam, THRESHOLDS, multi_contour, protocol=protocol)
        want = ref.threshold_boxes(MAPS[name], THRESHOLDS, multi_contour, protocol)
        if protocol == "wsolevaluation" and multi_contour:  # hole borders: order free
            assert [sorted(b.tolist()) for b in got] == [sorted(b) for b in want]
        else:
            assert [b.tolist() for b in got] == want


@pytest.mark.parametrize("connectivity", [8, 4])
def test_superlevel_components_equal_scipy_per_cut_on_tied_levels(connectivity, backend):
    rng = np.random.default_rng(22)
    structure = ref.EIGHT_CONNECTED if connectivity == 8 else ref.FOUR_CONNECTED
    levels = torch.from_numpy(rng.integers(-2, 5, (4, 9, 11)))
    cuts = torch.tensor([[-3, -1, -1, 0, 2, 4], [0, 0, 0, 1, 1, 9], [-9, -9, 3, 3, 3, 3],
                         [4, 4, 4, 4, 4, 4]])
    found = metrics.superlevel_components(levels, cuts, connectivity, backend=backend)
    expected = [(i * 6 + t, box, area) for i in range(4) for t in range(6)
                for box, area in ref.components((levels[i] > cuts[i, t]).numpy(), structure)]
    got = list(zip(found.slot.tolist(), found.boxes.tolist(), found.areas.tolist(),
                   strict=True))
    assert got == expected


def test_results_do_not_depend_on_the_chunking(monkeypatch, backend):
    cams = torch.from_numpy(np.stack([MAPS[k] for k in sorted(MAPS)]))
    boxes = ground_truth(seed=23, n=cams.shape[0])
    whole = metrics.box_ious_v1_v2(cams, boxes, THRESHOLDS, protocol="wsolevaluation")
    labels = metrics.label_components(cams > 0.4)
    # Half a map a chunk: every chunking (the components' own and the candidates' larger
    # ones) splits the maps.
    monkeypatch.setattr(components, "_PIXELS_PER_CHUNK", H * W // 2)
    assert len(components.chunk_bounds(cams.shape[0], H, W, scale=4)) > 1
    chunked = metrics.box_ious_v1_v2(cams, boxes, THRESHOLDS, protocol="wsolevaluation")
    for a, b in zip(whole, chunked, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(labels, metrics.label_components(cams > 0.4))


def test_label_components_match_scipy_on_structured_masks():
    for name, cam in MAPS.items():
        for connectivity, structure in ((8, ref.EIGHT_CONNECTED), (4, ref.FOUR_CONNECTED)):
            mask = cam > 0.3
            want, _ = ndimage.label(mask, structure=structure)
            got = metrics.label_components(torch.from_numpy(mask), connectivity)
            np.testing.assert_array_equal(got.numpy(), want, err_msg=name)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_structured_maps_on_cuda_match_cpu():
    cams = torch.from_numpy(np.stack([MAPS[k] for k in sorted(MAPS)]))
    boxes = ground_truth(seed=24, n=cams.shape[0])
    for protocol in ("camplug", "wsolevaluation"):
        cpu = metrics.box_ious_v1_v2(cams, boxes, THRESHOLDS, protocol=protocol)
        gpu = metrics.box_ious_v1_v2(cams.cuda(), boxes, THRESHOLDS, protocol=protocol)
        for a, b in zip(cpu, gpu, strict=True):
            assert b.is_cuda and torch.equal(a, b.cpu())


def test_wide_level_ranges_take_the_binary_search_path_with_the_same_components(backend):
    # Levels spread over more than the lookup table's range: ranks by binary search, and the
    # ranks order the pixels; the components must not change.
    rng = np.random.default_rng(26)
    levels = torch.from_numpy(rng.integers(0, 6, (3, 10, 12)))
    cuts = torch.tensor([[0, 1, 3], [2, 2, 4], [-1, 0, 5]])
    narrow = metrics.superlevel_components(levels, cuts, backend=backend)
    scale = 1_000_003
    wide = metrics.superlevel_components(levels * scale, cuts * scale, backend=backend)
    assert int(cuts.max() - cuts.min()) * scale > components._MAX_LOOKUP_TABLE
    for a, b in zip((narrow.slot, narrow.boxes, narrow.areas),
                    (wide.slot, wide.boxes, wide.areas), strict=True):
        assert torch.equal(a, b)
