"""camplug.metrics localization metrics and connected components: hand-computed cases,
Choe et al.'s golden cases, and comparisons with the slow references in metric_references."""

from __future__ import annotations

import metric_references as ref
import numpy as np
import pytest
import torch
from scipy import ndimage
from tolerances import assert_close

from camplug import metrics

# Choe et al.'s (wsolevaluation) test maps, array[y][x], and the thresholds np.arange(0, 1, .2).
UNIMODAL = [[0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.4, 0.4, 0.4, 0.6],
            [0.0, 0.4, 1.0, 0.8, 0.6],
            [0.0, 0.4, 0.4, 0.4, 0.6]]
MULTIMODAL = [[0.4, 0.0, 0.2, 0.2, 0.2],
              [0.4, 0.4, 0.0, 0.4, 0.0],
              [0.0, 0.0, 0.0, 0.4, 0.0],
              [1.0, 0.6, 0.8, 0.2, 0.2]]
GOLDEN_THRESHOLDS = np.arange(0, 1, 0.2)
GOLDEN_BOXES = [[1, 1, 4, 3], [1, 1, 4, 3], [2, 1, 4, 3], [2, 2, 4, 3], [2, 2, 3, 3]]


def smoothed_maps(seed: int, n: int, h: int, w: int, sigma: float) -> torch.Tensor:
    """Min-max normalized Gaussian-smoothed noise, float32 [n, h, w]."""
    rng = np.random.default_rng(seed)
    raw = ndimage.gaussian_filter(rng.random((n, h, w)), (0, sigma, sigma))
    low = raw.min(axis=(1, 2), keepdims=True)
    high = raw.max(axis=(1, 2), keepdims=True)
    return torch.from_numpy((raw - low) / (high - low)).float()


