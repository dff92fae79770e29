"""The demo classifier: a small all-convolutional network with a GAP + linear head."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "DEMO_WIDTHS",
    "DemoCNN",
    "build_demo_model",
    "load_demo_model",
    "untrained_demo_model",
    "weights_path",
]

DEMO_WIDTHS = (24, 48, 64, 96)
_WEIGHT_FILES = {"easy": "demo_cnn.pt", "hard": "demo_cnn_hard.pt"}


def _conv_block(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    ]


class DemoCNN(nn.Module):
    """Per-image input standardization, six 3x3 conv-BN-ReLU blocks (output stride 8,
    receptive field 43 px), then ``AdaptiveAvgPool2d(1) -> Flatten -> Linear``.

    Input float32 [B, 3, H, W]. ``input_norm`` (``InstanceNorm2d``, no parameters) removes each
    image's mean colour and contrast: without it the random background colours dominate the
    features and training stalls at chance for hundreds of steps. ``features`` maps the
    standardized image to [B, widths[-1], H/8, W/8] (the tensor that feeds global pooling,
    12 x 12 at 96 px); the output is logits [B, num_classes].
    """

    def __init__(self, num_classes: int, widths: Sequence[int] = DEMO_WIDTHS):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if len(widths) != 4 or any(w < 1 for w in widths):
            raise ValueError(f"widths must be 4 positive channel counts, got {tuple(widths)}")
        w0, w1, w2, w3 = widths
        self.input_norm = nn.InstanceNorm2d(3)
        self.features = nn.Sequential(
            *_conv_block(3, w0, 2),
            *_conv_block(w0, w0, 1),
            *_conv_block(w0, w1, 2),
            *_conv_block(w1, w1, 1),
            *_conv_block(w1, w2, 2),
            *_conv_block(w2, w3, 1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(w3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(self.input_norm(x)))))


def build_demo_model(num_classes: int, widths: Sequence[int] = DEMO_WIDTHS) -> DemoCNN:
    """A freshly initialized ``DemoCNN`` (PyTorch's default initialization, current RNG)."""
    return DemoCNN(num_classes, widths)


def untrained_demo_model(seed: int = 0, num_classes: int = 8) -> DemoCNN:
    """A randomly initialized ``DemoCNN`` in eval mode, for the untrained-network baseline.

    Seeded with a private generator state, so the global RNG is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_demo_model(num_classes)
    return model.eval()


def weights_path(split: str = "easy") -> Path:
    """Path of the shipped weights for ``split`` ("easy" or "hard")."""
    if split not in _WEIGHT_FILES:
        raise ValueError(f"split must be one of {tuple(_WEIGHT_FILES)}, got {split!r}")
    return Path(__file__).with_name(_WEIGHT_FILES[split])


def load_demo_model(
    split: str = "easy",
    *,
    weights: str | Path | None = None,
    map_location: str | torch.device = "cpu",
) -> DemoCNN:
    """The demo model trained on ``split`` (or the checkpoint at ``weights``), in eval mode.

    Checkpoints are read with ``torch.load(weights_only=True)``; they hold ``state_dict``,
    ``num_classes``, ``widths``, ``class_names``, ``image_size`` and ``split``, as written by
    ``python -m camplug.zoo.train``. The class names end up in ``model.class_names``, the
    training images' side in ``model.image_size``.
    """
    path = weights_path(split) if weights is None else Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"no demo weights at {path}; train them with "
            f"`python -m camplug.zoo.train --split {split}`"
        )
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    model = build_demo_model(int(checkpoint["num_classes"]), tuple(checkpoint["widths"]))
    model.load_state_dict(checkpoint["state_dict"])
    model.class_names = list(checkpoint["class_names"])
    model.image_size = int(checkpoint["image_size"])
    return model.eval()
