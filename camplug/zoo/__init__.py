"""The shipped demo model: architecture, loaders and training record."""

from __future__ import annotations

import json

from .model import (
    DEMO_WIDTHS,
    DemoCNN,
    build_demo_model,
    load_demo_model,
    untrained_demo_model,
    weights_path,
)

__all__ = [
    "DEMO_WIDTHS",
    "DemoCNN",
    "build_demo_model",
    "load_demo_model",
    "load_training_record",
    "untrained_demo_model",
    "weights_path",
]


def load_training_record(split: str = "easy") -> dict[str, object]:
    """The JSON training record shipped beside the weights of ``split``."""
    path = weights_path(split).with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"no training record for split {split!r} at {path}")
    return json.loads(path.read_text())