def random_boxes(seed: int, n: int, h: int, w: int, max_objects: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        rows = []
        for _ in range(rng.integers(1, max_objects + 1)):
            x0, x1 = sorted(rng.integers(0, w, 2))
            y0, y1 = sorted(rng.integers(0, h, 2))
            rows.append([x0, y0, x1, y1])
        out.append(torch.tensor(rows, dtype=torch.float32))
    return out


def component_rows(found) -> list[tuple[int, list[int], int]]:
    """(slot, box, area) per component."""
    columns = (found.slot.tolist(), found.boxes.tolist(), found.areas.tolist())
    return list(zip(*columns, strict=True))


def as_lists(boxes):
    return [[list(map(int, b)) for b in t.tolist()] for t in boxes]


# ----------------------------------------------------------------------------- components


def test_components_hand_case_diagonals_join_and_gaps_split():
    mask = torch.tensor([[1, 0, 0, 1, 1],
                         [0, 1, 0, 0, 0],
                         [0, 0, 0, 0, 1],
                         [1, 1, 0, 1, 0]], dtype=torch.bool)
    expected_labels = torch.tensor([[1, 0, 0, 2, 2],
                                    [0, 1, 0, 0, 0],
                                    [0, 0, 0, 0, 3],
                                    [4, 4, 0, 3, 0]])
    assert torch.equal(metrics.label_components(mask), expected_labels)
    found = metrics.connected_components(mask)
    assert found.slot.tolist() == [0, 0, 0, 0]
    assert found.boxes.tolist() == [[0, 0, 1, 1], [3, 0, 4, 0], [3, 2, 4, 3], [0, 3, 1, 3]]
    assert found.areas.tolist() == [2, 2, 2, 2]


def test_components_u_shape_merges_branches_that_meet_below():
    mask = torch.tensor([[1, 0, 1, 0, 1],
                         [1, 0, 1, 0, 1],
                         [1, 1, 1, 1, 1]], dtype=torch.bool)
    found = metrics.connected_components(mask)
    assert found.boxes.tolist() == [[0, 0, 4, 2]]
    assert found.areas.tolist() == [11]


@pytest.mark.parametrize("connectivity", [8, 4])
@pytest.mark.parametrize("density", [0.1, 0.4, 0.6, 0.9])
def test_components_match_scipy_on_random_masks(density, connectivity):
    rng = np.random.default_rng(int(density * 100))
    structure = ref.EIGHT_CONNECTED if connectivity == 8 else ref.FOUR_CONNECTED
    for h, w in [(1, 1), (1, 9), (9, 1), (7, 11), (16, 16)]:
        masks = rng.random((3, h, w)) < density
        labels = metrics.label_components(torch.from_numpy(masks), connectivity).numpy()
        found = metrics.connected_components(torch.from_numpy(masks), connectivity)
        expected = []
        for i, m in enumerate(masks):
            scipy_labels, _ = ndimage.label(m, structure=structure)
            np.testing.assert_array_equal(labels[i], scipy_labels)
            expected += [(i, box, area) for box, area in ref.components(m, structure)]
        assert component_rows(found) == expected


def test_components_of_stacked_masks_and_superlevel_sets_agree():
    levels = torch.from_numpy(np.random.default_rng(3).integers(0, 6, (2, 9, 10)))
    cuts = torch.tensor([[0, 2, 2, 4], [1, 3, 5, 5]])
    stacked = levels[:, None] > cuts[:, :, None, None]  # [2, 4, 9, 10]
    by_levels = metrics.superlevel_components(levels, cuts)
    by_masks = metrics.connected_components(stacked)
    for a, b in zip((by_levels.slot, by_levels.boxes, by_levels.areas),
                    (by_masks.slot, by_masks.boxes, by_masks.areas), strict=True):
        assert torch.equal(a, b)
    expected = [(i * 4 + t, box, area) for i in range(2) for t in range(4)
                for box, area in ref.components(stacked[i, t].numpy())]
    assert component_rows(by_levels) == expected


def test_components_empty_and_full_masks():
    empty = metrics.connected_components(torch.zeros(2, 4, 5, dtype=torch.bool))
    assert empty.slot.numel() == 0 and empty.boxes.shape == (0, 4)
    none = metrics.connected_components(torch.zeros(0, 4, 5, dtype=torch.bool))
    assert none.slot.numel() == 0 and none.boxes.shape == (0, 4)
    full = metrics.connected_components(torch.ones(2, 4, 5, dtype=torch.bool))
    assert full.boxes.tolist() == [[0, 0, 4, 3]] * 2 and full.areas.tolist() == [20, 20]


def test_components_reject_bad_input():
    with pytest.raises(TypeError, match="bool"):
        metrics.connected_components(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"\[\.\.\., H, W\]"):
        metrics.connected_components(torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="non-decreasing"):
        metrics.superlevel_components(torch.zeros(1, 2, 2, dtype=torch.int64),
                                      torch.tensor([[3, 1]]))
    with pytest.raises(ValueError, match="connectivity"):
        metrics.connected_components(torch.zeros(3, 3, dtype=torch.bool), connectivity=6)
    with pytest.raises(ValueError, match="N=2"):
        metrics.superlevel_components(torch.zeros(2, 2, 2, dtype=torch.int64),
                                      torch.zeros(1, 1, dtype=torch.int64))


# ------------------------------------------------------------------ thresholds, quantization


@pytest.mark.parametrize("step", [0.01, 0.001, 0.03, 0.05, 0.1, 0.2])
def test_default_thresholds_are_bit_identical_to_numpy_arange(step):
    np.testing.assert_array_equal(metrics.default_thresholds(step).numpy(),
                                  np.arange(0, 1, step))


def test_default_pixel_thresholds_end_with_one():
    grid = metrics.default_pixel_thresholds()
    assert grid.numel() == 101 and grid[-1] == 1.0
    np.testing.assert_array_equal(grid[:-1].numpy(), np.arange(0, 1, 0.01))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_quantization_matches_numpy_uint8_cast(dtype):
    values = torch.cat([torch.rand(2000, dtype=dtype),
                        torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], dtype=dtype)])
    cams = values.reshape(1, 1, -1)
    expected = (cams.numpy() * 255).astype(np.uint8).astype(np.int64)
    np.testing.assert_array_equal(metrics.quantize_cams(cams).numpy(), expected)


# ------------------------------------------------------------------------------------- IoU


def test_iou_hand_cases_use_plus_one_areas():
    a = torch.tensor([[1, 2, 5, 6], [0, 0, 3, 3], [0, 0, 0, 0]])
    b = torch.tensor([[3, 1, 4, 5], [4, 0, 6, 3], [0, 0, 0, 0]])
    # [1,2,5,6] (25 px) vs [3,1,4,5] (10 px): overlap x 3..4, y 2..5 = 8 px -> 8 / 27.
    # [0,0,3,3] vs [4,0,6,3]: adjacent columns, no shared pixel -> 0. Single pixels: 1.
    ious = metrics.iou_matrix(a, b)
    assert ious.dtype == torch.float64
    assert ious[0, 0].item() == pytest.approx(8 / 27, abs=1e-15)
    assert ious[1, 1].item() == 0.0
    assert ious[2, 2].item() == 1.0
    assert ious[0, 2].item() == 0.0


# ------------------------------------------------------------------------- golden cases


def test_golden_unimodal_case_with_wsolevaluation_box_ends():
    cam = torch.tensor(UNIMODAL, dtype=torch.float64)
    boxes = metrics.threshold_boxes(cam, GOLDEN_THRESHOLDS, multi_contour=False,
                                    protocol="wsolevaluation")
    assert [b.tolist() for b in boxes] == [[box] for box in GOLDEN_BOXES]


