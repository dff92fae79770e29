"""Annotation formats of an image folder, read into one label (and optional boxes) per image.

Formats (``ANNOTATION_FORMATS``; ``detect_format`` picks one from the path):
  - ``csv``: a header row with ``filename,label`` and optionally ``x0,y0,x1,y1`` (extra columns
    ignored); one row per object, several rows for one file are several objects of its
    (single) label; a row with empty box cells (or a file without box columns) has no box.
  - ``json``: a list of ``{"file": "a.png", "label": 3, "boxes": [[x0, y0, x1, y1], ...],
    "mask": "a_mask.png"}`` (``boxes`` and ``mask`` optional; a mask is a grayscale image,
    object where non-zero).
  - ``voc``: a Pascal VOC ``Annotations/`` folder of XML files (``<filename>``, ``<object>``
    with ``<name>`` and ``<bndbox>``; VOC's 1-based corners become 0-based).
  - ``coco``: a COCO instances JSON (``images``, ``annotations``, ``categories``); category ids
    map to their names, ``bbox`` [x, y, w, h] becomes the inclusive box (x, y, x + w - 1,
    y + h - 1); ``iscrowd`` annotations are skipped (counted in the warnings).
  VOC and COCO annotate objects of several classes per image; the audit needs one label per
  image: an image takes the class of its largest object (box area) and that class's boxes;
  objects of other classes are left out and counted in the warnings.

File names are relative to the image folder. Box corners are inclusive pixel coordinates in
the original image (x to the right, y down). A ``label`` is a class index or a class name.
Names resolve against ``class_names`` (the model's class list; a name it lacks is an error
listing the known ones); without a list, the format's own names define the classes: COCO's
categories in id order, otherwise the sorted distinct names (as torchvision's ImageFolder
sorts its folders). A file that does not parse raises ``SpecError`` naming the file and line.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camplug.data.specs import SpecError

ANNOTATION_FORMATS = ("csv", "json", "voc", "coco")
BOX_COLUMNS = ("x0", "y0", "x1", "y1")
Box = tuple[float, float, float, float]
MAX_LISTED_NAMES = 30


@dataclass(frozen=True)
class ImageRecord:
    """One annotated image: ``boxes`` are (x0, y0, x1, y1) inclusive, original pixels (empty:
    labels only)."""

    file: str
    label: int
    boxes: tuple[Box, ...] = ()
    mask: str | None = None


@dataclass(frozen=True)
class RawRecord:
    """An image as its file states it: the label as written (index or name), and where."""

    file: str
    label: int | str
    boxes: tuple[Box, ...]
    mask: str | None
    where: str


@dataclass
class Annotations:
    """What a reader returns: the records, the class names (label -> name; None when the labels
    are bare indices) and the warnings (kind -> count)."""

    records: list[ImageRecord]
    class_names: list[str] | None
    warnings: dict[str, int] = field(default_factory=dict)


# labels -----------------------------------------------------------------------------------
def _raw_label(value: Any, where: str) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise SpecError(f"{where}: label {value!r} is neither a class index nor a class name")
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise SpecError(f"{where}: empty label")
        if value.lstrip("-").isdigit():
            value = int(value)
    if isinstance(value, int) and value < 0:
        raise SpecError(f"{where}: label {value} is negative")
    return value


def _known(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:MAX_LISTED_NAMES])
    more = f", ... ({len(names)} in all)" if len(names) > MAX_LISTED_NAMES else ""
    return f"[{shown}{more}]"


def resolve_labels(raw: Sequence[RawRecord], class_names: Sequence[str] | None,
                   carried: Sequence[str] | None = None) -> tuple[list[ImageRecord],
                                                                  list[str] | None]:
    """Turn written labels into class indices. ``class_names``: the model's class list (names
    must be in it, indices below its length); else ``carried`` (the format's own list), else
    the sorted distinct names. Returns the records and the class names in use."""
    names = list(class_names) if class_names is not None else (
        list(carried) if carried is not None else None)
    if names is None:
        written = {r.label for r in raw if isinstance(r.label, str)}
        if written and any(isinstance(r.label, int) for r in raw):
            first = next(r for r in raw if isinstance(r.label, int))
            raise SpecError(f"{first.where}: labels mix class indices ({first.label}) and names "
                            f"({sorted(written)[0]!r}); give the class list (--class-names)")
        names = sorted(written) or None
    index = {name: i for i, name in enumerate(names or [])}
    records = []
    for r in raw:
        if isinstance(r.label, str):
            if r.label not in index:
                raise SpecError(f"{r.where}: label {r.label!r} is not a known class; the "
                                f"classes are {_known(names or [])}")
            label = index[r.label]
        else:
            label = r.label
            if names is not None and label >= len(names):
                raise SpecError(f"{r.where}: label {label} is not a class index below "
                                f"{len(names)} (the number of classes)")
        records.append(ImageRecord(r.file, label, r.boxes, r.mask))
    return records, names


# boxes ------------------------------------------------------------------------------------
def parse_box(values: Sequence[Any], where: str) -> Box:
    """Four finite numbers x0, y0, x1, y1 with x0 <= x1 and y0 <= y1 (whether the box lies in
    its image is checked when the image is read)."""
    if len(values) != 4:
        raise SpecError(f"{where}: a box needs 4 numbers x0, y0, x1, y1, got {list(values)}")
    try:
        x0, y0, x1, y1 = (float(v) for v in values)
    except (TypeError, ValueError):
        raise SpecError(f"{where}: box {list(values)} is not 4 numbers") from None
    if not all(map(math.isfinite, (x0, y0, x1, y1))):
        raise SpecError(f"{where}: box {list(values)} is not finite")
    if x1 < x0 or y1 < y0:
        raise SpecError(f"{where}: box {list(values)} has x1 < x0 or y1 < y0 (corners x0,y0,x1,y1)")
    return x0, y0, x1, y1


def _largest_class(objects: list[tuple[int | str, Box]]) -> tuple[int | str, tuple[Box, ...],
                                                                   int]:
    """(the class of the largest object, that class's boxes, how many objects of other classes
    are left out)."""
    def area(box: Box) -> float:
        return (box[2] - box[0] + 1) * (box[3] - box[1] + 1)

    label = max(objects, key=lambda o: area(o[1]))[0]
    boxes = tuple(b for c, b in objects if c == label)
    return label, boxes, len(objects) - len(boxes)


# readers ----------------------------------------------------------------------------------
def read_csv(path: Path) -> tuple[list[RawRecord], None, Counter[str]]:
    """Records of a ``filename,label[,x0,y0,x1,y1]`` CSV, grouped by file in first-seen order."""
    with path.open(newline="", encoding="utf-8-sig") as handle:  # accepts Excel's BOM
        reader = csv.DictReader(handle)
        header = [c.strip() for c in reader.fieldnames or []]
        has_boxes = any(c in header for c in BOX_COLUMNS)
        need = ("filename", "label") + (BOX_COLUMNS if has_boxes else ())
        missing = [c for c in need if c not in header]
        if missing:
            raise SpecError(f"{path}:1: the header must contain filename,label and optionally "
                            f"x0,y0,x1,y1 (all four); missing {missing} (found {header})")
        reader.fieldnames = header
        grouped: dict[str, tuple[int | str, list[Box], str]] = {}
        for line, row in enumerate(reader, start=2):
            where = f"{path}:{line}"
            if None in row.values():
                raise SpecError(f"{where}: fewer cells than the header's {len(header)}")
            name = row["filename"].strip()
            if not name:
                raise SpecError(f"{where}: empty filename")
            label = _raw_label(row["label"], where)
            cells = [row[c].strip() for c in BOX_COLUMNS] if has_boxes else []
            if name in grouped and grouped[name][0] != label:
                raise SpecError(f"{where}: {name} has label {label!r} here but "
                                f"{grouped[name][0]!r} on an earlier line; an image has one label")
            boxes = grouped.setdefault(name, (label, [], where))[1]
            if any(cells):
                boxes.append(parse_box(cells, where))
    if not grouped:
        raise SpecError(f"{path}: no annotation rows")
    raw = [RawRecord(n, label, tuple(b), None, where) for n, (label, b, where) in grouped.items()]
    return raw, None, Counter()


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise SpecError(f"{path}:{error.lineno}: not valid JSON ({error.msg}, column "
                        f"{error.colno})") from None


def read_json(path: Path) -> tuple[list[RawRecord], None, Counter[str]]:
    """Records of a JSON list of ``{"file", "label", "boxes"?, "mask"?}`` objects."""
    return _json_list(path, _load_json(path))


def _json_list(path: Path, items: Any) -> tuple[list[RawRecord], None, Counter[str]]:
    if not isinstance(items, list) or not items:
        raise SpecError(f"{path}: expected a non-empty JSON list of image objects (or a COCO "
                        "file with 'images', 'annotations' and 'categories')")
    raw, seen = [], set()
    for i, item in enumerate(items):
        where = f"{path}: item {i}"
        if not isinstance(item, dict) or not {"file", "label"} <= set(item):
            raise SpecError(f"{where}: expected an object with 'file', 'label' and optionally "
                            "'boxes' and 'mask'")
        name = item["file"]
        if not isinstance(name, str) or not name:
            raise SpecError(f"{where}: 'file' must be a non-empty string")
        if name in seen:
            raise SpecError(f"{where}: {name} appears twice; list all its boxes in one item")
        seen.add(name)
        boxes = item.get("boxes", [])
        if not isinstance(boxes, list):
            raise SpecError(f"{where}: 'boxes' must be a list of [x0, y0, x1, y1]")
        mask = item.get("mask")
        if mask is not None and not isinstance(mask, str):
            raise SpecError(f"{where}: 'mask' must be a file name")
        if mask is not None and not boxes:
            raise SpecError(f"{where}: a mask needs the object's boxes too")
        parsed = tuple(parse_box(b if isinstance(b, list) else [b], where) for b in boxes)
        raw.append(RawRecord(name, _raw_label(item["label"], where), parsed, mask, where))
    return raw, None, Counter()


def _xml_text(node: Any, tag: str, where: str) -> str:
    found = node.find(tag)
    if found is None or not (found.text or "").strip():
        raise SpecError(f"{where}: missing <{tag}>")
    return found.text.strip()


def read_voc(path: Path) -> tuple[list[RawRecord], None, Counter[str]]:
    """Records of a Pascal VOC folder of XML files, one image per file (sorted by name)."""
    from xml.etree import ElementTree

    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".xml" and p.is_file())
    if not files:
        raise SpecError(f"{path}: no .xml files in this Pascal VOC annotation folder")
    raw, warnings = [], Counter()
    for xml in files:
        try:
            root = ElementTree.parse(xml).getroot()
        except ElementTree.ParseError as error:
            line, column = error.position
            raise SpecError(f"{xml}:{line}: not well-formed XML (column {column})") from None
        name = _xml_text(root, "filename", str(xml))
        objects = []
        for i, obj in enumerate(root.iter("object")):
            where = f"{xml}: object {i}"
            box = obj.find("bndbox")
            if box is None:
                raise SpecError(f"{where}: missing <bndbox>")
            corners = [_xml_text(box, t, where) for t in ("xmin", "ymin", "xmax", "ymax")]
            x0, y0, x1, y1 = parse_box(corners, where)
            label = _raw_label(_xml_text(obj, "name", where), where)
            objects.append((label, (x0 - 1, y0 - 1, x1 - 1, y1 - 1)))  # VOC counts from 1
        if not objects:
            warnings["image without objects skipped"] += 1
            continue
        label, boxes, others = _largest_class(objects)
        warnings["objects of another class left out"] += others
        raw.append(RawRecord(name, label, boxes, None, str(xml)))
    return raw, None, warnings


def read_coco(path: Path) -> tuple[list[RawRecord], list[str], Counter[str]]:
    """Records of a COCO instances JSON (images in file order), with the category names in id
    order."""
    return _coco(path, _load_json(path))


def _coco(path: Path, data: Any) -> tuple[list[RawRecord], list[str], Counter[str]]:
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
        raise SpecError(f"{path}: a COCO file needs 'images', 'annotations' and 'categories'")
    categories: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not isinstance(
                cat.get("name"), str):
            raise SpecError(f"{path}: categories[{i}]: expected {{'id': int, 'name': str}}")
        categories[cat["id"]] = cat["name"]
    images: dict[int, str] = {}
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not isinstance(image.get("id"), int) or not isinstance(
                image.get("file_name"), str):
            raise SpecError(f"{path}: images[{i}]: expected {{'id': int, 'file_name': str}}")
        images[image["id"]] = image["file_name"]
    objects: dict[int, list[tuple[int | str, Box]]] = {i: [] for i in images}
    warnings: Counter[str] = Counter()
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{i}]"
        if not isinstance(ann, dict) or not {"image_id", "category_id", "bbox"} <= set(ann):
            raise SpecError(f"{where}: expected 'image_id', 'category_id' and 'bbox'")
        if ann["image_id"] not in images:
            raise SpecError(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
        if ann["category_id"] not in categories:
            raise SpecError(f"{where}: category_id {ann['category_id']!r} is not in "
                            "'categories'")
        if ann.get("iscrowd"):
            warnings["crowd annotation skipped"] += 1
            continue
        box = _coco_box(ann["bbox"], where)
        objects[ann["image_id"]].append((categories[ann["category_id"]], box))
    raw = []
    for image_id, name in images.items():
        if not objects[image_id]:
            warnings["image without objects skipped"] += 1
            continue
        label, boxes, others = _largest_class(objects[image_id])
        warnings["objects of another class left out"] += others
        raw.append(RawRecord(name, label, boxes, None, f"{path}: image id {image_id}"))
    if not raw:
        raise SpecError(f"{path}: no image has an object")
    names = [categories[k] for k in sorted(categories)]
    return raw, names, warnings


def _coco_box(bbox: Any, where: str) -> Box:
    """COCO's [x, y, width, height] (continuous, pixel edges) as an inclusive pixel box; a
    side under one pixel counts as one pixel."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise SpecError(f"{where}: bbox must be 4 numbers [x, y, width, height], "
                        f"got {bbox!r}") from None
    if not all(map(math.isfinite, (x, y, w, h))) or w < 0 or h < 0:
        raise SpecError(f"{where}: bbox {bbox!r} needs finite numbers and width, height >= 0")
    return x, y, x + max(w, 1.0) - 1, y + max(h, 1.0) - 1


