"""``ComparisonTable``: the per-method results of ``camplug.compare`` as Markdown or HTML."""

from __future__ import annotations

import html
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

# ``ComparisonTable.write``: the file format of each suffix (lower case).
TABLE_SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html"}


@dataclass(frozen=True)
class ComparisonRow:
    """One method's results. Per-sample values are fp64 [N]; ``maps`` fp32 [N, H, W];
    ``times``: the seconds of each timed call (``seconds`` is their median).

    ``spearman`` and ``top_iou`` compare with CAM (1.0 for CAM itself unless its map is
    constant); ``deletion_auc`` (lower is better) and ``insertion_auc`` (higher is better)
    are None when faithfulness was not computed.
    """

    method: str
    times: tuple[float, ...]
    peak_memory_bytes: int | None
    spearman: torch.Tensor
    top_iou: torch.Tensor
    deletion_auc: torch.Tensor | None
    insertion_auc: torch.Tensor | None
    maps: torch.Tensor = field(repr=False)

    @property
    def seconds(self) -> float:
        """The median of ``times``."""
        return statistics.median(self.times)

    def summary(self) -> dict[str, float | str | None]:
        """Means over the batch (NaN samples ignored), seconds (median, min, max) and MiB."""
        return {
            "method": self.method,
            "seconds": self.seconds,
            "seconds_min": min(self.times),
            "seconds_max": max(self.times),
            "peak_memory_mib": None
            if self.peak_memory_bytes is None
            else self.peak_memory_bytes / 2**20,
            "spearman": _nanmean(self.spearman),
            "top_iou": _nanmean(self.top_iou),
            "deletion_auc": None if self.deletion_auc is None else _nanmean(self.deletion_auc),
            "insertion_auc": None if self.insertion_auc is None else _nanmean(self.insertion_auc),
        }


def _nanmean(values: torch.Tensor) -> float:
    finite = values[~values.isnan()]
    return float("nan") if finite.numel() == 0 else float(finite.mean())


@dataclass(frozen=True)
class ComparisonTable:
    """The rows of ``compare`` (CAM first) and the settings they were computed with."""

    rows: list[ComparisonRow]
    targets: torch.Tensor
    resolution: tuple[int, int]
    top_percent: float
    device: str
    warmup: int = 0

    def _header(self) -> list[str]:
        k = f"{self.top_percent:g}"
        return [
            "method",
            "time (ms)",
            "time range (ms)",
            "peak mem (MiB)",
            "Spearman vs CAM",
            f"top-{k}% IoU vs CAM",
            "deletion AUC (lower better)",
            "insertion AUC (higher better)",
        ]

    def _cells(self) -> list[list[str]]:
        cells = []
        for row in self.rows:
            s = row.summary()
            cells.append(
                [
                    row.method,
                    f"{1000 * row.seconds:.1f}",
                    f"{1000 * min(row.times):.1f}-{1000 * max(row.times):.1f}",
                    _fmt(s["peak_memory_mib"], ".1f"),
                    _fmt(s["spearman"], ".3f"),
                    _fmt(s["top_iou"], ".3f"),
                    _fmt(s["deletion_auc"], ".3f"),
                    _fmt(s["insertion_auc"], ".3f"),
                ]
            )
        return cells

    def _caption(self) -> str:
        h, w = self.resolution
        repeats = {len(row.times) for row in self.rows}
        calls = "/".join(str(r) for r in sorted(repeats))
        return (
            f"{self.targets.shape[0]} images at {h}x{w} on {self.device}; time: median and "
            f"range of {calls} timed call(s) after {self.warmup} warm-up call(s); means over "
            "the batch; every map compared at the input resolution"
        )

    def to_markdown(self) -> str:
        """A GitHub-flavoured Markdown table, preceded by a one-line caption."""
        header = self._header()
        lines = [
            self._caption(),
            "",
            "| " + " | ".join(header) + " |",
            "| --- | " + " | ".join("---:" for _ in header[1:]) + " |",
        ]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in self._cells()]
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        """A self-contained ``<table>`` with a caption (text HTML-escaped)."""
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self._header())
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
            for r in self._cells()
        )
        return (
            f"<table><caption>{html.escape(self._caption())}</caption>"
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )

    def to_html_document(self) -> str:
        """A complete HTML page holding ``to_html()``, openable without a server."""
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>camplug compare</title><style>"
            "table{border-collapse:collapse;font-family:sans-serif}"
            "th,td{border:1px solid #bbb;padding:4px 8px}td{text-align:right}"
            "td:first-child{text-align:left}caption{padding:6px;text-align:left}"
            f"</style></head><body>{self.to_html()}</body></html>\n"
        )

    def write(self, path: str | Path) -> Path:
        """Write the table to ``path``: Markdown or an HTML page by its suffix
        (``TABLE_SUFFIXES``); parent folders are created. Returns the path."""
        path = Path(path)
        kind = TABLE_SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise ValueError(
                f"{path}: the format follows the suffix, one of {', '.join(TABLE_SUFFIXES)}"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_markdown() if kind == "markdown" else self.to_html_document(),
                        encoding="utf-8")
        return path

    def _repr_html_(self) -> str:
        return self.to_html()

    def __str__(self) -> str:
        return self.to_markdown()


def _fmt(value: float | str | None, spec: str) -> str:
    if not isinstance(value, float):
        return "n/a"
    return "nan" if math.isnan(value) else format(value, spec)
