"""Annotated image folders and dataset specs (camplug.data.folders)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from camplug.data import folders as sources
from camplug.data.annotations import read_annotations
from camplug.data.folders import AnnotatedImageFolder, open_dataset, scale_box
from camplug.data.specs import SpecError


# annotations ------------------------------------------------------------------------------
def test_csv_groups_objects_by_file(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("filename,label,x0,y0,x1,y1,extra\n"
                    "a.png,2,1,2,3,4,x\nb.png,0,0,0,5,5,y\na.png,2,6,6,7,9,z\n")
    records = read_annotations(path).records
    assert [(r.file, r.label) for r in records] == [("a.png", 2), ("b.png", 0)]
    assert records[0].boxes == ((1, 2, 3, 4), (6, 6, 7, 9))


@pytest.mark.parametrize("body, message", [
    ("filename,label,x0,y0,x1\na.png,1,0,0,1\n", "header must contain"),
    ("filename,label,x0,y0,x1,y1\na.png,1,5,0,1,3\n", "x1 < x0"),
    ("filename,label,x0,y0,x1,y1\na.png,1,0,0,1,z\n", "is not 4 numbers"),
    ("filename,label,x0,y0,x1,y1\na.png,cat,0,0,1,1\nb.png,1,0,0,1,1\n", ":3: labels mix"),
    ("filename,label,x0,y0,x1,y1\na.png,1,0,0,1\n", ":2: fewer cells"),
    ("filename,label,x0,y0,x1,y1\na.png,1,0,0,1,1\nb.png,,0,0,1,1\n", ":3: empty label"),
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
    records = read_annotations(path, class_names=["cat", "dog"]).records
    assert records[0].label == 1 and len(records[0].boxes) == 2
    assert records[1].mask == "b_mask.png"
    with pytest.raises(SpecError, match=r"item 0: label 'dog' is not a known class; the "
                                        r"classes are \['cat', 'cow'\]"):
        read_annotations(path, class_names=["cat", "cow"])
    path.write_text(json.dumps([{"file": "a.png", "boxes": []}]))
    with pytest.raises(SpecError, match="'file', 'label' and optionally"):
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
    with pytest.raises(ValueError, match="wholly outside the 30x20 image"):
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
    with pytest.raises(SpecError, match="it is empty"):
        open_dataset(str(tmp_path))
    _write_png(tmp_path / "a.png")
    (tmp_path / "boxes.csv").write_text("filename,label,x0,y0,x1,y1\na.png,cow,0,0,5,5\n")
    (tmp_path / "class_names.txt").write_text("cat\ncow\n")
    folder = open_dataset(str(tmp_path), image_size=0)
    assert folder[0]["label"] == 1 and folder[0]["image"].shape == (3, 20, 30)
    assert sources.DEFAULT_ANNOTATIONS[-1] == "boxes.csv"


# any image mode, files only inside the folder, regular files only -------------------------
def _folder(tmp_path, files: dict[str, str | None], size=(6, 8)):
    """An annotation CSV (or JSON with masks) over ``files`` (file -> mask or None)."""
    items = [{"file": f, "label": 0, "boxes": [[0, 0, size[1] - 1, size[0] - 1]],
              **({"mask": m} if m else {})} for f, m in files.items()]
    (tmp_path / "ann.json").write_text(json.dumps(items))
    return AnnotatedImageFolder(tmp_path, tmp_path / "ann.json", image_size=None,
                                mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def test_16_bit_images_are_scaled_by_their_range_not_clipped(tmp_path):
    grey = np.array([[0, 1000, 30000, 65535]] * 3, dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "deep.png")  # a 16-bit grayscale PNG
    with Image.open(tmp_path / "deep.png") as opened:
        assert opened.mode.startswith("I")  # Pillow's 16-bit modes: "I;16" or "I"
    image = _folder(tmp_path, {"deep.png": None}, size=(3, 4))[0]["image"]
    expected = torch.from_numpy(grey / 65535.0).float().expand(3, -1, -1)
    torch.testing.assert_close(image, expected)  # Pillow's own convert("RGB") gives 255s
    # resized in float, not in 8 bits
    folder = AnnotatedImageFolder(tmp_path, tmp_path / "ann.json", image_size=(6, 8),
                                  mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    resized = folder[0]["image"]
    reference = Image.fromarray((grey / 65535.0).astype(np.float32)).resize(
        (8, 6), Image.Resampling.BILINEAR)
    torch.testing.assert_close(resized[0], torch.from_numpy(np.array(reference)))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "1", "I;16B", "F"])
def test_every_image_mode_gives_rgb_in_the_unit_range(tmp_path, mode):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8))
    if mode == "I;16B":
        values = (rng.random((6, 8)) * 65535).astype(">u2")
        image = Image.frombytes("I;16B", (8, 6), values.tobytes())
        expected = values.astype(np.float64)[..., None].repeat(3, 2) / 65535
        image.save(tmp_path / "x.tif")
        name = "x.tif"
    elif mode == "F":
        values = rng.random((6, 8)).astype(np.float32)
        image = Image.fromarray(values)
        expected = values.astype(np.float64)[..., None].repeat(3, 2)
        image.save(tmp_path / "x.tif")
        name = "x.tif"
    else:
        image = rgb.convert(mode)
        name = "x.tif" if mode == "CMYK" else "x.png"
        image.save(tmp_path / name)
        with Image.open(tmp_path / name) as back:
            expected = np.asarray(back.convert("RGB"), dtype=np.float64) / 255
    got = _folder(tmp_path, {name: None})[0]["image"].permute(1, 2, 0).double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_16_bit_masks_keep_their_objects(tmp_path):
    _write_png(tmp_path / "a.png", (6, 8))
    mask = np.zeros((6, 8), np.uint16)
    mask[1:3, 2:5] = 300  # every non-zero 16-bit level is object
    mask[4, 6] = 256
    Image.fromarray(mask).save(tmp_path / "m.png")
    item = _folder(tmp_path, {"a.png": "m.png"})[0]
    np.testing.assert_array_equal(item["mask"].numpy(), mask != 0)


@pytest.mark.parametrize("name", ["../outside.png", "{abs}", "link.png"])
def test_paths_leaving_the_folder_are_not_read(tmp_path, name):
    root = tmp_path / "images"
    root.mkdir()
    _write_png(tmp_path / "outside.png")
    _write_png(root / "inside.png")
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    name = name.format(abs=tmp_path / "outside.png")
    ds = _folder(root, {name: None, "inside.png": None}, size=(20, 30))
    with pytest.raises(ValueError, match="leads outside the image folder"):
        ds[0]
    assert ds[1]["image"].shape == (3, 20, 30)
    ds.fingerprint()  # never reads the outside file either
    masked = _folder(root, {"inside.png": name}, size=(20, 30))
    with pytest.raises(ValueError, match="mask path .* leads outside the image folder"):
        masked[0]


def test_a_named_pipe_fails_at_once_instead_of_blocking(tmp_path):
    import os
    import threading

    os.mkfifo(tmp_path / "pipe.png")
    _write_png(tmp_path / "a.png")
    ds = _folder(tmp_path, {"pipe.png": None, "a.png": "pipe.png"}, size=(20, 30))
    outcome = {}

    def read():
        for index in (0, 1):
            try:
                ds[index]
            except OSError as error:
                outcome[index] = str(error)
        outcome["fingerprint"] = ds.fingerprint()

    worker = threading.Thread(target=read, daemon=True)  # a blocked open would hang here
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "reading a named pipe blocked"
    assert "pipe.png is not a regular file" in outcome[0]
    assert "mask pipe.png is not a regular file" in outcome[1]
    fifo_annotations = tmp_path / "fifo.csv"
    os.mkfifo(fifo_annotations)
    with pytest.raises(SpecError, match="is not a regular file"):
        read_annotations(fifo_annotations)


def test_a_csv_with_excels_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbffilename,label,x0,y0,x1,y1\r\na.png,1,0,0,3,3\r\n")
    (record,) = read_annotations(path).records
    assert (record.file, record.label, record.boxes) == ("a.png", 1, ((0, 0, 3, 3),))
    path.write_bytes("filename,label,x0,y0,x1,y1\na.png,1,0,0,3,3\n".encode("utf-16"))
    with pytest.raises(SpecError, match="is not UTF-8 text"):
        read_annotations(path)


def test_the_fingerprint_covers_the_images(tmp_path):
    import os

    _write_png(tmp_path / "a.png", colour=(10, 20, 30))
    ds = _folder(tmp_path, {"a.png": None}, size=(20, 30))
    first = ds.fingerprint()
    assert ds.fingerprint() == first
    stat = (tmp_path / "a.png").stat()
    _write_png(tmp_path / "a.png", colour=(10, 20, 31))  # same size, other pixels
    os.utime(tmp_path / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime
    assert (tmp_path / "a.png").stat().st_size == stat.st_size
    changed = ds.fingerprint()
    assert changed != first
    os.utime(tmp_path / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert ds.fingerprint() not in (first, changed)  # touched: mtime counts
