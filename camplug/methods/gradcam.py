"""Grad-CAM (Selvaraju et al., ICCV 2017): ``w[c, k] = mean_ij d y_c / d A_k(i, j)``.

On an exact (GAP + affine) head the gradient is constant over space, so the weights are the
head's Jacobian divided by h*w, with no backward pass.
"""

from __future__ import annotations

import torch

from .base import MapSource, Method


class GradCAM(Method):
    name = "gradcam"
    title = "Grad-CAM (Selvaraju et al. 2017)"
    uses_gradients = True

    def weights(self, source: MapSource, targets: torch.Tensor) -> torch.Tensor:
        return source.gradients(targets).mean(dim=(-2, -1))
