"""Head discovery: find the tensor that feeds global average pooling and fold the head.

:func:`find_head` runs one probe forward (eval mode, no gradients, modes restored, no hook left)
under a :class:`~camplug.discovery.recorder.ForwardRecorder` and walks the recorded data flow back
from the logits: through affine operations (Linear, BatchNorm, LayerNorm, Dropout, reshapes,
constant scaling) to a global average pooling, whose input is the feature map. A 1x1 convolution
feeding the pooling directly is folded too (it commutes with averaging). Anything else between
pooling and logits raises :class:`UnsupportedHeadError`.
"""

from __future__ import annotations

import itertools
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ..errors import GRAD_CAM_HINT, DegenerateMapWarning, UnsupportedHeadError
from .fold import BranchSumStep, HeadStep, LinearStep
from .grid import GridMismatch, grid_for_input, trace_patch_grid
from .ops import (
    ADD_OPS,
    DROPOUTS,
    PERMUTES,
    SCALE_OPS,
    SUM_OPS,
    Layout,
    affine_step,
    foldable_pre_pool_conv,
    is_global_max_pool,
    pooling_layout,
    pre_pool_conv_step,
    refuse,
    sample_scale_step,
)
from .recorder import ForwardRecorder, ModuleCall, Op, Value, ancestors, first_tensor
from .walk import submodules

OutputSelector = int | str | Callable[[Any], torch.Tensor] | None
LayerSpec = str | nn.Module | None

# Operations allowed between a user-chosen ``layer`` and the pooling (replayed on its output).
_FEATURE_PATH_OPS = frozenset({
    "__getitem__", "flatten", "squeeze", "unsqueeze", "contiguous", "clone", "detach", "to",
    "float", "double", "half", "bfloat16", "type_as", *PERMUTES, *DROPOUTS,
})

_probing = threading.local()



def probing() -> bool:
    """True while a probe forward runs in this thread (captures must ignore it)."""
    return getattr(_probing, "depth", 0) > 0


@dataclass(frozen=True)
class ReplayOp:
    """A recorded shape-only op to apply again to a new tensor (``None`` in ``args`` marks
    where that tensor goes; constants are kept as they were)."""

    name: str
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    @staticmethod
    def of(op: Op) -> ReplayOp:
        def keep(leaf: Any) -> Any:
            if isinstance(leaf, Value):
                return None if leaf.tainted else leaf.tensor
            return leaf

        return ReplayOp(op.name, op.func, tuple(keep(a) for a in op.args),
                        {k: keep(v) for k, v in op.kwargs.items()})

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.name in DROPOUTS:
            return tensor
        args = (tensor, *self.args[1:])  # the features are the first argument (checked)
        return self.func(*args, **self.kwargs)


@dataclass(frozen=True)
class CapturePoint:
    """Where the features are taken during a forward.

    kind "module_input": the first tensor argument of ``module``'s call number ``call``
    (forward pre-hook). "module_output": the output of that call (forward hook), then
    ``path`` replayed on it. "function": the first argument of the ``op_index``-th call of the
    torch function ``func_name`` after the window opens; the window opens when call
    ``anchor_call`` of ``anchor`` returns (or when call ``call`` of ``module`` begins if
    ``anchor`` is None) and closes when that call of ``module`` returns.
    """

    kind: Literal["module_input", "module_output", "function"]
    module: str
    call: int
    func_name: str = ""
    op_index: int = 0
    anchor: str | None = None
    anchor_call: int = 0
    path: tuple[ReplayOp, ...] = ()

    def describe(self) -> str:
        target = f"`{self.module}`" if self.module else "the model"
        nth = f" (call {self.call})" if self.call else ""
        if self.kind == "module_input":
            return f"forward pre-hook on {target}{nth}: its input"
        if self.kind == "module_output":
            replay = "".join(f" -> {op.name}" for op in self.path)
            return f"forward hook on {target}{nth}: its output{replay}"
        opened = f"after `{self.anchor}` returns" if self.anchor else f"when {target} starts"
        return (f"torch-function interceptor opened {opened}: input of {self.func_name} call "
                f"{self.op_index} inside {target}")


