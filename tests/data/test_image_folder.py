"""The ImageFolder layout and bad input of image folders (camplug.data.folders)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from camplug.data.folders import AnnotatedImageFolder, open_dataset
from camplug.data.specs import SpecError


def image(path, size=(12, 10), value=100, mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).convert(mode).save(path)


def test_class_names_and_indices_follow_the_sorted_folders(tmp_path):
    image(tmp_path / "zebra" / "b.png")
    image(tmp_path / "zebra" / "a.png")
    image(tmp_path / "ant" / "a.png")  # the same file name in another class
    image(tmp_path / "ant" / "sub" / "c.png")
    (tmp_path / "ant" / "readme.txt").write_text("not an image")
    ds = open_dataset(str(tmp_path), image_size=8)
    assert ds.class_names == ["ant", "zebra"]
    items = [ds[i] for i in range(len(ds))]
    assert [(it["id"], it["label"]) for it in items] == [
        ("ant/a.png", 0), ("ant/sub/c.png", 0), ("zebra/a.png", 1), ("zebra/b.png", 1)]
    assert all(it["boxes"].shape == (0, 4) for it in items)
    assert tuple(items[0]["image"].shape) == (3, 8, 8)


def test_a_class_list_maps_folders_to_its_indices(tmp_path):
    image(tmp_path / "dog" / "a.png")
    image(tmp_path / "cat" / "a.png")
    ds = AnnotatedImageFolder(tmp_path, class_names=["bird", "dog", "cat"], image_size=8)
    assert [r.label for r in ds.records] == [2, 1]  # cat/a.png, dog/a.png
    with pytest.raises(SpecError, match=r"label 'dog' is not a known class; the classes are "
                                        r"\['bird', 'cat'\]"):
        AnnotatedImageFolder(tmp_path, class_names=["bird", "cat"])


def test_a_class_folder_without_images_keeps_its_index_and_warns(tmp_path):
    image(tmp_path / "a" / "1.png")
    (tmp_path / "b").mkdir()
    image(tmp_path / "c" / "1.png")
    ds = AnnotatedImageFolder(tmp_path)
    assert ds.class_names == ["a", "b", "c"] and [r.label for r in ds.records] == [0, 2]
    assert ds.warnings == {"class folder without images": 1}


@pytest.mark.parametrize("layout, message", [
    ((), "it is empty"),
    (("x.png",), "holds 1 images but no class subfolders"),
    (("a/", "b/"), "none of its 2 class folders holds an image"),
])
def test_folders_without_images_are_clear_errors(tmp_path, layout, message):
    for name in layout:
        if name.endswith("/"):
            (tmp_path / name).mkdir()
        else:
            image(tmp_path / name)
    with pytest.raises(SpecError, match=message):
        open_dataset(str(tmp_path))


def test_boxes_partly_outside_are_clipped_with_a_warning(tmp_path):
    image(tmp_path / "a.png", size=(20, 10))
    image(tmp_path / "b.png", size=(20, 10))
    (tmp_path / "ann.csv").write_text("filename,label,x0,y0,x1,y1\n"
                                      "a.png,0,-4,2,25,5\na.png,0,1,1,3,3\nb.png,0,30,0,40,5\n")
    ds = AnnotatedImageFolder(tmp_path, tmp_path / "ann.csv", image_size=None)
    item = ds[0]
    assert item["boxes"].tolist() == [[0, 2, 19, 5], [1, 1, 3, 3]]
    assert item["warnings"] == [
        "box clipped: [-4.0, 2.0, 25.0, 5.0] reached outside the 20x10 image"]
    with pytest.raises(ValueError, match=r"b.png: box \[30.0, 0.0, 40.0, 5.0\] lies wholly "
                                         r"outside the 20x10 image"):
        ds[1]


def test_annotation_format_needs_an_annotation_file(tmp_path):
    image(tmp_path / "a" / "1.png")
    with pytest.raises(SpecError, match="--annotation-format csv needs an annotation file"):
        open_dataset(str(tmp_path), annotation_format="csv")
