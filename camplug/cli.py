"""The ``camplug`` command: ``demo``, ``audit``, ``compare`` and ``describe``. It parses the
arguments and calls the library; all the work happens in ``camplug.audit`` and friends."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

DEMO_SEED = 2  # the shipped model trained on seed 0 and validated on seed 1: 2 is unseen
DEMO_SIZE = 512


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a value in [0, 1], got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


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


def _output(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="demo",
        help="'demo' (the shipped model; 'demo:hard' for the hard split), "
        "'package.module:factory' or 'file.py:factory' (called with no arguments), or a "
        "TorchScript file (default: demo)")
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
    parser.add_argument("--image-size", type=int,
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
    parser.add_argument("--seed", type=int, default=DEMO_SEED,
                        help=f"synthetic: seed (default {DEMO_SEED}, unseen by the demo model)")


def _add_run_options(parser: argparse.ArgumentParser, out: str | None) -> None:
    parser.add_argument("--out", type=Path, default=out, required=out is None,
                        help="output folder: audit.sqlite and report.html"
                        + (f" (default {out})" if out else ""))
    parser.add_argument("--batch-size", type=_positive, default=64)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--device", type=_device,
                        help="e.g. cpu, cuda, cuda:1 (default: cuda when present)")
    parser.add_argument("--thresholds-step", type=float, default=0.01,
                        help="CAM threshold grid step for MaxBoxAcc and PxAP (default 0.01)")
    parser.add_argument("--min-mass-inside", type=_fraction, default=0.5,
                        help="flag 'mass_outside': right class, but the share of the CAM's mass "
                        "inside the boxes is below this (default 0.5) and below --min-lift x "
                        "the boxes' share of the image")
    parser.add_argument("--min-lift", type=float, default=2.0,
                        help="see --min-mass-inside (default 2: twice a uniform map's share)")
    parser.add_argument("--low-confidence", type=_fraction, default=0.5,
                        help="flag 'low_confidence': predicted-class probability below this "
                        "(default 0.5)")
    parser.add_argument("--faithfulness", action="store_true",
                        help="also compute deletion / insertion AUC (2 x (steps + 1) extra "
                        "forward passes per batch)")
    parser.add_argument("--faithfulness-steps", type=_positive, default=20)
    parser.add_argument("--gallery-size", type=int, default=8,
                        help="samples per gallery section of the report (default 8)")
    parser.add_argument("--no-report", action="store_true", help="skip the HTML report")
    parser.add_argument("--fresh", action="store_true",
                        help="discard a stored run with the same configuration instead of "
                        "resuming it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="camplug", description="Class Activation Maps for GAP + linear classifiers.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="audit the shipped model on the built-in benchmark (the main job)",
        description="Audit the shipped demo model on a generated localization set, print the "
        "metrics and the report's path.")
    demo.add_argument("--split", choices=("easy", "hard"), default="easy")
    demo.add_argument("--num-images", type=_positive, default=DEMO_SIZE)
    demo.add_argument("--seed", type=int, default=DEMO_SEED)
    demo.add_argument("--image-size", type=int, default=96)
    demo.add_argument("--baselines", action="store_true",
                      help="also print CAM against the centre-Gaussian, smoothed-random, "
                      "untrained-network, LayerGradCam and Saliency maps")
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
        "faithfulness)")
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

    describe = commands.add_parser("describe", help="show the head camplug finds in a model")
    _add_model_options(describe)
    return parser


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


def _run_audit(model, data, args: argparse.Namespace, model_name: str):
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
        fresh=args.fresh, progress=False if args.no_progress else None,
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
    from camplug import zoo
    from camplug.data.synthetic import SyntheticLocalization

    model = zoo.load_demo_model(args.split)
    data = SyntheticLocalization(n=args.num_images, split=args.split, image_size=args.image_size,
                                 seed=args.seed)
    summary = _run_audit(model, data, args, model_name=f"demo ({args.split})")
    _print_summary(summary, main=_is_main_rank())
    if args.baselines and _is_main_rank():
        from camplug.audit.baselines import localization_table

        table = localization_table(model, data, batch_size=args.batch_size, device=args.device)
        print()
        print(table.to_markdown())
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    model = _load_model(args)
    data = _dataset(args, model)
    summary = _run_audit(model, data, args, model_name=args.model)
    _print_summary(summary, main=_is_main_rank())
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import torch

    from camplug.comparison.harness import compare

    model = _load_model(args)
    data = _dataset(args, model)
    n = min(args.num_images, len(data))
    items = [data[i] for i in range(n)]
    images = torch.stack([item["image"] for item in items])
    labels = torch.tensor([int(item["label"]) for item in items])
    kwargs = {"target": labels, "layer": args.layer, "output": args.output}
    if args.methods:
        kwargs["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.device:
        model = model.to(args.device)
        images = images.to(args.device)
        labels = labels.to(args.device)
        kwargs["target"] = labels
    table = compare(model, images, **kwargs)
    print(table.to_markdown())
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    import camplug

    model = _load_model(args)
    camplug.describe(model, layer=args.layer, output=args.output)
    return 0


COMMANDS = {"demo": cmd_demo, "audit": cmd_audit, "compare": cmd_compare,
            "describe": cmd_describe}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    from camplug.data.specs import SpecError

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (SpecError, FileNotFoundError, TypeError, ValueError) as error:
        print(f"camplug {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