@dataclass(frozen=True)
class HeadInfo:
    """What :func:`find_head` found. Shapes are per sample, at the probe input's size."""

    feature_source: str  # human description of the tensor feeding the pooling
    feature_module: str | None  # module whose output is exactly the [B, K, h, w] map, if any
    feature_shape: tuple[int, ...]  # [K, h, w] (tokens reshaped to the patch grid)
    feature_dtype: torch.dtype
    layout: Layout  # how the captured tensor holds the map (tokens: "nlc", "ncl")
    token_grid: tuple[int, int] | None  # (h, w) of the patch grid for token layouts
    pooling: str
    classifier: str
    num_classes: int
    folded: tuple[str, ...]  # descriptions of the affine steps, in forward order
    capture: CapturePoint = field(repr=False)
    steps: tuple[HeadStep, ...] = field(repr=False)
    probe_input_size: tuple[int, int] | None = field(default=None, repr=False)
    spatial_warning: str | None = None  # why the maps are useless (a 1x1 map), else None

    @property
    def num_features(self) -> int:
        return self.feature_shape[0]

    def describe(self) -> str:
        """A few lines stating what was found (layer names, shapes, folded operations)."""
        k, h, w = self.feature_shape
        tokens = f" ({self.layout} tokens on a {h}x{w} grid)" if self.token_grid else ""
        size = self.probe_input_size
        at = f" for a {size[0]}x{size[1]} input" if size else ""
        lines = [
            f"features  : {self.feature_source} -> [B, {k}, {h}, {w}]{tokens}{at}, "
            f"{str(self.feature_dtype).replace('torch.', '')}",
            f"pooling   : {self.pooling}",
            f"classifier: {self.classifier} ({self.num_classes} classes)",
            "head      : " + ("\n            ".join(self.folded) if self.folded else "identity"),
            f"capture   : {self.capture.describe()}",
        ]
        if self.spatial_warning:
            lines.append(f"warning   : {self.spatial_warning}")
        return "\n".join(lines)


def select_output(output: Any, selector: OutputSelector) -> torch.Tensor:
    """The logits in a model's output: the output itself, or ``selector`` applied to it.

    An int or str selector is skipped when the output already is a tensor: models such as
    Inception return a tuple in train mode but a tensor in eval mode (the probe's mode).
    """
    if selector is None or (isinstance(output, torch.Tensor) and not callable(selector)):
        if isinstance(output, torch.Tensor):
            return output
        kind = type(output).__name__
        size = f" of {len(output)} elements" if isinstance(output, (tuple, list, dict)) else ""
        raise ValueError(
            f"the model returned a {kind}{size}, not a logits tensor: pass output= to select "
            "the logits (an int index, a str key, or a callable taking the output)"
        )
    try:
        chosen = selector(output) if callable(selector) else output[selector]
    except (KeyError, IndexError, TypeError, AttributeError) as error:
        raise ValueError(
            f"output={selector!r} could not select the logits from the model's "
            f"{type(output).__name__} output: {error!r}"
        ) from error
    if not isinstance(chosen, torch.Tensor):
        raise ValueError(f"output={selector!r} selected a {type(chosen).__name__}, not a tensor")
    return chosen


def check_output_selector(output: OutputSelector) -> None:
    if output is not None and not callable(output) and (
        isinstance(output, bool) or not isinstance(output, (int, str))
    ):
        raise TypeError(
            f"output must be None, an int index, a str key or a callable, got {output!r}"
        )


