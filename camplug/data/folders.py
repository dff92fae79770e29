"""User datasets: an image folder plus an annotation file (CSV or JSON), and ``open_dataset``.

  - CSV, with a header row ``filename,label,x0,y0,x1,y1`` (extra columns ignored): one row per
    object; several rows for one file are several objects of the image's (single) label.
  - JSON: a list of ``{"file": "a.png", "label": 3, "boxes": [[x0, y0, x1, y1], ...],
    "mask": "a_mask.png"}`` (``mask`` optional: a grayscale image, object where non-zero).
  ``filename`` / ``file`` are paths relative to the image folder. Box corners are inclusive
  pixel coordinates in the original image (x to the right, y down); boxes reaching past the
  image are clipped to it. A ``label`` is a class index, or a class name when ``class_names``
  is given. Images of any mode are converted to RGB in [0, 1] (16-bit grayscale scaled by
  its range: ``image_pixels``), resized to ``image_size`` (boxes scaled with them; None keeps
  the original size) and normalized with ``mean`` / ``std`` (ImageNet's by default). Only
  regular files inside the image folder are read. A CSV may start with a UTF-8 byte order
  mark (as Excel writes it). A file that is missing, truncated or not an image raises
  ``OSError`` when its item is read; the audit records it as an error row and goes on.
"""

from __future__ import annotations

import csv
import json
import math
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from camplug.data.specs import SpecError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CSV_COLUMNS = ("filename", "label", "x0", "y0", "x1", "y1")


# user datasets ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageRecord:
    """One annotated image: ``boxes`` are (x0, y0, x1, y1) inclusive, original pixels."""

    file: str
    label: int
    boxes: tuple[tuple[float, float, float, float], ...]
    mask: str | None = None


def _parse_label(value: Any, where: str, class_names: Sequence[str] | None) -> int:
    if isinstance(value, bool):
        raise SpecError(f"{where}: label {value!r} is not a class index")
    if isinstance(value, int):
        label = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        label = int(value)
    elif isinstance(value, str) and class_names is not None and value in class_names:
        return list(class_names).index(value)
    else:
        hint = "" if class_names is None else f" nor one of the class names {list(class_names)}"
        raise SpecError(f"{where}: label {value!r} is not a class index{hint}")
    if label < 0:
        raise SpecError(f"{where}: label {label} is negative")
    return label


def _parse_box(values: Sequence[Any], where: str) -> tuple[float, float, float, float]:
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
    if x1 < 0 or y1 < 0:
        raise SpecError(f"{where}: box {list(values)} lies left of or above the image")
    return x0, y0, x1, y1


