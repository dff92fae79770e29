"""``camplug compare``: camplug's maps against Captum's methods on one batch."""

from __future__ import annotations

import argparse
import sys

from .options import (
    add_data_options,
    add_model_options,
    dataset,
    device,
    load_model,
    non_negative,
    percent,
    positive,
    require,
    table_path,
)


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``compare``."""
    compare = commands.add_parser(
        "compare", help="CAM against Captum's methods on one batch (cost, agreement, "
        "faithfulness; needs captum)",
        description="Run CAM and Captum's methods on one batch; print time (median of "
        "--repeats calls, with the range), peak memory, agreement with CAM and deletion / "
        "insertion AUC as a Markdown table. Progress goes to stderr.")
    add_model_options(compare)
    add_data_options(compare, "synthetic")
    compare.set_defaults(num_images=16)
    compare.add_argument("--methods", help="comma-separated method names, e.g. Saliency or "
                         "smoothgrad:Saliency; CAM always comes first (default: LayerGradCam, "
                         "GuidedGradCam, Saliency, IntegratedGradients, InputXGradient, "
                         "smoothgrad:Saliency)")
    compare.add_argument("--device", type=device,
                         help="e.g. cpu, cuda, cuda:1 (default: where the model is, the CPU "
                         "for the demo model)")
    compare.add_argument("--repeats", type=positive, default=5,
                         help="timed calls per method; the table shows their median and range "
                         "(default %(default)s)")
    compare.add_argument("--warmup", type=non_negative, default=1,
                         help="untimed calls per method before timing (default %(default)s)")
    compare.add_argument("--top-percent", type=percent, default=10.0,
                         help="k of the top-k%% IoU with CAM (default %(default)g)")
    compare.add_argument("--faithfulness-steps", type=positive, default=20,
                         help="deletion / insertion steps (default %(default)s)")
    compare.add_argument("--out", type=table_path,
                         help="also write the table to this file: Markdown for .md/.markdown, "
                         "an HTML page for .html/.htm")
    compare.add_argument("--no-progress", action="store_true",
                         help="no per-method progress on stderr")
    compare.set_defaults(run=cmd_compare)


def _method_progress(index: int, total: int, name: str) -> None:
    print(f"compare: method {index + 1}/{total}: {name}", file=sys.stderr, flush=True)


def cmd_compare(args: argparse.Namespace) -> int:
    require("captum", "captum", "camplug compare")
    import torch

    from camplug.comparison.harness import canonical_method, compare

    methods = None
    if args.methods is not None:
        methods = [canonical_method(m.strip()) for m in args.methods.split(",") if m.strip()]
    model = load_model(args)
    data = dataset(args, model)
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
