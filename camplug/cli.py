"""The ``camplug`` command: ``demo``, ``audit``, ``compare`` and ``describe``. It parses the
arguments and calls the library; all the work happens in ``camplug.audit`` and friends."""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from camplug.version import __version__

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


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return values


def _integer(minimum: int, what: str) -> Callable[[str], int]:
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


def _number(low: float, high: float, what: str, *, low_open: bool = False,
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


_positive = _integer(1, "a positive integer")
_non_negative = _integer(0, "an integer >= 0")
_fraction = _number(0.0, 1.0, "a value in [0, 1]")
_step = _number(0.0, 1.0, "a value in (0, 1]", low_open=True)
_non_negative_float = _number(0.0, math.inf, "a finite number >= 0", high_open=True)
_percent = _number(0.0, 100.0, "a value in (0, 100]", low_open=True)


def _device(text: str) -> str:
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


def _table_path(text: str) -> Path:
    """``compare --out``: a path whose suffix names the format (``TABLE_SUFFIXES``)."""
    from camplug.comparison.table import TABLE_SUFFIXES

    path = Path(text)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the format follows the suffix, one of {', '.join(TABLE_SUFFIXES)}"
        )
    return path


def _output(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="demo",
        help="'demo' (the shipped model; 'demo:hard' for the hard split), "
        "'package.module:factory' or 'file.py:factory' (called with no arguments; this runs "
        "that code) (default: demo)")
    parser.add_argument("--checkpoint", type=Path,
                        help="state dict loaded into the model with torch.load(weights_only=True)")
    parser.add_argument("--layer", help="module whose output feeds global pooling (default: "
                        "found automatically)")
    parser.add_argument("--output", type=_output,
                        help="index or key of the logits when the model returns a tuple or dict")


def _add_data_options(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--data", default=default, required=default is None,
        help="'synthetic', 'synthetic:easy' or 'synthetic:hard' (the built-in benchmark), or "
        "an image folder with annotations (see --annotations)")
    parser.add_argument(
        "--annotations", type=Path,
        help="CSV (filename,label,x0,y0,x1,y1; one row per object, inclusive pixel corners) or "
        "JSON ([{\"file\", \"label\", \"boxes\": [[x0,y0,x1,y1], ...], \"mask\"?}]) for an "
        "image folder (default: the folder's annotations.csv, annotations.json or boxes.csv)")
    parser.add_argument("--image-size", type=_non_negative,
                        help="resize images to this square size (synthetic default 96, folders "
                        "224, or the demo model's 96 with --model demo; 0 keeps a folder's "
                        "image sizes)")
    parser.add_argument("--mean", type=_floats,
                        help="normalization mean, e.g. 0.485,0.456,0.406 (folders; default "
                        "ImageNet's, or the demo model's with --model demo)")
    parser.add_argument("--std", type=_floats, help="normalization std (folders)")
    parser.add_argument("--class-names", type=Path,
                        help="file with one class name per line, for name labels (folders)")
    # not "--n": torchrun would take it for an abbreviation of its own options
    parser.add_argument("--num-images", type=_positive, default=DEMO_SIZE,
                        help="synthetic: number of images (default %(default)s)")
    parser.add_argument("--seed", type=_non_negative, default=DEMO_SEED,
                        help=f"synthetic: seed (default {DEMO_SEED}, unseen by the demo model)")


