"""``ClassActivationMap``: CAM as a Captum layer attribution, and helpers for Captum's tools.

On a model whose logits are an affine function of the global average of a feature map A
[N, K, h, w], ``ClassActivationMap(model).attribute(x, target=c)`` returns

    attribution[n, 0] = sum_k W_eff[c, k] * A[n, k] / (h * w)        # [N, 1, h, w]

which is exactly what Captum's ``LayerGradCam`` returns for that layer, computed from one forward
pass and no backward pass (so it also runs under ``torch.inference_mode``). Its spatial sum is
the logit minus the head's bias (the completeness residual ``compute_convergence_delta`` reports).
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

try:
    from captum.attr import LayerAttribution
    from captum.log import log_usage
except ModuleNotFoundError as missing:
    if not (missing.name or "").startswith("captum"):
        raise
    raise ModuleNotFoundError(
        "camplug.ClassActivationMap needs captum, which is not installed: "
        "pip install 'camplug[captum]'", name=missing.name
    ) from missing
from torch import nn

from .. import methods
from ..api import attach
from ..discovery.heads import layer_name
from ..kernels import Backend, cam
from ..options import resolve_size
from ..targets import resolve_targets

TensorOrTuple = torch.Tensor | tuple[torch.Tensor, ...]


# ------------------------------------------------------------------------------------- targets
def to_class_indices(target: Any, logits: torch.Tensor) -> torch.Tensor:
    """Any Captum ``TargetType`` for [N, classes] logits -> LongTensor [N] on the logits' device.

    None -> each sample's predicted class (argmax). int, 0-d or one-element tensor, or a
    one-element tuple -> the same class for every sample. list (of ints, one-element tuples or
    0-d tensors) or 1-D integer tensor of length N -> one class per sample. Captum's forms are
    brought to camplug's (``camplug.targets.resolve_targets``), which checks them.
    """
    if isinstance(target, tuple):
        target = _single_index(target, "target")
    elif isinstance(target, list):
        target = [_single_index(t, f"target[{i}]") for i, t in enumerate(target)]
    elif isinstance(target, torch.Tensor) and target.numel() == 1:
        target = target.reshape(())
    elif isinstance(target, torch.Tensor) and target.dim() != 1:
        raise ValueError(
            f"a tensor target must be 0-d, hold one element, or be 1-D with one class per "
            f"sample; got shape {tuple(target.shape)}"
        )
    return resolve_targets(logits, target)[:, 0]


def _single_index(value: Any, what: str) -> int:
    """An int from an int, a one-element tuple or a one-element integer tensor."""
    if isinstance(value, tuple):
        if len(value) != 1:
            raise ValueError(
                f"{what} is a tuple of {len(value)} indices; CAM explains [N, classes] logits, "
                "so a tuple target must hold exactly one class index"
            )
        value = value[0]
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an integer class index, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------- the model
def find_model(forward_func: Callable[..., Any], model: nn.Module | None = None) -> nn.Module:
    """The nn.Module behind ``forward_func``, whose head gives the class weights.

    Found as: ``model`` when given; ``forward_func`` itself when it is a Module; the instance of
    a bound method of a Module (``model.forward``, ``model.predict``); through
    ``functools.partial``; or a Module-valued ``.model`` attribute. Raises TypeError otherwise.
    """
    if model is not None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        return model
    candidate: Any = forward_func
    while isinstance(candidate, functools.partial):
        candidate = candidate.func
    owners = (getattr(candidate, "__self__", None), getattr(candidate, "model", None))
    for found in (candidate, *owners):
        if isinstance(found, nn.Module):
            return found
    raise TypeError(
        f"cannot find the model behind forward_func {forward_func!r}: CAM needs the "
        "nn.Module whose classifier gives the class weights. Pass the module itself, one of its "
        "bound methods, or ClassActivationMap(forward_func, model=the_module)"
    )


def _check_single_device(model: nn.Module, device_ids: Sequence[int] | None) -> None:
    replicas = device_ids if device_ids is not None else getattr(model, "device_ids", None)
    if isinstance(model, nn.DataParallel) and replicas is not None and len(replicas) > 1:
        raise NotImplementedError(
            "a DataParallel model splits the feature map across devices; ClassActivationMap "
            "captures one device's forward. Pass the wrapped module (model.module) instead"
        )


# ----------------------------------------------------------------------------- the attribution
class ClassActivationMap(LayerAttribution):
    """Class Activation Map (Zhou et al., CVPR 2016) as a Captum layer attribution.

    forward_func: the model, or a function wrapping one (see ``find_model``; pass ``model=``
    for a plain function). layer: the module (or its qualified name) whose output feeds the
    global pooling; None finds it with camplug's head discovery, which also folds the affine
    layers after the pooling (BatchNorm1d, LayerNorm, Linear chains, ...) into effective class
    weights. device_ids: accepted for Captum's signature; a multi-device DataParallel model is
    refused. output: selects the logits when the model returns a tuple or dict (as in
    ``camplug.attach``). backend: the ``camplug.kernels.cam`` backend ("auto": Triton on CUDA).
    method: a ``camplug.methods`` name (default "cam"; "gradcam", "gradcam++", ... and "auto",
    CAM where the head allows it, else Grad-CAM). CAM maps are divided by h*w, so that without
    relu/interpolate/normalize they equal LayerGradCam's on the same layer, as Grad-CAM's do.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: nn.Module | str | None = None,
        device_ids: list[int] | None = None,
        *,
        model: nn.Module | None = None,
        output: Any = None,
        backend: Backend = "auto",
        method: str = "cam",
    ) -> None:
        methods.get(method) if method != methods.AUTO else None  # unknown names fail here
        self.model = find_model(forward_func, model)
        if layer is not None:
            layer = dict(self.model.named_modules())[layer_name(self.model, layer)]
        _check_single_device(self.model, device_ids)
        LayerAttribution.__init__(self, forward_func, layer, device_ids)  # type: ignore[arg-type]
        self.output = output
        self.backend = backend
        self.method = method

    def has_convergence_delta(self) -> bool:
        """Completeness holds for CAM only (sum of the map = logit - bias)."""
        return self.method == "cam"

    @classmethod
    def get_name(cls) -> str:
        return "Class Activation Map"

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: Any = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        interpolate: str | tuple[int, int] | None = None,
        normalize: bool = False,
        return_convergence_delta: bool = False,
    ) -> TensorOrTuple | tuple[TensorOrTuple, torch.Tensor]:
        """CAM of ``target`` for each sample: fp32 [N, 1, h, w].

        For tuple inputs the result is a 1-tuple holding that map: Captum's metrics
        (sensitivity_max) iterate over the attributions of tuple inputs, and the map belongs to
        the layer, not to one of the input tensors.

        inputs: a Tensor or a tuple of Tensors, batch first; additional_forward_args follow them
        positionally in the call of ``forward_func``.
        target: any Captum TargetType; None means each sample's predicted class (Captum's
        LayerGradCam refuses None for [N, classes] outputs).
        attribute_to_layer_input: use the input of ``layer`` as the feature map.
        relu_attributions: clamp the map at 0 (before interpolation and normalization).
        interpolate: None keeps (h, w); "input" the last two dims of the first input tensor;
        (H, W) that size. Bilinear, align_corners=False, computed by ``camplug.kernels.cam``.
        normalize: min-max normalize each low-resolution map to [0, 1] (eps 1e-7).
        return_convergence_delta: also return ``sum(map) - (logit - bias)`` per sample (fp32
        [N]), as ``compute_convergence_delta`` defines it.

        Without relu/interpolate/normalize the result equals LayerGradCam's on the same layer.
        The model's hooks are attached for this call only and always removed.
        """
        if return_convergence_delta and not self.has_convergence_delta():
            raise ValueError(f"return_convergence_delta=True needs method='cam' (completeness "
                             f"holds for CAM only), got method={self.method!r}")
        is_tuple = isinstance(inputs, tuple)
        inputs_tuple = _as_input_tuple(inputs)
        size = _output_size(interpolate, inputs_tuple[0])
        features, weights, bias, logits, classes = self._forward(
            inputs_tuple, target, additional_forward_args, attribute_to_layer_input
        )
        with torch.no_grad():
            maps = cam(
                features,
                weights,
                size,
                relu=relu_attributions,
                normalize=normalize,
                backend=self.backend,
            )
        result: TensorOrTuple = (maps,) if is_tuple else maps
        if not return_convergence_delta:
            return result
        logit = logits.gather(1, classes[:, None]).squeeze(1).float()
        return result, maps.flatten(1).sum(1) - (logit - bias)

    def compute_convergence_delta(
        self,
        attributions: TensorOrTuple,
        inputs: TensorOrTuple,
        target: Any = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
    ) -> torch.Tensor:
        """Completeness residual per sample: sum(attributions[n]) - (logit[n, t] - bias[n, t]).

        fp32 [N]. About 0 for the default map (layer resolution, no ReLU, not normalized);
        interpolated, ReLU'd or normalized maps are not additive and give a nonzero residual.
        A tuple of attributions is summed over all its tensors.
        """
        if not self.has_convergence_delta():
            raise ValueError(f"the convergence delta is defined for method='cam' only (got "
                             f"method={self.method!r})")
        parts = _as_input_tuple(attributions, "attributions")
        inputs_tuple = _as_input_tuple(inputs)
        with torch.no_grad():
            _, _, bias, logits, classes = self._forward(
                inputs_tuple, target, additional_forward_args, attribute_to_layer_input
            )
            if any(p.shape[0] != logits.shape[0] for p in parts):
                raise ValueError(
                    f"attributions have batch sizes {[p.shape[0] for p in parts]} but the "
                    f"inputs have {logits.shape[0]} samples"
                )
            total = sum(p.flatten(1).double().sum(1) for p in parts)
            logit = logits.gather(1, classes[:, None]).squeeze(1).double()
            return (total - (logit - bias.double())).float()

    def _call_forward_func(self, inputs: tuple[torch.Tensor, ...], extra: tuple[Any, ...]) -> None:
        """Run ``forward_func``; the model's own bound ``forward`` runs through the module, so
        that forward hooks (camplug's among them) see the call as with ``model(x)``."""
        func = self.forward_func
        is_own_forward = getattr(func, "__self__", None) is self.model and (
            getattr(func, "__func__", None) is type(self.model).forward
        )
        (self.model if is_own_forward else func)(*inputs, *extra)

    def _forward(
        self,
        inputs: tuple[torch.Tensor, ...],
        target: Any,
        additional_forward_args: Any,
        attribute_to_layer_input: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One hooked forward: features [N,K,h,w], the method's weights W [N,1,K] (or per
        position [N,1,K,h,w]; CAM's divided by h*w), the CAM bias [N] (None for other
        methods), logits, classes [N]."""
        extra = _as_forward_args(additional_forward_args)
        if attribute_to_layer_input and self.layer is None:
            raise ValueError("attribute_to_layer_input=True needs a layer (got layer=None)")
        hooked_layer = None if attribute_to_layer_input else self.layer
        watched = self.layer if attribute_to_layer_input else None
        needs_graph = self.method != "cam" and (
            self.method == methods.AUTO or methods.get(self.method).uses_gradients
        )
        with (
            attach(self.model, hooked_layer, output=self.output, backend=self.backend) as capture,
            _first_inputs(self.model) as model_inputs,
            _first_inputs(watched) as layer_inputs,
        ):
            if needs_graph:  # a model without an exact head differentiates the forward
                with torch.enable_grad(), capture.tracking_gradients():
                    self._call_forward_func(inputs, extra)
            else:
                with torch.no_grad():
                    self._call_forward_func(inputs, extra)
            if not model_inputs:
                raise RuntimeError(
                    f"forward_func {_short_name(self.forward_func)} did not call the model through "
                    "model(...), so camplug's hooks saw no forward: pass the model itself, or a "
                    "function that calls it"
                )
            features = capture.features
            if attribute_to_layer_input:
                _check_is_pooling_input(layer_inputs[-1:], features, self.layer)
            logits = capture.logits
            classes = to_class_indices(target, logits)
            chosen = capture.resolve_method(self.method)
            if chosen.name == "cam":
                weights, bias = capture.class_weights(classes[:, None])
                return (features, weights / (features.shape[-2] * features.shape[-1]),
                        bias[:, 0], logits, classes)
            weights = chosen.weights(capture, classes[:, None]).detach()
            if weights.dim() == 5 and weights.shape[-2:] == (1, 1):
                weights = weights[..., 0, 0]
        return features, weights, None, logits, classes


@contextmanager
def _first_inputs(module: nn.Module | None) -> Iterator[list[torch.Tensor | None]]:
    """Collect the first positional argument of every call of ``module`` inside the block.

    The pre-hook is removed on exit, also on errors; None collects nothing.
    """
    seen: list[torch.Tensor | None] = []
    if module is None:
        yield seen
        return

    def keep(_: nn.Module, args: tuple[Any, ...]) -> None:
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        seen.append(None if first is None else first.detach())

    handle = module.register_forward_pre_hook(keep)
    try:
        yield seen
    finally:
        handle.remove()


def _check_is_pooling_input(
    last_call: list[torch.Tensor | None], features: torch.Tensor, layer: nn.Module | None
) -> None:
    """CAM needs the tensor feeding global pooling: the layer's input must be that tensor."""
    name = type(layer).__name__
    layer_input = last_call[0] if last_call else None
    if layer_input is None:
        raise ValueError(f"layer {name} was not called with a tensor during the forward")
    same = layer_input.shape == features.shape and torch.equal(layer_input, features)
    if not same:
        raise ValueError(
            f"attribute_to_layer_input=True: the input of layer {name} (shape "
            f"{tuple(layer_input.shape)}) is not the tensor that feeds the global pooling "
            f"(shape {tuple(features.shape)}). Pass the pooling module, or the layer whose "
            "output feeds the pooling with attribute_to_layer_input=False, or layer=None"
        )


