"""The synthetic localization set: determinism, formats, geometry and label independence."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from scipy import ndimage, stats
from torch.utils.data import DataLoader

from camplug.data.synthetic import (
    MEAN,
    SPLITS,
    STD,
    SyntheticLocalization,
    denormalize,
    export_image_folder,
    normalize,
    to_tensors,
)

SIZE = 64


def assert_same_sample(a: dict, b: dict) -> None:
    assert a["id"] == b["id"] and a["label"] == b["label"]
    for key in ("image", "box", "mask"):
        assert torch.equal(a[key], b[key]), f"{key} differs for {a['id']}"


@pytest.mark.parametrize("split", SPLITS)
def test_same_seed_and_index_give_identical_samples_in_any_order(split):
    forward = SyntheticLocalization(12, split, SIZE, seed=3)
    backward = SyntheticLocalization(12, split, SIZE, seed=3)
    longer = SyntheticLocalization(500, split, SIZE, seed=3)  # n is not part of a sample's seed
    reversed_samples = [backward[i] for i in reversed(range(12))][::-1]
    for i in range(12):
        assert_same_sample(forward[i], reversed_samples[i])
        assert_same_sample(forward[i], longer[i])
        assert_same_sample(forward[i], forward[i - 12])  # negative indices


def test_samples_do_not_depend_on_dataloader_workers():
    ds = SyntheticLocalization(8, "easy", SIZE, seed=5)
    serial = next(iter(DataLoader(ds, batch_size=8, num_workers=0)))
    parallel = torch.cat([b["image"] for b in DataLoader(ds, batch_size=3, num_workers=2)])
    assert torch.equal(serial["image"], parallel)


def test_different_seeds_and_splits_differ():
    a = to_tensors(SyntheticLocalization(6, "easy", SIZE, seed=0))
    b = to_tensors(SyntheticLocalization(6, "easy", SIZE, seed=1))
    c = to_tensors(SyntheticLocalization(6, "hard", SIZE, seed=0))
    for other in (b, c):
        for i in range(6):
            assert not torch.equal(a["images"][i], other["images"][i])
            assert not torch.equal(a["masks"][i], other["masks"][i])


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("size", [48, 96])
def test_item_shapes_dtypes_and_ranges(split, size):
    ds = SyntheticLocalization(2 * len(SyntheticLocalization(0, split).class_names), split, size)
    ids = set()
    for i in range(len(ds)):
        item = ds[i]
        assert set(item) == {"image", "label", "box", "mask", "id"}
        image, box, mask = item["image"], item["box"], item["mask"]
        assert image.dtype == torch.float32 and image.shape == (3, size, size)
        assert box.dtype == torch.float32 and box.shape == (4,)
        assert mask.dtype == torch.bool and mask.shape == (size, size)
        assert isinstance(item["label"], int) and item["label"] == i % ds.num_classes
        x0, y0, x1, y1 = box.tolist()
        assert all(v == int(v) for v in (x0, y0, x1, y1))
        assert 0 <= x0 < x1 <= size - 1 and 0 <= y0 < y1 <= size - 1
        lo = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
        hi = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
        assert (image >= lo.view(3, 1, 1) - 1e-6).all() and (image <= hi.view(3, 1, 1) + 1e-6).all()
        rgb = ds.rgb(i)
        assert rgb.dtype == np.uint8 and rgb.shape == (size, size, 3)
        np.testing.assert_array_equal(denormalize(image), rgb)
        ids.add(item["id"])
    assert len(ids) == len(ds)


def test_normalize_and_denormalize_are_inverse_on_uint8():
    rgb = np.random.default_rng(0).integers(0, 256, size=(2, 5, 7, 3), dtype=np.uint8)
    x = normalize(rgb)
    assert x.shape == (2, 3, 5, 7) and x.dtype == torch.float32
    expected = (rgb.astype(np.float64) / 255 - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(x.numpy(), expected.transpose(0, 3, 1, 2), atol=1e-6)
    np.testing.assert_array_equal(denormalize(x), rgb)


@pytest.mark.parametrize("split", SPLITS)
def test_box_is_the_tight_bounding_box_of_the_mask_and_mask_is_half_coverage(split):
    ds = SyntheticLocalization(40, split, SIZE, seed=2)
    for i in range(len(ds)):
        sample = ds.render(i)
        np.testing.assert_array_equal(sample.mask, sample.coverage >= 0.5)
        ys, xs = np.nonzero(sample.mask)
        assert sample.box.tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]
        assert sample.coverage.min() >= 0 and sample.coverage.max() <= 1


def test_disc_mask_is_a_disc_filling_its_box():
    """The rasterized disc's area matches pi r^2 of the circle inscribed in its box."""
    ds = SyntheticLocalization(30, "easy", 96, seed=4)
    disc = ds.class_names.index("disc")
    for i in range(len(ds)):
        sample = ds.render(i, label=disc)
        x0, y0, x1, y1 = sample.box
        width, height = x1 - x0 + 1, y1 - y0 + 1
        assert abs(int(width) - int(height)) <= 1
        expected = np.pi * (width + height) ** 2 / 16
        assert abs(sample.mask.sum() - expected) / expected < 0.08
        assert abs(sample.coverage.sum() - expected) / expected < 0.08