def _add_run_options(parser: argparse.ArgumentParser, out: str | None) -> None:
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
    parser.add_argument("--batch-size", type=_positive, default=64)
    parser.add_argument("--workers", type=_non_negative, default=0,
                        help="DataLoader worker processes (default 0: load in this process)")
    parser.add_argument("--device", type=_device,
                        help="e.g. cpu, cuda, cuda:1 (default: cuda when present)")
    parser.add_argument("--thresholds-step", type=_step, default=0.01,
                        help="CAM threshold grid step for MaxBoxAcc and PxAP, in (0, 1] "
                        "(default 0.01)")
    parser.add_argument("--min-mass-inside", type=_fraction, default=0.5,
                        help="flag 'mass_outside': right class, but the share of the CAM's mass "
                        "inside the boxes is below this (default 0.5) and below --min-lift x "
                        "the boxes' share of the image")
    parser.add_argument("--min-lift", type=_non_negative_float, default=2.0,
                        help="see --min-mass-inside (default 2: twice a uniform map's share)")
    parser.add_argument("--low-confidence", type=_fraction, default=0.5,
                        help="flag 'low_confidence': predicted-class probability below this "
                        "(default 0.5)")
    parser.add_argument("--faithfulness", action="store_true",
                        help="also compute deletion / insertion AUC (2 x (steps + 1) extra "
                        "forward passes per batch)")
    parser.add_argument("--faithfulness-steps", type=_positive, default=20)
    parser.add_argument("--gallery-size", type=_non_negative, default=8,
                        help="samples per gallery section of the report (default 8)")
    parser.add_argument("--no-report", action="store_true", help="skip the HTML report")
    parser.add_argument("--fresh", action="store_true",
                        help="discard a stored run with the same configuration instead of "
                        "resuming it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command. Building it and printing help import no torch."""
    parser = argparse.ArgumentParser(
        prog="camplug", description="Class Activation Maps for GAP + linear classifiers.")
    parser.add_argument("--version", action="version", version=f"camplug {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="show the full traceback of errors reported as 'camplug: error'")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="audit the shipped model on the built-in benchmark (the main job)",
        description="Audit the shipped demo model on a generated localization set, print the "
        "metrics and the report's path.")
    demo.add_argument("--split", choices=("easy", "hard"), default="easy")
    demo.add_argument("--num-images", type=_positive, default=DEMO_SIZE,
                      help="number of images (default %(default)s)")
    demo.add_argument("--seed", type=_non_negative, default=DEMO_SEED,
                      help=f"seed (default {DEMO_SEED}, unseen by the demo model)")
    demo.add_argument("--image-size", type=_positive, default=96,
                      help="image side in pixels (default %(default)s)")
    demo.add_argument("--baselines", action="store_true",
                      help="also print CAM against the centre-Gaussian, smoothed-random, "
                      "untrained-network, LayerGradCam and Saliency maps (needs captum)")
    _add_run_options(demo, "camplug-demo")

    audit = commands.add_parser(
        "audit", help="audit a model's CAMs on a dataset",
        description="Audit a model's CAMs: metrics per sample and overall, suspicious samples, "
        "results in <out>/audit.sqlite (resumable), report in <out>/report.html. Runs "
        "unchanged under torchrun --nproc-per-node N.")
    _add_model_options(audit)
    _add_data_options(audit, None)
    _add_run_options(audit, None)

    compare = commands.add_parser(
        "compare", help="CAM against Captum's methods on one batch (cost, agreement, "
        "faithfulness; needs captum)",
        description="Run CAM and Captum's methods on one batch; print time (median of "
        "--repeats calls, with the range), peak memory, agreement with CAM and deletion / "
        "insertion AUC as a Markdown table. Progress goes to stderr.")
    _add_model_options(compare)
    _add_data_options(compare, "synthetic")
    compare.set_defaults(num_images=16)
    compare.add_argument("--methods", help="comma-separated method names, e.g. Saliency or "
                         "smoothgrad:Saliency; CAM always comes first (default: LayerGradCam, "
                         "GuidedGradCam, Saliency, IntegratedGradients, InputXGradient, "
                         "smoothgrad:Saliency)")
    compare.add_argument("--device", type=_device,
                         help="e.g. cpu, cuda, cuda:1 (default: where the model is, the CPU "
                         "for the demo model)")
    compare.add_argument("--repeats", type=_positive, default=5,
                         help="timed calls per method; the table shows their median and range "
                         "(default %(default)s)")
    compare.add_argument("--warmup", type=_non_negative, default=1,
                         help="untimed calls per method before timing (default %(default)s)")
    compare.add_argument("--top-percent", type=_percent, default=10.0,
                         help="k of the top-k%% IoU with CAM (default %(default)g)")
    compare.add_argument("--faithfulness-steps", type=_positive, default=20,
                         help="deletion / insertion steps (default %(default)s)")
    compare.add_argument("--out", type=_table_path,
                         help="also write the table to this file: Markdown for .md/.markdown, "
                         "an HTML page for .html/.htm")
    compare.add_argument("--no-progress", action="store_true",
                         help="no per-method progress on stderr")

    describe = commands.add_parser("describe", help="show the head camplug finds in a model")
    _add_model_options(describe)
    return parser


def _require(module: str, extra: str, what: str) -> None:
    """Refuse, before any work, a command that needs an optional dependency not installed."""
    if importlib.util.find_spec(module) is None:
        raise UserError(f"{what} needs {module}, which is not installed: "
                        f"pip install 'camplug[{extra}]'")


def _load_model(args: argparse.Namespace):
    from camplug.data.specs import load_model

    return load_model(args.model, args.checkpoint)


def _dataset(args: argparse.Namespace, model):
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
        args.data, annotations=args.annotations, image_size=image_size,
        mean=mean or IMAGENET_MEAN, std=std or IMAGENET_STD, class_names=class_names,
        n=args.num_images, seed=args.seed,
    )