def test_golden_unimodal_map_gives_true_inclusive_boxes_by_default():
    # Foreground by hand: levels 0.4 -> 102, 0.6 -> 153, 0.8 -> 204, 1.0 -> 255 and cuts
    # 0, 51, 102, 153, 204; above 153 only (2,2),(3,2) remain, above 204 only (2,2) (x, y).
    cam = torch.tensor(UNIMODAL, dtype=torch.float64)
    boxes = metrics.threshold_boxes(cam, GOLDEN_THRESHOLDS, multi_contour=False)
    assert [b.tolist() for b in boxes] == [[[1, 1, 4, 3]], [[1, 1, 4, 3]], [[2, 1, 4, 3]],
                                           [[2, 2, 3, 2]], [[2, 2, 2, 2]]]


def test_golden_boxes_from_a_designed_unimodal_map_with_inclusive_boxes():
    # Levels 0.3 -> 76, 0.5 -> 127, 0.7 -> 178, 0.9 -> 229, 1.0 -> 255; cuts 0, 51, 102,
    # 153, 204 shrink the single blob onto the peak at (x, y) = (3, 3).
    cam = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0],
                        [0.0, 0.3, 0.5, 0.5, 0.5],
                        [0.0, 0.3, 0.7, 0.9, 0.7],
                        [0.0, 0.3, 0.9, 1.0, 0.7]])
    for multi_contour in (False, True):
        boxes = metrics.threshold_boxes(cam, GOLDEN_THRESHOLDS, multi_contour)
        assert [b.tolist() for b in boxes] == [[box] for box in GOLDEN_BOXES]


def test_multimodal_case_by_hand_and_where_it_departs_from_opencv():
    # Levels: 0.2 -> 51, 0.4 -> 102, 0.6 -> 153, 0.8 -> 204, 1.0 -> 255.
    # cut 0: everything nonzero is one 8-connected blob. cut 51: A = (0,0),(0,1),(1,1) [x,y]
    # (3 px) and B = (3,1),(3,2),(2,3),(1,3),(0,3) (5 px). cut 102: the bottom-left run.
    # cut 153: two single pixels (0,3) and (2,3). cut 204: (0,3).
    cam = torch.tensor(MULTIMODAL, dtype=torch.float64)
    v2 = metrics.threshold_boxes(cam, GOLDEN_THRESHOLDS, multi_contour=True)
    assert [b.tolist() for b in v2] == [
        [[0, 0, 4, 3]],
        [[0, 0, 1, 1], [0, 1, 3, 3]],
        [[0, 3, 2, 3]],
        [[0, 3, 0, 3], [2, 3, 2, 3]],
        [[0, 3, 0, 3]],
    ]
    v1 = metrics.threshold_boxes(cam, GOLDEN_THRESHOLDS, multi_contour=False,
                                 protocol="wsolevaluation")
    # Choe et al.'s expected boxes are [[0,0,4,3],[0,0,2,2],[0,3,3,3],[2,3,3,3],[0,3,1,3]].
    # They agree at tau 0, .4, .8. At .2 OpenCV picks A: cv2.contourArea is the polygon area
    # of the contour (0 for the one-pixel-wide B); we pick B, the component with most pixels.
    # At .6 both components have one pixel; we take the first in raster order.
    assert [b.tolist() for b in v1] == [[[0, 0, 4, 3]], [[0, 1, 4, 3]], [[0, 3, 3, 3]],
                                        [[0, 3, 1, 3]], [[0, 3, 1, 3]]]


def test_wsolevaluation_protocol_adds_hole_borders_and_the_empty_box():
    # A 5x5 square with a one-pixel hole at (x, y) = (3, 3), and a notch at (3, 0) that is
    # open to the image border (no hole there).
    cam = torch.zeros(7, 7)
    cam[1:6, 1:6] = 1.0
    cam[3, 3] = 0.0
    cam[0, 3] = 0.0
    v2 = metrics.threshold_boxes(cam, [0.5], multi_contour=True, protocol="wsolevaluation")
    # Outer contour: [1, 1, 5, 5] -> ends + 1 -> [1, 1, 6, 6]. Hole border: the ring around
    # (3, 3) is [2, 2, 4, 4] -> [2, 2, 5, 5].
    assert v2[0].tolist() == [[1, 1, 6, 6], [2, 2, 5, 5]]
    assert metrics.threshold_boxes(cam, [0.5], multi_contour=True)[0].tolist() == [[1, 1, 5, 5]]
    v1 = metrics.threshold_boxes(cam, [0.5], multi_contour=False, protocol="wsolevaluation")
    assert v1[0].tolist() == [[1, 1, 6, 6]]
    zero = torch.zeros(1, 4, 5)
    assert metrics.threshold_boxes(zero[0], [0.3], protocol="wsolevaluation")[0].tolist() == \
        [[0, 0, 0, 0]]
    # The empty box [0, 0, 0, 0] covers one pixel: IoU 1/4 with a 2x2 box at the origin.
    gt = torch.tensor([[0.0, 0, 1, 1]])
    assert metrics.box_ious(zero, gt, [0.3], protocol="wsolevaluation").item() == 0.25
    assert metrics.box_ious(zero, gt, [0.3]).item() == 0.0


