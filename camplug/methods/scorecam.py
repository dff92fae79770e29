"""Score-CAM (Wang et al., CVPR Workshops 2020): weights from masked forward passes, no gradient.

For each channel k of sample b: upsample ``A_k`` to the input size (bilinear,
``align_corners=False``), min-max normalize it to [0, 1] (``(M - min) / (max - min + eps)``,
eps = 1e-7: a constant channel gives a zero mask), multiply the input by it and read the class
scores ``s_k = y_c(x * mask_k)``. The weights are ``softmax_k(s_k)``. The paper's score is the
increase of confidence ``y_c(x * mask_k) - y_c(x_b)`` over a baseline input ``x_b``; that
baseline term is the same for every k, and a softmax is unchanged by a constant shift, so no
baseline forward is needed. ReLU on the weighted sum (the paper's convention).

Cost: B * K extra forwards (K masked inputs per sample), run ``batch_size`` at a time without
gradients: ``camplug.methods.get("scorecam")`` uses 32; pass
``method=camplug.methods.ScoreCAM(batch_size=64)`` for another size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels.semantics import min_max_normalize
from .base import MapSource, Method

DEFAULT_BATCH_SIZE = 32


class ScoreCAM(Method):
    name = "scorecam"
    title = "Score-CAM (Wang et al. 2020)"

    def __init__(self, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"batch_size (masked inputs per forward) must be a positive int, got "
                f"{batch_size!r}"
            )
        self.batch_size = batch_size

    def weights(self, source: MapSource, targets: torch.Tensor) -> torch.Tensor:
        features = source.features  # [B, K, h, w]
        x = source.input  # [B, ..., H, W]
        batch, channels = features.shape[:2]
        if x.dim() < 3 or x.shape[0] != batch:
            raise ValueError(
                f"Score-CAM masks the input: it must be [B, ..., H, W] with B={batch} like the "
                f"features, got an input of shape {tuple(x.shape)}"
            )
        size = tuple(x.shape[-2:])
        mask_shape = (1,) * (x.dim() - 3)  # the mask broadcasts over the input's channels
        scores = torch.empty(batch * channels, targets.shape[1], device=x.device)
        for start in range(0, batch * channels, self.batch_size):
            rows = torch.arange(start, min(start + self.batch_size, batch * channels),
                                device=features.device)
            samples, kept = rows // channels, rows % channels
            masks = F.interpolate(features[samples, kept].float()[:, None], size=size,
                                  mode="bilinear", align_corners=False)
            masks = min_max_normalize(masks).to(device=x.device, dtype=x.dtype)
            samples = samples.to(x.device)
            masked = x[samples] * masks.view(len(rows), *mask_shape, *size)
            scores[start:start + len(rows)] = source.class_scores(masked, samples, targets)
        return scores.view(batch, channels, -1).transpose(1, 2).softmax(dim=-1).to(
            features.device)