READERS = {"csv": read_csv, "json": read_json, "voc": read_voc, "coco": read_coco}


def detect_format(path: Path) -> str:
    """``voc`` for a folder, ``csv`` for ``.csv``, ``coco`` for a ``.json`` holding an object
    with ``images`` and ``annotations``, ``json`` for another ``.json``."""
    if path.is_dir():
        return "voc"
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix == ".json":
        head = path.read_bytes()[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
        return "coco" if head.startswith(b"{") else "json"
    raise SpecError(f"annotation file {path}: cannot tell its format from the name; expected "
                    f"a .csv or .json file or a Pascal VOC folder, or name the format "
                    f"(--annotation-format {'/'.join(ANNOTATION_FORMATS)})")


def read_annotations(path: str | Path, class_names: Sequence[str] | None = None,
                     annotation_format: str | None = None) -> Annotations:
    """Read an annotation file or folder (format from the path unless ``annotation_format``)
    and resolve its labels against ``class_names`` (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"annotation file {path} does not exist")
    if not (path.is_file() or path.is_dir()):
        raise SpecError(f"annotation file {path} is not a regular file")
    kind = annotation_format or detect_format(path)
    if kind not in READERS:
        raise SpecError(f"annotation format {kind!r}: expected one of {ANNOTATION_FORMATS}")
    if (kind == "voc") != path.is_dir():
        raise SpecError(f"annotation format {kind}: {path} is "
                        f"{'a folder' if path.is_dir() else 'a file'}; the voc format is a "
                        "folder of XML files, the others a file")
    try:
        raw, carried, warnings = READERS[kind](path)
    except UnicodeDecodeError as error:
        raise SpecError(f"annotation file {path} is not UTF-8 text ({error.reason} at byte "
                        f"{error.start})") from None
    records, names = resolve_labels(raw, class_names, carried)
    return Annotations(records, names, {k: v for k, v in warnings.items() if v})
