"""CAM (Zhou et al., CVPR 2016): the classifier's (folded) weights, ``w[c, k] = W_eff[c, k]``.

Exact on global-average-pooling heads: ``mean(map_c) + b_c == logit_c``. No ReLU (the paper
and its authors' code apply none).
"""

from __future__ import annotations

import torch

from .base import MapSource, Method


class CAM(Method):
    name = "cam"
    title = "CAM (Zhou et al. 2016)"
    relu = False

    def weights(self, source: MapSource, targets: torch.Tensor) -> torch.Tensor:
        return source.head_weights(targets)
