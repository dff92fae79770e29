"""``camplug.overlay``: a class activation map drawn over its image, as uint8 RGB pixels.

The one place camplug turns an image and a map into a picture: the audit report, ``camplug
explain`` and ``camplug export`` all call :func:`overlay`, and :func:`heatmap` colours a map
alone (how ``CamResult`` shows itself in Jupyter, where the input image is not at hand).
"""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np

DEFAULT_COLORMAP = "jet"
CHANNELS = (1, 3)


def _as_array(value: Any) -> tuple[np.ndarray, bool]:
    """``value`` as a NumPy array (a torch tensor detached and moved to the CPU) and whether it
    was a torch tensor."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch.Tensor, without torch
        tensor = value.detach().cpu()
        if str(tensor.dtype) in ("torch.bfloat16", "torch.float16"):
            tensor = tensor.float()
        return tensor.numpy(), True
    return np.asarray(value), False


def image_rgb(image: Any) -> np.ndarray:
    """An image as uint8 [H, W, 3].

    ``image``: a PIL image (any mode, converted to RGB), or a torch tensor / NumPy array of
    shape [3, H, W], [H, W, 3], [1, H, W], [H, W, 1] or [H, W] (grey), either uint8 or
    floating point with values in [0, 1] (scaled by 255 and rounded). A 3-D tensor is read
    channels-first when its first dimension is 1 or 3, else channels-last; a 3-D array
    channels-last when its last dimension is 1 or 3, else channels-first.
    """
    if hasattr(image, "convert") and hasattr(image, "mode"):  # a PIL image
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    array, is_tensor = _as_array(image)
    shape = tuple(array.shape)
    if array.ndim == 2:
        array = array[..., None]
    elif array.ndim == 3:
        first, last = shape[0] in CHANNELS, shape[-1] in CHANNELS
        if first and (is_tensor or not last):
            array = np.moveaxis(array, 0, -1)
        elif not last:
            raise ValueError(
                f"image of shape {list(shape)}: expected [3, H, W], [H, W, 3], [1, H, W], "
                "[H, W, 1] or [H, W] (no dimension of size 1 or 3 to hold the channels)")
    else:
        raise ValueError(f"image of shape {list(shape)}: expected [3, H, W], [H, W, 3], "
                         "[1, H, W], [H, W, 1] or [H, W]")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image of shape {list(shape)} is empty")
    if array.dtype == np.uint8:
        pixels = array
    elif np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError("image holds NaN or infinite values")
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"float image values must lie in [0, 1], got [{low:.3g}, {high:.3g}]; a "
                "normalized model input must be un-normalized first (x * std + mean)")
        pixels = np.round(values * 255.0).astype(np.uint8)
    else:
        raise ValueError(f"image dtype {array.dtype}: expected uint8, or floats in [0, 1]")
    return np.ascontiguousarray(np.broadcast_to(pixels, (*pixels.shape[:2], 3)))


def cam_values(cam: Any, size: tuple[int, int] | None = None) -> np.ndarray:
    """A map as float64 [H, W] in [0, 1], resized bilinearly to ``size`` (H, W) when given.

    ``cam``: a torch tensor or NumPy array [h, w] (also [1, h, w] or [1, 1, h, w]), floating
    point in [0, 1] (camplug's maps with ``normalize=True``, the default) or uint8 (read as
    v / 255, camplug's ``out_dtype=torch.uint8``). The resize matches
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``, as camplug's
    own upsampling does; NaN pixels count as 0.
    """
    array, _ = _as_array(cam)
    shape = tuple(array.shape)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"cam of shape {list(shape)}: expected one non-empty map [h, w] "
                         "(a [1, h, w] or [1, 1, h, w] tensor is squeezed)")
    if array.dtype == np.uint8:
        values = array.astype(np.float64) / 255.0
    elif np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float64)
        values[np.isnan(values)] = 0.0
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"cam values must lie in [0, 1], got [{low:.3g}, {high:.3g}]; use maps made "
                "with normalize=True (the default) or min-max scale it: "
                "(cam - cam.min()) / (cam.max() - cam.min())")
    else:
        raise ValueError(f"cam dtype {array.dtype}: expected floats in [0, 1] or uint8")
    if size is None or tuple(size) == values.shape:
        return values
    import torch
    import torch.nn.functional as F

    resized = F.interpolate(torch.from_numpy(values)[None, None], size=tuple(size),
                            mode="bilinear", align_corners=False)
    return resized[0, 0].clamp(0.0, 1.0).numpy()


def get_colormap(name: str):
    """The matplotlib colormap ``name`` (``ValueError`` naming a few when it is unknown)."""
    from matplotlib import colormaps

    try:
        return colormaps[name]
    except KeyError:
        raise ValueError(f"unknown colormap {name!r}: use a matplotlib colormap name, e.g. "
                         "'jet', 'turbo', 'viridis', 'inferno' or 'gray'") from None


def _colours(cam: Any, colormap: str, size: tuple[int, int] | None) -> np.ndarray:
    """float64 [H, W, 3] in [0, 255]: the map's colours, unrounded."""
    return get_colormap(colormap)(cam_values(cam, size))[..., :3] * 255.0


def heatmap(cam: Any, *, colormap: str = DEFAULT_COLORMAP,
            size: tuple[int, int] | None = None) -> np.ndarray:
    """The map alone in ``colormap``: uint8 [H, W, 3] (``cam`` as in :func:`cam_values`,
    resized to ``size`` (H, W) when given)."""
    return np.round(_colours(cam, colormap, size)).astype(np.uint8)


def overlay(image: Any, cam: Any, *, alpha: float = 0.5,
            colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """The map over the image: ``round((1 - alpha) * image + alpha * colormap(cam))``, uint8
    [H, W, 3] at the image's size.

    image: a torch tensor or NumPy array [3, H, W] or [H, W, 3] (also one channel or [H, W]),
    uint8 or floats in [0, 1] (un-normalize a model input first), or a PIL image.
    cam: [h, w] of any size (e.g. one ``camplug.explain(...).maps[i, j]``), floats in [0, 1]
    or uint8; upsampled bilinearly to (H, W) like camplug's own maps.
    alpha: the map's weight in [0, 1]. colormap: a matplotlib colormap name.

    >>> result = camplug.explain(model, x)
    >>> pixels = camplug.overlay(x_unnormalized[0], result.maps[0, 0])
    >>> PIL.Image.fromarray(pixels).save("cam.png")
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = image_rgb(image)
    heat = _colours(cam, colormap, rgb.shape[:2])
    blended = (1.0 - alpha) * rgb.astype(np.float64) + alpha * heat
    return np.round(blended).astype(np.uint8)


class _CallableModule(types.ModuleType):
    """This module, callable as :func:`overlay`: importing ``camplug.overlay`` makes the package
    attribute ``camplug.overlay`` this module (Python sets it on import), so
    ``camplug.overlay(image, cam)`` keeps working after the first import."""

    def __call__(self, image: Any, cam: Any, *, alpha: float = 0.5,
                 colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
        return overlay(image, cam, alpha=alpha, colormap=colormap)


sys.modules[__name__].__class__ = _CallableModule