def read_csv_annotations(
    path: str | Path, class_names: Sequence[str] | None = None
) -> list[ImageRecord]:
    """Records from a ``filename,label,x0,y0,x1,y1`` CSV, grouped by file in first-seen order."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as handle:  # accepts Excel's BOM
        reader = csv.DictReader(handle)
        header = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise SpecError(
                f"{path}: the header must contain {','.join(CSV_COLUMNS)}; missing {missing} "
                f"(found {header})"
            )
        reader.fieldnames = header
        grouped: dict[str, tuple[int, list]] = {}
        for line, row in enumerate(reader, start=2):
            where = f"{path}:{line}"
            name = (row["filename"] or "").strip()
            if not name:
                raise SpecError(f"{where}: empty filename")
            label = _parse_label((row["label"] or "").strip(), where, class_names)
            box = _parse_box([row[c] for c in ("x0", "y0", "x1", "y1")], where)
            if name in grouped and grouped[name][0] != label:
                raise SpecError(
                    f"{where}: {name} has label {label} here but {grouped[name][0]} on an earlier "
                    "line; an image has one label"
                )
            grouped.setdefault(name, (label, []))[1].append(box)
    if not grouped:
        raise SpecError(f"{path}: no annotation rows")
    return [ImageRecord(name, label, tuple(boxes)) for name, (label, boxes) in grouped.items()]


def read_json_annotations(
    path: str | Path, class_names: Sequence[str] | None = None
) -> list[ImageRecord]:
    """Records from a JSON list of ``{"file", "label", "boxes", "mask"?}`` objects."""
    path = Path(path)
    try:
        items = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise SpecError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(items, list) or not items:
        raise SpecError(f"{path}: expected a non-empty JSON list of image objects")
    records, seen = [], set()
    for i, item in enumerate(items):
        where = f"{path}: item {i}"
        if not isinstance(item, dict) or not {"file", "label", "boxes"} <= set(item):
            raise SpecError(f"{where}: expected an object with 'file', 'label' and 'boxes'")
        name = item["file"]
        if not isinstance(name, str) or not name:
            raise SpecError(f"{where}: 'file' must be a non-empty string")
        if name in seen:
            raise SpecError(f"{where}: {name} appears twice; list all its boxes in one item")
        seen.add(name)
        boxes = item["boxes"]
        if not isinstance(boxes, list) or not boxes:
            raise SpecError(f"{where}: 'boxes' must be a non-empty list of [x0, y0, x1, y1]")
        mask = item.get("mask")
        if mask is not None and not isinstance(mask, str):
            raise SpecError(f"{where}: 'mask' must be a file name")
        records.append(ImageRecord(
            name, _parse_label(item["label"], where, class_names),
            tuple(_parse_box(b if isinstance(b, list) else [b], where) for b in boxes), mask,
        ))
    return records


def read_annotations(
    path: str | Path, class_names: Sequence[str] | None = None
) -> list[ImageRecord]:
    """Dispatch on the suffix: ``.csv`` or ``.json``."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"annotation file {path} does not exist")
    if not path.is_file():
        raise SpecError(f"annotation file {path} is not a regular file")
    readers = {".csv": read_csv_annotations, ".json": read_json_annotations}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise SpecError(f"annotation file {path}: expected a .csv or .json file")
    try:
        return reader(path, class_names)
    except UnicodeDecodeError as error:
        raise SpecError(f"annotation file {path} is not UTF-8 text ({error.reason} at byte "
                        f"{error.start})") from None


def scale_box(
    box: Sequence[float], old_size: tuple[int, int], new_size: tuple[int, int]
) -> tuple[float, float, float, float]:
    """Map an inclusive pixel box from an image of ``old_size`` (H, W) to ``new_size``,
    clipped to the image. Pixel x covers [x, x + 1), so the box covers [x0, x1 + 1)."""
    (old_h, old_w), (new_h, new_w) = old_size, new_size
    sx, sy = new_w / old_w, new_h / old_h
    x0, y0, x1, y1 = box
    nx0 = math.floor(max(x0, 0.0) * sx)
    ny0 = math.floor(max(y0, 0.0) * sy)
    nx1 = math.ceil(min(x1 + 1.0, old_w) * sx) - 1
    ny1 = math.ceil(min(y1 + 1.0, old_h) * sy) - 1
    return (float(nx0), float(ny0), float(max(nx1, nx0)), float(max(ny1, ny0)))


HIGH_DEPTH_RANGE = 65535.0  # "I;16*" and "I" images: 16-bit grey levels
SIGNATURE_BYTES = 64 * 1024  # a file's identity: size, mtime and a hash of its ends


def image_pixels(image: Any, size: tuple[int, int] | None = None) -> np.ndarray:
    """A Pillow image as float32 [H, W, 3] in [0, 1], resized (bilinear) to ``size`` (H, W)
    when given. 8-bit modes (RGB, grayscale, RGBA, palette, CMYK, ...) go through Pillow's RGB
    conversion (alpha dropped, as torchvision's loader does); 16-bit and 32-bit integer
    grayscale ("I;16", "I;16B", "I") are scaled by the 16-bit range 0..65535 (Pillow's own
    conversion would clip them to 255, making them white); float grayscale ("F") is taken as
    [0, 1]. Values outside the range are clipped."""
    from PIL import Image

    if image.mode.startswith("I") or image.mode == "F":
        scale = 1.0 if image.mode == "F" else HIGH_DEPTH_RANGE
        grey = Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) / scale, 0.0, 1.0))
        if size is not None and size != (grey.height, grey.width):
            grey = grey.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        return np.repeat(np.asarray(grey, dtype=np.float32)[..., None], 3, axis=2)
    rgb = image.convert("RGB")
    if size is not None and size != (rgb.height, rgb.width):
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.float32) / 255.0