def compiled_module_reason(model: nn.Module) -> str | None:
    """Why hooks cannot see inside ``model`` (a torch.compile'd module in it), else None."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    if eval_frame is None:
        return None
    kind = eval_frame.OptimizedModule
    modules = submodules(model)
    if not any(map(isinstance, modules, itertools.repeat(kind))):  # C level: on every attach
        return None
    compiled = next(m for m in modules if isinstance(m, kind))
    name = next(name for name, module in model.named_modules() if module is compiled)
    where = "the model" if not name else f"submodule `{name}`"
    return (
        f"{where} was compiled with torch.compile: compiled graphs do not run forward "
        "hooks registered after compilation, so the features cannot be captured. "
        "Attach to the original module instead (`compiled._orig_mod`, eager), or attach "
        "before compiling: `capture = camplug.attach(model); fast = torch.compile(model)`"
    )


def layer_name(model: nn.Module, layer: LayerSpec) -> str | None:
    """The qualified name of ``layer`` (a name or a submodule of ``model``)."""
    if layer is None:
        return None
    names = dict(model.named_modules())
    if isinstance(layer, nn.Module):
        for name, module in names.items():
            if module is layer:
                return name
        raise ValueError(f"layer {type(layer).__name__} is not a submodule of the model")
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a module name, a submodule or None, got {layer!r}")
    if layer not in names:
        close = [n for n in names if n and (layer in n or n in layer)][:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ValueError(f"the model has no submodule named {layer!r}{hint}")
    return layer


@contextmanager
def probe_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for a probe forward; every module's flag restored after."""
    modes = [(module, module.training) for module in model.modules()]
    _probing.depth = getattr(_probing, "depth", 0) + 1
    try:
        model.eval()
        with torch.no_grad():
            yield
    finally:
        _probing.depth -= 1
        for module, training in modes:
            module.training = training


def _declared(holders: list[object], names: tuple[str, ...]) -> tuple[object, str] | None:
    for holder in holders:
        for attr in names:
            value = getattr(holder, attr, None)
            if isinstance(value, int) or (isinstance(value, (tuple, list)) and len(value) == 2
                                          and all(isinstance(v, int) for v in value)):
                owner = "model" if holder is holders[0] else "model.patch_embed"
                return value, f"{owner}.{attr} = {value!r}"
    return None


def synthesize_input(model: nn.Module) -> tuple[torch.Tensor, str]:
    """A random image batch [1, C, H, W] for a probe forward, and where C, H, W came from.

    The model's declared input configuration comes first (timm's ``pretrained_cfg`` /
    ``default_cfg`` ``input_size``, then ``in_chans`` / ``in_channels`` and ``img_size`` /
    ``image_size`` on the model or its ``patch_embed``); otherwise C is the first Conv2d's input
    channels and H = W = 224. Raises ValueError when nothing gives the channels.
    """
    holders = [model, getattr(model, "patch_embed", None)]
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    cfg_size = cfg.get("input_size") if isinstance(cfg, dict) else None
    if isinstance(cfg_size, (tuple, list)) and len(cfg_size) == 3:
        channels, height, width = (int(v) for v in cfg_size)
        source = f"the model's pretrained_cfg input_size {tuple(cfg_size)}"
    else:
        declared = _declared(holders, ("in_chans", "in_channels", "num_channels"))
        first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if declared is not None:
            channels, channel_source = int(declared[0]), declared[1]  # type: ignore[arg-type]
        elif first_conv is not None:
            channels = first_conv.in_channels
            channel_source = f"{channels} channels guessed from the first Conv2d"
        else:
            raise ValueError(
                "cannot build a probe input for this model (no declared input configuration "
                "such as pretrained_cfg['input_size'] or in_chans, and no Conv2d to guess the "
                "channels from): pass example_input, e.g. torch.randn(1, 3, 224, 224)"
            )
        size = _declared(holders, ("img_size", "image_size"))
        value = size[0] if size is not None else 224
        height, width = (value, value) if isinstance(value, int) else value  # type: ignore[misc]
        size_source = size[1] if size is not None else "224x224 guessed"
        source = f"{channel_source}, {size_source}"
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, channels, height, width, generator=generator)
    if param is not None:
        x = x.to(device=param.device, dtype=param.dtype)
    return x, source


def record_forward(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: OutputSelector,
    synthesized: str | None = None,
) -> tuple[ForwardRecorder, Value]:
    """Run a probe forward under the recorder; return it and the Value of the logits.

    synthesized: where a synthesized input came from; the model's own failure on it is then
    raised as a ValueError asking for an example input."""
    with probe_mode(model), ForwardRecorder(model) as recorder:
        recorder.mark_inputs((args, kwargs))
        try:
            result = model(*args, **kwargs)
        except Exception as error:
            if synthesized is None:
                raise
            shape = list(args[0].shape)
            raise ValueError(
                f"the model failed on the probe input camplug built for it, a random {shape} "
                f"image ({synthesized}): {type(error).__name__}: {error}. Pass example_input "
                "(a tensor, or a tuple of the model's positional arguments) with the shape the "
                "model expects"
            ) from error
        logits = select_output(result, output)
        value = recorder.value_if_known(logits)
    if value is None or not value.tainted:
        raise UnsupportedHeadError(
            "the selected output does not depend on the model input (or was computed outside "
            "torch operations): camplug cannot trace it back to a global pooling"
        )
    return recorder, value


