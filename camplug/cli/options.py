"""Argument types and option groups shared by the commands, and the errors the CLI reports
as ``camplug: error: ...``. Nothing here imports torch."""

from __future__ import annotations

import argparse
import importlib.util
import math
from collections.abc import Callable
from pathlib import Path

DEMO_SEED = 2  # the shipped model trained on seed 0 and validated on seed 1: 2 is unseen
DEMO_SIZE = 512
DEFAULT_AUDIT_METHOD = "cam"
# camplug.metrics' box protocols, the default first (spelled out: the parser imports no torch)
PROTOCOLS = ("camplug", "wsolevaluation")


class UserError(Exception):
    """A mistake in the command line the CLI reports as ``camplug: error: ...`` (exit status 2)
    instead of a traceback; raised by the CLI itself (e.g. a missing optional dependency)."""


# Exceptions that mean bad input, not a bug: the project raises ValueError (and its subclasses
# SpecError and UnsupportedHeadError) for bad arguments, and these OSErrors for user paths.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError, ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
    PermissionError,
)


def floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return values


def integer(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse type: an int >= ``minimum``, described as ``what`` in the error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def number(low: float, high: float, what: str, *, low_open: bool = False,
            high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float in [low, high] (``*_open``: that end excluded)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        inside = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high)
        if not inside:  # also NaN
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive = integer(1, "a positive integer")
non_negative = integer(0, "an integer >= 0")
fraction = number(0.0, 1.0, "a value in [0, 1]")
step = number(0.0, 1.0, "a value in (0, 1]", low_open=True)
non_negative_float = number(0.0, math.inf, "a finite number >= 0", high_open=True)
percent = number(0.0, 100.0, "a value in (0, 100]", low_open=True)
border = number(0.0, 0.5, "a value in [0, 0.5]")
# camplug.data.annotations.ANNOTATION_FORMATS (spelled out: the parser imports no torch)
ANNOTATION_FORMATS = ("csv", "json", "voc", "coco")


def device(text: str) -> str:
    """A torch device string this machine has (checked here, not deep inside the run)."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a torch device; expected e.g. cpu, cuda or cuda:1"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise argparse.ArgumentTypeError(
                f"{text!r}: this torch sees no CUDA GPU (torch.cuda.is_available() is False); "
                "use cpu"
            )
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(
                f"{text!r}: only {count} CUDA GPU(s) visible, cuda:0 to cuda:{count - 1}"
            )
    return text


def table_path(text: str) -> Path:
    """``compare --out``: a path whose suffix names the format (``TABLE_SUFFIXES``)."""
    from camplug.comparison.table import TABLE_SUFFIXES

    path = Path(text)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the format follows the suffix, one of {', '.join(TABLE_SUFFIXES)}"
        )
    return path


def output_selector(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="demo",
        help="'demo' (the shipped model; 'demo:hard' for the hard split), "
        "'torchvision:NAME' or 'timm:NAME' (e.g. torchvision:resnet50, timm:convnext_tiny; "
        "that package must be installed; weights from --checkpoint), "
        "'package.module:factory' or 'file.py:factory' (called with no arguments; this runs "
        "that code) (default: demo)")
    parser.add_argument("--checkpoint", type=Path,
                        help="state dict loaded into the model with torch.load(weights_only=True)")
    parser.add_argument("--random-weights", action="store_true",
                        help="allow a torchvision:/timm: model without --checkpoint (its random "
                        "initialization; camplug never downloads weights)")
    parser.add_argument("--layer", help="module whose output feeds global pooling (default: "
                        "found automatically)")
    parser.add_argument("--output", type=output_selector,
                        help="index or key of the logits when the model returns a tuple or dict")


def add_data_options(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--data", default=default, required=default is None,
        help="'synthetic', 'synthetic:easy' or 'synthetic:hard' (the built-in benchmark), or "
        "an image folder: one subfolder per class (torchvision's ImageFolder layout; labels "
        "only) or any layout with --annotations")
    parser.add_argument(
        "--annotations", type=Path,
        help="labels (and optional boxes) of an image folder: CSV (filename,label[,x0,y0,x1,y1]; "
        "one row per object, inclusive pixel corners), JSON ([{\"file\", \"label\", "
        "\"boxes\"?, \"mask\"?}]), a Pascal VOC Annotations/ folder or a COCO instances JSON "
        "(default: the folder's annotations.csv, annotations.json or boxes.csv, else its class "
        "subfolders)")
    parser.add_argument("--annotation-format", choices=ANNOTATION_FORMATS,
                        help="the format of --annotations (default: from the path: a folder is "
                        "voc, .csv csv, a .json object with images and annotations coco, "
                        "another .json json)")
    parser.add_argument("--image-size", type=non_negative,
                        help="resize images to this square size (synthetic default 96, folders "
                        "224, or the demo model's 96 with --model demo; 0 keeps a folder's "
                        "image sizes)")
    parser.add_argument("--mean", type=floats,
                        help="normalization mean, e.g. 0.485,0.456,0.406 (folders; default "
                        "ImageNet's, or the demo model's with --model demo)")
    parser.add_argument("--std", type=floats, help="normalization std (folders)")
    parser.add_argument("--class-names", type=Path,
                        help="the model's classes, one name per line: name labels and class "
                        "folders map to their line (from 0) (default: the folder's "
                        "class_names.txt, else the names the annotations carry, sorted)")
    # not "--n": torchrun would take it for an abbreviation of its own options
    parser.add_argument("--num-images", type=positive, default=DEMO_SIZE,
                        help="synthetic: number of images (default %(default)s)")
    parser.add_argument("--seed", type=non_negative, default=DEMO_SEED,
                        help=f"synthetic: seed (default {DEMO_SEED}, unseen by the demo model)")


def add_run_options(parser: argparse.ArgumentParser, out: str | None) -> None:
    parser.add_argument("--out", type=Path, default=out, required=out is None,
                        help="output folder: audit.sqlite and report.html"
                        + (f" (default {out})" if out else ""))
    parser.add_argument("--method", default=DEFAULT_AUDIT_METHOD,
                        help="the attribution method audited (default %(default)s)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default=PROTOCOLS[0],
                        help="box protocol of MaxBoxAcc: 'camplug' (tight boxes of the "
                        "8-connected foreground components) or 'wsolevaluation' (Choe et al.'s "
                        "code exactly: OpenCV box ends, one pixel past the last) (default "
                        "%(default)s)")
    parser.add_argument("--batch-size", type=positive, default=64)
    parser.add_argument("--workers", type=non_negative, default=0,
                        help="DataLoader worker processes (default 0: load in this process)")
    parser.add_argument("--device", type=device,
                        help="e.g. cpu, cuda, cuda:1 (default: cuda when present)")
    parser.add_argument("--thresholds-step", type=step, default=0.01,
                        help="CAM threshold grid step for MaxBoxAcc and PxAP, in (0, 1] "
                        "(default 0.01)")
    parser.add_argument("--min-mass-inside", type=fraction, default=0.5,
                        help="flag 'mass_outside': right class, but the share of the CAM's mass "
                        "inside the boxes is below this (default 0.5) and below --min-lift x "
                        "the boxes' share of the image")
    parser.add_argument("--min-lift", type=non_negative_float, default=2.0,
                        help="see --min-mass-inside (default 2: twice a uniform map's share)")
    parser.add_argument("--low-confidence", type=fraction, default=0.5,
                        help="flag 'low_confidence': predicted-class probability below this "
                        "(default 0.5)")
    parser.add_argument("--border", type=border, default=0.1,
                        help="width of the border band of the 'map mass in the border band' "
                        "statistic, as a share of each side (default %(default)s)")
    parser.add_argument("--max-border-mass", type=fraction, default=0.6,
                        help="flag 'border_focus': at least this share of the map's mass in the "
                        "border band (default %(default)s)")
    parser.add_argument("--high-confidence", type=fraction, default=0.9,
                        help="flag 'confident_wrong': wrong class with at least this "
                        "probability (default %(default)s)")
    parser.add_argument("--faithfulness", action="store_true",
                        help="also compute deletion / insertion AUC and average drop / "
                        "increase in confidence (2 x (steps + 1) + 2 extra forward passes per "
                        "batch)")
    parser.add_argument("--faithfulness-steps", type=positive, default=20)
    parser.add_argument("--gallery-size", type=non_negative, default=8,
                        help="samples per gallery section of the report (default 8)")
    parser.add_argument("--no-report", action="store_true", help="skip the HTML report")
    parser.add_argument("--fresh", action="store_true",
                        help="discard a stored run with the same configuration instead of "
                        "resuming it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def require(module: str, extra: str, what: str) -> None:
    """Refuse, before any work, a command that needs an optional dependency not installed."""
    if importlib.util.find_spec(module) is None:
        raise UserError(f"{what} needs {module}, which is not installed: "
                        f"pip install 'camplug[{extra}]'")


def load_model(args: argparse.Namespace):
    from camplug.data.specs import load_model

    return load_model(args.model, args.checkpoint,
                      random_weights=getattr(args, "random_weights", False))


def dataset(args: argparse.Namespace, model):
    """The dataset of ``args``; with the demo model, folders default to its normalization and
    training image size."""
    from camplug.data.folders import IMAGENET_MEAN, IMAGENET_STD, open_dataset
    from camplug.data.specs import DEMO_MODEL_SPECS

    mean, std, image_size = args.mean, args.std, args.image_size
    if args.model in DEMO_MODEL_SPECS:
        from camplug.data.synthetic import MEAN, STD

        if mean is None and std is None:
            mean, std = MEAN, STD
        if image_size is None:
            image_size = getattr(model, "image_size", None)
    class_names = None
    if args.class_names is not None:
        lines = args.class_names.read_text().splitlines()
        class_names = [line.strip() for line in lines if line.strip()]
    return open_dataset(
        args.data, annotations=args.annotations,
        annotation_format=getattr(args, "annotation_format", None), image_size=image_size,
        mean=mean or IMAGENET_MEAN, std=std or IMAGENET_STD, class_names=class_names,
        n=args.num_images, seed=args.seed,
    )
