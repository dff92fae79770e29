"""Classify recorded operations for head discovery: global pooling, affine steps, shape-only.

Every function takes a recorded :class:`~camplug.discovery.recorder.Op` and the Value of its one
input that depends on the model input, and answers in terms of per-sample feature vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils._pytree import tree_map

from ..errors import GRAD_CAM_HINT, UnsupportedHeadError
from .fold import (
    BatchNormStep,
    HeadStep,
    LayerNormStep,
    LinearStep,
    RMSNormStep,
    SampleScaleStep,
    ScaleShiftStep,
)
from .recorder import Op, Value, tensors_in

Layout = Literal["nchw", "nhwc", "nlc", "ncl"]

# Operations that only reshape or relabel the per-sample vector (order kept, checked below).
RESHAPES = frozenset({
    "flatten", "reshape", "view", "squeeze", "unsqueeze", "view_as", "reshape_as",
    "contiguous", "clone", "detach", "to", "float", "double", "half", "bfloat16", "type",
    "type_as", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout",
})
PERMUTES = frozenset({"permute", "transpose", "swapaxes", "swapdims", "movedim"})
DROPOUTS = frozenset(name for name in RESHAPES if "dropout" in name)
_MUL = frozenset({"mul", "__mul__", "__rmul__", "mul_", "__imul__", "multiply"})
_DIV = frozenset({"div", "__truediv__", "div_", "__itruediv__", "divide", "true_divide"})
_ADD = frozenset({"add", "__add__", "__radd__", "add_", "__iadd__"})
_SUB = frozenset({"sub", "__sub__", "sub_", "__isub__", "subtract"})
_RSUB = frozenset({"__rsub__", "rsub"})
_NEG = frozenset({"neg", "__neg__", "negative", "neg_"})
_RDIV = frozenset({"__rtruediv__", "__rdiv__", "reciprocal"})
_MATMUL = frozenset({"matmul", "__matmul__", "mm"})
ADD_OPS = _ADD
SUM_OPS = _ADD | _SUB
SCALE_OPS = _MUL | _DIV


def per_sample(shape: tuple[int, ...]) -> int:
    return math.prod(shape[1:])


def _pair(value: object) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    first, second = value  # type: ignore[misc]
    return int(first), int(second)


def _dims(dim: object, ndim: int) -> frozenset[int] | None:
    if dim is None:
        return None
    dims = [dim] if isinstance(dim, int) else list(dim)  # type: ignore[arg-type]
    return frozenset(d % ndim for d in dims)


def pooling_layout(op: Op, x: Value) -> Layout | None:
    """The layout of ``x`` if ``op`` averages it over all positions (global average pooling)."""
    ndim, name = len(x.shape), op.name
    if op.args[0] is not x:
        return None
    if name == "adaptive_avg_pool2d" and ndim == 4:
        return "nchw" if tuple(op.outputs[0].shape[-2:]) == (1, 1) else None
    if name == "avg_pool2d" and ndim == 4:
        kernel = _pair(op.arg(1, "kernel_size"))
        padding = _pair(op.arg(3, "padding", 0))
        covers = kernel == tuple(x.shape[-2:]) and padding == (0, 0)
        return "nchw" if covers and op.arg(6, "divisor_override") is None else None
    if name == "adaptive_avg_pool1d" and ndim == 3:
        return "ncl" if op.outputs[0].shape[-1] == 1 else None
    if name == "mean" and ndim in (3, 4):
        dims = _dims(op.arg(1, "dim"), ndim)
        layouts = {frozenset({2, 3}): "nchw", frozenset({1, 2}): "nhwc"} if ndim == 4 else {
            frozenset({1}): "nlc", frozenset({2}): "ncl"}
        return layouts.get(dims) if dims is not None else None  # type: ignore[return-value]
    return None


def is_global_max_pool(op: Op, x: Value) -> bool:
    """Whether ``op`` takes a maximum over all positions of ``x``."""
    ndim, name = len(x.shape), op.name
    if name in ("adaptive_max_pool2d", "adaptive_max_pool1d"):
        return all(s == 1 for s in op.outputs[0].shape[2:])
    if name in ("max_pool2d", "max_pool1d"):
        return all(s == 1 for s in op.outputs[0].shape[2:]) and ndim >= 3
    if name in ("amax", "max", "logsumexp") and ndim in (3, 4):
        dims = _dims(op.arg(1, "dim"), ndim)
        spatial = ({frozenset({2, 3}), frozenset({1, 2})} if ndim == 4
                   else {frozenset({1}), frozenset({2})})
        return dims in spatial
    return False


def refuse(op: Op, why: str) -> UnsupportedHeadError:
    """The error for an operation that blocks an exact CAM."""
    return UnsupportedHeadError(
        f"no exact CAM for this model: walking back from the logits, camplug reached {op.where}, "
        f"which {why}. Only affine operations (Linear, BatchNorm, LayerNorm, Dropout, "
        f"reshapes, constant scaling) may lie between the global average pooling and the "
        f"logits. {GRAD_CAM_HINT}"
    )


def _keeps_batch_and_size(op: Op, x: Value, y: Value) -> bool:
    return bool(x.shape) and bool(y.shape) and y.shape[0] == x.shape[0] and (
        per_sample(y.shape) == per_sample(x.shape))


def permutation(op: Op, ndim: int) -> list[int] | None:
    """The axis order of a permute/transpose/movedim op (output axis i is input axis perm[i])."""
    if op.name == "permute":
        dims = op.args[1:] if len(op.args) > 2 else op.arg(1, "dims")
        dims = [dims] if isinstance(dims, int) else list(dims)
        return [d % ndim for d in dims]
    if op.name in ("transpose", "swapaxes", "swapdims"):
        first, second = op.arg(1, "dim0") % ndim, op.arg(2, "dim1") % ndim
        perm = list(range(ndim))
        perm[first], perm[second] = perm[second], perm[first]
        return perm
    if op.name == "movedim":
        source, destination = op.arg(1, "source"), op.arg(2, "destination")
        if not isinstance(source, int) or not isinstance(destination, int):
            return None
        order = [d for d in range(ndim) if d != source % ndim]
        order.insert(destination % ndim, source % ndim)
        return order
    return None


def keeps_vector(op: Op, x: Value, y: Value) -> bool:
    """Whether ``op`` maps each sample's values to the same values in the same order."""
    if not _keeps_batch_and_size(op, x, y):
        return False
    if op.name in RESHAPES:
        return op.args[0] is x
    if op.name in PERMUTES:
        perm = permutation(op, len(x.shape))
        if perm is None or perm[0] != 0:
            return False
        moved = [d for d in perm[1:] if x.shape[d] != 1]
        return moved == sorted(moved)
    if op.name == "__getitem__":
        index = op.args[1] if isinstance(op.args[1], tuple) else (op.args[1],)
        basic = all(isinstance(i, (slice, int)) or i is None or i is Ellipsis for i in index)
        return basic and not isinstance(op.args[1], bool)
    return False


