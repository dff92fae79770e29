"""CamModel: a model and its class activation maps in one ``nn.Module``, for deployment.

``CamModel(model)(x)`` returns ``(logits, maps)`` from ONE forward of ``model``, and traces:
``torch.compile(..., fullgraph=True)`` sees no graph break, ``torch.export.export`` (dynamic
batch) and ``torch.onnx.export`` produce one graph with both outputs.

How the features are taken. Everything the capture does at run time with Python state was
moved to construction: the head is discovered once (``find_head``, one probe forward), and the
tensor feeding the global pooling is located as "argument ``leaf`` of call number ``ordinal`` of
the torch function ``name``" (:mod:`camplug.deploy.tap`, checked against the capture point by a
second probe). Each forward then runs the unmodified model under a ``TorchFunctionMode`` that
keeps that one argument. The alternatives fail one of the targets: forward hooks registered
inside ``forward`` break Dynamo's graph (``register_forward_hook`` bumps a class-level counter);
hooks left on the model modify it (and would fire for every other caller of the model);
splitting the model at the capture point needs the model's ``forward`` code to be a chain of
modules, which DenseNet (functional ReLU and pooling) and ViT (token slicing inside a method)
are not. A torch-function mode is traced by Dynamo, runs as plain Python under the
(non-strict) exporter, is thread-local, and adds no operation to the graph.

The maps are computed with traceable tensor code only: targets by ``argmax`` / ``topk``; weights
by folding the head, the gradient methods' closed forms from the head's Jacobian written out
without autograd (:mod:`camplug.deploy.head`); the map itself by :func:`render`: eager, the
kernels of ``camplug.explain``; traced, on CUDA the custom operator ``torch.ops.camplug.cam``
(the fused Triton kernel, one node for compile and export), elsewhere the eager reference of
``camplug.kernels`` (the CPU fast path writes into preallocated outputs, which export and ONNX
cannot express). The logits keep their autograd graph; the maps are detached.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import methods
from ..discovery.cache import structure_of
from ..discovery.fold import fold_head
from ..discovery.heads import (
    HeadInfo,
    LayerSpec,
    OutputSelector,
    find_head,
    pooled_vector,
    select_output,
    synthesize_input,
    to_feature_map,
)
from ..errors import UnsupportedHeadError
from ..kernels import cam
from ..kernels.checks import check_cam_inputs, normalize_size
from ..kernels.ops import cam_op
from ..kernels.reference import to_out_dtype, weighted_sum_reference
from ..kernels.semantics import min_max_normalize
from ..options import SizeSpec, resolve_size
from ..targets import resolve_targets
from .head import check_differentiable, jacobian_rows
from .tap import FeatureTap, TapSite, locate

# Methods whose weights need no backward through the model on an exact head.
DEPLOYABLE_METHODS = ("cam", "gradcam", "gradcam++", "xgradcam", "layercam")
# Devices whose maps come from the custom operator torch.ops.camplug.cam (see ``render``).
CUSTOM_OP_DEVICES = frozenset({"cuda"})


def deployable_method(method: str | methods.Method) -> methods.Method:
    """The method ``method`` names, if it runs without a backward pass on an exact head."""
    chosen = methods.resolve(method, exact_head=True)
    if chosen.name not in DEPLOYABLE_METHODS:
        raise ValueError(
            f"method {chosen.name!r} cannot be deployed: CamModel runs the methods that need no "
            f"backward pass and no extra forward on an exact CAM head "
            f"({', '.join(DEPLOYABLE_METHODS)}); use camplug.explain for {chosen.name!r}"
        )
    return chosen


class _ForwardSource:
    """The ``camplug.methods.MapSource`` of one CamModel forward: its features and head."""

    exact_head = True

    def __init__(self, head: HeadInfo, features: torch.Tensor) -> None:
        self.head = head
        self.features = features
        self.states = tuple(step.state() for step in head.steps)
        self.pooled = pooled_vector(features)  # fp32 [B, K]

    def head_weights(self, targets: torch.Tensor) -> torch.Tensor:
        """CAM weights fp32 [B, C, K]."""
        return fold_head(self.head.steps, self.states, targets, self.pooled,
                         self.head.num_classes)[0]

    def gradients(self, targets: torch.Tensor) -> torch.Tensor:
        """``d logit / d A`` fp32 [B, C, K, 1, 1] (constant over space on an exact head)."""
        rows = jacobian_rows(self.head.steps, self.states, targets, self.pooled,
                             self.head.num_classes)
        return (rows / (self.features.shape[-2] * self.features.shape[-1]))[..., None, None]


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Autocast off on ``device`` when it is on (the fold and the maps run in fp32)."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class CamModel(nn.Module):
    """``model`` and its class activation maps: ``forward(x) -> (logits, maps)``.

    logits: the model's (selected) output [B, N], with its autograd graph. maps: [B, C, H, W] in
    ``out_dtype``, detached; C = 1, or ``topk``.

    model: a classifier with an exact CAM head (global average pooling then affine operations,
    see ``camplug.describe``); it is not modified (no hook, no attribute) and becomes this
    module's submodule ``model``. Its head is discovered once, here, by probe forwards on
    ``example_input`` (a tensor [1, C, H, W]; default: synthesized from the model's declared
    input size, see ``camplug.discovery.heads.synthesize_input``). When modules, parameters or
    buffers were replaced since (a new classifier, ``.to(device)``, which replaces buffers), the
    next eager forward discovers again on its first sample; compile or export after that.
    In-place weight updates are seen.
    method: "cam" (default), or a gradient method with a closed form on exact heads:
        "gradcam", "gradcam++", "xgradcam", "layercam" (see ``camplug.methods``).
    target: "top1" (each sample's predicted class) or one class index for every sample;
    topk: the k best classes of each sample (with target="top1").
    size: "input" (the input's H, W: follows each batch), "features" (h, w) or (H, W).
    relu: None applies the method's convention (CAM: none; the Grad-CAM family: ReLU).
    normalize, out_dtype (float32, float16, bfloat16, uint8): as ``camplug.kernels.cam``.
    layer, output: as ``camplug.attach``.

    Tracing: ``torch.compile(..., fullgraph=True)``; ``torch.export.export`` with a dynamic
    batch (and dynamic H, W for feature maps; token heads, e.g. ViT, take a fixed size and
    refuse a dynamic one with a clear error); ``torch.onnx.export(..., dynamo=True)`` of a
    CamModel on the CPU (on CUDA the maps are the custom op ``camplug::cam``, which ONNX lacks).

    Raises at construction: UnsupportedHeadError when the model has no exact CAM head,
    ValueError for a method that needs a backward pass or for bad options, RuntimeError when
    the features cannot be located without hooks.

    >>> deployed = camplug.CamModel(model.eval(), topk=3, out_dtype=torch.uint8)
    >>> logits, maps = torch.compile(deployed, fullgraph=True)(x)   # maps [B, 3, H, W] uint8
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        method: str | methods.Method = "cam",
        target: str | int = "top1",
        topk: int | None = None,
        size: SizeSpec = "input",
        out_dtype: torch.dtype = torch.float32,
        relu: bool | None = None,
        normalize: bool = True,
        layer: LayerSpec = None,
        output: OutputSelector = None,
        example_input: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.method = deployable_method(method)
        if example_input is not None and not isinstance(example_input, torch.Tensor):
            raise TypeError("example_input must be a tensor [1, C, H, W] (CamModel.forward takes "
                            f"one input tensor), got {type(example_input).__name__}")
        self.size = _check_size(size)
        check_cam_inputs(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1), normalize=normalize,
                         out_dtype=out_dtype)  # the option errors of camplug.kernels.cam
        self.out_dtype = None if out_dtype == torch.float32 else out_dtype
        self.relu = self.method.relu if relu is None else bool(relu)
        self.normalize = bool(normalize)
        self.layer, self.output = layer, output
        self._target, self._topk = target, topk
        self.model = model
        self._discover(example_input)

    def _discover(self, example_input: torch.Tensor | None) -> None:
        """Find the head and the features' tap site by probe forwards on ``example_input``
        (None: synthesized), and check the options that depend on the head."""
        try:
            head = find_head(self.model, example_input, layer=self.layer, output=self.output)
        except UnsupportedHeadError as error:
            raise UnsupportedHeadError(
                f"CamModel needs an exact CAM head (methods {', '.join(DEPLOYABLE_METHODS)} "
                f"without a backward pass): {error}"
            ) from None
        if self.method.uses_gradients:
            check_differentiable(head.steps)
        self.topk, self.target = _check_targets(self._target, self._topk, head.num_classes)
        if example_input is None:
            example_input, _ = synthesize_input(self.model)  # the same input find_head probed
        self.head: HeadInfo = head
        self.site: TapSite = locate(self.model, head, (example_input,), self.output)
        self._structure = structure_of(self.model)
        self._example = example_input[:1].detach()

    def _apply(self, fn: Any, recurse: bool = True) -> CamModel:
        """``.to()``, ``.cuda()``, ``.half()``, ...: then discover again on the converted
        example when the model's tensors were replaced (buffers are), so that a compiled or
        exported CamModel folds the converted head."""
        super()._apply(fn, recurse)
        if structure_of(self.model) != self._structure:
            self._discover(fn(self._example))
        return self

    def extra_repr(self) -> str:
        target = f"topk={self.topk}" if self.topk else f"target={self.target!r}"
        return (f"method={self.method.name!r}, {target}, size={self.size!r}, "
                f"out_dtype={self.out_dtype or torch.float32}, relu={self.relu}, "
                f"normalize={self.normalize}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, N], maps [B, C, H, W])`` of one forward of the model on ``x``."""
        if not torch.compiler.is_compiling() and structure_of(self.model) != self._structure:
            self._discover(x[:1])  # replaced modules or tensors (``.to()`` replaces buffers)
        tap = FeatureTap(self.site)
        with tap:
            output = self.model(x)
        logits = select_output(output, self.output)
        if tap.captured is None:
            raise RuntimeError(
                f"the features were not seen in this forward ({self.site.describe()}, found at "
                "construction): did the model take another path for this input?"
            )
        input_size = (x.shape[-2], x.shape[-1]) if x.dim() >= 3 else None
        if self.head.token_grid is not None and torch.compiler.is_exporting() and any(
            isinstance(s, torch.SymInt) for s in input_size or ()
        ):
            raise ValueError(
                "CamModel cannot be exported with a dynamic height or width for this model: its "
                "features are tokens, arranged on the patch grid by Python arithmetic on the "
                "input size, which torch.export cannot keep symbolic. Export with a dynamic "
                "batch only (dynamic_shapes=({0: Dim('batch')},)), once per input size"
            )
        features = to_feature_map(self.head, tap.captured, input_size)
        if features.dim() != 4 or features.shape[1] != self.head.num_features:
            raise RuntimeError(
                f"the tensor taken as the features ({self.site.describe()}) has shape "
                f"{list(features.shape)}, not [B, {self.head.num_features}, h, w]: the model "
                "made other torch calls than in the probe at construction (eval mode); a "
                "model whose forward depends on its mode must run in eval mode here"
            )
        return logits, self._maps(features, logits.detach(), input_size)

    def _maps(self, features: torch.Tensor, logits: torch.Tensor,
              input_size: tuple[int, int] | None) -> torch.Tensor:
        if self.target == "top1":
            targets = resolve_targets(logits, None, self.topk)
        else:
            targets = logits.new_full((logits.shape[0], 1), self.target, dtype=torch.long)
        out_size = resolve_size(self.size, input_size)  # (H, W), None ("features") or fixed
        if out_size is None:
            out_size = (features.shape[-2], features.shape[-1])
        with _no_autocast(features.device):
            weights = self.method.weights(_ForwardSource(self.head, features), targets)
            if weights.dim() == 5 and weights.shape[-2:] == (1, 1):
                weights = weights[..., 0, 0]  # per-position weights constant over space
            return render(features, weights.detach(), out_size, relu=self.relu,
                          normalize=self.normalize, out_dtype=self.out_dtype)


def render(features: torch.Tensor, weights: torch.Tensor, out_size: tuple[int, int], *,
           relu: bool, normalize: bool, out_dtype: torch.dtype | None) -> torch.Tensor:
    """Maps [B, C, H, W] in ``out_dtype`` from features [B, K, h, w] and weights [B, C, K].

    Eager: ``camplug.kernels.cam`` (the CPU fast path, the Triton kernel on CUDA), as
    ``camplug.explain``. Traced (compile, export): on ``CUSTOM_OP_DEVICES`` (CUDA)
    ``torch.ops.camplug.cam``, the fused Triton kernel as one opaque node of the graph (ONNX has
    no translation for it: export ONNX from a CamModel on the CPU); elsewhere
    ``camplug.kernels.reference.cam_reference``'s computation, always resized: its "resize only
    when the size differs" test guards on symbolic sizes (``1 + (H - 1) // 4 != H``) that
    ``torch.export`` cannot prove for a dynamic height or width; a bilinear resize to the same
    size is the identity. The traced CPU maps differ from the eager ones by fp32 rounding."""
    if not torch.compiler.is_compiling():  # eager: the kernels camplug.explain uses
        return cam(features, weights, out_size, relu=relu, normalize=normalize,
                   out_dtype=out_dtype)
    if features.device.type in CUSTOM_OP_DEVICES:
        return cam_op(features, weights, out_size[0], out_size[1], relu, normalize, out_dtype)
    maps = weighted_sum_reference(features, weights)
    if relu:
        maps = maps.clamp_min(0)
    if normalize:
        maps = min_max_normalize(maps)
    maps = F.interpolate(maps, size=out_size, mode="bilinear", align_corners=False)
    return to_out_dtype(maps, out_dtype)


def _check_targets(target: object, topk: object, num_classes: int) -> tuple[int | None, Any]:
    """(topk, target) checked against the model's ``num_classes``."""
    if topk is not None:
        if target != "top1":
            raise ValueError(f"give either target or topk, not both (target={target!r}, "
                             f"topk={topk!r})")
        if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= num_classes:
            raise ValueError(f"topk must be an int in 1..{num_classes}, got {topk!r}")
        return topk, target
    if target == "top1":
        return None, target
    if isinstance(target, bool) or not isinstance(target, int):
        raise TypeError(f"target must be 'top1' or an int class index, got {target!r}")
    if not 0 <= target < num_classes:
        raise ValueError(f"target {target} is out of range: the model has {num_classes} classes "
                         f"(valid indices 0..{num_classes - 1})")
    return None, target


def _check_size(size: SizeSpec) -> SizeSpec:
    """``size`` checked: "input", "features", an int or (H, W); a fixed size as a pair."""
    resolved = resolve_size(size, (1, 1))
    return size if isinstance(size, str) else normalize_size(resolved, 1, 1)