def _short_name(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", type(func).__name__)


def _as_input_tuple(inputs: Any, what: str = "inputs") -> tuple[torch.Tensor, ...]:
    items = inputs if isinstance(inputs, tuple) else (inputs,)
    if not items or not all(isinstance(t, torch.Tensor) for t in items):
        raise TypeError(
            f"{what} must be a Tensor or a non-empty tuple of Tensors, got "
            f"{type(inputs).__name__}"
            + (f" of ({', '.join(type(t).__name__ for t in items)})" if items else "")
        )
    sizes = {t.shape[0] if t.dim() else None for t in items}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"{what} must share the batch dimension 0, got shapes "
            f"{[tuple(t.shape) for t in items]}"
        )
    return tuple(items)


def _as_forward_args(additional_forward_args: Any) -> tuple[Any, ...]:
    if additional_forward_args is None:
        return ()
    if isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)


def _output_size(
    interpolate: str | tuple[int, int] | None, first_input: torch.Tensor
) -> int | tuple[int, int] | None:
    """The kernel's size for Captum's ``interpolate``: None keeps (h, w); otherwise as the
    plugin's ``size`` (``camplug.options.resolve_size``: "input", an int or (H, W))."""
    input_size = tuple(first_input.shape[-2:]) if first_input.dim() >= 3 else None
    return resolve_size("features" if interpolate is None else interpolate, input_size)


