"""Annotation formats (camplug.data.annotations): CSV with or without boxes, JSON, Pascal VOC
folders, COCO instances; label names against a class list; errors naming file and line."""

from __future__ import annotations

import json

import pytest

from camplug.data.annotations import detect_format, read_annotations
from camplug.data.specs import SpecError


def test_csv_with_labels_only_takes_the_sorted_names_as_classes(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("filename,label\nb.png,dog\na.png,cat\nc.png,dog\n")
    found = read_annotations(path)
    assert found.class_names == ["cat", "dog"]
    assert [(r.file, r.label, r.boxes) for r in found.records] == [
        ("b.png", 1, ()), ("a.png", 0, ()), ("c.png", 1, ())]


def test_csv_boxes_are_optional_per_row(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("filename,label,x0,y0,x1,y1\na.png,0,1,2,3,4\nb.png,1,,,,\n")
    a, b = read_annotations(path).records
    assert a.boxes == ((1, 2, 3, 4),) and b.boxes == ()
    path.write_text("filename,label,x0,y0,x1,y1\na.png,0,1,2,,4\n")
    with pytest.raises(SpecError, match=r"a.csv:2: box .* is not 4 numbers"):
        read_annotations(path)


def test_a_name_missing_from_the_class_list_lists_the_known_ones(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("filename,label\na.png,cat\nb.png,zebra\n")
    with pytest.raises(SpecError, match=r"a.csv:3: label 'zebra' is not a known class; the "
                                        r"classes are \['cat', 'dog'\]"):
        read_annotations(path, ["cat", "dog"])
    path.write_text("filename,label\na.png,5\n")
    with pytest.raises(SpecError, match="label 5 is not a class index below 2"):
        read_annotations(path, ["cat", "dog"])


def voc_xml(filename: str, objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    parts = [f"<annotation><folder>VOC</folder><filename>{filename}</filename>"
             "<size><width>50</width><height>40</height><depth>3</depth></size>"]
    for name, (x0, y0, x1, y1) in objects:
        parts.append(f"<object><name>{name}</name><difficult>0</difficult><bndbox>"
                     f"<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
                     "</bndbox></object>")
    return "".join(parts) + "</annotation>"


def test_voc_folder_labels_each_image_with_its_largest_objects_class(tmp_path):
    folder = tmp_path / "Annotations"
    folder.mkdir()
    (folder / "001.xml").write_text(voc_xml("001.jpg", [
        ("person", (1, 1, 10, 10)), ("dog", (5, 5, 40, 30)), ("dog", (1, 20, 3, 22))]))
    (folder / "002.xml").write_text(voc_xml("002.jpg", [("cat", (2, 3, 4, 5))]))
    (folder / "003.xml").write_text(voc_xml("003.jpg", []))
    (folder / "notes.txt").write_text("not an annotation")
    assert detect_format(folder) == "voc"
    found = read_annotations(folder)
    assert found.class_names == ["cat", "dog"]  # the names of the labels kept, sorted
    first, second = found.records
    # VOC corners count from 1: (5, 5, 40, 30) is the 0-based inclusive (4, 4, 39, 29)
    assert (first.file, first.label, first.boxes) == (
        "001.jpg", 1, ((4, 4, 39, 29), (0, 19, 2, 21)))
    assert (second.file, second.label, second.boxes) == ("002.jpg", 0, ((1, 2, 3, 4),))
    assert found.warnings == {"objects of another class left out": 1,
                              "image without objects skipped": 1}
    # with the model's class list, names map to its indices
    listed = read_annotations(folder, ["person", "cat", "dog"])
    assert [r.label for r in listed.records] == [2, 1]


def test_malformed_voc_xml_names_the_file_and_line(tmp_path):
    folder = tmp_path / "Annotations"
    folder.mkdir()
    (folder / "a.xml").write_text("<annotation>\n<filename>a.jpg</filename>\n<object>\n"
                                  "</annotation>\n")
    with pytest.raises(SpecError, match=r"a.xml:4: not well-formed XML"):
        read_annotations(folder)
    (folder / "a.xml").write_text(voc_xml("a.jpg", [("cat", (1, 1, 2, 2))]).replace(
        "<xmax>2</xmax>", ""))
    with pytest.raises(SpecError, match=r"a.xml: object 0: missing <xmax>"):
        read_annotations(folder)


def coco(**changes) -> dict:
    data = {
        "images": [{"id": 7, "file_name": "x.jpg", "width": 50, "height": 40},
                   {"id": 8, "file_name": "y.jpg", "width": 50, "height": 40},
                   {"id": 9, "file_name": "z.jpg", "width": 50, "height": 40}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [10.0, 5.0, 20.0, 8.0],
             "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 4, 4], "iscrowd": 0},
            {"id": 3, "image_id": 8, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 0},
            {"id": 4, "image_id": 8, "category_id": 3, "bbox": [0, 0, 50, 40], "iscrowd": 1},
            {"id": 5, "image_id": 9, "category_id": 1, "bbox": [0, 0, 9, 9], "iscrowd": 1},
        ],
        "categories": [{"id": 3, "name": "dog"}, {"id": 1, "name": "cat"}],
    }
    return {**data, **changes}


def test_coco_maps_categories_to_names_converts_xywh_and_skips_crowds(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco()))
    assert detect_format(path) == "coco"
    found = read_annotations(path)
    assert found.class_names == ["cat", "dog"]  # category ids 1, 3 in id order
    x, y = found.records
    # [10, 5, 20, 8] covers x in [10, 30), y in [5, 13): inclusive pixels 10..29, 5..12
    assert (x.file, x.label, x.boxes) == ("x.jpg", 1, ((10.0, 5.0, 29.0, 12.0),))
    assert (y.file, y.label, y.boxes) == ("y.jpg", 0, ((1.0, 2.0, 3.0, 5.0),))
    assert found.warnings == {"crowd annotation skipped": 2,
                              "objects of another class left out": 1,
                              "image without objects skipped": 1}
    listed = read_annotations(path, ["bird", "dog", "cat"])
    assert [r.label for r in listed.records] == [1, 2]


@pytest.mark.parametrize("change, message", [
    ({"categories": [{"id": "3", "name": "dog"}]}, r"categories\[0\]"),
    ({"annotations": [{"image_id": 7, "category_id": 4, "bbox": [0, 0, 1, 1]}]},
     r"annotations\[0\]: category_id 4 is not in 'categories'"),
    ({"annotations": [{"image_id": 7, "category_id": 3, "bbox": [0, 0, -1, 1]}]},
     r"annotations\[0\]: bbox .* width, height >= 0"),
])
def test_bad_coco_entries_are_named(tmp_path, change, message):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco(**change)))
    with pytest.raises(SpecError, match=message):
        read_annotations(path)


def test_json_that_does_not_parse_names_the_line(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n  {"file": "a.png", "label": 0},\n  {"file": "b.png" "label": 1}\n]\n')
    with pytest.raises(SpecError, match=r"a.json:3: not valid JSON"):
        read_annotations(path)


def test_json_list_boxes_are_optional(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"file": "a.png", "label": "cat"},
                                {"file": "b.png", "label": "dog", "boxes": [[0, 0, 1, 1]]}]))
    found = read_annotations(path)
    assert [(r.label, r.boxes) for r in found.records] == [(0, ()), (1, ((0, 0, 1, 1),))]


def test_the_format_can_be_named_when_the_path_does_not_tell(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("filename,label\na.png,0\n")
    with pytest.raises(SpecError, match="--annotation-format"):
        read_annotations(path)
    assert read_annotations(path, annotation_format="csv").records[0].label == 0
    with pytest.raises(SpecError, match="voc format is a folder"):
        read_annotations(path, annotation_format="voc")
    with pytest.raises(SpecError, match="expected one of"):
        read_annotations(path, annotation_format="yaml")
