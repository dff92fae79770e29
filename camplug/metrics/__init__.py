"""Localization and faithfulness metrics for class activation maps (torch, CPU or CUDA).

Localization (``localization.py``): MaxBoxAcc v1 / V2, the CAM paper's protocol, PxAP,
pointing game, energy-based pointing game; box protocols ``PROTOCOLS`` (default
``DEFAULT_PROTOCOL``). Faithfulness (``faithfulness.py``): deletion and
insertion AUC, Average Drop / Increase in Confidence. Connected components:
``components.py``.
"""

from __future__ import annotations

from .components import (
    Components,
    connected_components,
    label_components,
    superlevel_components,
)
from .faithfulness import (
    PerturbationCurves,
    average_drop_increase,
    deletion_auc,
    gaussian_blur,
    insertion_auc,
    summarize_drop_increase,
)
from .localization import (
    DEFAULT_PROTOCOL,
    PROTOCOLS,
    BoxProtocol,
    MaxBoxAccResult,
    box_ious,
    box_ious_v1_v2,
    cam_paper_localization,
    default_pixel_thresholds,
    default_thresholds,
    energy_pointing_game,
    iou_matrix,
    max_box_acc,
    max_box_acc_from_ious,
    pixel_pr_counts,
    pointing_game,
    pxap,
    pxap_from_counts,
    quantize_cams,
    threshold_boxes,
)

__all__ = [
    "DEFAULT_PROTOCOL",
    "PROTOCOLS",
    "BoxProtocol",
    "Components",
    "MaxBoxAccResult",
    "PerturbationCurves",
    "average_drop_increase",
    "box_ious",
    "box_ious_v1_v2",
    "cam_paper_localization",
    "connected_components",
    "default_pixel_thresholds",
    "default_thresholds",
    "deletion_auc",
    "energy_pointing_game",
    "gaussian_blur",
    "insertion_auc",
    "iou_matrix",
    "label_components",
    "max_box_acc",
    "max_box_acc_from_ious",
    "pixel_pr_counts",
    "pointing_game",
    "pxap",
    "pxap_from_counts",
    "quantize_cams",
    "summarize_drop_increase",
    "superlevel_components",
    "threshold_boxes",
]
