"""``ComparisonTable``: the per-method results of ``camplug.compare`` as Markdown or HTML."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class ComparisonRow:
    """One method's results. Per-sample values are fp64 [N]; ``maps`` fp32 [N, H, W].

    ``spearman`` and ``top_iou`` compare with CAM (1.0 for CAM itself unless its map is
    constant); ``deletion_auc`` (lower is better) and ``insertion_auc`` (higher is better)
    are None when faithfulness was not computed.
    """

    method: str
    seconds: float
    peak_memory_bytes: int | None
    spearman: torch.Tensor
    top_iou: torch.Tensor
    deletion_auc: torch.Tensor | None
    insertion_auc: torch.Tensor | None
    maps: torch.Tensor = field(repr=False)

    def summary(self) -> dict[str, float | str | None]:
        """Means over the batch (NaN samples ignored), seconds and MiB."""
        return {
            "method": self.method,
            "seconds": self.seconds,
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

    def _header(self) -> list[str]:
        k = f"{self.top_percent:g}"
        return [
            "method",
            "time (ms)",
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
        return (
            f"{self.targets.shape[0]} images at {h}x{w} on {self.device}; "
            "means over the batch; every map compared at the input resolution"
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

    def _repr_html_(self) -> str:
        return self.to_html()

    def __str__(self) -> str:
        return self.to_markdown()


def _fmt(value: float | str | None, spec: str) -> str:
    if not isinstance(value, float):
        return "n/a"
    return "nan" if math.isnan(value) else format(value, spec)
