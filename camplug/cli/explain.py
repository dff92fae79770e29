"""``camplug explain``: the maps of a model's top classes for image files, as overlay PNGs."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from .options import (
    UserError,
    add_model_options,
    device,
    floats,
    load_model,
    non_negative,
    positive,
)

DEFAULT_IMAGE_SIZE = 224  # models that do not state their input size (``model.image_size``)
UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``explain``."""
    explain = commands.add_parser(
        "explain", help="overlay PNGs of a model's maps for image files",
        description="Run the model on each image, print its top classes (with names when the "
        "model has class_names, as the demo model does) and write one PNG per image and class: "
        "the class's map over the image, at the image's own size, named "
        "<image>_top<rank>_<class>.png.")
    add_model_options(explain)
    explain.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                         help="image files (any format Pillow reads)")
    explain.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    explain.add_argument("--method", default="auto",
                         help="map method, e.g. cam, gradcam (default auto: CAM on an exact "
                         "GAP + linear head, else Grad-CAM)")
    explain.add_argument("--topk", type=positive, default=3,
                         help="classes per image, best first (default %(default)s)")
    explain.add_argument("--image-size", type=non_negative,
                         help="resize to this square size for the model (default: the model's "
                         f"image_size, e.g. the demo model's 96, else {DEFAULT_IMAGE_SIZE}; 0 "
                         "keeps each image's size)")
    explain.add_argument("--mean", type=floats,
                         help="normalization mean (default: the demo model's for demo, else "
                         "ImageNet's 0.485,0.456,0.406)")
    explain.add_argument("--std", type=floats, help="normalization std (see --mean)")
    explain.add_argument("--alpha", type=float, default=0.5,
                         help="weight of the map over the image, in [0, 1] (default %(default)s)")
    explain.add_argument("--colormap", default="jet",
                         help="matplotlib colormap of the map (default %(default)s)")
    explain.add_argument("--device", type=device, help="e.g. cpu, cuda (default cpu)")
    explain.set_defaults(run=cmd_explain)


def read_images(paths: list[Path]) -> list[Any]:
    """Every image decoded (Pillow images), or one ``UserError`` naming each unreadable file
    and why (nothing is run or written then)."""
    from PIL import Image, UnidentifiedImageError

    images, problems = [], []
    for path in paths:
        try:
            with Image.open(path) as opened:
                opened.load()
                images.append(opened.copy())
        except FileNotFoundError:
            problems.append(f"{path}: no such file")
        except IsADirectoryError:
            problems.append(f"{path}: is a directory, not an image")
        except UnidentifiedImageError:
            problems.append(f"{path}: not an image Pillow can read")
        except (OSError, ValueError, SyntaxError) as error:  # truncated or corrupt data
            problems.append(f"{path}: {error}")
    if problems:
        raise UserError("cannot read " + ("; ".join(problems)))
    return images


def _normalization(args: argparse.Namespace) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from camplug.data.folders import IMAGENET_MEAN, IMAGENET_STD
    from camplug.data.specs import DEMO_MODEL_SPECS

    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if args.model in DEMO_MODEL_SPECS:
        from camplug.data.synthetic import MEAN, STD

        mean, std = MEAN, STD
    mean, std = args.mean or mean, args.std or std
    for name, values in (("--mean", mean), ("--std", std)):
        if len(values) != 3:
            raise UserError(f"{name} needs 3 values (R, G, B), got {len(values)}")
    if min(std) <= 0:
        raise UserError(f"--std values must be positive, got {list(std)}")
    return tuple(mean), tuple(std)


def output_names(paths: list[Path]) -> list[str]:
    """A file-name stem per image: its own stem, prefixed with its position when two images
    share a stem; characters other than letters, digits, '.', '_' and '-' become '_'."""
    stems = [UNSAFE_NAME.sub("_", p.stem) or "image" for p in paths]
    return [f"{k:03d}_{s}" if stems.count(s) > 1 else s for k, s in enumerate(stems)]


def class_label(names: Any, index: int) -> str:
    """``name (index)`` when the model names its classes, else the index."""
    if names is not None and 0 <= index < len(names):
        return f"{names[index]} ({index})"
    return str(index)


def cmd_explain(args: argparse.Namespace) -> int:
    if not 0.0 <= args.alpha <= 1.0:
        raise UserError(f"--alpha must be in [0, 1], got {args.alpha}")
    from camplug.drawing import get_colormap

    get_colormap(args.colormap)  # an unknown name fails before any work
    pictures = read_images(args.images)
    mean, std = _normalization(args)

    import numpy as np
    import torch
    from PIL import Image

    import camplug
    from camplug.data.folders import image_pixels
    from camplug.drawing import overlay

    model = load_model(args)
    if args.device:
        model = model.to(args.device)
    names = getattr(model, "class_names", None)
    size = args.image_size if args.image_size is not None else getattr(
        model, "image_size", DEFAULT_IMAGE_SIZE)
    args.out.mkdir(parents=True, exist_ok=True)
    mean_t, std_t = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    for path, stem, picture in zip(args.images, output_names(args.images), pictures,
                                   strict=True):
        pixels = image_pixels(picture, (size, size) if size else None)  # [H, W, 3] in [0, 1]
        x = ((torch.from_numpy(pixels).permute(2, 0, 1) - mean_t) / std_t)[None]
        result = camplug.explain(model, x.to(args.device or "cpu"), topk=args.topk,
                                 method=args.method, layer=args.layer, output=args.output,
                                 size="features")
        probs = result.logits.detach().float().softmax(dim=1)[0].cpu()
        original = image_pixels(picture)  # the overlay is drawn at the image's own size
        print(f"{path} ({result.method}):")
        for rank, cls in enumerate(result.targets[0].tolist(), start=1):
            label = class_label(names, cls)
            safe = UNSAFE_NAME.sub("_", str(names[cls]) if names is not None
                                   and 0 <= cls < len(names) else str(cls))
            target = args.out / f"{stem}_top{rank}_{safe}.png"
            heat = overlay(original, result.maps[0, rank - 1].float(),
                                   alpha=args.alpha, colormap=args.colormap)
            Image.fromarray(np.ascontiguousarray(heat)).save(target)
            print(f"  {rank}. {label}  p = {float(probs[cls]):.3f}  -> {target}")
    return 0