def _const(value: object) -> torch.Tensor | float | None:
    """A constant operand as a tensor or float (None if it depends on the input)."""
    if isinstance(value, Value):
        return None if value.tainted else value.tensor
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _per_feature(op: Op, const: torch.Tensor | float, x: Value) -> torch.Tensor | float:
    """Broadcast a constant operand to one value per feature, [K] (or keep a scalar)."""
    if not isinstance(const, torch.Tensor) or const.numel() == 1:
        return float(const) if not isinstance(const, torch.Tensor) else const.reshape(())
    if torch.broadcast_shapes(const.shape, x.shape) != torch.Size(x.shape):
        raise refuse(op, "broadcasts the features to a larger shape")
    if const.dim() == len(x.shape):
        if const.shape[0] != 1:
            raise refuse(op, "uses a different constant for each sample of the batch")
        const = const[0]
    return const.expand(x.shape[1:]).reshape(-1)


def _arithmetic_step(op: Op, x: Value, where: str) -> HeadStep:
    other_index = 1 if op.args[0] is x else 0
    if op.name in _NEG:
        return ScaleShiftStep(-1.0, 0.0, f"negation {where}")
    if op.name in _RDIV:
        raise refuse(op, "divides by the features")
    other = _const(op.arg(other_index, "other"))
    if other is None:
        raise refuse(op, "combines the features with a tensor that depends on the input")
    other = _per_feature(op, other, x)
    alpha = float(op.kwargs.get("alpha", 1.0))
    if op.name in _MUL:
        return ScaleShiftStep(other, 0.0, f"scaling by a constant {where}")
    if op.name in _DIV:
        if other_index == 0 or op.kwargs.get("rounding_mode") is not None:
            raise refuse(op, "divides by the features or rounds")
        return ScaleShiftStep(1.0 / other, 0.0, f"division by a constant {where}")
    if op.name in _ADD:
        return ScaleShiftStep(1.0, alpha * other, f"addition of a constant {where}")
    if op.name in _SUB and other_index == 1:
        return ScaleShiftStep(1.0, -alpha * other, f"subtraction of a constant {where}")
    if op.name in _SUB or op.name in _RSUB:
        return ScaleShiftStep(-alpha, other, f"subtraction from a constant {where}")
    raise refuse(op, "is not affine")


