"""``camplug diff``: compare two audits of the same data; exit status 1 when a ``--fail-if``
gate fails (a CI job can gate a checkpoint on it), 0 otherwise."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import positive

REPORT_NAME = "diff.html"


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``diff``."""
    diff = commands.add_parser(
        "diff", help="compare two audits of the same data (CI gates with --fail-if)",
        description="Compare two complete audits of the same data, sample by sample (matched "
        "by id): prediction and confidence changes, agreement of the stored maps (Spearman, "
        "IoU of the top-10%% pixels), box IoU changes, per class aggregates. Prints the "
        "metrics of both runs; --out writes an HTML report. Exit status 1 when a --fail-if "
        "condition holds, 0 otherwise, 2 on bad input.",
        epilog="Drops are positive when B is worse, in percentage points for percentage "
        "metrics. Gate names: map_similarity_mean/median/p10, map_iou_mean/p10, "
        "prediction_changed, newly_wrong, newly_right, confidence_drop, iou_drop, samples, and "
        "<metric>_a, <metric>_b, <metric>_drop for the audit metrics (accuracy, "
        "max_box_acc_v2, pxap, pointing_game, ...); case and underscores are ignored "
        "(maxboxaccv2_drop).")
    diff.add_argument("run_a", type=Path, help="audit A: its output folder or audit.sqlite")
    diff.add_argument("run_b", type=Path, help="audit B: its output folder or audit.sqlite")
    diff.add_argument("--run-a", dest="run_id_a", metavar="ID",
                      help="run id (or prefix) in A's results file (default: its latest run)")
    diff.add_argument("--run-b", dest="run_id_b", metavar="ID",
                      help="run id (or prefix) in B's results file (default: its latest run)")
    diff.add_argument("--fail-if", action="append", default=[], metavar="EXPR",
                      help="NAME OP NUMBER with OP one of < <= > >=, e.g. 'accuracy_drop>0.5' "
                      "or 'map_similarity_p10<0.6'; repeatable: exit 1 when any holds")
    diff.add_argument("--out", type=Path, help=f"write {REPORT_NAME} into this folder")
    diff.add_argument("--gallery-size", type=positive, default=12,
                      help="samples shown side by side in the report (default %(default)s)")
    diff.add_argument("--ignore-dataset-fingerprint", action="store_true",
                      help="compare runs whose sample ids match although their dataset "
                      "fingerprints differ (e.g. image files rewritten)")
    diff.set_defaults(run=cmd_diff)


def cmd_diff(args: argparse.Namespace) -> int:
    from camplug.diff import compare_runs, parse_condition, write_diff_report

    conditions = [parse_condition(text) for text in args.fail_if]  # before any loading
    result = compare_runs(args.run_a, args.run_b, run_a=args.run_id_a, run_b=args.run_id_b,
                          check_dataset=not args.ignore_dataset_fingerprint)
    gates = result.check(conditions)
    print(result.to_markdown())
    if args.out is not None:
        path = write_diff_report(result, args.out / REPORT_NAME, gates, args.gallery_size)
        print(f"\nreport: {path}")
    if gates:
        print()
        for gate in gates:
            print(gate.line())
    return 1 if any(gate.failed for gate in gates) else 0