def mask_pixels(image: Any, size: tuple[int, int] | None = None) -> np.ndarray:
    """A mask image as bool [H, W] (object where any channel is non-zero, any bit depth),
    resized (nearest) to ``size`` (H, W) when given."""
    from PIL import Image

    values = np.asarray(image)
    mask = (values != 0).any(axis=-1) if values.ndim == 3 else values != 0
    if size is not None and size != mask.shape:
        resized = Image.fromarray(mask.astype(np.uint8) * 255).resize(
            (size[1], size[0]), Image.Resampling.NEAREST)
        mask = np.asarray(resized) > 0
    return mask


def file_signature(path: Path) -> bytes:
    """What identifies a file's content cheaply: size, modification time and a hash of its first
    and last 64 KiB; a marker instead for a missing or non-regular file (never opened, so a
    named pipe cannot block)."""
    import hashlib

    try:
        info = path.stat()
    except OSError:
        return b"missing"
    if not stat.S_ISREG(info.st_mode):
        return b"not a regular file"
    digest = hashlib.sha256(f"{info.st_size}:{info.st_mtime_ns}".encode())
    try:
        with path.open("rb") as handle:
            digest.update(handle.read(SIGNATURE_BYTES))
            if info.st_size > SIGNATURE_BYTES:
                handle.seek(max(SIGNATURE_BYTES, info.st_size - SIGNATURE_BYTES))
                digest.update(handle.read(SIGNATURE_BYTES))
    except OSError:
        return b"unreadable"
    return digest.digest()


