"""XGrad-CAM (Fu et al., BMVC 2020): ``w_k = sum_ij g(i, j) A_k(i, j) / (sum_ij A_k(i, j) + eps)``
with ``g = d y_c / d A_k`` and ``eps = 1e-7`` (as pytorch-grad-cam).

ReLU on the weighted sum (the paper's convention). On an exact (GAP + affine) head the gradient
is constant over space, so the weights equal Grad-CAM's up to the ``eps`` term. The denominator
is the channel's total activation: a channel whose activations sum to about zero (possible for
features that are not post-ReLU, e.g. transformer tokens) gets a large weight, as in the paper.
"""

from __future__ import annotations

import torch

from .base import MapSource, Method

EPS = 1e-7


class XGradCAM(Method):
    name = "xgradcam"
    title = "XGrad-CAM (Fu et al. 2020)"
    uses_gradients = True

    def weights(self, source: MapSource, targets: torch.Tensor) -> torch.Tensor:
        features = source.features.float()[:, None]  # [B, 1, K, h, w]
        grads = source.gradients(targets)  # [B, C, K, h, w] or [B, C, K, 1, 1]
        return (grads * features).sum(dim=(-2, -1)) / (features.sum(dim=(-2, -1)) + EPS)
