"""Statistics of a map that need no ground truth: how much of its mass lies in a border band,
how spread out it is, and where its centre of mass lies. A map's mass is its values (maps in
[0, 1], as scoring uses them; negative values count as 0); a map of zero mass (constant maps
normalize to 0) has no statistics (NaN). Each is one pass over the pixels (sums accumulate in
float64)."""

from __future__ import annotations

import math

import torch


def check_border_fraction(fraction: float) -> float:
    """``fraction`` as a float in [0, 0.5] (the band's width per side, as a share of the side)."""
    if not 0.0 <= fraction <= 0.5:
        raise ValueError(f"the border band must be a fraction of each side in [0, 0.5], "
                         f"got {fraction}")
    return float(fraction)


def band_width(side: int, fraction: float) -> int:
    """Pixels of a side of ``side`` pixels in the band: ``fraction * side`` rounded half up."""
    return min(int(math.floor(check_border_fraction(fraction) * side + 0.5)), side)


def border_band(height: int, width: int, fraction: float,
                device: torch.device | None = None) -> torch.Tensor:
    """bool [H, W]: the pixels within ``band_width`` of any side."""
    bh, bw = band_width(height, fraction), band_width(width, fraction)
    ys = torch.arange(height, device=device).view(-1, 1)
    xs = torch.arange(width, device=device).view(1, -1)
    return (ys < bh) | (ys >= height - bh) | (xs < bw) | (xs >= width - bw)


def _mass(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps as float32 [N, H, W] with negative values clamped to 0, total mass float64 [N]
    with 0 replaced by NaN)."""
    if maps.dim() != 3:
        raise ValueError(f"maps must be [N, H, W], got shape {tuple(maps.shape)}")
    values = maps.detach().float().clamp_min(0.0)
    total = values.sum(dim=(1, 2), dtype=torch.float64)
    return values, torch.where(total > 0, total, torch.full_like(total, math.nan))


def border_mass(maps: torch.Tensor, fraction: float = 0.1) -> torch.Tensor:
    """The share of each map's mass in the border band (``fraction`` of each side), float64
    [N]. A uniform map scores the band's area share, ``1 - (1 - 2 * fraction)**2`` (0.36 at
    0.1)."""
    values, total = _mass(maps)
    band = border_band(*maps.shape[-2:], fraction, device=maps.device)
    return (values * band).sum(dim=(1, 2), dtype=torch.float64) / total


def effective_area(maps: torch.Tensor) -> torch.Tensor:
    """How much of the image each map covers, float64 [N]: ``exp(entropy) / pixels`` of its
    mass distribution ``p = m / sum(m)`` (entropy ``-sum p log p``, 0 log 0 = 0). 1 for a
    uniform map, ``k / pixels`` for a map spread evenly over k pixels, ``1 / pixels`` for a
    single pixel."""
    values, total = _mass(maps)
    p = values / total.float()[:, None, None]
    entropy = -torch.xlogy(p, p).sum(dim=(1, 2), dtype=torch.float64)
    return torch.exp(entropy) / (maps.shape[-2] * maps.shape[-1])


def centroid(maps: torch.Tensor) -> torch.Tensor:
    """Each map's centre of mass as fractions of the width and height, float64 [N, 2] (x, y):
    pixel ``j`` covers [j, j + 1), so its centre is ``(j + 0.5) / W``; (0.5, 0.5) is the
    image's centre."""
    values, total = _mass(maps)
    height, width = maps.shape[-2:]
    xs = (torch.arange(width, device=maps.device, dtype=torch.float64) + 0.5) / width
    ys = (torch.arange(height, device=maps.device, dtype=torch.float64) + 0.5) / height
    cx = (values.sum(dim=1, dtype=torch.float64) * xs).sum(dim=1) / total
    cy = (values.sum(dim=2, dtype=torch.float64) * ys).sum(dim=1) / total
    return torch.stack([cx, cy], dim=1)
