"""The torchvision models of the peer benchmark and the layers every method is given.

Each model is built with random weights (seeded, eval mode, 1000 classes). ``layer`` names the
module that every peer hooks; it is the module closest to the tensor that feeds the global
pooling that the peers can hook (they hook modules only):

- ResNet-50 ``layer4``, EfficientNet-B0 ``features``, ConvNeXt-T ``features``: that tensor;
- DenseNet-121 ``features``: its output goes through an in-place functional ReLU
  (``F.relu(features, inplace=True)``) before the pooling. The activations the peers keep are
  the same storage, so they see the ReLU'd values; the gradients they take are those of the
  pre-ReLU tensor (zero where it was negative);
- Swin-T ``permute``: the [B, C, H, W] output after the final LayerNorm (torchvision's Swin
  permutes its NHWC features before the pooling), so no reshape transform is needed;
- VGG-16 ``features`` (the last max pool, 7x7 at 224 px: the classifier is three Linear layers
  with ReLU), MobileNetV3-Large ``features`` (Linear-Hardswish-Linear after the pooling): Grad-CAM
  only, no exact CAM exists.

``fc`` names the Linear layer torchcam's CAM takes its weights from (None where the head has
several, where torchcam's CAM refuses). On ConvNeXt-T a LayerNorm2d sits between the pooling and
that Linear: torchcam's CAM uses the Linear weights alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: its display name, torchvision builder, hooked layer and final Linear."""

    name: str
    builder: str
    layer: str
    fc: str | None
    exact_cam: bool

    def build(self, seed: int = 0) -> nn.Module:
        """The model with seeded random weights, in eval mode, its BatchNorm running statistics
        calibrated (see ``calibrate_batch_norm``)."""
        torch.manual_seed(seed)
        factory: Callable[..., nn.Module] = getattr(torchvision.models, self.builder)
        return calibrate_batch_norm(factory(weights=None))


def calibrate_batch_norm(model: nn.Module, batch: int = 8, size: int = 224) -> nn.Module:
    """Set every BatchNorm's running statistics to those of one train-mode forward of
    ``batch`` random images (no weight changes); return the model in eval mode.

    With the statistics of a fresh model (mean 0, variance 1), activations of a random-weight
    network shrink block after block: EfficientNet-B0's CAM spans about 1e-13, below the
    normalization's epsilon, and every map is rounding noise. Calibrated, each BatchNorm
    normalizes its input as it would after training, and the maps are well defined.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average: exactly this batch's statistics
        model.train()
        with torch.no_grad():
            model(torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)))
        for norm in norms:
            norm.momentum = 0.1
    return model.eval()


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("ResNet-50", "resnet50", "layer4", "fc", True),
        ModelSpec("DenseNet-121", "densenet121", "features", "classifier", True),
        ModelSpec("EfficientNet-B0", "efficientnet_b0", "features", "classifier.1", True),
        ModelSpec("ConvNeXt-T", "convnext_tiny", "features", "classifier.2", True),
        ModelSpec("Swin-T", "swin_t", "permute", "head", True),
        ModelSpec("VGG-16", "vgg16", "features", None, False),
        ModelSpec("MobileNetV3-L", "mobilenet_v3_large", "features", None, False),
    )
}

