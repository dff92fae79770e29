"""``camplug sanity``: Adebayo et al.'s model (and data) randomization checks of a model's
maps; prints the step table and a verdict per method, writes an HTML report with the plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import (
    add_data_options,
    add_model_options,
    dataset,
    device,
    load_model,
    non_negative,
    number,
    positive,
    step,
)

REPORT_NAME = "sanity.html"
VARIANTS = ("cascading", "independent")  # camplug.sanity.VARIANTS (the parser imports no torch)


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def _variants(text: str) -> list[str]:
    names = _names(text)
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown variant(s) {', '.join(unknown)}; expected some of {', '.join(VARIANTS)}")
    return names


_correlation = number(-1.0, 1.0, "a correlation in [-1, 1]")


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``sanity``."""
    sanity = commands.add_parser(
        "sanity", help="model/data randomization sanity checks of the maps (Adebayo et al.)",
        description="Randomize the model's parameterized layers from the logits down "
        "(cascading) and one at a time (independent), compare each method's maps with the "
        "trained model's (Spearman rank correlation, SSIM) and give a verdict per method: it "
        "passes when the mean correlation falls below --threshold once the top layers are "
        "random. Passing is necessary, not sufficient (Binder et al., CVPR 2023). With "
        "--retrained, also compare with a model trained on permuted labels.")
    add_model_options(sanity)
    add_data_options(sanity, None)
    sanity.set_defaults(num_images=64)
    sanity.add_argument("--method", type=_names, default=["auto"],
                        help="comma-separated map methods (camplug.methods names or 'auto'; "
                        "default auto)")
    sanity.add_argument("--samples", type=positive, default=64,
                        help="images compared, the first of the data (default %(default)s)")
    sanity.add_argument("--variants", type=_variants, default=list(VARIANTS),
                        help="comma-separated: cascading, independent (default both)")
    sanity.add_argument("--retrained", type=Path,
                        help="checkpoint of the same model trained on permuted labels: also "
                        "run the data randomization test")
    sanity.add_argument("--threshold", type=_correlation, default=0.5,
                        help="a method passes when its mean Spearman correlation is below this "
                        "(default %(default)s)")
    sanity.add_argument("--top-fraction", type=step, default=0.25,
                        help="judge once this share of the layers (from the top) is random "
                        "(default %(default)s)")
    sanity.add_argument("--randomization-seed", type=non_negative, default=0,
                        help="seed of the re-drawn parameters (default %(default)s)")
    sanity.add_argument("--device", type=device, help="e.g. cpu, cuda (default: the model's)")
    sanity.add_argument("--out", type=Path, default=Path("camplug-sanity"),
                        help=f"output folder of {REPORT_NAME} (default %(default)s)")
    sanity.set_defaults(run=cmd_sanity)


def cmd_sanity(args: argparse.Namespace) -> int:
    from camplug import sanity

    model = load_model(args)
    data = dataset(args, model)
    options = dict(methods=args.method, samples=args.samples, threshold=args.threshold,
                   device=args.device, layer=args.layer, output=args.output)
    results = [sanity.model_randomization(
        model, data, variants=args.variants, top_fraction=args.top_fraction,
        seed=args.randomization_seed, **options)]
    if args.retrained is not None:
        from camplug.data.specs import load_model as load_spec

        retrained = load_spec(args.model, args.retrained)
        results.append(sanity.data_randomization(model, retrained, data, **options))
    for result in results:
        print(result.to_markdown())
        print()
    path = write_report(args.out / REPORT_NAME, results, [
        ("model", args.model + (f" ({args.checkpoint})" if args.checkpoint else "")),
        ("data", str(args.data)),
        ("retrained on permuted labels", str(args.retrained) if args.retrained else "not given"),
        ("randomization seed", str(args.randomization_seed)),
    ])
    print(f"report: {path}")
    return 0


def write_report(path: Path, results: list, run_info: list[tuple[str, str]]) -> Path:
    """The sanity report: verdicts with the caveat, one plot per variant, the step table.
    ``results``: ``camplug.sanity.SanityResult`` (model randomization first)."""
    from camplug import sanity
    from camplug.audit.report.html import (
        Plot,
        ReportContent,
        list_section,
        plots_section,
        table_section,
        write_report,
    )

    first = results[0]
    info = [("methods", ", ".join(first.methods)), ("samples", str(first.n_samples)),
            ("parameterized layers (bottom first)", ", ".join(first.layers)),
            ("threshold (mean Spearman)", f"{first.threshold:g}"), *run_info]
    verdicts = [f"{'model' if r.layers else 'data'} randomization, {v.method}: "
                f"{sanity.verdict_word(v)}: {v.reason}" for r in results for v in r.verdicts]
    excluded = [f"{name}: {n} sample(s) left out (constant map of the trained model)"
                for name, n in first.excluded.items() if n]
    content = ReportContent("camplug sanity checks", info, [
        list_section("Verdicts", [*verdicts, *excluded, sanity.CAVEAT]),
        plots_section("Model randomization", [
            Plot(f"{variant} randomization", sanity.curve_plot(first, variant),
                 f"{variant}: mean over {first.n_samples} samples, band +- one standard "
                 "deviation; dashed: +- the threshold (the verdict compares the mean of "
                 "|Spearman| per sample with it)")
            for variant in first.variants]),
        table_section("Steps", ("variant", "method", "randomized", "Spearman mean ± std [IQR]",
                                "mean |Spearman|", "SSIM mean ± std [IQR]", "constant maps"),
                      [row for r in results for row in r.table()], table_id="steps",
                      numeric={4, 6}),
    ])
    return write_report(path, content)
