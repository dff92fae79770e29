"""Annotated image folders and dataset specs (camplug.data.folders)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from camplug.data import folders as sources
from camplug.data.folders import AnnotatedImageFolder, open_dataset, read_annotations, scale_box
from camplug.data.specs import SpecError


# annotations ------------------------------------------------------------------------------
def test_csv_groups_objects_by_file(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("filename,label,x0,y0,x1,y1,extra\n"
                    "a.png,2,1,2,3,4,x\nb.png,0,0,0,5,5,y\na.png,2,6,6,7,9,z\n")
    records = read_annotations(path)
    assert [(r.file, r.label) for r in records] == [("a.png", 2), ("b.png", 0)]
    assert records[0].boxes == ((1, 2, 3, 4), (6, 6, 7, 9))


@pytest.mark.parametrize("body, message", [
    ("filename,label,x0,y0,x1\na.png,1,0,0,1\n", "header must contain"),
    ("filename,label,x0,y0,x1,y1\na.png,1,5,0,1,3\n", "x1 < x0"),
    ("filename,label,x0,y0,x1,y1\na.png,1,0,0,1,z\n", "is not 4 numbers"),
    ("filename,label,x0,y0,x1,y1\na.png,cat,0,0,1,1\n", "label 'cat' is not a class index"),
    ("filename,label,x0,y0,x1,y1\na.png,1,0,0,1,1\na.png,2,0,0,1,1\n", "one label"),
    ("filename,label,x0,y0,x1,y1\n", "no annotation rows"),
])
def test_bad_csv_rows_name_the_line(tmp_path, body, message):
    path = tmp_path / "a.csv"
    path.write_text(body)
    with pytest.raises(SpecError, match=message):
        read_annotations(path)


def test_json_format_and_class_names(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([
        {"file": "a.png", "label": "dog", "boxes": [[0, 0, 3, 3], [4, 4, 5, 5]]},
        {"file": "b.png", "label": 0, "boxes": [[1, 1, 2, 2]], "mask": "b_mask.png"},
    ]))
    records = read_annotations(path, class_names=["cat", "dog"])
    assert records[0].label == 1 and len(records[0].boxes) == 2
    assert records[1].mask == "b_mask.png"
    with pytest.raises(SpecError, match="not a class index nor one of the class names"):
        read_annotations(path, class_names=["cat", "cow"])
    path.write_text(json.dumps([{"file": "a.png", "label": 0}]))
    with pytest.raises(SpecError, match="'file', 'label' and 'boxes'"):
        read_annotations(path)


def test_scale_box_maps_pixel_extents():
    # pixels 0..9 of a 10-wide image cover [0, 10); at half size they cover [0, 5): 0..4
    assert scale_box((0, 0, 9, 9), (10, 10), (5, 5)) == (0, 0, 4, 4)
    # pixels 2..3 cover [2, 4) -> [4, 8) at double size: 4..7
    assert scale_box((2, 2, 3, 3), (10, 10), (20, 20)) == (4, 4, 7, 7)
    # boxes reaching past the image are clipped to it
    assert scale_box((-3, 5, 12, 20), (10, 10), (10, 10)) == (0, 5, 9, 9)
    # independent reference: rasterize the box, resize the mask (nearest at pixel centres)
    rng = np.random.default_rng(0)
    for _ in range(50):
        old = tuple(int(v) for v in rng.integers(5, 40, size=2))
        new = tuple(int(v) for v in rng.integers(5, 40, size=2))
        x0, x1 = sorted(int(v) for v in rng.integers(0, old[1], size=2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, old[0], size=2))
        got = scale_box((x0, y0, x1, y1), old, new)
        # a new pixel j (covering [j, j+1)) overlaps the box's span [x0, x1+1) scaled
        cols = [j for j in range(new[1])
                if j < (x1 + 1) * new[1] / old[1] and j + 1 > x0 * new[1] / old[1]]
        rows = [i for i in range(new[0])
                if i < (y1 + 1) * new[0] / old[0] and i + 1 > y0 * new[0] / old[0]]
        assert got == (cols[0], rows[0], cols[-1], rows[-1])


def _write_png(path, size=(20, 30), colour=(200, 10, 10)):
    Image.new("RGB", (size[1], size[0]), colour).save(path)


def test_image_folder_items(tmp_path):
    _write_png(tmp_path / "a.png", (20, 30))
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 3:8] = 255
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    (tmp_path / "ann.json").write_text(json.dumps([
        {"file": "a.png", "label": 1, "boxes": [[3, 5, 7, 9]], "mask": "a_mask.png"}]))
    ds = AnnotatedImageFolder(tmp_path, tmp_path / "ann.json", image_size=(40, 60),
                              mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    item = ds[0]
    assert item["image"].shape == (3, 40, 60) and item["image"].dtype == torch.float32
    torch.testing.assert_close(item["image"][:, 0, 0],
                               (torch.tensor([200, 10, 10]) / 255 - 0.5) / 0.25)
    assert item["boxes"].tolist() == [[6, 10, 15, 19]]
    assert item["mask"].shape == (40, 60) and item["mask"].sum() == 10 * 10  # 5x5 doubled
    ys, xs = item["mask"].nonzero(as_tuple=True)
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == (6, 10, 15, 19)
    assert item["id"] == "a.png" and item["label"] == 1
    keep = AnnotatedImageFolder(tmp_path, tmp_path / "ann.json", image_size=None)
    assert keep[0]["image"].shape == (3, 20, 30) and keep[0]["boxes"].tolist() == [[3, 5, 7, 9]]


def test_unreadable_images_raise_oserror(tmp_path):
    _write_png(tmp_path / "good.png")
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "ann.csv").write_text(
        "filename,label,x0,y0,x1,y1\ngood.png,0,0,0,5,5\ncut.png,0,0,0,5,5\n"
        "text.png,0,0,0,5,5\nmissing.png,0,0,0,5,5\ngood2.png,0,50,0,55,5\n")
    _write_png(tmp_path / "good2.png")
    ds = AnnotatedImageFolder(tmp_path, tmp_path / "ann.csv", image_size=16)
    assert ds[0]["image"].shape == (3, 16, 16)
    for index in (1, 2, 3):
        with pytest.raises(OSError):
            ds[index]
    with pytest.raises(ValueError, match="outside the image"):
        ds[4]


def test_open_dataset_specs(tmp_path):
    from camplug.data.synthetic import SyntheticLocalization

    ds = open_dataset("synthetic:hard", n=4, seed=3, image_size=32)
    assert isinstance(ds, SyntheticLocalization)
    assert (ds.n, ds.split, ds.seed, ds.image_size) == (4, "hard", 3, 32)
    with pytest.raises(SpecError, match="synthetic splits"):
        open_dataset("synthetic:medium")
    with pytest.raises(SpecError, match="neither 'synthetic"):
        open_dataset(str(tmp_path / "absent"))
    with pytest.raises(SpecError, match="no annotation file given"):
        open_dataset(str(tmp_path))
    _write_png(tmp_path / "a.png")
    (tmp_path / "boxes.csv").write_text("filename,label,x0,y0,x1,y1\na.png,cow,0,0,5,5\n")
    (tmp_path / "class_names.txt").write_text("cat\ncow\n")
    folder = open_dataset(str(tmp_path), image_size=0)
    assert folder[0]["label"] == 1 and folder[0]["image"].shape == (3, 20, 30)
    assert sources.DEFAULT_ANNOTATIONS[-1] == "boxes.csv"
