"""Exceptions raised by the plugin."""

from __future__ import annotations


class UnsupportedHeadError(ValueError):
    """The model has no exact CAM: something other than global average pooling followed by
    affine operations lies between the features and the logits (a nonlinearity, max pooling, ...).

    The message names the blocking operation and the module it runs in, and points to Grad-CAM
    (``method="gradcam"``), which needs no particular head.
    """


GRAD_CAM_HINT = (
    "Grad-CAM needs no particular head: camplug.explain(model, x, method='gradcam') (or "
    "method='auto', which picks CAM where the head allows it)"
)


class DegenerateMapWarning(UserWarning):
    """The exact CAM exists but is useless: the feature map feeding the pooling is 1x1 (the
    message names the nearest earlier layer with spatial extent)."""