def _audit_options(args: argparse.Namespace) -> dict[str, Any]:
    """``method`` and ``protocol`` for ``run_audit``, passed when it accepts them; a run_audit
    that does not yet accepts only their defaults."""
    from camplug.audit import run_audit

    accepted = inspect.signature(run_audit).parameters
    options = {}
    for name, default in (("method", DEFAULT_AUDIT_METHOD), ("protocol", PROTOCOLS[0])):
        value = getattr(args, name)
        if name in accepted:
            options[name] = value
        elif value != default:
            raise UserError(f"--{name} {value}: this version of the audit supports only "
                            f"--{name} {default}")
    return options


def _run_audit(model, data, args: argparse.Namespace, model_name: str,
               options: dict[str, Any]):
    from camplug.audit import FlagThresholds, run_audit
    from camplug.metrics import default_thresholds

    return run_audit(
        model, data, out_dir=args.out, batch_size=args.batch_size, num_workers=args.workers,
        device=args.device, layer=getattr(args, "layer", None),
        output=getattr(args, "output", None),
        thresholds=default_thresholds(args.thresholds_step).tolist(),
        flags=FlagThresholds(args.min_mass_inside, args.min_lift, args.low_confidence),
        faithfulness=args.faithfulness, faithfulness_steps=args.faithfulness_steps,
        report=not args.no_report, gallery_size=args.gallery_size, model_name=model_name,
        fresh=args.fresh, progress=False if args.no_progress else None, **options,
    )


def _print_summary(summary, *, main: bool = True) -> None:
    if not main:
        return
    print(summary.to_markdown())
    print()
    print(f"results: {summary.db_path}")
    if summary.report_path is not None:
        print(f"report:  {summary.report_path}")


def _is_main_rank() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.baselines:
        _require("captum", "captum", "camplug demo --baselines")
    options = _audit_options(args)
    from camplug import zoo
    from camplug.data.synthetic import SyntheticLocalization

    model = zoo.load_demo_model(args.split)
    data = SyntheticLocalization(n=args.num_images, split=args.split, image_size=args.image_size,
                                 seed=args.seed)
    summary = _run_audit(model, data, args, f"demo ({args.split})", options)
    _print_summary(summary, main=_is_main_rank())
    if args.baselines and _is_main_rank():
        from camplug.audit.baselines import localization_table

        table = localization_table(model, data, batch_size=args.batch_size, device=args.device)
        print()
        print(table.to_markdown())
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    options = _audit_options(args)
    model = _load_model(args)
    data = _dataset(args, model)
    summary = _run_audit(model, data, args, args.model, options)
    _print_summary(summary, main=_is_main_rank())
    return 0


def _method_progress(index: int, total: int, name: str) -> None:
    print(f"compare: method {index + 1}/{total}: {name}", file=sys.stderr, flush=True)


def cmd_compare(args: argparse.Namespace) -> int:
    _require("captum", "captum", "camplug compare")
    import torch

    from camplug.comparison.harness import canonical_method, compare

    methods = None
    if args.methods is not None:
        methods = [canonical_method(m.strip()) for m in args.methods.split(",") if m.strip()]
    model = _load_model(args)
    data = _dataset(args, model)
    n = min(args.num_images, len(data))
    items = [data[i] for i in range(n)]
    images = torch.stack([item["image"] for item in items])
    labels = torch.tensor([int(item["label"]) for item in items])
    if args.device:
        model = model.to(args.device)
        images = images.to(args.device)
        labels = labels.to(args.device)
    table = compare(
        model, images, target=labels, methods=methods, layer=args.layer, output=args.output,
        top_percent=args.top_percent, faithfulness_steps=args.faithfulness_steps,
        warmup=args.warmup, repeats=args.repeats,
        progress=None if args.no_progress else _method_progress,
    )
    print(table.to_markdown())
    if args.out is not None:
        table.write(args.out)
        print(f"table: {args.out}")
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    import camplug

    model = _load_model(args)
    camplug.describe(model, layer=args.layer, output=args.output)
    return 0


COMMANDS = {"demo": cmd_demo, "audit": cmd_audit, "compare": cmd_compare,
            "describe": cmd_describe}
RESUMABLE = ("demo", "audit")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Bad input (``USER_ERRORS``) ends in ``camplug: error: ...`` on stderr and status 2, an
    interrupt in status 130; any other exception is a bug and keeps its traceback.
    """
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as error:
        if args.traceback:
            raise
        print(f"camplug: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.traceback:
            raise
        resume = " (the same command resumes the audit)" if args.command in RESUMABLE else ""
        print(f"camplug: interrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
