"""Grad-CAM++ (Chattopadhay et al., WACV 2018), with the paper's closed-form coefficients.

With ``g = d y_c / d A_k`` (the closed form the paper derives for the exponential of the class
score, as its code and later implementations use it)::

    alpha_k(i, j) = g(i, j)^2 / (2 g(i, j)^2 + sum_ab A_k(a, b) g(i, j)^3)   (0 where the
                                                                              denominator is 0)
    w_k = sum_ij alpha_k(i, j) ReLU(g(i, j))

ReLU on the weighted sum (the paper's convention). On an exact (GAP + affine) head the gradient
is constant over space (no backward pass), and so are the coefficients.
"""

from __future__ import annotations

import torch

from .base import MapSource, Method


class GradCAMPlusPlus(Method):
    name = "gradcam++"
    title = "Grad-CAM++ (Chattopadhay et al. 2018)"
    uses_gradients = True

    def weights(self, source: MapSource, targets: torch.Tensor) -> torch.Tensor:
        features = source.features.float()  # [B, K, h, w]
        grads = source.gradients(targets)  # [B, C, K, h, w] or [B, C, K, 1, 1]
        total = features.sum(dim=(-2, -1))[:, None, :, None, None]  # sum_ab A_k(a, b)
        squared = grads.square()
        denominator = 2 * squared + total * squared * grads
        alpha = torch.where(denominator != 0, squared / denominator, 0.0)
        terms = alpha * grads.clamp(min=0)
        # constant-over-space terms ([..., 1, 1]) count once per position of the map
        return terms.expand(*terms.shape[:-2], *features.shape[-2:]).sum(dim=(-2, -1))
