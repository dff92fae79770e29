"""The layer gradient methods (Grad-CAM and the like) read, for models without an exact CAM head.

Rule: walking back from the logits (through the input computed first at each join), the first
tensor that is a spatial feature map: a 4-D map with more than one position whose shape fits the
input (NCHW, else NHWC), skipping adaptive/global pooling outputs, or a token sequence
[B, N, D] whose tokens trace back to the patch embedding (:mod:`camplug.discovery.grid`). When
the head reads only class/register tokens (``x[:, 0]``), the patch tokens of the final sequence
do not reach the logits (the last norm acts per token), so the layer is the input of the last
token-mixing block instead (its first module, e.g. ``blocks[-1].norm1``, as in pytorch-grad-cam).
The chosen tensor must be a module's output (a functional op's output is traced back to the
module output it was computed from elementwise). ``layer=`` overrides the rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ..errors import UnsupportedHeadError
from .grid import GridMismatch, PatchGrid, grid_for_input, trace_patch_grid
from .heads import (
    LayerSpec,
    OutputSelector,
    analyze,
    describe_source,
    layer_name,
    outermost_output,
    probe,
)
from .ops import ADD_OPS, DROPOUTS, PERMUTES, RESHAPES
from .recorder import ModuleCall, Op, Value, ancestors

FeatureLayout = Literal["nchw", "nhwc", "tokens"]

_ADAPTIVE_POOLS = frozenset({"adaptive_avg_pool2d", "adaptive_max_pool2d"})
_SHAPE_ONLY = RESHAPES | PERMUTES | {"__getitem__"}
_TOKEN_MIXING = frozenset({
    "matmul", "__matmul__", "bmm", "baddbmm", "einsum", "softmax",
    "scaled_dot_product_attention",
})
_ELEMENTWISE = frozenset({
    "relu", "relu_", "relu6", "gelu", "silu", "silu_", "hardswish", "hardswish_", "sigmoid",
    "tanh", "leaky_relu", "elu", "mish", "contiguous", "clone", "to", "float", *DROPOUTS,
})


@dataclass(frozen=True)
class FeatureLayer:
    """The layer a gradient method reads, found by :func:`find_feature_layer`."""

    module: str  # name of the module whose OUTPUT is the feature map / tokens
    call: int  # which call of that module in one forward (0 for the first)
    layout: FeatureLayout  # how that output holds the map
    prefix_tokens: int  # tokens layout: class/register tokens to drop before the grid
    grid: tuple[int, int] | None  # token grid (h, w) at the probe input, else None
    description: str  # human text for describe()
    reason: str  # why no exact CAM (the UnsupportedHeadError message); "" when there is one
    probe_input_size: tuple[int, int] | None = None  # (H, W) of the probe input
    feature_shape: tuple[int, int, int] | None = None  # (K, h, w) at the probe input


def find_feature_layer(
    model: nn.Module,
    example_input: torch.Tensor | tuple[Any, ...] | None = None,
    *,
    layer: LayerSpec = None,
    output: OutputSelector = None,
    example_kwargs: dict[str, Any] | None = None,
) -> FeatureLayer:
    """The layer for gradient methods, from one probe forward (see the module docstring).

    Arguments as :func:`camplug.discovery.heads.find_head`; ``layer`` (a name or a submodule)
    overrides the rule (its last call feeding the logits). Raises ValueError when no spatial
    feature map is found or ``layer`` does not hold one.
    """
    name = layer_name(model, layer)
    recorder, logits, input_size = probe(model, example_input, output, example_kwargs)
    if len(logits.shape) != 2:
        raise ValueError(f"the selected model output has shape {list(logits.shape)}; expected "
                         "logits [B, num_classes] (use output= to select them)")
    try:
        analyze(recorder, logits, None, input_size)
        reason = ""
    except UnsupportedHeadError as error:
        reason = str(error)
    if name is not None:
        value, why = _named_layer(logits, name), "chosen with layer="
        call = outermost_output(value, name)
    else:
        value, why = _rule(logits, input_size)
        call, value, why = _module_of(value, why)
    found = _layout(value, input_size)
    if found is None:
        raise ValueError(
            f"the output of {call.label} has shape {list(value.shape)}: not a spatial feature "
            "map [B, C, h, w] / [B, h, w, C] nor patch tokens [B, N, D] that camplug can arrange "
            "on the patch grid; choose another layer"
        )
    layout, grid, prefix, shape = found
    return FeatureLayer(
        module=call.name, call=call.done_index, layout=layout, prefix_tokens=prefix,
        grid=grid, description=_describe(call, layout, shape, grid, prefix, input_size, why),
        reason=reason, probe_input_size=input_size, feature_shape=shape,
    )


def to_grid(layer: FeatureLayer, output: torch.Tensor,
            input_size: tuple[int, int] | None) -> torch.Tensor:
    """The layer's output as a map [B, K, h, w] (a differentiable view; tokens: the prefix
    tokens dropped and the patch tokens arranged on the grid for ``input_size`` (H, W))."""
    if layer.layout == "nchw":
        return output
    if layer.layout == "nhwc":
        return output.permute(0, 3, 1, 2)
    patches = output[:, layer.prefix_tokens:]
    assert layer.grid is not None
    grid = grid_for_input(layer.grid, layer.probe_input_size, int(patches.shape[1]), input_size)
    return patches.unflatten(1, grid).permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------- the rule
def _earliest(values: list[Value]) -> Value:
    return min(values, key=lambda v: v.producer.index if v.producer is not None else -1)


def _rule(logits: Value, input_size: tuple[int, int] | None) -> tuple[Value, str]:
    """The tensor chosen by the rule and why."""
    value, consumer = logits, None
    while value.producer is not None:
        op = value.producer
        inputs = op.tainted_inputs
        if not inputs:
            break
        value, consumer = _earliest(inputs), op
        if value.producer is not None and value.producer.name in _ADAPTIVE_POOLS:
            continue
        if len(value.shape) == 4 and _spatial_layout(value, input_size) is not None:
            return value, "the last spatial feature map feeding the head"
        if len(value.shape) == 3 and (value.producer is None
                                      or value.producer.name not in _SHAPE_ONLY):
            patch = _patch_tokens(value)
            if patch is not None:
                if _reads_prefix_only(consumer, value, patch):
                    mixing = _last_mixing_input(value)
                    if mixing is not None:
                        return mixing, ("the input of the last token-mixing block (the head "
                                        "reads class/register tokens only)")
                return value, "the last patch-token sequence feeding the head"
    raise ValueError(
        "no spatial feature map found: walking back from the logits reached the model input "
        "without a 4-D map or a patch-token sequence; pass layer= (the module whose output is "
        "the feature map)"
    )


def _spatial_layout(value: Value, input_size: tuple[int, int] | None) -> str | None:
    """"nchw" or "nhwc" if ``value`` [B, ., ., .] is a map with more than one position whose
    shape fits the input (same aspect ratio within a factor 2, not larger), else None."""
    for layout, (h, w) in (("nchw", value.shape[2:4]), ("nhwc", value.shape[1:3])):
        if h * w <= 1:
            continue
        if input_size is None:
            return layout
        height, width = input_size
        if h <= height and w <= width and abs(math.log((h / w) / (height / width))) <= math.log(2):
            return layout
    return None


def _patch_tokens(value: Value) -> PatchGrid | None:
    try:
        return trace_patch_grid(value, 1)
    except GridMismatch:
        return None


def _reads_prefix_only(consumer: Op | None, tokens: Value, patch: PatchGrid) -> bool:
    """Whether ``consumer`` takes only tokens outside the patch grid (``x[:, 0]``)."""
    if consumer is None or consumer.name != "__getitem__" or consumer.args[0] is not tokens:
        return False
    index = consumer.args[1] if isinstance(consumer.args[1], tuple) else (consumer.args[1],)
    if len(index) < 2 or index[0] != slice(None):
        return False
    selected = index[1]
    count = patch.grid[0] * patch.grid[1]
    if isinstance(selected, int):
        position = selected % tokens.shape[1]
        return not patch.start <= position < patch.start + count
    if isinstance(selected, slice):
        start, stop, step = selected.indices(tokens.shape[1])
        return step == 1 and (stop <= patch.start or start >= patch.start + count)
    return False


def _last_mixing_input(tokens: Value) -> Value | None:
    """Walking back along the residual stream: the output of the first module of the last
    residual branch that mixes tokens (attention), or the stream entering it."""
    value = tokens
    while value.producer is not None:
        op = value.producer
        inputs = op.tainted_inputs
        if len(inputs) == 2 and op.name in ADD_OPS and inputs[0].shape == inputs[1].shape:
            stream = _earliest(inputs)
            branch = inputs[1] if stream is inputs[0] else inputs[0]
            ops = _branch_ops(branch, stream)
            if ops is not None and any(o.name in _TOKEN_MIXING for o in ops):
                return _branch_entry(ops, stream)
            value = stream
        elif len(inputs) == 1:
            value = inputs[0]
        else:
            return None
    return None


def _branch_ops(branch: Value, stream: Value) -> list[Op] | None:
    """The ops computing ``branch`` from ``stream`` (None if it depends on anything else)."""
    found: dict[int, Op] = {}
    pending, seen = [branch], set()
    while pending:
        value = pending.pop()
        if value is stream or id(value) in seen:
            continue
        seen.add(id(value))
        if value.producer is None:
            return None
        found[value.producer.index] = value.producer
        pending.extend(value.producer.tainted_inputs)
    return [found[i] for i in sorted(found)]


def _branch_entry(ops: list[Op], stream: Value) -> Value:
    """The output of the first module called on ``stream`` inside the branch with the stream's
    shape (a pre-norm), else the stream itself."""
    for op in ops:
        for out in op.outputs:
            calls = [c for c in out.module_outputs if c.input_value is stream and c.name]
            if calls and out.shape == stream.shape:
                return out
    return stream


def _module_of(value: Value, why: str) -> tuple[ModuleCall, Value, str]:
    """The module call whose output is ``value``, or, through elementwise ops, the module
    output it was computed from."""
    start, skipped = value, []
    while True:
        call = outermost_output(value)
        if call is not None and call.name:
            if skipped:
                why += f" (taken before {', '.join(skipped[::-1])})"
            return call, value, why
        op = value.producer
        inputs = op.tainted_inputs if op is not None else []
        if op is None or op.name not in _ELEMENTWISE or len(inputs) != 1:
            raise ValueError(
                f"the feature map chosen for gradient methods ({describe_source(start)}) is not "
                "the output of a module: pass layer= (a module whose output is a feature map)"
            )
        skipped.append(op.where)
        value = inputs[0]


def _named_layer(logits: Value, name: str) -> Value:
    """The output of the last call of module ``name`` that the logits depend on."""
    best: tuple[int, Value] | None = None
    for value in ancestors(logits).values():
        for call in value.module_outputs:
            if call.name == name and (best is None or call.done_index > best[0]):
                best = (call.done_index, value)
    if best is None:
        raise ValueError(f"the logits do not depend on any output of layer `{name}` in the probe "
                         "forward (was it called?)")
    return best[1]


def _layout(value: Value, input_size: tuple[int, int] | None) -> tuple[
        FeatureLayout, tuple[int, int] | None, int, tuple[int, int, int]] | None:
    if len(value.shape) == 4:
        layout = _spatial_layout(value, input_size)
        if layout == "nchw":
            return "nchw", None, 0, (value.shape[1], value.shape[2], value.shape[3])
        if layout == "nhwc":
            return "nhwc", None, 0, (value.shape[3], value.shape[1], value.shape[2])
        return None
    if len(value.shape) == 3:
        patch = _patch_tokens(value)
        if patch is None:
            return None
        return "tokens", patch.grid, patch.start, (value.shape[2], *patch.grid)
    return None


def _describe(call: ModuleCall, layout: str, shape: tuple[int, int, int],
              grid: tuple[int, int] | None, prefix: int, input_size: tuple[int, int] | None,
              why: str) -> str:
    k, h, w = shape
    nth = f" (call {call.done_index})" if call.done_index else ""
    if layout == "tokens":
        after = f" after {prefix} class/register tokens" if prefix else ""
        held = f" (tokens on a {h}x{w} grid{after})"
    else:
        held = " (NHWC)" if layout == "nhwc" else ""
    at = f" for a {input_size[0]}x{input_size[1]} input" if input_size else ""
    return f"output of {call.label}{nth} -> [B, {k}, {h}, {w}]{held}{at}: {why}"