# ------------------------------------------------------------------------- helpers for Captum
def to_input_shape(
    attributions: TensorOrTuple, inputs: TensorOrTuple, *, conserve_total: bool = True
) -> TensorOrTuple:
    """Bring a layer map [N, 1, h, w] to each input's shape, for ``captum.metrics.infidelity``.

    Each image-like input [N, C, H, W] gets the map upsampled bilinearly to (H, W) and repeated
    over its C channels. With ``conserve_total`` (default) the values are scaled by
    (h * w) / (H * W * C), so the input attribution's total stays (about) the map's total, the
    logit minus bias; without it every channel carries the full upsampled map, which weighs the
    map C times. Inputs that are not [N, C, H, W] get zeros: CAM attributes nothing to them.
    Returns a Tensor for a Tensor ``inputs``, a tuple for a tuple.
    """
    maps = _as_input_tuple(attributions, "attributions")[0]
    if maps.dim() != 4 or maps.shape[1] != 1:
        raise ValueError(f"attributions must have shape [N, 1, h, w], got {tuple(maps.shape)}")
    inputs_tuple = _as_input_tuple(inputs)
    out = []
    for x in inputs_tuple:
        if x.dim() != 4:
            out.append(torch.zeros_like(x, dtype=maps.dtype))
            continue
        channels, height, width = x.shape[1:]
        up = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
        if conserve_total:
            up = up * (maps.shape[-2] * maps.shape[-1] / (height * width * channels))
        out.append(up.expand(-1, channels, -1, -1).contiguous())
    return tuple(out) if isinstance(inputs, tuple) else out[0]