def input_size_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int] | None:
    first = first_tensor(args, kwargs, min_dim=3)
    return (int(first.shape[-2]), int(first.shape[-1])) if first is not None else None


def probe(
    model: nn.Module,
    example_input: torch.Tensor | tuple[Any, ...] | None,
    output: OutputSelector,
    example_kwargs: dict[str, Any] | None,
) -> tuple[ForwardRecorder, Value, tuple[int, int] | None]:
    """The recorded probe forward shared by :func:`find_head` and
    :func:`camplug.discovery.layers.find_feature_layer`: (recorder, logits, input (H, W))."""
    check_output_selector(output)
    reason = compiled_module_reason(model)
    if reason is not None:
        raise ValueError(reason)
    synthesized = None
    if example_input is None:
        example_input, synthesized = synthesize_input(model)
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    kwargs = dict(example_kwargs or {})
    recorder, logits = record_forward(model, args, kwargs, output, synthesized)
    return recorder, logits, input_size_of(args, kwargs)


def find_head(
    model: nn.Module,
    example_input: torch.Tensor | tuple[Any, ...] | None = None,
    *,
    layer: LayerSpec = None,
    output: OutputSelector = None,
    example_kwargs: dict[str, Any] | None = None,
) -> HeadInfo:
    """Discover the CAM head of ``model`` with one probe forward.

    example_input: a tensor or a tuple of positional arguments for ``model``; None builds a
    random [1, C, H, W] image from the model's declared input configuration (see
    :func:`synthesize_input`); a model failing on it raises a ValueError asking for one.
    layer: use this module's output as the features (name or module) instead of searching.
    output: selects the logits from a tuple/dict output (index, key or callable).
    The model's parameters, buffers and train/eval flags are unchanged, and no hook is left.
    Raises UnsupportedHeadError (naming the blocking module) when no exact CAM exists.
    """
    name = layer_name(model, layer)
    recorder, logits, input_size = probe(model, example_input, output, example_kwargs)
    info = analyze(recorder, logits, name, input_size)
    if info.spatial_warning is not None:
        warnings.warn(DegenerateMapWarning(info.spatial_warning), stacklevel=2)
    return info


def _walk_head(logits: Value) -> tuple[Op, Value, list[HeadStep]]:
    """From the logits back to the global average pooling: (pool op, its input, steps)."""
    pool, pool_input, steps = _walk_back(logits, None)
    assert pool is not None
    return pool, pool_input, steps


def _walk_back(value: Value, stop: Value | None) -> tuple[Op | None, Value, list[HeadStep]]:
    """Walk back through affine operations, to ``stop`` (then ``op`` is None) or, when ``stop``
    is None, to the global average pooling: (pool op, where the walk ended, steps in forward
    order). Raises UnsupportedHeadError at anything else."""
    steps: list[HeadStep] = []
    while value is not stop:
        op = value.producer
        if op is None:
            raise UnsupportedHeadError(
                "no global average pooling found: walking back from the logits through affine "
                "operations reached the model input (expected AdaptiveAvgPool2d(1), a covering "
                f"AvgPool2d or a mean over all positions). {GRAD_CAM_HINT}"
            )
        tainted = op.tainted_inputs
        if len(tainted) == 2:
            step, value = _join_step(op, value)
            steps.append(step)
            continue
        if len(tainted) != 1:
            raise refuse(op, f"combines {len(tainted)} tensors that depend on the input")
        x = tainted[0]
        if pooling_layout(op, x) is not None:
            if stop is not None:
                raise refuse(op, "pools the features separately in one branch of a sum")
            return op, x, steps[::-1]
        if is_global_max_pool(op, x):
            raise UnsupportedHeadError(
                f"no exact CAM for this model: the classifier is fed by global max pooling "
                f"({op.where}); a max is not a weighted sum over positions. {GRAD_CAM_HINT}"
            )
        step = affine_step(op, x, value)
        if step is not None:
            steps.append(step)
        value = x
    return None, value, steps[::-1]


