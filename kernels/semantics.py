"""The normalization rules of the CAM semantics, shared by every backend (docs: cam() docstring).

EPS: added to a map's range in min-max normalization, ``(x - lo) / (hi - lo + EPS)``.
CONSTANT_RTOL: a map whose range ``hi - lo`` is at most ``CONSTANT_RTOL * max(|lo|, |hi|)``
counts as constant (summation-order noise of an fp32 channel sum is far below it) and
normalizes to 0 everywhere, on every backend. The rule is literal: an infinite range (the map
holds an infinity, or its finite range overflows fp32) also counts as constant. So a normalized
map is finite everywhere, or NaN everywhere when its range is NaN (the map holds a NaN, or is
+inf or -inf everywhere).
"""

from __future__ import annotations

import torch

EPS = 1e-7
CONSTANT_RTOL = 1e-5


def map_range(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-map ``(lo, hi)`` of ``maps`` [..., h, w], each [..., 1, 1]; NaN propagates."""
    return maps.amin(dim=(-2, -1), keepdim=True), maps.amax(dim=(-2, -1), keepdim=True)


def min_max_normalize(maps: torch.Tensor) -> torch.Tensor:
    """Normalize each map of ``maps`` [..., h, w] (fp32 or fp64) to [0, 1] over its (h, w).

    ``(x - lo) / (hi - lo + EPS)``; a constant or near-constant map (see CONSTANT_RTOL) is 0
    everywhere. A map whose range is NaN (it holds a NaN) is NaN everywhere.
    """
    lo, hi = map_range(maps)
    span = hi - lo
    constant = span <= CONSTANT_RTOL * torch.maximum(lo.abs(), hi.abs())
    return torch.where(constant, torch.zeros_like(maps), (maps - lo) / (span + EPS))


def non_finite_maps(maps: torch.Tensor) -> torch.Tensor:
    """bool [...] for ``maps`` [..., h, w]: True where the map's range ``hi - lo`` is not finite.

    These are the maps a uint8 output cannot express (NaN, or an infinity: their bytes are 0,
    like a constant map's); backends return this as ``nan_maps`` for uint8 output.
    """
    lo, hi = map_range(maps)
    return ~torch.isfinite(hi - lo)[..., 0, 0]
