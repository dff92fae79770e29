"""CAM against Captum's attribution methods on one batch: cost, agreement and faithfulness.

``compare(model, images)`` runs CAM and the chosen Captum methods on the same batch and the same
targets, brings every map to the input resolution and reports, per method: wall time, peak
memory, Spearman rank correlation with CAM, IoU of the top-k% regions with CAM's, and the
deletion / insertion AUC of ``camplug.metrics``. The model's mode, hooks and gradients are left
as they were.
"""

from __future__ import annotations

import html
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .captum_attr import (
    NT_TYPES,
    OutputSelector,
    logits_of,
    model_layer_for_captum,
    select_output,
    to_class_indices,
)

ChannelReduction = Literal["sum", "abs"]

DEFAULT_METHODS: tuple[str, ...] = (
    "CAM",
    "LayerGradCam",
    "GuidedGradCam",
    "Saliency",
    "IntegratedGradients",
    "InputXGradient",
    "smoothgrad:Saliency",
)


# --------------------------------------------------------------------------- agreement statistics
def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..P of each row of ``values`` [N, P]; tied values share their mean rank. fp64."""
    if values.dim() != 2:
        raise ValueError(f"values must have shape [N, P], got {tuple(values.shape)}")
    n, p = values.shape
    sorted_values, order = values.sort(dim=1, stable=True)
    starts_group = torch.ones_like(sorted_values, dtype=torch.bool)
    starts_group[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    row_offset = torch.arange(n, device=values.device).unsqueeze(1) * p
    group = (starts_group.long().cumsum(1) - 1 + row_offset).flatten()
    position = torch.arange(p, dtype=torch.float64, device=values.device).repeat(n)
    first = torch.full((n * p,), math.inf, dtype=torch.float64, device=values.device)
    first = first.scatter_reduce(0, group, position, reduce="amin")
    last = torch.full_like(first, -math.inf).scatter_reduce(0, group, position, reduce="amax")
    sorted_ranks = ((first[group] + last[group]) / 2 + 1).view(n, p)
    return torch.empty_like(sorted_ranks).scatter_(1, order, sorted_ranks)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each sample's maps; a, b [N, ...] -> fp64 [N].

    Ties get average ranks (as scipy.stats.spearmanr); a constant map gives NaN.
    """
    ra, rb = (average_ranks(m.flatten(1)) for m in _same_shape(a, b))
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    denominator = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    return (ra * rb).sum(1) / denominator.where(denominator > 0, torch.nan)


def top_percent_mask(maps: torch.Tensor, percent: float) -> torch.Tensor:
    """bool [N, ...]: the pixels of each map at or above its k-th largest value.

    k = ceil(percent / 100 * pixels) (at least 1); pixels tied with the k-th value are kept, so a
    constant map selects everything.
    """
    if not 0 < percent <= 100:
        raise ValueError(f"percent must lie in (0, 100], got {percent}")
    flat = maps.flatten(1)
    k = max(1, math.ceil(percent / 100 * flat.shape[1]))
    kth_largest = flat.topk(k, dim=1).values[:, -1:]
    return (flat >= kth_largest).view(maps.shape)


def top_percent_iou(a: torch.Tensor, b: torch.Tensor, percent: float) -> torch.Tensor:
    """IoU of the top-``percent``% regions of each sample's two maps; [N, ...] -> fp64 [N]."""
    a, b = _same_shape(a, b)
    mask_a = top_percent_mask(a, percent).flatten(1)
    mask_b = top_percent_mask(b, percent).flatten(1)
    intersection = (mask_a & mask_b).sum(1).double()
    return intersection / (mask_a | mask_b).sum(1).double()


def _same_shape(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape or a.dim() < 2:
        raise ValueError(
            f"maps must have the same shape [N, ...], got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return a, b


# --------------------------------------------------------------------------------- measurement
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], Any], device: torch.device, *, warmup: int = 1, repeats: int = 1
) -> tuple[Any, float]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; (last result, median s)."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got {warmup} and {repeats}")
    for _ in range(warmup):
        fn()
    seconds = []
    result = None
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        result = fn()
        _synchronize(device)
        seconds.append(time.perf_counter() - start)
    return result, sorted(seconds)[len(seconds) // 2]


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Peak bytes allocated by ``fn`` above what was allocated when it started.

    CUDA: the caching allocator's peak statistic. CPU: the running total of the allocation and
    free events recorded by ``torch.profiler`` (tracemalloc and ru_maxrss do not see tensor
    memory, or cannot be reset). None when this torch build records no such events.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    if device.type != "cpu":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:
        return None
    events = [e for e in results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    running = peak = 0
    for event in events:
        running += event.nbytes()
        peak = max(peak, running)
    return peak


# ------------------------------------------------------------------------------------ the table
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
    if value is None:
        return "n/a"
    assert isinstance(value, float)
    return "nan" if math.isnan(value) else format(value, spec)
