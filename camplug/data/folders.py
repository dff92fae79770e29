"""User datasets: an image folder with an annotation file (formats: ``camplug.data.annotations``)
or in torchvision's ImageFolder layout (one subfolder per class), and ``open_dataset``.

ImageFolder layout: ``root/<class>/<image>``; the classes are the sorted subfolder names
(index = position, as torchvision assigns them; with a class list given, a folder's index
in that list), images are the files with an image suffix
(``IMAGE_SUFFIXES``) in each, by sorted path; their ids are the paths relative to ``root``, so
equal file names in two classes stay two samples. A class folder without images keeps its
index and is counted in the warnings.

Images of any mode are converted to RGB in [0, 1] (16-bit grayscale scaled by its range:
``image_pixels``), resized to ``image_size`` (boxes scaled with them; None keeps the original
size) and normalized with ``mean`` / ``std`` (ImageNet's by default). Only regular files
inside the image folder are read. A box reaching past its image is clipped to it (the item's
``warnings`` say so); a box wholly outside, or a file that is missing, truncated or not an
image, raises when its item is read; the audit records it as an error row and goes on.
"""

from __future__ import annotations

import math
import stat
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from camplug.data.annotations import (
    ANNOTATION_FORMATS,
    Annotations,
    RawRecord,
    read_annotations,
    resolve_labels,
)
from camplug.data.boxes import clip_boxes
from camplug.data.specs import SpecError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's IMG_EXTENSIONS
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def image_folder_annotations(root: Path,
                             class_names: Sequence[str] | None = None) -> Annotations:
    """The records of an ImageFolder layout (see the module docstring); with ``class_names``
    (the model's class list) a folder's label is its name's position in that list (a folder
    name missing from it is an error listing the known ones). Raises ``SpecError`` when
    ``root`` has no class folder or no image at all."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        loose = [p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        hint = (f"it holds {len(loose)} images but no class subfolders: give their labels "
                "with --annotations" if loose else "it is empty")
        raise SpecError(f"image folder {root}: {hint} (expected one subfolder per class, or an "
                        f"annotation file)")
    raw: list[RawRecord] = []
    warnings: Counter[str] = Counter()
    for name in classes:
        files = sorted(p for p in (root / name).rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not files:
            warnings["class folder without images"] += 1
        raw += [RawRecord(p.relative_to(root).as_posix(), name, (), None,
                          f"image folder {root / name}") for p in files]
    if not raw:
        raise SpecError(f"image folder {root}: none of its {len(classes)} class folders holds an "
                        f"image ({', '.join(IMAGE_SUFFIXES)})")
    records, names = resolve_labels(raw, class_names, classes)
    return Annotations(records, names, dict(warnings))


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
    """Images under ``root``, annotated by ``annotations`` (a file or VOC folder, format
    ``annotation_format`` or detected) or, when None, by their ImageFolder class subfolders.

    ``ds[i]`` -> {"image": float32 [3, H, W] normalized, "label": int, "boxes": float32 [M, 4]
    (M = 0 without boxes), "mask": bool [H, W] (only when the record names one), "id": the file
    name, "warnings": list of str}. ``class_names``: the model's class list for name labels;
    ``self.class_names`` is the list in use (the format's own when none is given) and
    ``self.warnings`` what reading the annotations skipped (kind -> count). Only regular
    files inside ``root`` are read: a file or mask path leaving it (``../``, an absolute path,
    a symbolic link pointing out) or naming a non-regular file (a named pipe, a device) makes
    that item fail with a message saying so.
    """

    def __init__(
        self,
        root: str | Path,
        annotations: str | Path | None = None,
        *,
        annotation_format: str | None = None,
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
        self.annotations = None if annotations is None else Path(annotations)
        self.annotation_format = annotation_format
        self.requested_class_names = None if class_names is None else list(class_names)
        if self.annotations is None:
            found = image_folder_annotations(self.root, class_names)
        else:
            found = read_annotations(self.annotations, class_names, annotation_format)
        self.records, self.class_names, self.warnings = (
            found.records, found.class_names, found.warnings)
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else image_size
        if self.image_size is not None and min(self.image_size) < 1:
            raise SpecError(f"image_size must be positive, got {image_size}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

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
            original = torch.tensor(record.boxes, dtype=torch.float64).reshape(-1, 4)
            try:
                inside, warnings = clip_boxes(original, old_size[1], old_size[0])
            except ValueError as error:
                raise ValueError(f"{record.file}: {error}") from None
            new_size = self.image_size or old_size
            pixels = torch.from_numpy(image_pixels(opened, new_size)).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        boxes = [scale_box(b, old_size, new_size) for b in inside.tolist()]
        item = {
            "image": ((pixels - mean) / std).contiguous(),
            "label": record.label,
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "id": record.file,
            "warnings": warnings,
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

    def rgb(self, index: int) -> np.ndarray:
        """The displayable image of item ``index`` at the audited size: uint8 [H, W, 3]."""
        from PIL import Image

        with Image.open(self.path(self.records[index].file)) as opened:
            opened.load()
            pixels = image_pixels(opened, self.image_size or (opened.height, opened.width))
        return np.round(pixels * 255.0).astype(np.uint8)

    def source(self) -> dict[str, Any] | None:
        """The keyword arguments of ``open_dataset`` that open this dataset again (None for a
        non-square size, which ``open_dataset`` cannot express)."""
        size = self.image_size
        if size is not None and size[0] != size[1]:
            return None
        return {"spec": str(self.root.resolve()),
                "annotations": self.annotations and str(self.annotations.resolve()),
                "annotation_format": self.annotation_format, "image_size": size[0] if size else 0,
                "mean": list(self.mean), "std": list(self.std),
                "class_names": self.requested_class_names}

    def describe(self) -> str:
        """A one-line description for the runs table."""
        source = self.annotations or "class folders"
        return f"{source} ({len(self)} images under {self.root})"

    def fingerprint(self) -> str:
        """A digest of the records, class names, the loading options and every image and mask
        file's ``file_signature`` (for the run's identity: changed images make another run)."""
        import hashlib

        root = self.root.resolve()
        digest = hashlib.sha256(repr((self.records, self.class_names)).encode())
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
    annotation_format: str | None = None,
    image_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    class_names: Sequence[str] | None = None,
    n: int = 512,
    seed: int = 0,
) -> torch.utils.data.Dataset:
    """The dataset named by ``spec``: ``synthetic`` / ``synthetic:easy`` / ``synthetic:hard``
    (the built-in benchmark: ``n`` images of ``image_size`` pixels, default 96, from ``seed``),
    or an image folder: annotated by ``annotations`` (format ``annotation_format``, one of
    ``ANNOTATION_FORMATS``, or detected from the path), else by the folder's
    ``annotations.csv``, ``annotations.json`` or ``boxes.csv`` (as written by
    ``camplug.data.synthetic.export_image_folder``), else by its class subfolders
    (ImageFolder layout). ``image_size`` default 224, 0 keeps each image's own size.
    ``mean``, ``std`` and ``class_names`` (default: the folder's ``class_names.txt``, one name
    per line, when present) apply to image folders only."""
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
    if annotation_format is not None and annotation_format not in ANNOTATION_FORMATS:
        raise SpecError(f"annotation format {annotation_format!r}: expected one of "
                        f"{ANNOTATION_FORMATS}")
    if annotations is None:
        found = [root / f for f in DEFAULT_ANNOTATIONS if (root / f).is_file()]
        annotations = found[0] if found else None
    if annotations is None and annotation_format is not None:
        raise SpecError(f"--annotation-format {annotation_format} needs an annotation file "
                        f"(--annotations); none of {', '.join(DEFAULT_ANNOTATIONS)} is in {root}")
    if class_names is None and (root / "class_names.txt").is_file():
        lines = (root / "class_names.txt").read_text().splitlines()
        class_names = [line.strip() for line in lines if line.strip()]
    return AnnotatedImageFolder(
        root, annotations, annotation_format=annotation_format,
        image_size=224 if image_size is None else (image_size or None),
        mean=mean, std=std, class_names=class_names,
    )
