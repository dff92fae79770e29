"""``camplug demo`` (the main job: the shipped model on the built-in benchmark) and
``camplug audit`` (any model on a dataset)."""

from __future__ import annotations

import argparse
from typing import Any

from .options import (
    DEMO_SEED,
    DEMO_SIZE,
    add_data_options,
    add_model_options,
    add_run_options,
    dataset,
    load_model,
    non_negative,
    positive,
    require,
)


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``demo`` and ``audit``."""
    demo = commands.add_parser(
        "demo", help="audit the shipped model on the built-in benchmark (the main job)",
        description="Audit the shipped demo model on a generated localization set, print the "
        "metrics and the report's path.")
    demo.add_argument("--split", choices=("easy", "hard"), default="easy")
    demo.add_argument("--num-images", type=positive, default=DEMO_SIZE,
                      help="number of images (default %(default)s)")
    demo.add_argument("--seed", type=non_negative, default=DEMO_SEED,
                      help=f"seed (default {DEMO_SEED}, unseen by the demo model)")
    demo.add_argument("--image-size", type=positive, default=96,
                      help="image side in pixels (default %(default)s)")
    demo.add_argument("--baselines", action="store_true",
                      help="also print CAM against the centre-Gaussian, smoothed-random, "
                      "untrained-network, LayerGradCam and Saliency maps (needs captum)")
    add_run_options(demo, "camplug-demo")

    audit = commands.add_parser(
        "audit", help="audit a model's CAMs on a dataset",
        description="Audit a model's CAMs: metrics per sample and overall, suspicious samples, "
        "results in <out>/audit.sqlite (resumable), report in <out>/report.html. Runs "
        "unchanged under torchrun --nproc-per-node N.")
    add_model_options(audit)
    add_data_options(audit, None)
    add_run_options(audit, None)
    demo.set_defaults(run=cmd_demo, resumable=True)
    audit.set_defaults(run=cmd_audit, resumable=True)


def _audit_options(args: argparse.Namespace) -> dict[str, Any]:
    """The map method and the box protocol, as ``run_audit`` takes them."""
    return {"method": args.method, "protocol": args.protocol}


def _run_audit(model, data, args: argparse.Namespace, model_name: str,
               options: dict[str, Any]):
    from camplug.audit import FlagThresholds, run_audit
    from camplug.metrics import default_thresholds

    return run_audit(
        model, data, out_dir=args.out, batch_size=args.batch_size, num_workers=args.workers,
        device=args.device, layer=getattr(args, "layer", None),
        output=getattr(args, "output", None),
        thresholds=default_thresholds(args.thresholds_step).tolist(),
        flags=FlagThresholds(args.min_mass_inside, args.min_lift, args.low_confidence,
                             args.max_border_mass, args.high_confidence),
        border_fraction=args.border,
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
        require("captum", "captum", "camplug demo --baselines")
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

        table = localization_table(model, data, batch_size=args.batch_size, device=args.device,
                                   protocol=args.protocol)
        print()
        print(table.to_markdown())
        if summary.report_path is not None:
            from camplug.audit.report.gallery import add_baselines

            add_baselines(summary, table)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    options = _audit_options(args)
    model = load_model(args)
    data = dataset(args, model)
    summary = _run_audit(model, data, args, args.model, options)
    _print_summary(summary, main=_is_main_rank())
    return 0
