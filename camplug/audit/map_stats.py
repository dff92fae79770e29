"""Statistics of a map that need no ground truth: how much of its mass lies in a border band,
how spread out it is, and where its centre of mass lies. A map's mass is its values (maps in
[0, 1], as scoring uses them); a map of zero mass (constant maps normalize to 0) has no
statistics (NaN)."""

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
    """(maps as float64 [N, H, W] with negative values clamped to 0, total mass [N] with 0
    replaced by NaN)."""
    if maps.dim() != 3:
        raise ValueError(f"maps must be [N, H, W], got shape {tuple(maps.shape)}")
    values = maps.detach().double().clamp_min(0.0)
    total = values.sum(dim=(1, 2))
    return values, torch.where(total > 0, total, torch.full_like(total, math.nan))


def border_mass(maps: torch.Tensor, fraction: float = 0.1) -> torch.Tensor:
    """The share of each map's mass in the border band (``fraction`` of each side), float64
    [N]. A uniform map scores the band's area share, ``1 - (1 - 2 * fraction)**2`` (0.36 at
    0.1)."""
    values, total = _mass(maps)
    band = border_band(*maps.shape[-2:], fraction, device=maps.device)
    return (values * band).sum(dim=(1, 2)) / total


def mass_area(maps: torch.Tensor, share: float = 0.5) -> torch.Tensor:
    """The smallest fraction of the pixels that holds ``share`` of each map's mass (its largest
    values), float64 [N]: small for a concentrated map, ``share`` for a uniform one."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share}")
    values, total = _mass(maps)
    ranked = values.flatten(1).sort(dim=1, descending=True).values.cumsum(dim=1)
    # pixels before the running sum reaches the share, plus the one that reaches it
    needed = (ranked < share * total[:, None]).sum(dim=1) + 1
    needed = needed.clamp_max(ranked.shape[1]).double()
    return torch.where(total.isnan(), total, needed / ranked.shape[1])


def centroid(maps: torch.Tensor) -> torch.Tensor:
    """Each map's centre of mass as fractions of the width and height, float64 [N, 2] (x, y):
    pixel ``j`` covers [j, j + 1), so its centre is ``(j + 0.5) / W``; (0.5, 0.5) is the
    image's centre."""
    values, total = _mass(maps)
    height, width = maps.shape[-2:]
    xs = (torch.arange(width, device=maps.device, dtype=torch.float64) + 0.5) / width
    ys = (torch.arange(height, device=maps.device, dtype=torch.float64) + 0.5) / height
    cx = (values.sum(dim=1) * xs).sum(dim=1) / total
    cy = (values.sum(dim=2) * ys).sum(dim=1) / total
    return torch.stack([cx, cy], dim=1)
