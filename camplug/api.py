"""The plugin's public functions: attach, explain, decorate/undecorate, describe."""

from __future__ import annotations

import sys
from typing import Any, NamedTuple, TextIO

import torch
from torch import nn

from .capture import CamCapture
from .discovery.heads import HeadInfo, LayerSpec, OutputSelector, find_head
from .discovery.layers import FeatureLayer, find_feature_layer
from .errors import UnsupportedHeadError
from .methods import Method
from .options import SizeSpec

DECORATION_ATTRIBUTE = "cam"


class CamResult(NamedTuple):
    """What :func:`explain` returns.

    In Jupyter it shows itself as a grid of the maps of its first 4 samples (rows) and first 3
    classes (columns), each captioned with the class index, its logit and softmax probability.
    The input images are not part of the result, so the grid shows the maps alone, each
    min-max scaled: ``camplug.overlay(image, result.maps[i, j])`` draws one over its image.
    """

    logits: torch.Tensor  # [B, N] the selected model output
    maps: torch.Tensor  # [B, C, H, W]
    targets: torch.Tensor  # int64 [B, C] the classes of the maps
    method: str  # the method that made the maps (what "auto" chose)

    def _repr_png_(self) -> bytes:
        """The notebook's image of the result (``camplug.drawing.result_png``)."""
        from .drawing import result_png

        return result_png(self)

    def _repr_html_(self) -> str:
        """The notebook's HTML of the result (``camplug.drawing.result_html``)."""
        from .drawing import result_html

        return result_html(self)


def attach(
    model: nn.Module,
    layer: LayerSpec = None,
    *,
    backend: str = "auto",
    output: OutputSelector = None,
) -> CamCapture:
    """Attach CAM capture to ``model`` (unmodified) until ``close()`` or the end of a with-block.

    layer: the module (or its name) whose output feeds the global pooling; None finds it.
    backend: the ``camplug.kernels.cam`` backend ("auto", "torch", "triton").
    output: selects the logits when ``model(x)`` returns a tuple/dict: an int index, a str key
    or a callable taking the output.

    The head is discovered on the first forward, by a probe forward of its first sample (eval
    mode, no gradients, every flag restored; the model's own hooks see that extra call). The
    head found is cached for the model: a later attach to the same, unchanged model (same
    submodules, parameters, attributes and hooks) with the same layer, output and input
    shape skips the probe (see ``camplug.discovery.cache``). Works
    under no_grad / inference_mode, autocast, channels_last, in train mode, and through
    nn.DataParallel on one device. A model containing a ``torch.compile``d module is refused:
    attach to the eager model, then compile it (the hooks are traced into the graph).

    >>> with camplug.attach(model) as capture:
    ...     logits = model(x)
    ...     maps = capture.maps()                 # [B, 1, H, W], predicted classes
    ...     top3 = capture.maps(topk=3)           # [B, 3, H, W]
    """
    return CamCapture(model, layer, backend=backend, output=output)


def explain(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = None,
    *,
    method: str | Method = "cam",
    topk: int | None = None,
    layer: LayerSpec = None,
    output: OutputSelector = None,
    backend: str = "auto",
    size: SizeSpec = "input",
    relu: bool | None = None,
    normalize: bool = True,
    out_dtype: torch.dtype | None = None,
) -> CamResult:
    """One call: run ``model(x)`` under a temporary capture and return the logits, the maps
    [B, C, H, W] of ``target`` made by ``method`` (see ``CamCapture.maps``), the classes and
    the method that ran.

    The forward records autograd only when the method needs a real backward (a gradient method
    on a model without an exact CAM head; then also under ``torch.inference_mode``, and for
    frozen models: the gradient is taken with respect to the captured activation). Otherwise it
    runs without gradients. The model runs in its current mode: call ``model.eval()`` first
    for inference behaviour.
    """
    with attach(model, layer, backend=backend, output=output) as capture:
        capture.discover(x)
        chosen = capture.resolve_method(method)
        if chosen.uses_gradients and not capture.exact_head:
            with torch.inference_mode(False), torch.enable_grad(), capture.tracking_gradients():
                model(x.clone() if x.is_inference() else x)
        else:
            with torch.no_grad():
                model(x)
        targets = capture.resolve_targets(target, topk)
        maps = capture.maps(targets, method=chosen, size=size, relu=relu,
                            normalize=normalize, out_dtype=out_dtype)
        return CamResult(capture.logits, maps, targets, chosen.name)


def decorate(
    model: nn.Module,
    layer: LayerSpec = None,
    *,
    backend: str = "auto",
    output: OutputSelector = None,
) -> nn.Module:
    """Keep a capture attached to ``model`` until :func:`undecorate`; returns ``model`` itself.

    ``model(x)`` returns exactly what it did before. The capture is the attribute
    ``model.cam`` (a :class:`CamCapture`): after ``logits = model(x)``, ``model.cam.maps()``
    gives the maps of that forward, and ``model.cam.logits`` / ``.features`` its tensors.
    """
    if hasattr(model, DECORATION_ATTRIBUTE):
        already = isinstance(getattr(model, DECORATION_ATTRIBUTE), CamCapture)
        raise ValueError(
            "the model is already decorated: call camplug.undecorate(model) first" if already
            else f"the model already has an attribute {DECORATION_ATTRIBUTE!r}; camplug.decorate "
            "stores its capture there. Use camplug.attach(model) instead"
        )
    capture = attach(model, layer, backend=backend, output=output)
    object.__setattr__(model, DECORATION_ATTRIBUTE, capture)
    return model


def undecorate(model: nn.Module) -> nn.Module:
    """Remove the capture added by :func:`decorate` (all its hooks); returns ``model``."""
    capture = model.__dict__.get(DECORATION_ATTRIBUTE)
    if not isinstance(capture, CamCapture):
        raise ValueError("the model is not decorated by camplug.decorate")
    capture.close()
    del model.__dict__[DECORATION_ATTRIBUTE]
    return model


def describe(
    model: nn.Module,
    example_input: torch.Tensor | tuple[Any, ...] | None = None,
    *,
    layer: LayerSpec = None,
    output: OutputSelector = None,
    file: TextIO | None = None,
    quiet: bool = False,
) -> HeadInfo | FeatureLayer:
    """Find the head (see ``camplug.discovery.heads.find_head``), print what was found (feature
    layer, shapes, pooling, folded operations, classifier) to ``file`` (default stdout) unless
    ``quiet``, and return the :class:`HeadInfo` (``info.describe()`` is the text).

    A model without an exact CAM head gets the layer the gradient methods use instead (see
    ``camplug.discovery.layers.find_feature_layer``): the refusal and that layer are printed
    and the :class:`FeatureLayer` is returned. With neither, the refusal is raised.
    """
    try:
        info: HeadInfo | FeatureLayer = find_head(model, example_input, layer=layer,
                                                  output=output)
        text = info.describe()
    except UnsupportedHeadError as refusal:
        try:
            info = find_feature_layer(model, example_input, layer=layer, output=output)
        except (ValueError, RuntimeError):
            raise refusal from None
        text = (f"exact CAM: none ({refusal})\n"
                f"gradient methods (method='gradcam', 'auto', ...) use: {info.description}")
    if not quiet:
        print(f"{type(model).__name__}\n{text}", file=file or sys.stdout)
    return info
