"""Drawing maps: ``overlay`` (``camplug.overlay``), a class activation map drawn over its image
as uint8 RGB pixels; ``heatmap``; and the notebook display of ``CamResult``.

The one place camplug turns an image and a map into a picture: the audit report, ``camplug
explain`` and ``camplug export`` all call :func:`overlay`, and :func:`heatmap` colours a map
alone (how ``CamResult`` shows itself in Jupyter, where the input image is not at hand).
"""

from __future__ import annotations

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


def _colours(values: np.ndarray, colormap: str) -> np.ndarray:
    """Values in [0, 1] [..., H, W] in ``colormap``: float64 [..., H, W, 3] in [0, 255],
    unrounded."""
    return get_colormap(colormap)(values)[..., :3] * 255.0


def heatmap(cam: Any, *, colormap: str = DEFAULT_COLORMAP,
            size: tuple[int, int] | None = None) -> np.ndarray:
    """The map alone in ``colormap``: uint8 [H, W, 3] (``cam`` as in :func:`cam_values`,
    resized to ``size`` (H, W) when given)."""
    return np.round(_colours(cam_values(cam, size), colormap)).astype(np.uint8)


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
    heat = _colours(cam_values(cam, rgb.shape[:2]), colormap)
    blended = (1.0 - alpha) * rgb.astype(np.float64) + alpha * heat
    return np.round(blended).astype(np.uint8)



# notebook display of camplug.explain's result ----------------------------------------------
GRID_SAMPLES = 4  # CamResult shows the maps of its first samples ...
GRID_CLASSES = 3  # ... and of their first classes (the best first with topk)
GRID_CELL = 112  # pixels per map


def _display_maps(result: Any) -> tuple[np.ndarray, list[list[tuple[int, float, float]]]]:
    """The maps ``CamResult`` shows: float64 [b, c, GRID_CELL, GRID_CELL] (the first
    ``GRID_SAMPLES`` x ``GRID_CLASSES``, each min-max scaled for display, uint8 maps read as
    v / 255) and per map (class, logit, softmax probability)."""
    maps, _ = _as_array(result.maps[:GRID_SAMPLES, :GRID_CLASSES])
    logits, _ = _as_array(result.logits[:GRID_SAMPLES])
    targets, _ = _as_array(result.targets[:GRID_SAMPLES, :GRID_CLASSES])
    logits = logits.astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    values = maps.astype(np.float64) / (255.0 if maps.dtype == np.uint8 else 1.0)
    values = np.nan_to_num(values, nan=0.0)
    low = values.min(axis=(2, 3), keepdims=True)
    span = values.max(axis=(2, 3), keepdims=True) - low
    scaled = np.where(span > 0, (values - low) / np.where(span > 0, span, 1.0), 0.0)
    cells = np.stack([np.stack([cam_values(m, (GRID_CELL, GRID_CELL)) for m in row])
                      for row in scaled]) if scaled.size else scaled
    labels = [[(int(c), float(logits[i, c]), float(probs[i, c])) for c in targets[i]]
              for i in range(len(targets))]
    return cells, labels


def _caption(sample: int, cls: int, logit: float, prob: float) -> str:
    return f"#{sample} class {cls}: logit {logit:.2f}, p {prob:.2f}"


def _shown(result: Any) -> str:
    b, c = int(result.maps.shape[0]), int(result.maps.shape[1])
    return (f"{min(b, GRID_SAMPLES)} of {b} samples x {min(c, GRID_CLASSES)} of {c} classes, "
            f"method {result.method}; the maps alone, each min-max scaled (the input is not "
            "kept: camplug.overlay(image, result.maps[i, j]) draws one over its image)")


def result_png(result: Any, colormap: str = DEFAULT_COLORMAP) -> bytes:
    """A PNG of a ``CamResult``: a grid of its first samples' (rows) maps (columns) as
    heatmaps, each captioned with the sample, the class index, its logit and probability."""
    import io

    from PIL import Image, ImageDraw

    cells, labels = _display_maps(result)
    heats = np.round(_colours(cells, colormap)).astype(np.uint8)
    text_height, pad = 14, 4
    rows, cols = cells.shape[:2]
    width = max(cols, 1) * (GRID_CELL + pad) + pad
    height = max(rows, 1) * (GRID_CELL + text_height + pad) + pad + text_height
    canvas = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(canvas)
    pen.text((pad, 1), f"{result.method}: {tuple(result.maps.shape)} maps", fill="black")
    for i in range(rows):
        for j in range(cols):
            x = pad + j * (GRID_CELL + pad)
            y = pad + text_height + i * (GRID_CELL + text_height + pad)
            canvas.paste(Image.fromarray(heats[i, j]), (x, y))
            cls, _, prob = labels[i][j]
            pen.text((x, y + GRID_CELL), f"#{i} class {cls} p {prob:.2f}", fill="black")
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def result_html(result: Any, colormap: str = DEFAULT_COLORMAP) -> str:
    """HTML of a ``CamResult``: a table of its first samples' (rows) maps (columns) as inline
    PNG heatmaps with the class index, logit and probability; every text escaped."""
    import base64
    import html
    import io

    from PIL import Image

    cells, labels = _display_maps(result)
    heats = np.round(_colours(cells, colormap)).astype(np.uint8)
    rows = []
    for i in range(cells.shape[0]):
        tds = []
        for j in range(cells.shape[1]):
            buffer = io.BytesIO()
            Image.fromarray(heats[i, j]).save(buffer, format="PNG")
            source = base64.b64encode(buffer.getvalue()).decode("ascii")
            caption = html.escape(_caption(i, *labels[i][j]))
            tds.append(f'<td><img src="data:image/png;base64,{source}" alt="{caption}">'
                       f"<br><small>{caption}</small></td>")
        rows.append("<tr>" + "".join(tds) + "</tr>")
    return (f"<div><p><b>CamResult</b> ({html.escape(_shown(result))})</p>"
            f"<table>{''.join(rows)}</table></div>")