def _owner_module(op: Op) -> nn.Module | None:
    return op.owner.module if op.owner is not None else None


def affine_step(op: Op, x: Value, y: Value) -> HeadStep | None:
    """The fold step for ``op`` (x -> y), None for a shape-only op; raises if not affine."""
    name, where = op.name, f"in {op.site}"
    k_in = per_sample(x.shape)
    if name in RESHAPES or name in PERMUTES or name == "__getitem__":
        if keeps_vector(op, x, y):
            return None
        raise refuse(op, "reorders or selects features")
    arithmetic = _MUL | _DIV | _ADD | _SUB | _RSUB | _NEG | _RDIV
    if name in arithmetic:
        return _arithmetic_step(op, x, where)
    if op.args[0] is not x:
        raise refuse(op, "uses the features as a parameter")
    if any(isinstance(v, Value) and v.tainted for v in [*op.args[1:], *op.kwargs.values()]):
        raise refuse(op, "uses input-dependent weights")
    if name == "linear":
        if per_sample(x.shape) != x.shape[-1]:
            raise refuse(op, "mixes positions rather than acting on the pooled vector")
        weight, bias = _const(op.arg(1, "weight")), _const(op.arg(2, "bias"))
        return LinearStep(weight, bias, f"linear {k_in} -> {weight.shape[0]} {where}")
    if name in _MATMUL:
        matrix = _const(op.arg(1, "other"))
        if matrix is None or matrix.dim() != 2 or per_sample(x.shape) != x.shape[-1]:
            raise refuse(op, "is not a product with a constant matrix")
        return LinearStep(matrix.t(), None, f"matrix product {k_in} -> {matrix.shape[1]} {where}")
    if name == "conv2d":
        weight, bias = _const(op.arg(1, "weight")), _const(op.arg(2, "bias"))
        one_by_one = tuple(weight.shape[-2:]) == (1, 1) and tuple(x.shape[-2:]) == (1, 1)
        if not (one_by_one and op.arg(6, "groups", 1) == 1 and tuple(y.shape[-2:]) == (1, 1)):
            raise refuse(op, "is a convolution other than a 1x1 one on the pooled 1x1 map")
        return LinearStep(weight.flatten(1), bias,
                          f"1x1 convolution {k_in} -> {weight.shape[0]} {where}")
    if name == "batch_norm":
        module = _owner_module(op)
        owner_bn = module if isinstance(module, nn.modules.batchnorm._BatchNorm) else None
        return BatchNormStep(
            owner_bn, _const(op.arg(1, "running_mean")), _const(op.arg(2, "running_var")),
            _const(op.arg(3, "weight")), _const(op.arg(4, "bias")),
            float(op.arg(7, "eps", 1e-5)), bool(op.arg(5, "training", False)), x.shape[1],
            f"batch_norm {where} (running statistics in eval, the batch's in train)",
        )
    if name in ("layer_norm", "rms_norm"):
        normalized = op.arg(1, "normalized_shape")
        normalized = [normalized] if isinstance(normalized, int) else list(normalized)
        if math.prod(normalized) != k_in:
            raise refuse(op, f"normalizes groups of {math.prod(normalized)} of the {k_in} "
                             "features rather than the whole vector")
        weight = _const(op.arg(2, "weight"))
        weight = weight.reshape(-1) if weight is not None else None
        if name == "rms_norm":
            eps = op.arg(3, "eps")
            eps = torch.finfo(x.dtype).eps if eps is None else float(eps)
            return RMSNormStep(weight, eps, f"rms_norm {where} (per-sample RMS folded)")
        bias = _const(op.arg(3, "bias"))
        return LayerNormStep(weight, bias.reshape(-1) if bias is not None else None,
                             float(op.arg(4, "eps", 1e-5)),
                             f"layer_norm {where} (per-sample mean and std folded)")
    if name == "group_norm":
        if op.arg(1, "num_groups") != 1:
            raise refuse(op, "normalizes groups of features rather than the whole vector")
        repeat = k_in // x.shape[1]
        weight, bias = _const(op.arg(2, "weight")), _const(op.arg(3, "bias"))
        return LayerNormStep(
            weight.repeat_interleave(repeat) if weight is not None else None,
            bias.repeat_interleave(repeat) if bias is not None else None,
            float(op.arg(4, "eps", 1e-5)),
            f"group_norm, 1 group, {where} (per-sample statistics folded)",
        )
    raise refuse(op, "is not affine")