def to_visualization(
    attribution: torch.Tensor, image: torch.Tensor, index: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Arrays for ``captum.attr.visualization.visualize_image_attr(attr, image, ...)``.

    attribution: one map [h, w] or [1, h, w], or a batch [N, 1, h, w] (``index`` picks one).
    image: [C, H, W] or a batch [N, C, H, W] (same ``index``), any float range.
    Returns (attr float64 [H, W], the map upsampled bilinearly; image float64 [H, W, C] in
    [0, 1], min-max scaled when it lies outside [0, 1], e.g. mean/std-normalized input).
    A map that is zero everywhere is refused: visualize_image_attr cannot scale it.
    """
    if image.dim() == 4:
        image = image[index]
    if attribution.dim() == 4:
        attribution = attribution[index]
    if attribution.dim() == 3 and attribution.shape[0] == 1:
        attribution = attribution[0]
    if attribution.dim() != 2 or image.dim() != 3:
        raise ValueError(
            "expected a map [h, w], [1, h, w] or [N, 1, h, w] and an image [C, H, W] or "
            f"[N, C, H, W]; got {tuple(attribution.shape)} and {tuple(image.shape)}"
        )
    if not bool(attribution.ne(0).any()):
        raise ValueError(
            "the map is zero everywhere (e.g. relu_attributions removed all of it); "
            "visualize_image_attr cannot scale an all-zero map"
        )
    height, width = image.shape[-2:]
    up = F.interpolate(
        attribution[None, None].float(), size=(height, width), mode="bilinear", align_corners=False
    )[0, 0]
    picture = image.detach().double().permute(1, 2, 0)
    lo, hi = float(picture.min()), float(picture.max())
    if lo < 0 or hi > 1:
        picture = (picture - lo) / max(hi - lo, 1e-12)
    return up.detach().double().cpu().numpy(), picture.cpu().numpy()