def _join_step(op: Op, y: Value) -> tuple[HeadStep, Value]:
    """An op combining two input-dependent tensors: a per-sample scale of the vector by a value
    computed from it, or a sum of affine branches of one vector. (step, the vector)."""
    if op.name in SCALE_OPS:
        return sample_scale_step(op, y)
    first, second = op.args[0], op.arg(1, "other")
    if op.name not in SUM_OPS or not (isinstance(first, Value) and isinstance(second, Value)):
        raise refuse(op, "combines 2 tensors that depend on the input")
    if first.shape != y.shape or second.shape != y.shape:
        raise refuse(op, "combines 2 tensors that depend on the input, broadcasting "
                         f"{list(first.shape)} and {list(second.shape)}")
    fork = _fork(first, second)
    if fork is None:
        raise refuse(op, "combines 2 tensors that depend on the input but not on one vector")
    alpha = float(op.kwargs.get("alpha", 1.0))
    signs = (1.0, alpha if op.name in ADD_OPS else -alpha)
    branches = tuple(tuple(_walk_back(branch, fork)[2]) for branch in (first, second))
    text = " + ".join("[" + ", ".join(s.description for s in b) + "]" for b in branches)
    verb = "sum" if op.name in ADD_OPS else "difference"
    return BranchSumStep(branches, signs, f"{verb} of 2 branches in {op.site}: {text}"), fork


def _fork(first: Value, second: Value) -> Value | None:
    """The latest value both depend on (through input-dependent operations)."""
    mine, theirs = ancestors(first), ancestors(second)
    common = [value for key, value in mine.items() if key in theirs]
    order = lambda v: v.producer.index if v.producer is not None else -1  # noqa: E731
    return max(common, key=order, default=None)


def outermost_output(value: Value, name: str | None = None) -> ModuleCall | None:
    calls = [c for c in value.module_outputs if name is None or c.name == name]
    return calls[-1] if calls else None


def _feature_path(
    pool_input: Value, layer: str | None
) -> tuple[Value, list[Op], list[Op], ModuleCall | None]:
    """Walk back from the pooling input: (captured Value, folded 1x1 convs in forward order,
    ops to replay on the layer output, the layer's call)."""
    value, convs, path = pool_input, [], []
    while True:
        if layer is not None:
            call = outermost_output(value, layer)
            if call is not None:
                return value, convs[::-1], path[::-1], call
        op = value.producer
        tainted = op.tainted_inputs if op is not None else []
        x = tainted[0] if len(tainted) == 1 else None
        if x is not None and not path and foldable_pre_pool_conv(op, x, value):
            convs.append(op)
            value = x
            continue
        if layer is None:
            return value, convs[::-1], [], None
        if x is not None and op.name in _FEATURE_PATH_OPS and op.args[0] is x and (
            op.name != "__getitem__" or keeps_batch_basic_index(op, x, value)
        ):
            path.append(op)
            value = x
            continue
        reached = op.where if op is not None else "the model input"
        raise ValueError(
            f"the output of layer `{layer}` does not feed the global pooling through "
            f"reshapes only: walking back from the pooling input, camplug reached {reached}"
            " first (it changes the values). Use layer=None to capture the pooling input "
            "itself, or choose the layer whose output is that input"
        )


def keeps_batch_basic_index(op: Op, x: Value, y: Value) -> bool:
    """``x[...]`` with slices/ints on non-batch dims only (e.g. dropping class tokens)."""
    index = op.args[1] if isinstance(op.args[1], tuple) else (op.args[1],)
    basic = all(isinstance(i, (slice, int)) or i is None or i is Ellipsis for i in index)
    first_full = not index or index[0] is Ellipsis or index[0] == slice(None)
    return basic and first_full and not isinstance(op.args[1], bool) and y.shape[0] == x.shape[0]