def foldable_pre_pool_conv(op: Op, x: Value, y: Value) -> bool:
    """A 1x1, stride-1, unpadded, ungrouped convolution: it commutes with global averaging."""
    if op.name != "conv2d" or op.args[0] is not x or len(x.shape) != 4:
        return False
    weight = _const(op.arg(1, "weight"))
    bias = op.arg(2, "bias")
    if weight is None or (isinstance(bias, Value) and bias.tainted):
        return False
    return (
        tuple(weight.shape[-2:]) == (1, 1)
        and _pair(op.arg(3, "stride", 1)) == (1, 1)
        and op.arg(4, "padding", 0) in (0, (0, 0), [0, 0], "valid", "same")
        and op.arg(6, "groups", 1) == 1
        and tuple(y.shape[-2:]) == tuple(x.shape[-2:])
    )


def pre_pool_conv_step(op: Op) -> LinearStep:
    """The pooled-vector form of a 1x1 convolution that feeds the pooling."""
    weight, bias = _const(op.arg(1, "weight")), _const(op.arg(2, "bias"))
    return LinearStep(
        weight.flatten(1), bias,
        f"1x1 convolution {weight.shape[1]} -> {weight.shape[0]} in {op.site}, before the "
        "pooling (moved after it: they commute)",
    )


# Operations allowed in the computation of a per-sample scale from the features themselves.
_SCALE_OPS = frozenset({
    "pow", "__pow__", "square", "abs", "neg", "__neg__", "sqrt", "rsqrt", "reciprocal", "exp",
    "log", "mean", "sum", "var", "std", "amax", "norm", "linalg_vector_norm", "vector_norm",
    "clamp", "clamp_min", "clip", "expand", "expand_as", *(RESHAPES - DROPOUTS),
    *_MUL, *_DIV, *_ADD, *_SUB, *_RSUB,
}) - {"mul_", "__imul__", "div_", "__itruediv__", "add_", "__iadd__", "sub_", "__isub__"}


