"""LayerCAM (Jiang et al., IEEE TIP 2021): per-position weights ``w_k(i, j) = ReLU(g(i, j))``
with ``g = d y_c / d A_k``, so ``map(i, j) = ReLU(sum_k ReLU(g_k(i, j)) A_k(i, j))``.

The weights are [B, C, K, h, w] (the kernel's per-position variant). On an exact (GAP + affine)
head the gradient is constant over space: the weights stay [B, C, K, 1, 1] and the capture
runs them as per-channel weights (a CAM with clamped weights). ReLU on the sum (the paper's).
"""

from __future__ import annotations

import torch

from .base import MapSource, Method


class LayerCAM(Method):
    name = "layercam"
    title = "LayerCAM (Jiang et al. 2021)"
    uses_gradients = True

    def weights(self, source: MapSource, targets: torch.Tensor) -> torch.Tensor:
        return source.gradients(targets).clamp(min=0)