def test_image_size_rescales_the_same_scene():
    small = SyntheticLocalization(10, "easy", 48, seed=6)
    large = SyntheticLocalization(10, "easy", 96, seed=6)
    for i in range(10):
        box_small = small.render(i).box.astype(float)
        box_large = large.render(i).box.astype(float)
        centre_small = (box_small[:2] + box_small[2:]) / 2
        centre_large = (box_large[:2] + box_large[2:]) / 2
        np.testing.assert_allclose((centre_large + 0.5) / 2 - 0.5, centre_small, atol=1.0)


def test_object_placement_is_uniform_over_the_image():
    ds = SyntheticLocalization(400, "easy", SIZE, seed=7)
    boxes = to_tensors(ds)["boxes"].numpy()
    labels = np.arange(len(ds)) % ds.num_classes
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2 / (SIZE - 1)  # in [0, 1]
    quadrant = (centres[:, 0] >= 0.5).astype(int) * 2 + (centres[:, 1] >= 0.5)
    counts = np.bincount(quadrant, minlength=4)
    assert stats.chisquare(counts).pvalue > 1e-3, counts
    # Centres are uniform on [r, 1 - r] for an object of radius r (0.09 to 0.2 of the side):
    # their spread is about (1 - 2r) / sqrt(12) ~ 0.2 per axis and about 22% of them fall in
    # the central ninth. A centre-biased set (sigma = 1/8) would give 0.125 and 67%.
    assert (centres.std(axis=0) > 0.17).all()
    assert (np.abs(centres - 0.5) < 1 / 6).all(axis=1).mean() < 0.3
    assert abs(np.corrcoef(centres.T)[0, 1]) < 0.2
    assert (centres.min(axis=0) < 0.15).all() and (centres.max(axis=0) > 0.85).all()
    sizes = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) + 1
    assert sizes.min() >= 0.12 * SIZE and sizes.max() <= 0.42 * SIZE
    for values in (centres[:, 0], centres[:, 1]):  # placement independent of the class
        groups = [values[labels == c] for c in range(ds.num_classes)]
        assert stats.f_oneway(*groups).pvalue > 1e-3


@pytest.mark.parametrize("split", SPLITS)
def test_background_is_bit_identical_whatever_the_label(split):
    ds = SyntheticLocalization(6, split, SIZE, seed=8)
    for i in range(len(ds)):
        renders = [ds.render(i, label=c) for c in range(ds.num_classes)]
        touched = ndimage.binary_dilation(
            np.any([r.coverage > 0 for r in renders], axis=0), iterations=1
        )
        assert (~touched).sum() > SIZE * SIZE / 2
        for other in renders[1:]:
            np.testing.assert_array_equal(other.rgb[~touched], renders[0].rgb[~touched])


def test_background_statistics_do_not_depend_on_the_class():
    ds = SyntheticLocalization(160, "easy", SIZE, seed=9)
    brightness, edges = [], []
    for i in range(len(ds)):
        sample = ds.render(i)
        outside = ~ndimage.binary_dilation(sample.mask, iterations=2)
        grey = sample.rgb.astype(np.float64).mean(axis=2)
        gradient = np.hypot(*np.gradient(grey))
        brightness.append(grey[outside].mean())
        edges.append(gradient[outside].mean())
    labels = np.arange(len(ds)) % ds.num_classes
    for values in (np.array(brightness), np.array(edges)):
        groups = [values[labels == c] for c in range(ds.num_classes)]
        assert stats.f_oneway(*groups).pvalue > 1e-3


def test_edges_alone_do_not_find_the_object():
    """Clutter has the objects' contrast: the strongest smoothed edge energy mostly lies off the
    object (it lies on it in about 85% of images when the clutter is left out)."""
    ds = SyntheticLocalization(120, "easy", SIZE, seed=10)
    hits = []
    for i in range(len(ds)):
        sample = ds.render(i)
        grey = sample.rgb.astype(np.float64).mean(axis=2)
        energy = ndimage.gaussian_filter(np.hypot(*np.gradient(grey)), 2.0)
        y, x = np.unravel_index(np.argmax(energy), energy.shape)
        x0, y0, x1, y1 = sample.box
        hits.append(x0 <= x <= x1 and y0 <= y <= y1)
    assert np.mean(hits) < 0.4


