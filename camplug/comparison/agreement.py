"""Agreement between two attribution maps of the same images: rank correlation and top-k% IoU.

``spearman`` and ``top_percent_iou`` take two maps [N, ...] of the same shape and return one fp64
value per sample [N]; ``average_ranks`` and ``top_percent_mask`` are their building blocks.
"""

from __future__ import annotations

import math

import torch


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
