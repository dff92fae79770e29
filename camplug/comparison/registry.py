"""The one registry of attribution methods that ``camplug.compare`` and the audit's baselines
run: how each is built and called.

Every method is one of camplug's (``camplug.methods``: "CAM", "gradcam", "gradcam++", ...,
run through the Captum adapter ``ClassActivationMap(method=...)``) or a ``captum.attr`` class,
optionally wrapped in Captum's NoiseTunnel (written "<nt_type>:<method>"). Captum is imported
only when a method is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .. import methods
from ..discovery.heads import LayerSpec, OutputSelector, find_head, layer_name, select_output
from ..kernels.semantics import min_max_normalize

Space = Literal["layer", "input"]  # layer maps [N, 1, h, w] or input maps [N, C, H, W]
# How input-space maps [N, C, H, W] become [N, H, W]: signed sum, sum or maximum of |values|.
ChannelReduction = Literal["sum", "abs", "max_abs"]

DEFAULT_METHODS: tuple[str, ...] = (
    "CAM",
    "LayerGradCam",
    "GuidedGradCam",
    "Saliency",
    "IntegratedGradients",
    "InputXGradient",
    "smoothgrad:Saliency",
)
NT_TYPES: tuple[str, ...] = ("smoothgrad", "smoothgrad_sq", "vargrad")
# The methods that attribute to the module holding the pooled feature map.
LAYER_METHODS = frozenset({"LayerGradCam", "GuidedGradCam"})


class LogitsOnly(nn.Module):
    """Wraps a model whose output is a tuple/dict so that calling it returns the logits."""

    def __init__(self, model: nn.Module, output: OutputSelector) -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, *args: Any) -> torch.Tensor:
        return select_output(self.model(*args), self.output)


@dataclass(frozen=True)
class MethodContext:
    """What every recipe may need. ``layer``/``layer_input``: the module (and whether its input
    rather than its output) holding the tensor that feeds the pooling, for Captum's layer
    methods; ``layer_problem`` says why there is none."""

    model: nn.Module
    logits_model: nn.Module
    inputs: torch.Tensor
    output: OutputSelector
    cam_layer: nn.Module | None
    layer: nn.Module | None
    layer_input: bool
    layer_problem: str | None


@dataclass(frozen=True)
class _Recipe:
    """How to build and call one method. ``captum_class``: its name in ``captum.attr`` (None
    for camplug's CAM); ``space``: "layer" maps [N, 1, h, w] or "input" maps [N, C, H, W]."""

    captum_class: str | None
    space: Space
    build: Callable[[MethodContext, Any], Any]
    kwargs: Callable[[MethodContext], dict[str, Any]]


def _no_kwargs(ctx: MethodContext) -> dict[str, Any]:
    return {}


def _layer_kwargs(ctx: MethodContext) -> dict[str, Any]:
    return {"attribute_to_layer_input": ctx.layer_input}


def _occlusion_kwargs(ctx: MethodContext) -> dict[str, Any]:
    channels, height, width = ctx.inputs.shape[1:]
    side = max(1, min(height, width) // 8)
    stride = max(1, side // 2)
    return {
        "sliding_window_shapes": (channels, side, side),
        "strides": (channels, stride, stride),
        "baselines": 0.0,
    }


def _layer_of(ctx: MethodContext, method: str) -> nn.Module:
    if ctx.layer is None:
        raise ValueError(
            f"{method} needs the module whose output (or input) is the tensor feeding the global "
            f"pooling, and there is none: {ctx.layer_problem}. Pass layer= to compare(), or "
            f"leave {method} out of methods"
        )
    return ctx.layer


def _camplug_recipe(method: str) -> _Recipe:
    """A camplug method, through the Captum adapter (layer maps [N, 1, h, w])."""

    def build(ctx: MethodContext, cls: Any) -> Any:
        from ..captum.attribution import ClassActivationMap

        return ClassActivationMap(ctx.model, ctx.cam_layer, output=ctx.output, method=method)

    return _Recipe(None, "layer", build, _no_kwargs)


_RECIPES: dict[str, _Recipe] = {
    "CAM": _camplug_recipe("cam"),
    **{name: _camplug_recipe(name) for name in methods.available() if name != "cam"},
    "LayerGradCam": _Recipe(
        "LayerGradCam",
        "layer",
        lambda ctx, cls: cls(ctx.logits_model, _layer_of(ctx, "LayerGradCam")),
        _layer_kwargs,
    ),
    "GuidedGradCam": _Recipe(
        "GuidedGradCam",
        "input",
        lambda ctx, cls: cls(ctx.logits_model, _layer_of(ctx, "GuidedGradCam")),
        _layer_kwargs,
    ),
    "Saliency": _Recipe("Saliency", "input", lambda ctx, cls: cls(ctx.logits_model), _no_kwargs),
    "IntegratedGradients": _Recipe(
        "IntegratedGradients",
        "input",
        lambda ctx, cls: cls(ctx.logits_model),
        lambda ctx: {"n_steps": 32, "internal_batch_size": ctx.inputs.shape[0]},
    ),
    "InputXGradient": _Recipe(
        "InputXGradient", "input", lambda ctx, cls: cls(ctx.logits_model), _no_kwargs
    ),
    "GuidedBackprop": _Recipe(
        "GuidedBackprop", "input", lambda ctx, cls: cls(ctx.logits_model), _no_kwargs
    ),
    "Deconvolution": _Recipe(
        "Deconvolution", "input", lambda ctx, cls: cls(ctx.logits_model), _no_kwargs
    ),
    "Occlusion": _Recipe(
        "Occlusion", "input", lambda ctx, cls: cls(ctx.logits_model), _occlusion_kwargs
    ),
}


def _installed(recipe: _Recipe) -> bool:
    if recipe.captum_class is None:
        return True
    import captum.attr

    return hasattr(captum.attr, recipe.captum_class)


def known_methods() -> list[str]:
    """Method names ``compare`` accepts with the installed captum (NoiseTunnel variants are
    written ``"<nt_type>:<method>"``, nt_type one of ``NT_TYPES``, e.g. "smoothgrad:Saliency")."""
    return [name for name, recipe in _RECIPES.items() if _installed(recipe)]


def _unknown_method(name: str, why: str) -> ValueError:
    return ValueError(
        f"unknown method {name!r}: {why}. Known methods: {', '.join(known_methods())}; "
        f"prefix one with {', '.join(repr(t + ':') for t in NT_TYPES)} for its NoiseTunnel "
        "variant (e.g. 'smoothgrad:Saliency')"
    )


def canonical_method(name: str) -> str:
    """``name`` spelled as in ``known_methods`` (case-insensitive), NoiseTunnel prefix kept.

    Raises ValueError listing the known methods for a name the installed captum lacks.
    """
    if not isinstance(name, str):
        raise TypeError(f"method names must be str, got {type(name).__name__}")
    prefix, _, base = name.rpartition(":")
    if prefix and prefix.lower() not in NT_TYPES:
        raise _unknown_method(name, f"{prefix!r} is not a NoiseTunnel type")
    by_lower = {known.lower(): known for known in _RECIPES}
    canonical = by_lower.get(base.strip().lower())
    if canonical is None:
        import captum.attr

        why = (
            f"captum has {base}, but compare() has no recipe for it"
            if hasattr(captum.attr, base)
            else f"{base!r} is not a method compare() knows"
        )
        raise _unknown_method(name, why)
    if not _installed(_RECIPES[canonical]):
        import captum

        raise _unknown_method(
            name, f"the installed captum {captum.__version__} has no {canonical}"
        )
    return f"{prefix.lower()}:{canonical}" if prefix else canonical


def find_captum_layer(
    model: nn.Module, inputs: torch.Tensor, layer: LayerSpec, output: OutputSelector
) -> tuple[nn.Module | None, bool, str | None]:
    """(module, use its input, why there is none) for Captum's layer methods."""
    modules = dict(model.named_modules())
    if layer is not None:
        return modules[layer_name(model, layer)], False, None
    info = find_head(model, inputs[:1], output=output)
    if info.layout != "nchw":
        return None, False, f"the features are {info.layout} tokens, not an [N, K, h, w] map"
    if info.feature_module is not None:
        return modules[info.feature_module], False, None
    if info.capture.kind == "module_input":
        return modules[info.capture.module], True, None
    return None, False, f"the pooled tensor is {info.feature_source}, not a module's output"


def build_method(name: str, ctx: MethodContext) -> tuple[Any, dict[str, Any], Space]:
    """(attribution object, default attribute kwargs, space) of a canonical method name."""
    prefix, _, base = name.rpartition(":")
    recipe = _RECIPES[base]
    cls = None
    if recipe.captum_class is not None:
        import captum.attr

        cls = getattr(captum.attr, recipe.captum_class)
    method = recipe.build(ctx, cls)
    kwargs = recipe.kwargs(ctx)
    if prefix:
        from captum.attr import NoiseTunnel

        spread = float(ctx.inputs.max() - ctx.inputs.min())
        method = NoiseTunnel(method)
        kwargs = {**kwargs, "nt_type": prefix, "nt_samples": 8, "nt_samples_batch_size": 1,
                  "stdevs": 0.15 * spread}
    return method, kwargs, recipe.space


def method_context(
    model: nn.Module,
    inputs: torch.Tensor,
    layer: LayerSpec,
    output: OutputSelector,
    names: list[str],
) -> MethodContext:
    """The context of ``names`` (canonical): finds Captum's layer only when a layer method
    needs it; ``layer`` (None = discovered) as ``camplug.attach``."""
    needs_layer = any(n.rpartition(":")[2] in LAYER_METHODS for n in names)
    captum_layer, layer_input, problem = (
        find_captum_layer(model, inputs, layer, output) if needs_layer else (None, False, None)
    )
    return MethodContext(
        model=model,
        logits_model=model if output is None else LogitsOnly(model, output),
        inputs=inputs,
        output=output,
        cam_layer=None if layer is None else dict(model.named_modules())[layer_name(model, layer)],
        layer=captum_layer,
        layer_input=layer_input,
        layer_problem=problem,
    )


def to_input_maps(result: Any, space: Space, size: tuple[int, int],
                  channel_reduction: ChannelReduction) -> torch.Tensor:
    """A method's attribution (a tensor or a 1-tuple) as fp32 [N, H, W] at the input size:
    layer maps summed over channels and upsampled bilinearly, input maps reduced over the
    colour channels by ``channel_reduction``."""
    attribution = (result[0] if isinstance(result, tuple) else result).detach().float()
    if space == "layer":
        maps = attribution.sum(1, keepdim=True)
        if tuple(maps.shape[-2:]) != tuple(size):
            maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
        return maps[:, 0]
    if channel_reduction == "max_abs":
        return attribution.abs().amax(1)
    if channel_reduction == "abs":
        return attribution.abs().sum(1)
    return attribution.sum(1)


def map_function(
    name: str,
    model: nn.Module,
    *,
    channel_reduction: ChannelReduction = "abs",
    **attribute_kwargs: Any,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``run(images [N, C, H, W], targets [N]) -> maps fp32 [N, H, W]`` in [0, 1] for the
    registered method ``name`` (min-max normalized per image with the kernel's rule), built
    once on the first call; ``attribute_kwargs`` go to its ``attribute`` call."""
    canonical = canonical_method(name)
    built: list[Any] = []

    def run(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not built:
            ctx = method_context(model, images, None, None, [canonical])
            built.extend(build_method(canonical, ctx))
        method, kwargs, space = built
        result = method.attribute(images, target=targets, **kwargs, **attribute_kwargs)
        maps = to_input_maps(result, space, tuple(images.shape[-2:]), channel_reduction)
        return min_max_normalize(maps.nan_to_num(0.0, 0.0, 0.0)).clamp(0, 1)

    return run