def _capture_point(
    recorder: ForwardRecorder, consumer: Op, value: Value, path: list[Op],
    layer_call: ModuleCall | None,
) -> CapturePoint:
    if layer_call is not None:
        return CapturePoint("module_output", layer_call.name, layer_call.done_index,
                            path=tuple(ReplayOp.of(op) for op in path))
    owner = consumer.owner
    assert owner is not None  # every op runs inside the root module's call
    if owner.name and owner.input_value is value:
        return CapturePoint("module_input", owner.name, owner.call_index)
    anchor = consumer.anchor
    start = anchor.ops_at_done if anchor is not None else owner.ops_before
    op_index = sum(1 for op in recorder.ops[start:consumer.index] if op.name == consumer.name)
    return CapturePoint(
        "function", owner.name, owner.call_index, func_name=consumer.name, op_index=op_index,
        anchor=anchor.name if anchor is not None else None,
        anchor_call=anchor.done_index if anchor is not None else 0,
    )


def describe_source(value: Value) -> str:
    """``output of `layer4` (Sequential)``, ``relu (in Net.forward) of output of ...``."""
    call = outermost_output(value)
    if call is not None and call.name:
        return f"output of {call.label}"
    op = value.producer
    if op is None:
        return "the model input"
    upstream = next(iter(op.tainted_inputs), None)
    text = _index_text(op.args[1]) if op.name == "__getitem__" else op.name
    source = f" of {describe_source(upstream)}" if upstream is not None else ""
    return f"{text} (in {op.site}){source}"


def _index_text(index: Any) -> str:
    """``[:, 3:]`` for (slice(None), slice(3, None))."""
    def one(item: Any) -> str:
        if isinstance(item, slice):
            parts = ["" if v is None else str(v) for v in (item.start, item.stop)]
            return ":".join(parts) + (f":{item.step}" if item.step is not None else "")
        return "..." if item is Ellipsis else repr(item)

    items = index if isinstance(index, tuple) else (index,)
    return "[" + ", ".join(one(i) for i in items) + "]"