def test_zero_map_has_no_boxes_and_scores_zero():
    cam = torch.zeros(4, 5)
    assert all(b.shape == (0, 4) for b in metrics.threshold_boxes(cam, [0.0, 0.5]))
    ious = metrics.box_ious(cam[None], torch.tensor([[0.0, 0, 0, 0]]))
    assert ious.shape == (1, 100) and bool((ious == 0).all())


def test_threshold_boxes_keep_the_given_threshold_order():
    cam = torch.tensor(UNIMODAL)
    shuffled = [0.8, 0.0, 0.4]
    got = [b.tolist() for b in metrics.threshold_boxes(cam, shuffled, False)]
    want = [b.tolist() for b in metrics.threshold_boxes(cam, sorted(shuffled), False)]
    assert got == [want[2], want[0], want[1]]


# ----------------------------------------------------------------- box_ious vs reference


@pytest.mark.parametrize("protocol", ["camplug", "wsolevaluation"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_ious_match_reference_on_smoothed_maps(protocol, dtype):
    n, h, w = 6, 20, 24
    cams = smoothed_maps(seed=1, n=n, h=h, w=w, sigma=1.5).to(dtype)
    cams[0] = cams[0] * 0.37  # max below 1: the cut scales with the max level
    boxes = random_boxes(seed=2, n=n, h=h, w=w, max_objects=3)
    thresholds = np.concatenate([np.arange(0, 1, 0.05), [0.93, 0.11]])  # unsorted tail
    v1, v2 = metrics.box_ious_v1_v2(cams, boxes, thresholds, protocol=protocol)
    for multi_contour, got in ((False, v1), (True, v2)):
        expected = ref.box_ious(cams.numpy(), as_lists(boxes), thresholds, multi_contour,
                                protocol)
        assert got.dtype == torch.float64 and got.shape == (n, thresholds.size)
        want = torch.tensor(expected, dtype=torch.float64)
        assert_close(got, want, torch.float64, f"multi_contour={multi_contour}")
        assert torch.equal(got, metrics.box_ious(cams, boxes, thresholds, multi_contour,
                                                 protocol=protocol))


def test_threshold_boxes_match_reference_per_threshold():
    cams = smoothed_maps(seed=4, n=3, h=16, w=16, sigma=1.0)
    thresholds = np.arange(0, 1, 0.1)
    for cam in cams:
        for multi_contour in (False, True):
            got = [b.tolist() for b in metrics.threshold_boxes(cam, thresholds, multi_contour)]
            assert got == ref.threshold_boxes(cam.numpy(), thresholds, multi_contour, "camplug")


def test_box_ious_accept_every_box_layout():
    cams = smoothed_maps(seed=5, n=3, h=12, w=12, sigma=1.0)
    one = torch.tensor([[2.0, 2, 8, 9], [0, 0, 5, 5], [3, 1, 11, 4]])
    from_tensor = metrics.box_ious(cams, one)
    assert torch.equal(from_tensor, metrics.box_ious(cams, list(one)))
    assert torch.equal(from_tensor, metrics.box_ious(cams, one[:, None, :]))
    two = [torch.stack([one[0], one[1]]), one[1:2], one[2]]
    several = metrics.box_ious(cams, two)
    assert bool((several[0] >= from_tensor[0]).all())  # an extra object can only help
    assert torch.equal(several[1:], from_tensor[1:])


# -------------------------------------------------------------------------- MaxBoxAcc


def test_max_box_acc_from_ious_hand_case():
    ious = torch.tensor([[0.2, 0.6, 0.8], [0.5, 0.4, 0.1], [0.7, 0.7, 0.3]],
                        dtype=torch.float64)
    result = metrics.max_box_acc_from_ious(ious, [0.1, 0.2, 0.3])
    # delta .3: columns pass 2, 3, 2 of 3 images; .5: 2, 2, 1; .7: 1, 1, 1 (0.7 counts).
    assert result.accuracy == pytest.approx({0.3: 1.0, 0.5: 2 / 3, 0.7: 1 / 3})
    assert result.best_threshold == {0.3: 0.2, 0.5: 0.1, 0.7: 0.1}  # ties: smallest
    assert result.mean == pytest.approx(2 / 3)
    assert result.curves[0.5] == pytest.approx((2 / 3, 2 / 3, 1 / 3))
    assert result.thresholds == pytest.approx((0.1, 0.2, 0.3))


def test_max_box_acc_counts_an_iou_of_exactly_point_seven():
    # A 7-pixel predicted run inside a 10-pixel ground-truth row: IoU = 7 / 10 exactly.
    cam = torch.tensor([[[1.0, 1, 1, 1, 1, 1, 1, 0, 0, 0]]])
    result = metrics.max_box_acc(cam, torch.tensor([[0.0, 0, 9, 0]]))
    assert result.accuracy == {0.3: 1.0, 0.5: 1.0, 0.7: 1.0}
    assert metrics.box_ious(cam, torch.tensor([[0.0, 0, 9, 0]]))[0, 0].item() == 0.7


def test_max_box_acc_matches_reference_on_smoothed_maps():
    n, h, w = 12, 16, 16
    cams = smoothed_maps(seed=6, n=n, h=h, w=w, sigma=1.2)
    boxes = random_boxes(seed=7, n=n, h=h, w=w, max_objects=2)
    thresholds = np.arange(0, 1, 0.05)
    for multi_contour in (False, True):
        result = metrics.max_box_acc(cams, boxes, thresholds=thresholds,
                                     multi_contour=multi_contour)
        ious = ref.box_ious(cams.numpy(), as_lists(boxes), thresholds, multi_contour)
        accuracy, best = ref.max_box_acc(ious, thresholds, (0.3, 0.5, 0.7))
        assert result.accuracy == pytest.approx(accuracy, abs=1e-12)
        assert result.best_threshold == pytest.approx(best, abs=1e-12)
        assert result.mean == pytest.approx(sum(accuracy.values()) / 3, abs=1e-12)


def object_boxes(seed: int, n: int, size: int, low: float, high: float) -> torch.Tensor:
    """One box per image, each side a uniform fraction in [low, high) of the image side."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        bw, bh = (int(rng.uniform(low, high) * size) for _ in range(2))
        x0, y0 = rng.integers(0, size - bw + 1), rng.integers(0, size - bh + 1)
        rows.append([x0, y0, x0 + bw - 1, y0 + bh - 1])
    return torch.tensor(rows, dtype=torch.float32)


def test_multi_contour_rewards_iid_noise_far_more_than_v1():
    # The pitfall in the notes: V2 scores the box of every speck, so pure noise finds boxes
    # that fit the objects; v1 (largest component) and smoothed noise do not.
    n, size = 32, 32
    grid = metrics.default_thresholds(0.02)
    noise = torch.from_numpy(np.random.default_rng(8).random((n, size, size))).float()
    boxes = object_boxes(seed=9, n=n, size=size, low=0.2, high=0.5)
    v1, v2 = metrics.box_ious_v1_v2(noise, boxes, grid)
    v1_acc = metrics.max_box_acc_from_ious(v1, grid).accuracy[0.3]
    v2_acc = metrics.max_box_acc_from_ious(v2, grid).accuracy[0.3]
    assert v2_acc >= v1_acc + 0.25, (v1_acc, v2_acc)
    smooth = smoothed_maps(seed=8, n=n, h=size, w=size, sigma=3.0)
    smooth_v2 = metrics.max_box_acc(smooth, boxes, thresholds=grid).accuracy[0.3]
    assert v2_acc >= smooth_v2 + 0.25, (smooth_v2, v2_acc)


# -------------------------------------------------------------------- CAM paper protocol


def test_cam_paper_localization_hand_case():
    # 20% of max: cut floor(0.2 * 255) = 51. Columns 0-2 (12 px) and column 5 (0.3 -> 76,
    # 4 px) survive; the largest component's box is [0, 0, 2, 3].
    row = [1.0, 0.9, 0.8, 0.0, 0.1, 0.3]
    cams = torch.tensor([row] * 4).expand(3, 4, 6).contiguous()
    boxes = torch.tensor([[0.0, 0, 2, 3], [3, 0, 5, 3], [0, 0, 3, 3]])
    # IoUs: 1; 0; 12 / 16 = 0.75.
    assert metrics.cam_paper_localization(cams, boxes).tolist() == [True, False, True]
    correct = torch.tensor([True, True, False])
    assert metrics.cam_paper_localization(cams, boxes, correct).tolist() == [True, False, False]


# ------------------------------------------------------------------------------- PxAP


def test_pxap_hand_case():
    cams = torch.tensor([[[0.9, 0.6], [0.3, 0.0]]], dtype=torch.float64)
    masks = torch.tensor([[[True, False], [True, False]]])
    # Descending thresholds: at 0.9 one true pixel (P 1, recall 1/2); at 0.3 two true, one
    # false (P 2/3, recall 1). AP = 1 * 1/2 + 2/3 * 1/2 = 5/6.
    assert metrics.pxap(cams, masks) == pytest.approx(5 / 6, abs=1e-12)


def test_pxap_perfect_map_is_one_and_constant_map_is_the_foreground_fraction():
    masks = torch.from_numpy(np.random.default_rng(10).random((3, 9, 9)) < 0.3)
    assert metrics.pxap(masks.float(), masks) == pytest.approx(1.0, abs=1e-12)
    fraction = masks.double().mean().item()
    for value in (0.0, 0.5, 1.0):
        constant = torch.full(masks.shape, value)
        assert metrics.pxap(constant, masks) == pytest.approx(fraction, abs=1e-12)


def test_pxap_matches_reference_and_counts_add_up_over_splits():
    cams = smoothed_maps(seed=11, n=5, h=14, w=15, sigma=1.5)
    masks = smoothed_maps(seed=12, n=5, h=14, w=15, sigma=2.0) > 0.6
    thresholds = metrics.default_pixel_thresholds()
    expected = ref.pxap(cams.numpy(), masks.numpy(), thresholds.numpy())
    assert metrics.pxap(cams, masks) == pytest.approx(expected, abs=1e-12)
    tp, fp, fn = metrics.pixel_pr_counts(cams, masks)
    for i in range(5):  # per-image rows against direct counting
        for j in (0, 37, 100):
            predicted = cams[i].double() >= thresholds[j]
            assert tp[i, j] == int((predicted & masks[i]).sum())
            assert fp[i, j] == int((predicted & ~masks[i]).sum())
            assert fn[i, j] == int((~predicted & masks[i]).sum())
    first, second = (metrics.pixel_pr_counts(cams[s], masks[s]) for s in (slice(0, 2), slice(2, 5)))
    stacked = [torch.cat([a, b]) for a, b in zip(first, second, strict=True)]
    assert metrics.pxap_from_counts(*stacked) == pytest.approx(expected, abs=1e-12)


def test_pxap_rejects_masks_without_foreground_and_bad_counts():
    cams = torch.rand(2, 4, 4)
    with pytest.raises(ValueError, match="no foreground"):
        metrics.pxap(cams, torch.zeros(2, 4, 4, dtype=torch.bool))
    tp, fp, fn = metrics.pixel_pr_counts(cams, torch.ones(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="increasing thresholds"):
        metrics.pxap_from_counts(tp.flip(1), fp.flip(1), fn.flip(1))
    with pytest.raises(ValueError, match="strictly increasing"):
        metrics.pixel_pr_counts(cams, torch.ones(2, 4, 4, dtype=torch.bool), [0.5, 0.2])


# ------------------------------------------------------------------------ pointing games


def test_pointing_game_hand_cases_and_ties():
    cams = torch.zeros(4, 3, 3)
    cams[0, 1, 1] = 1.0  # single peak at (x, y) = (1, 1)
    cams[1, 0, 0] = 1.0  # single peak at (0, 0)
    cams[2, 1, 1] = cams[2, 2, 2] = 1.0  # tie: (1, 1) and (2, 2)
    # cams[3] is flat: every pixel ties for the maximum.
    box = torch.tensor([[1.0, 1, 2, 2]] * 4)
    assert metrics.pointing_game(cams, box).tolist() == [True, False, True, False]
    small = torch.tensor([[1.0, 1, 1, 1]] * 4)  # only (1, 1): the tie in map 2 now misses
    assert metrics.pointing_game(cams, small).tolist() == [True, False, False, False]
    masks = torch.zeros(4, 3, 3, dtype=torch.bool)
    masks[:, 1:, 1:] = True
    assert metrics.pointing_game(cams, masks).tolist() == [True, False, True, False]
    everything = torch.ones(4, 3, 3, dtype=torch.bool)
    assert metrics.pointing_game(cams, everything).tolist() == [True, True, True, True]


def test_energy_pointing_game_hand_case():
    cams = torch.tensor([[[1 / 3, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    boxes = torch.tensor([[1.0, 1, 1, 1], [0, 0, 1, 0]])
    energy, fraction = metrics.energy_pointing_game(cams, boxes)
    # Map 0: 1 of a total 4/3 inside -> 0.75; the box covers 1 of 4 pixels. Map 1 has no
    # mass: it counts as uniform, so its energy equals the box's area fraction 2/4.
    assert energy.tolist() == pytest.approx([0.75, 0.5])
    assert fraction.tolist() == pytest.approx([0.25, 0.5])


def test_pointing_and_energy_match_reference_with_several_boxes():
    n, h, w = 6, 10, 12
    cams = smoothed_maps(seed=13, n=n, h=h, w=w, sigma=1.0)
    cams[1] = torch.round(cams[1] * 4) / 4  # plateaus: ties at the maximum
    boxes = random_boxes(seed=14, n=n, h=h, w=w, max_objects=3)
    hits = metrics.pointing_game(cams, boxes)
    energy, fraction = metrics.energy_pointing_game(cams, boxes)
    for i in range(n):
        inside = ref.box_union_mask(boxes[i].tolist(), h, w)
        assert bool(hits[i]) == ref.pointing_game(cams[i].numpy(), inside)
        want_energy, want_fraction = ref.energy(cams[i].numpy(), inside)
        assert energy[i].item() == pytest.approx(want_energy, abs=1e-12)
        assert fraction[i].item() == pytest.approx(want_fraction, abs=1e-15)


# ----------------------------------------------------------------------------- validation


def test_localization_metrics_reject_bad_input():
    cams = torch.rand(2, 5, 6)
    boxes = torch.tensor([[0.0, 0, 3, 3], [1, 1, 2, 2]])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.box_ious(cams * 2, boxes)
    with pytest.raises(ValueError, match="NaN"):
        metrics.box_ious(cams.masked_fill(cams > 0.5, float("nan")), boxes)
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        metrics.box_ious(cams[0], boxes)
    with pytest.raises(TypeError, match="floating"):
        metrics.box_ious((cams * 255).to(torch.uint8), boxes)
    with pytest.raises(ValueError, match="3 images but 2 maps"):
        metrics.box_ious(cams, torch.cat([boxes, boxes[:1]]))
    with pytest.raises(ValueError, match="x1 >= x0"):
        metrics.box_ious(cams, torch.tensor([[3.0, 0, 1, 3], [1, 1, 2, 2]]))
    with pytest.raises(ValueError, match="M >= 1"):
        metrics.box_ious(cams, [boxes[0], torch.zeros(0, 4)])
    with pytest.raises(ValueError, match="thresholds must lie"):
        metrics.box_ious(cams, boxes, thresholds=[0.5, 1.5])
    with pytest.raises(ValueError, match="protocol"):
        metrics.box_ious(cams, boxes, protocol="opencv")
    with pytest.raises(ValueError, match="masks must have the cams' shape"):
        metrics.pxap(cams, torch.ones(2, 5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="columns"):
        metrics.max_box_acc_from_ious(torch.zeros(2, 3), [0.1, 0.2])
    with pytest.raises(ValueError, match="correct_class|shape"):
        metrics.cam_paper_localization(cams, boxes, torch.tensor([True]))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_localization_metrics_on_cuda_match_cpu():
    cams = smoothed_maps(seed=15, n=8, h=24, w=24, sigma=1.5)
    boxes = random_boxes(seed=16, n=8, h=24, w=24, max_objects=2)
    masks = cams > 0.7
    for multi_contour in (False, True):
        on_gpu = metrics.box_ious(cams.cuda(), boxes, multi_contour=multi_contour)
        assert on_gpu.is_cuda
        assert torch.equal(on_gpu.cpu(), metrics.box_ious(cams, boxes, multi_contour=multi_contour))
    assert metrics.pxap(cams.cuda(), masks.cuda()) == pytest.approx(metrics.pxap(cams, masks))
    assert torch.equal(metrics.pointing_game(cams.cuda(), boxes).cpu(),
                       metrics.pointing_game(cams, boxes))


# ------------------------------------------------- boxes outside the map, protocols


def test_boxes_reaching_past_the_map_are_clipped_to_it():
    cams = torch.zeros(2, 10, 10)
    cams[:, :4, :4] = 1.0  # a 4x4 blob in the top-left corner
    past = torch.tensor([[-5.0, -5, 3, 3], [-2, 0, 3, 30]])
    clipped = torch.tensor([[0.0, 0, 3, 3], [0, 0, 3, 9]])
    # Unclipped, the first box covers 81 "pixels" and scores 16 / 81; clipped it is the blob.
    ious = metrics.box_ious(cams, past, [0.5])
    assert ious[:, 0].tolist() == [1.0, 0.4]
    assert torch.equal(ious, metrics.box_ious(cams, clipped, [0.5]))
    energy, fraction = metrics.energy_pointing_game(cams, past)
    assert fraction.tolist() == [0.16, 0.4]
    assert metrics.pointing_game(cams, past).tolist() == [True, True]


@pytest.mark.parametrize("box", [[10.0, 0, 12, 3], [0, -4, 5, -1], [-3, 2, -0.5, 4],
                                 [2, 10, 4, 11]])
def test_boxes_wholly_outside_the_map_are_rejected(box):
    cams = torch.rand(2, 10, 10)
    boxes = [torch.tensor([[0.0, 0, 3, 3]]), torch.tensor([[1.0, 1, 2, 2], box])]
    message = r"box 1 of image 1 is \[.*\]: it lies wholly outside the 10x10 \(HxW\) map"
    with pytest.raises(ValueError, match=message):
        metrics.box_ious(cams, boxes)
    with pytest.raises(ValueError, match=message):
        metrics.pointing_game(cams, boxes)
    with pytest.raises(ValueError, match=message):
        metrics.energy_pointing_game(cams, boxes)


def test_protocols_are_named_and_the_default_is_one_of_them():
    assert metrics.DEFAULT_PROTOCOL == "camplug"
    assert list(metrics.PROTOCOLS) == ["camplug", "wsolevaluation"]
    assert all(isinstance(text, str) and text for text in metrics.PROTOCOLS.values())
    cams = smoothed_maps(seed=17, n=3, h=12, w=12, sigma=1.0)
    boxes = torch.tensor([[2.0, 2, 8, 9], [0, 0, 5, 5], [3, 1, 11, 4]])
    assert torch.equal(metrics.box_ious(cams, boxes),
                       metrics.box_ious(cams, boxes, protocol=metrics.DEFAULT_PROTOCOL))
    with pytest.raises(ValueError, match=r"protocol must be one of \['camplug', "
                                         r"'wsolevaluation'\], got 'none'"):
        metrics.max_box_acc(cams, boxes, protocol="none")


# ------------------------------------------------------------ PxAP ignore, tolerance


def test_pxap_ignore_mask_hand_case():
    # Scores 0.9 (fg), 0.8 (bg, ignored), 0.6 (bg), 0.3 (fg). Without the ignore mask:
    # AP = 1 * 1/2 + 2/4 * 1/2 = 3/4. Ignoring the 0.8 pixel: 1 * 1/2 + 2/3 * 1/2 = 5/6.
    cams = torch.tensor([[[0.9, 0.8], [0.6, 0.3]]], dtype=torch.float64)
    masks = torch.tensor([[[True, False], [False, True]]])
    ignore = torch.tensor([[[True, True], [False, False]]])  # fg wins on the first pixel
    assert metrics.pxap(cams, masks) == pytest.approx(3 / 4, abs=1e-12)
    assert metrics.pxap(cams, masks, ignore=ignore) == pytest.approx(5 / 6, abs=1e-12)
    tp, fp, fn = metrics.pixel_pr_counts(cams, masks, ignore=ignore)
    assert fp[0, 0].item() == 1 and tp[0, 0].item() == 2 and fn[0, 0].item() == 0


def test_pxap_ignore_mask_matches_reference():
    cams = smoothed_maps(seed=18, n=4, h=12, w=13, sigma=1.5)
    masks = smoothed_maps(seed=19, n=4, h=12, w=13, sigma=2.0) > 0.6
    ignore = smoothed_maps(seed=20, n=4, h=12, w=13, sigma=1.0) > 0.5
    grid = metrics.default_pixel_thresholds()
    want = ref.pxap(cams.numpy(), masks.numpy(), grid.numpy(), ignore.numpy())
    assert metrics.pxap(cams, masks, ignore=ignore) == pytest.approx(want, abs=1e-12)
    assert want != pytest.approx(ref.pxap(cams.numpy(), masks.numpy(), grid.numpy()))
    with pytest.raises(ValueError, match="ignore must have the cams' shape"):
        metrics.pxap(cams, masks, ignore=ignore[:, :5])


def test_pointing_game_tolerance_hand_case():
    cams = torch.zeros(3, 40, 40)
    cams[0, 5, 20] = 1.0  # 15 px above the box's top edge (y = 20): a hit at 15 px
    cams[1, 8, 11] = 1.0  # dy = 12, dx = 9 from the corner (20, 20): distance exactly 15
    cams[2, 8, 10] = 1.0  # dy = 12, dx = 10: distance 15.6
    box = torch.tensor([[20.0, 20, 30, 30]] * 3)
    assert metrics.pointing_game(cams, box).tolist() == [False, False, False]
    assert metrics.pointing_game(cams, box, tolerance=15).tolist() == [True, True, False]
    assert metrics.pointing_game(cams, box, tolerance=14.9).tolist() == [False, False, False]
    for bad in (-1, float("nan"), True):
        with pytest.raises(ValueError, match="tolerance"):
            metrics.pointing_game(cams, box, tolerance=bad)


def test_pointing_game_tolerance_matches_reference():
    n, h, w = 6, 11, 12
    cams = smoothed_maps(seed=21, n=n, h=h, w=w, sigma=1.0)
    cams[1] = torch.round(cams[1] * 3) / 3  # ties at the maximum
    masks = smoothed_maps(seed=22, n=n, h=h, w=w, sigma=1.5) > 0.75
    for tolerance in (0, 1, 1.5, 2.9, 4):
        hits = metrics.pointing_game(cams, masks, tolerance=tolerance)
        want = [ref.pointing_game(cams[i].numpy(), masks[i].numpy(), tolerance)
                for i in range(n)]
        assert hits.tolist() == want, tolerance


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_pixel_counts_equal_searchsorted_on_dense_grids_and_exact_hits(dtype):
    # Many thresholds inside one fine bucket, scores equal to thresholds, 0 and 1.
    rng = np.random.default_rng(25)
    grid = torch.from_numpy(np.unique(np.concatenate([rng.random(300) * 0.01, [0.5, 1.0],
                                                      rng.random(50)])))
    values = torch.cat([grid.to(dtype), torch.rand(500).to(dtype), torch.tensor([0.0, 1.0],
                                                                                 dtype=dtype)])
    cams = values.reshape(1, 1, -1)
    masks = torch.from_numpy(rng.random(cams.shape) < 0.4)
    tp, fp, fn = metrics.pixel_pr_counts(cams, masks, grid)
    passed = torch.searchsorted(grid, values.double(), right=True)
    for j in range(grid.numel()):
        predicted = passed > j
        assert tp[0, j] == int((predicted & masks.reshape(-1)).sum())
        assert fp[0, j] == int((predicted & ~masks.reshape(-1)).sum())
    assert bool((tp + fn == int(masks.sum())).all())