class AnnotatedImageFolder(torch.utils.data.Dataset):
    """Images under ``root`` annotated by a CSV or JSON file (format: module docstring).

    ``ds[i]`` -> {"image": float32 [3, H, W] normalized, "label": int, "boxes": float32 [M, 4],
    "mask": bool [H, W] (only when the record names one), "id": the file name}. Only regular
    files inside ``root`` are read: a file or mask path leaving it (``../``, an absolute path,
    a symbolic link pointing out) or naming a non-regular file (a named pipe, a device) makes
    that item fail with a message saying so.
    """

    def __init__(
        self,
        root: str | Path,
        annotations: str | Path,
        *,
        image_size: int | tuple[int, int] | None = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise SpecError(f"image folder {self.root} does not exist")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise SpecError(f"mean and std need 3 values (std > 0), got {mean} and {std}")
        self.annotations = Path(annotations)
        self.records = read_annotations(self.annotations, class_names)
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else image_size
        if self.image_size is not None and min(self.image_size) < 1:
            raise SpecError(f"image_size must be positive, got {image_size}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.class_names = list(class_names) if class_names is not None else None

    def __len__(self) -> int:
        return len(self.records)

    def path(self, name: str, what: str = "image") -> Path:
        """The file ``name`` of an annotation, checked: inside the folder and a regular file
        (``ValueError`` / ``FileNotFoundError`` / ``OSError`` saying which is not so)."""
        root = self.root.resolve()
        path = (root / name).resolve()
        if not path.is_relative_to(root):
            raise ValueError(f"{what} path {name!r} leads outside the image folder {root}; "
                             "only files inside it are read")
        if not path.exists():
            raise FileNotFoundError(f"{what} {name} does not exist under {root}")
        if not path.is_file():
            raise OSError(f"{what} {name} is not a regular file")
        return path

    def __getitem__(self, index: int) -> dict[str, Any]:
        from PIL import Image

        record = self.records[index]
        with Image.open(self.path(record.file)) as opened:
            opened.load()  # decode now, so a truncated file fails here
            old_size = (opened.height, opened.width)
            for box in record.boxes:
                if box[0] >= old_size[1] or box[1] >= old_size[0]:
                    raise ValueError(
                        f"box {list(box)} of {record.file} lies outside the image "
                        f"({old_size[1]}x{old_size[0]} pixels)"
                    )
            new_size = self.image_size or old_size
            pixels = torch.from_numpy(image_pixels(opened, new_size)).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        boxes = [scale_box(b, old_size, new_size) for b in record.boxes]
        item = {
            "image": ((pixels - mean) / std).contiguous(),
            "label": record.label,
            "boxes": torch.tensor(boxes, dtype=torch.float32),
            "id": record.file,
        }
        if record.mask is not None:
            with Image.open(self.path(record.mask, "mask")) as opened:
                opened.load()
                if (opened.height, opened.width) != old_size:
                    raise OSError(
                        f"mask {record.mask} is {opened.width}x{opened.height}, its image "
                        f"{record.file} is {old_size[1]}x{old_size[0]}"
                    )
                item["mask"] = torch.from_numpy(mask_pixels(opened, new_size))
        return item

    def describe(self) -> str:
        """A one-line description for the runs table."""
        return f"{self.annotations} ({len(self)} images under {self.root})"

    def fingerprint(self) -> str:
        """A digest of the annotations, the loading options and every image and mask file's
        ``file_signature`` (for the run's identity: changed images make another run)."""
        import hashlib

        root = self.root.resolve()
        digest = hashlib.sha256(self.annotations.read_bytes())
        digest.update(repr((str(root), self.image_size, self.mean, self.std)).encode())
        names = sorted({r.file for r in self.records}
                       | {r.mask for r in self.records if r.mask is not None})
        for name in names:
            path = (root / name).resolve()
            digest.update(name.encode() + b"\0")
            digest.update(file_signature(path) if path.is_relative_to(root) else b"outside")
        return digest.hexdigest()[:16]


SYNTHETIC_SPLITS = ("easy", "hard")
DEFAULT_ANNOTATIONS = ("annotations.csv", "annotations.json", "boxes.csv")


def open_dataset(
    spec: str,
    *,
    annotations: str | Path | None = None,
    image_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    class_names: Sequence[str] | None = None,
    n: int = 512,
    seed: int = 0,
) -> torch.utils.data.Dataset:
    """The dataset named by ``spec``: ``synthetic`` / ``synthetic:easy`` / ``synthetic:hard``
    (the built-in benchmark: ``n`` images of ``image_size`` pixels, default 96, from ``seed``),
    or an image folder annotated by ``annotations`` (default: the folder's
    ``annotations.csv``, ``annotations.json`` or ``boxes.csv``, as written by
    ``camplug.data.synthetic.export_image_folder``; ``image_size`` default 224, 0 keeps each image's
    own size). ``mean``, ``std`` and ``class_names`` (default: the folder's ``class_names.txt``,
    one name per line, when present) apply to image folders only."""
    name, _, split = spec.partition(":")
    if name == "synthetic":
        from camplug.data.synthetic import SyntheticLocalization

        split = split or "easy"
        if image_size == 0:
            raise SpecError("the synthetic dataset needs a positive image size")
        if split not in SYNTHETIC_SPLITS:
            raise SpecError(f"dataset {spec!r}: the synthetic splits are {SYNTHETIC_SPLITS}")
        return SyntheticLocalization(n=n, split=split, image_size=image_size or 96, seed=seed)
    root = Path(spec)
    if not root.is_dir():
        raise SpecError(
            f"dataset {spec!r} is neither 'synthetic[:easy|hard]' nor an existing image folder"
        )
    if annotations is None:
        found = [root / f for f in DEFAULT_ANNOTATIONS if (root / f).is_file()]
        if not found:
            raise SpecError(
                f"no annotation file given and none of {', '.join(DEFAULT_ANNOTATIONS)} in {root}"
            )
        annotations = found[0]
    if class_names is None and (root / "class_names.txt").is_file():
        lines = (root / "class_names.txt").read_text().splitlines()
        class_names = [line.strip() for line in lines if line.strip()]
    return AnnotatedImageFolder(
        root, annotations,
        image_size=224 if image_size is None else (image_size or None),
        mean=mean, std=std, class_names=class_names,
    )