@dataclass(frozen=True)
class _Slot:
    """Where a replayed tensor goes: result ``index`` of the program (0 is its input)."""

    index: int


class RecordedFunction:
    """A recorded computation of one tensor from another, replayed on a new input.

    ``program`` holds (torch function, args, kwargs) with the tensors computed in the program
    as :class:`_Slot` and constants as tensors; nothing refers to the model's modules.
    """

    def __init__(self, program: tuple[tuple[Any, tuple, dict], ...], result: int,
                 names: tuple[str, ...]) -> None:
        self.program = program
        self.result = result
        self.names = names

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        slots = [x]
        fill = lambda leaf: slots[leaf.index] if isinstance(leaf, _Slot) else leaf  # noqa: E731
        for func, args, kwargs in self.program:
            slots.extend(tensors_in(func(*tree_map(fill, args), **tree_map(fill, kwargs))))
        return slots[self.result]


def recorded_function(source: Value, target: Value, at: Op) -> RecordedFunction:
    """How ``target`` was computed from ``source`` (and constants) in the recorded forward;
    raises the refusal for ``at`` when it depends on other inputs or on other operations."""
    ops: dict[int, Op] = {}
    pending, seen = [target], set()
    while pending:
        value = pending.pop()
        if value is source or id(value) in seen or not value.tainted:
            continue
        seen.add(id(value))
        op = value.producer
        if op is None:
            raise refuse(at, "scales the features by a value that depends on another input")
        if op.name not in _SCALE_OPS:
            raise refuse(at, f"scales the features by a value computed with `{op.name}` "
                             f"({op.site})")
        ops[op.index] = op
        pending.extend(op.tainted_inputs)
    slot_of, program = {id(source): 0}, []

    def leaf(item: Any) -> Any:
        if not isinstance(item, Value):
            return item
        return _Slot(slot_of[id(item)]) if item.tainted else item.tensor

    for index in sorted(ops):
        op = ops[index]
        program.append((op.func, tree_map(leaf, op.args), tree_map(leaf, op.kwargs)))
        for out in op.outputs:
            slot_of[id(out)] = len(slot_of)
    names = tuple(ops[i].name for i in sorted(ops))
    return RecordedFunction(tuple(program), slot_of[id(target)], names)


def sample_scale_step(op: Op, y: Value) -> tuple[HeadStep, Value]:
    """``x * s`` or ``x / s`` where ``s`` (one value per sample) is computed from ``x`` itself:
    the step and ``x``. Raises the refusal otherwise."""
    first, second = op.args[0], op.arg(1, "other")
    divide = op.name in _DIV
    if divide and op.kwargs.get("rounding_mode") is not None:
        raise refuse(op, "divides with rounding")
    orders = [(first, second)] if divide else [(first, second), (second, first)]
    error = None
    for x, scale in orders:
        if not (isinstance(x, Value) and isinstance(scale, Value)) or x.shape != y.shape or (
            per_sample(scale.shape) != 1 or not scale.shape or scale.shape[0] != y.shape[0]
        ):
            continue
        try:
            function = recorded_function(x, scale, op)
        except UnsupportedHeadError as refusal:
            error = refusal
            continue
        computed = " -> ".join(function.names) or "the vector itself"
        verb = "division" if divide else "multiplication"
        return SampleScaleStep(
            function, tuple(x.shape[1:]), divide,
            f"{verb} by a per-sample scale ({computed}) in {op.site} (frozen per sample)",
        ), x
    raise error or refuse(
        op, "combines 2 tensors that depend on the input (an input-dependent multiplier that "
            "is not one scale per sample computed from the features)")
