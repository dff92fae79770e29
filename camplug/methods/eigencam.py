"""Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): the projection of the features on their first
principal component; class-agnostic (every requested class gets the same map).

Per sample, the activations as a matrix ``M`` [h*w, K] (one row per position) are centred
(``M_c = M - mean``, the mean row over the positions) and the weights are the first right
singular vector ``v`` of ``M_c`` [K]. The map ``sum_k v_k A_k = M v`` differs from the
centred projection ``M_c v`` the paper describes only by the constant ``mean . v`` per map,
which min-max normalization removes (with ``normalize=False`` the raw values include it).

The sign of a singular vector is arbitrary; it is fixed so that the projection of the mean
activation is positive (``mean . v > 0``: the map is high where the activations are strong);
when that projection is 0, so that the largest-magnitude entry of ``v`` is positive. No ReLU:
with one, the map would depend on that constant offset (uncentred or centred projection).
"""

from __future__ import annotations

import torch

from .base import MapSource, Method


class EigenCAM(Method):
    name = "eigencam"
    title = "Eigen-CAM (Muhammad & Yeasin 2020)"
    relu = False

    def weights(self, source: MapSource, targets: torch.Tensor) -> torch.Tensor:
        features = source.features.float()  # [B, K, h, w]
        matrix = features.flatten(2).transpose(1, 2)  # [B, hw, K]
        mean = matrix.mean(dim=1)  # [B, K]
        _, _, vh = torch.linalg.svd(matrix - mean[:, None], full_matrices=False)
        first = vh[:, 0]  # [B, K], unit norm
        sign = torch.sign((mean * first).sum(dim=-1))
        largest = first.gather(1, first.abs().argmax(dim=1, keepdim=True))[:, 0]
        sign = torch.where(sign == 0, torch.sign(largest), sign)
        first = first * sign[:, None]
        return first[:, None].expand(-1, targets.shape[1], -1).contiguous()