def changed_fraction(a, b) -> float:
    """Pixels that differ between two renders, as a fraction of the union of their masks."""
    return (a.rgb != b.rgb).any(axis=2).sum() / (a.mask | b.mask).sum()


def test_hard_classes_differ_only_in_a_small_part():
    hard = SyntheticLocalization(8, "hard", 96, seed=11)
    plain = hard.class_names.index("plain")
    marked, pairs = [], []
    for i in range(len(hard)):
        renders = [hard.render(i, label=c) for c in range(hard.num_classes)]
        marked += [changed_fraction(renders[plain], r) for c, r in enumerate(renders)
                   if c != plain]
        pairs += [changed_fraction(renders[a], renders[b])
                  for a in range(hard.num_classes) for b in range(a + 1, hard.num_classes)]
    assert min(pairs) > 0  # every pair of hard classes is distinguishable
    assert max(marked) < 0.2  # each mark changes under a fifth of the shared body
    assert max(pairs) < 0.35  # two marks: under about twice that

    easy = SyntheticLocalization(8, "easy", 96, seed=11)
    easy_pairs = []
    for i in range(len(easy)):
        renders = [easy.render(i, label=c) for c in range(easy.num_classes)]
        easy_pairs += [changed_fraction(renders[a], renders[b])
                       for a in range(easy.num_classes) for b in range(a + 1, easy.num_classes)]
    assert np.median(easy_pairs) > 2 * np.median(pairs)


def test_export_image_folder_roundtrip(tmp_path):
    from PIL import Image

    ds = SyntheticLocalization(5, "easy", SIZE, seed=12)
    csv_path = export_image_folder(ds, tmp_path / "export")
    assert csv_path == tmp_path / "export" / "boxes.csv"
    with csv_path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["filename", "label", "x0", "y0", "x1", "y1"]
    assert len(rows) == 1 + len(ds)
    for i, row in enumerate(rows[1:]):
        item = ds[i]
        assert row[0] == f"{item['id']}.png"
        assert int(row[1]) == item["label"]
        assert [int(v) for v in row[2:]] == item["box"].int().tolist()
        with Image.open(tmp_path / "export" / row[0]) as png:
            np.testing.assert_array_equal(np.asarray(png.convert("RGB")), ds.rgb(i))
    names = (tmp_path / "export" / "class_names.txt").read_text().splitlines()
    assert names == ds.class_names


def test_export_subset_of_indices(tmp_path):
    ds = SyntheticLocalization(5, "hard", SIZE, seed=12)
    export_image_folder(ds, tmp_path, indices=[4, 1])
    with (tmp_path / "boxes.csv").open(newline="") as handle:
        filenames = [row["filename"] for row in csv.DictReader(handle)]
    assert filenames == [f"{ds.sample_id(4)}.png", f"{ds.sample_id(1)}.png"]


def test_to_tensors_matches_items():
    ds = SyntheticLocalization(4, "hard", SIZE, seed=13)
    stacked = to_tensors(ds)
    assert stacked["images"].shape == (4, 3, SIZE, SIZE)
    assert stacked["labels"].dtype == torch.int64
    for i in range(4):
        item = ds[i]
        assert torch.equal(stacked["images"][i], item["image"])
        assert torch.equal(stacked["boxes"][i], item["box"])
        assert torch.equal(stacked["masks"][i], item["mask"])
        assert stacked["labels"][i] == item["label"]
    empty = to_tensors(SyntheticLocalization(0, "easy", SIZE))
    assert empty["images"].shape == (0, 3, SIZE, SIZE) and empty["masks"].shape == (0, SIZE, SIZE)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": -1}, "n must be"),
        ({"n": 2.5}, "n must be"),
        ({"n": 4, "split": "medium"}, "split must be one of"),
        ({"n": 4, "image_size": 16}, "image_size must be"),
        ({"n": 4, "seed": -3}, "seed must be"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticLocalization(**kwargs)


def test_invalid_index_and_label():
    ds = SyntheticLocalization(3, "easy", SIZE)
    with pytest.raises(IndexError, match="out of range"):
        ds[3]
    with pytest.raises(IndexError, match="out of range"):
        ds[-4]
    with pytest.raises(TypeError, match="index must be an int"):
        ds["0"]
    for label in (ds.num_classes, -1, 1.5):
        with pytest.raises(ValueError, match="label must be an int in"):
            ds.render(0, label=label)