def _pooled_grid(
    pool_input: Value, axis: int, input_size: tuple[int, int] | None
) -> tuple[int, int]:
    """The patch grid of the pooled tokens (axis ``axis`` of ``pool_input``), traced back to the
    patch embedding (see :mod:`camplug.discovery.grid`); when the trace is lost, the grid with
    the input's aspect ratio. Refused when the pooled tokens are not exactly the patch tokens."""
    tokens = pool_input.shape[axis]
    try:
        found = trace_patch_grid(pool_input, axis, (0, tokens))
    except GridMismatch as mismatch:
        raise UnsupportedHeadError(
            f"the global pooling averages {tokens} tokens that are not exactly the patch grid: "
            f"{mismatch}. A spatial CAM needs the patch tokens only. {GRAD_CAM_HINT}"
        ) from None
    if found is not None:
        return found.grid
    if input_size is not None:
        height, width = input_size
        for rows in range(1, tokens + 1):
            if tokens % rows == 0 and rows * width == (tokens // rows) * height:
                return rows, tokens // rows
    raise UnsupportedHeadError(
        f"the global pooling averages {tokens} tokens that camplug cannot arrange on a spatial "
        "grid (no patch embedding was found for them, and no grid has the input's aspect "
        f"ratio). A spatial CAM needs the patch tokens only. {GRAD_CAM_HINT}"
    )


def analyze(
    recorder: ForwardRecorder,
    logits: Value,
    layer: str | None,
    input_size: tuple[int, int] | None,
) -> HeadInfo:
    """Build the HeadInfo from a recorded forward (see :func:`find_head`)."""
    if len(logits.shape) != 2:
        raise ValueError(
            f"the selected model output has shape {list(logits.shape)}; expected logits "
            "[B, num_classes] (use output= to select them)"
        )
    pool, pool_input, steps = _walk_head(logits)
    layout = pooling_layout(pool, pool_input)
    assert layout is not None
    captured, convs, path, layer_call = _feature_path(pool_input, layer)
    conv_steps = [pre_pool_conv_step(op) for op in convs]
    consumer = convs[0] if convs else pool
    point = _capture_point(recorder, consumer, captured, path, layer_call)

    shape = pool_input.shape if not convs else captured.shape
    if layout in ("nlc", "ncl"):
        channels = shape[2] if layout == "nlc" else shape[1]
        grid = _pooled_grid(pool_input, 1 if layout == "nlc" else 2, input_size)
        feature_shape = (channels, *grid)
    else:
        grid = None
        feature_shape = tuple(shape[1:]) if layout == "nchw" else (shape[3], shape[1], shape[2])
    all_steps = (*conv_steps, *steps)
    weighted = [s for s in all_steps if isinstance(s, (LinearStep, BranchSumStep))]
    classifier = weighted[-1].description if weighted else "none (pooled channels = logits)"
    k_in = feature_shape[0]
    if not all_steps and k_in != logits.shape[1]:
        raise UnsupportedHeadError(
            f"the pooled features have {k_in} channels but the logits {logits.shape[1]} classes "
            "and no classifier was found between them; expected a Linear (or 1x1 conv) "
            f"classifier after the global average pooling. {GRAD_CAM_HINT}"
        )
    feature_call = outermost_output(captured)
    return HeadInfo(
        feature_source=describe_source(captured) if not path else (
            f"output of `{layer_call.name}`" + "".join(f" -> {op.name}" for op in path)),
        feature_module=(feature_call.name if feature_call is not None and not path
                        and layout == "nchw" else None),
        feature_shape=tuple(int(s) for s in feature_shape),
        feature_dtype=captured.dtype,
        layout=layout,
        token_grid=grid,
        pooling=f"{pool.name} in {pool.site}",
        classifier=classifier,
        num_classes=int(logits.shape[1]),
        folded=tuple(s.description for s in all_steps),
        capture=point,
        steps=all_steps,
        probe_input_size=input_size,
        spatial_warning=_spatial_warning(captured, feature_shape, input_size),
    )


def nearest_spatial_map(value: Value) -> Value | None:
    """The latest 4-D value with more than one position that ``value`` was computed from
    (following the input computed first at each join), or None."""
    while value.producer is not None:
        inputs = value.producer.tainted_inputs
        if not inputs:
            return None
        value = min(inputs, key=lambda v: v.producer.index if v.producer else -1)
        if len(value.shape) == 4 and value.shape[2] * value.shape[3] > 1:
            return value
    return None


def _spatial_warning(captured: Value, feature_shape: tuple[int, ...],
                     input_size: tuple[int, int] | None) -> str | None:
    """The text of the DegenerateMapWarning for a 1x1 feature map, else None."""
    if feature_shape[1] * feature_shape[2] != 1:
        return None
    at = f" for a {input_size[0]}x{input_size[1]} input" if input_size else ""
    text = (f"the feature map feeding the global pooling is 1x1{at}: every class activation "
            "map is constant (space was collapsed before the pooling).")
    earlier = nearest_spatial_map(captured)
    if earlier is None:
        return text + " No earlier layer with spatial extent was found."
    call = outermost_output(earlier)
    layer = f"`{call.name}`" if call is not None and call.name else None
    where = f"the output of {call.label}" if layer else describe_source(earlier)
    hint = f" (layer={layer.strip('`')!r})" if layer else ""
    return (f"{text} The nearest earlier layer with spatial extent is {where}, "
            f"[B, {', '.join(str(s) for s in earlier.shape[1:])}]: use a gradient method on "
            f"it{hint}.")


def token_grid(info: HeadInfo, tokens: int, input_size: tuple[int, int] | None) -> tuple[int, int]:
    """The patch grid for ``tokens`` tokens of an input of ``input_size`` (H, W)."""
    assert info.token_grid is not None
    return grid_for_input(info.token_grid, info.probe_input_size, tokens, input_size)


def to_feature_map(info: HeadInfo, captured: torch.Tensor,
                   input_size: tuple[int, int] | None) -> torch.Tensor:
    """The captured tensor as a feature map [B, K, h, w] (a view when possible)."""
    for op in info.capture.path:
        captured = op(captured)
    if info.layout == "nchw":
        return captured
    if info.layout == "nhwc":
        return captured.permute(0, 3, 1, 2)
    tokens = captured.shape[1] if info.layout == "nlc" else captured.shape[2]
    grid_h, grid_w = token_grid(info, int(tokens), input_size)
    if info.layout == "nlc":
        return captured.unflatten(1, (grid_h, grid_w)).permute(0, 3, 1, 2)
    return captured.unflatten(2, (grid_h, grid_w))


def pooled_vector(features: torch.Tensor) -> torch.Tensor:
    """Global average of a feature map [B, K, h, w] in fp32: [B, K]."""
    return features.float().mean(dim=(2, 3))

