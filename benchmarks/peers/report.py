"""The peer benchmark's Markdown table and plot, from its JSON report."""

from __future__ import annotations

import math
from pathlib import Path

from .methods import METHODS

HEADLINE_MODEL, HEADLINE_BATCH = "ResNet-50", 8
HEADLINE_PEERS = ("Captum LayerGradCam", "pytorch-grad-cam GradCAM")


def _case(model: dict, batch: int) -> dict | None:
    return next((case for case in model["cases"] if case["batch"] == batch), None)


def _cell_ms(case: dict | None, name: str) -> str:
    if case is None:
        return "not run"
    if name in case["results"]:
        result = case["results"][name]
        return f"{result['median_cpu_ms']:.0f} ({result['median_ms']:.0f})"
    failure = case["failures"].get(name)
    return "n/a" if failure and failure["status"] == "not available" else "fails"


def _agreement_cell(model: dict, name: str) -> str:
    """The largest aligned difference over the batch sizes, or why there is none."""
    values, notes = [], set()
    for case in model["cases"]:
        entry = case["agreement"].get(name)
        if entry is None:
            continue
        if entry.get("reference") is None:
            notes.add("no camplug map")
        else:
            values.append(entry["max_abs_diff_aligned"])
    if values:
        return f"{max(values):.1e}"
    return ", ".join(sorted(notes)) or ""


def headline(report: dict) -> list[str]:
    """camplug CAM's speed-up over the headline peers at the headline batch, if measured
    (CPU time, and wall time in brackets)."""
    model = next((m for m in report["models"] if m["model"] == HEADLINE_MODEL), None)
    case = _case(model, HEADLINE_BATCH) if model else None
    if case is None or "camplug CAM" not in case["results"]:
        return []
    cam = case["results"]["camplug CAM"]
    lines = []
    for peer in HEADLINE_PEERS:
        if peer in case["results"]:
            other = case["results"][peer]
            lines.append(
                f"- {HEADLINE_MODEL}, batch {HEADLINE_BATCH}: camplug CAM "
                f"{cam['median_cpu_ms']:.0f} ms CPU ({cam['median_ms']:.0f} ms wall), {peer} "
                f"{other['median_cpu_ms']:.0f} ms CPU ({other['median_ms']:.0f} ms wall): "
                f"{other['median_cpu_ms'] / cam['median_cpu_ms']:.2f}x in CPU time "
                f"({other['median_ms'] / cam['median_ms']:.2f}x wall)")
    return lines


def markdown(report: dict, plot_name: str | None) -> str:
    """A Markdown summary: set-up, headline, one table row per model and method (median ms per
    batch, peak RSS rise at the largest batch, largest map difference from camplug), failures."""
    batches = report["batches"]
    largest = max(batches)
    lines = [
        f"# camplug vs peers ({report['device']}, {report['date']})",
        "",
        f"torch {report['packages']['torch']}, {report['cpu_threads']} CPU thread(s), "
        f"{report['image_size']} px, median of {report['rounds']} interleaved rounds after one "
        f"warm-up call; random-weight torchvision models; one map per image (its predicted "
        f"class), normalized and upsampled to the input size by every method. "
        + ("The machine was shared with other jobs while this ran. "
           if report["machine_shared"] else "")
        + "CPU time: user + system time of the process during the call (one thread: the "
        "work done, without the time spent waiting for a core on a shared machine). "
        + f"Peak memory: {report['memory']['short']}. Max |diff|: the largest difference of "
        f"the peer's map from camplug's same method on the same input, with the peer's "
        f"conventions (ReLU, renormalization) applied to camplug's map.",
        "",
        *headline(report),
        "",
        "Times: median CPU ms of the process (median wall ms in brackets).",
        "",
        "| model | method | " + " | ".join(f"batch {b}" for b in batches)
        + f" | peak MiB (batch {largest}) | max abs diff vs camplug |",
        "|---|---|" + "---:|" * len(batches) + "---:|---:|",
    ]
    for model in report["models"]:
        for method in METHODS:
            name = method.name
            cells = [_cell_ms(_case(model, b), name) for b in batches]
            big = _case(model, largest)
            peak = (f"{big['results'][name]['peak_rss_mib']:.0f}"
                    if big and name in big["results"] else "-")
            lines.append(f"| {model['model']} | {name} | " + " | ".join(cells)
                         + f" | {peak} | {_agreement_cell(model, name)} |")
    lines += ["", "n/a: not available in this camplug version; fails: see below.", "",
              "## Failures", ""]
    for model in report["models"]:
        seen: dict[str, str] = {}
        for case in model["cases"]:
            for name, failure in case["failures"].items():
                seen.setdefault(name, failure["error"])
        for name, error in seen.items():
            lines.append(f"- {model['model']}, {name}: {error}")
    if report["not_run"]:
        lines += ["", "## Not run", ""]
        lines += [f"- {item['model']}, batch {item['batch']}: {item['reason']}"
                  for item in report["not_run"]]
    if plot_name:
        lines += ["", f"![time vs batch]({plot_name})"]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Median CPU time per call against batch size, log-log, one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    columns = min(4, len(models))
    rows = math.ceil(len(models) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows),
                                squeeze=False)
    for axis, model in zip(axes.flat, models, strict=False):
        for index, method in enumerate(METHODS):  # one colour per method in every panel
            points = [(case["batch"], case["results"][method.name]["median_cpu_ms"])
                      for case in model["cases"] if method.name in case["results"]]
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, marker="o", label=method.name, color=f"C{index}",
                          linestyle="--" if method.family == "forward" else "-")
        axis.set_title(model["model"])
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xticks(report["batches"], [str(b) for b in report["batches"]])
        axis.set_xlabel("batch")
        axis.set_ylabel("median CPU ms per call")
        axis.grid(True, which="both", alpha=0.3)
    for axis in list(axes.flat)[len(models):]:
        axis.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for axis in axes.flat:
        more_handles, more_labels = axis.get_legend_handles_labels()
        for handle, label in zip(more_handles, more_labels, strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    figure.legend(handles, labels, loc="lower center", ncol=4, frameon=False)
    figure.suptitle(f"camplug vs peers: {report['device']}, {report['cpu_threads']} thread(s), "
                    f"{report['image_size']} px, torch {report['packages']['torch']}")
    figure.tight_layout(rect=(0, 0.08, 1, 0.96))
    figure.savefig(path, dpi=110)
    plt.close(figure)
