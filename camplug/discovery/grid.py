"""Where a token sequence's patch grid comes from: trace the token axis back to the patch embedding.

A token model turns a spatial map into tokens once (the patch embedding: a convolution whose
[B, C, h, w] output is flattened, or ``F.unfold``), and may later add class/register tokens
(``torch.cat`` along the token axis) and drop them again (``x[:, prefix:]``). The grid of a token
tensor is read from that patch embedding, found by following the token axis back through the
recorded forward: reshapes and permutes (axis bookkeeping), slices and concatenations (which
tokens), and operations that act on each token or broadcast along the tokens (norms, linears,
activations, residual additions, following the residual stream: the input computed first).
Nothing else is trusted: an unrelated reshape that happens to have as many positions as there are
tokens (an attention's [B, N, heads, head_dim]) is never taken for the grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .ops import DROPOUTS, PERMUTES, permutation
from .recorder import Op, Value

# Operations that act on each token separately or broadcast along the tokens (elementwise).
_POINTWISE = frozenset({
    "add", "__add__", "__radd__", "add_", "__iadd__", "sub", "__sub__", "__rsub__", "sub_",
    "mul", "__mul__", "__rmul__", "mul_", "__imul__", "div", "__truediv__", "div_",
    "gelu", "relu", "relu_", "silu", "silu_", "sigmoid", "tanh", "hardswish", "hardsigmoid",
    "relu6", "leaky_relu", "elu", "mish", "softplus", "neg", "__neg__", "abs", "square",
    "pow", "__pow__", "sqrt", "rsqrt", "exp", "erf", "clamp", "clip", "where",
    *DROPOUTS, "contiguous", "clone", "detach", "to", "float", "double", "half", "bfloat16",
    "type", "type_as",
})
_PER_TOKEN = frozenset({"linear", "layer_norm", "rms_norm", "softmax", "log_softmax"})
_CONCAT = frozenset({"cat", "concat", "concatenate"})
_SHAPES = frozenset({"flatten", "reshape", "view", "unflatten", "view_as", "reshape_as"})
_STEPS_LIMIT = 100_000


@dataclass(frozen=True)
class PatchGrid:
    """The patch grid of a traced token tensor.

    grid: (h, w) of the patch embedding. start: index of the first patch token in the traced
    tensor's token axis (the class/register tokens before it). The patch tokens are
    ``start .. start + h * w - 1``.
    """

    grid: tuple[int, int]
    start: int


class GridMismatch(Exception):
    """The traced tokens are not exactly the patch tokens (the message says what they are)."""


def trace_patch_grid(
    value: Value, axis: int, span: tuple[int, int] | None = None
) -> PatchGrid | None:
    """The patch grid of ``value``'s token axis ``axis``, or None when the trace is lost.

    span: the token positions that must be exactly the patch grid (e.g. the pooled tokens);
    None: find the patch tokens (a concatenation keeps the one piece that depends on the input).
    Raises GridMismatch when ``span`` holds other tokens too, or only part of the grid.
    """
    shift = 0  # index in ``value`` = index in the current tensor - shift
    for _ in range(_STEPS_LIMIT):
        op = value.producer
        if op is None:
            return None
        step = _step_back(op, value, axis, span)
        if step is None:
            return None
        if isinstance(step, PatchGrid):
            return _check_span(step, span, shift)
        value, axis, span, moved = step
        shift += moved
    return None


def _check_span(found: PatchGrid, span: tuple[int, int] | None, shift: int) -> PatchGrid:
    count = found.grid[0] * found.grid[1]
    if span is not None and span != (0, count):
        raise GridMismatch(
            f"tokens {span[0] - shift}..{span[1] - 1 - shift} are {span[1] - span[0]} of the "
            f"{count} patch tokens ({found.grid[0]}x{found.grid[1]} grid)"
        )
    start = 0 if span is None else span[0]
    return PatchGrid(found.grid, start - shift)


Step = tuple[Value, int, "tuple[int, int] | None", int] | PatchGrid | None


def _step_back(op: Op, value: Value, axis: int, span: tuple[int, int] | None) -> Step:
    """One op back: (input, its token axis, span there, index shift) or the grid or None."""
    name = op.name
    tainted = op.tainted_inputs
    if name in _CONCAT:
        return _through_cat(op, value, axis, span)
    if not tainted:
        return None
    if name == "unfold" and len(tainted[0].shape) == 4 and len(value.shape) == 3 and axis == 2:
        return _unfold_grid(op, tainted[0])
    if name in _SHAPES and op.args[0] is tainted[0]:
        return _through_reshape(tainted[0], value, axis, span)
    if name in PERMUTES and op.args[0] is tainted[0]:
        perm = permutation(op, len(value.shape))
        return None if perm is None else (tainted[0], perm[axis], span, 0)
    if name == "__getitem__" and op.args[0] is tainted[0]:
        return _through_index(op.args[1], tainted[0], axis, span)
    if name in _POINTWISE or (name in _PER_TOKEN and not _mixes_axis(op, len(value.shape), axis)):
        return _through_pointwise(tainted, value, axis, span)
    return None


def _mixes_axis(op: Op, ndim: int, axis: int) -> bool:
    """Whether a per-token operation (linear, norms over trailing dims, softmax) acts along the
    token axis."""
    if op.name in ("softmax", "log_softmax"):
        dim = op.arg(1, "dim")
        return dim is None or dim % ndim == axis
    if op.name in ("layer_norm", "rms_norm"):
        normalized = op.arg(1, "normalized_shape")
        count = 1 if isinstance(normalized, int) else len(normalized)
        return axis >= ndim - count
    return axis == ndim - 1  # linear


def _through_pointwise(tainted: list[Value], value: Value, axis: int,
                       span: tuple[int, int] | None) -> Step:
    """Follow the input computed first among those carrying the token axis (the residual
    stream of ``x + branch(x)``)."""
    candidates = []
    for x in tainted:
        x_axis = axis - (len(value.shape) - len(x.shape))
        if 0 <= x_axis < len(x.shape) and x.shape[x_axis] == value.shape[axis]:
            candidates.append((x.producer.index if x.producer else -1, x, x_axis))
    if not candidates:
        return None
    _, x, x_axis = min(candidates, key=lambda c: c[0])
    return x, x_axis, span, 0


def _through_cat(op: Op, value: Value, axis: int, span: tuple[int, int] | None) -> Step:
    pieces = op.arg(0, "tensors")
    dim = op.arg(1, "dim", 0) % len(value.shape)
    if not isinstance(pieces, (list, tuple)):
        return None
    shapes = [tuple(p.shape) for p in pieces]
    if dim != axis:  # concatenated along another axis: any piece carries the tokens
        inputs = [p for p in pieces if isinstance(p, Value) and p.tainted]
        return (inputs[0], axis, span, 0) if inputs else None
    offsets = [0]
    for shape in shapes:
        offsets.append(offsets[-1] + shape[axis])
    if span is None:
        inputs = [i for i, p in enumerate(pieces) if isinstance(p, Value) and p.tainted]
        if len(inputs) != 1:
            return None
        i = inputs[0]
        return pieces[i], axis, (0, shapes[i][axis]), -offsets[i]
    for i, piece in enumerate(pieces):
        if offsets[i] <= span[0] and span[1] <= offsets[i + 1]:
            if not (isinstance(piece, Value) and piece.tainted):
                return None
            return piece, axis, (span[0] - offsets[i], span[1] - offsets[i]), -offsets[i]
    holds = ", ".join(
        f"{offsets[i]}..{offsets[i + 1] - 1} ({'input-dependent' if _tainted(p) else 'constant'})"
        for i, p in enumerate(pieces))
    raise GridMismatch(
        f"tokens {span[0]}..{span[1] - 1} of a concatenation of {len(pieces)} token groups "
        f"({holds}) in {op.site}: class or register tokens are included"
    )


def _tainted(piece: object) -> bool:
    return isinstance(piece, Value) and piece.tainted


def _through_index(index: object, x: Value, axis: int, span: tuple[int, int] | None) -> Step:
    """Map the token axis of ``x[index]`` back to ``x`` (basic indexing only)."""
    items = list(index) if isinstance(index, tuple) else [index]
    if any(not (isinstance(i, (int, slice)) or i is None or i is Ellipsis) for i in items) or (
        isinstance(index, bool)
    ):
        return None
    used = sum(1 for i in items if i is not None and i is not Ellipsis)
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items[at:at + 1] = [slice(None)] * (len(x.shape) - used)
    items += [slice(None)] * (len(x.shape) - sum(1 for i in items if i is not None))
    out_axis = in_axis = 0
    for item in items:
        if item is None:
            if out_axis == axis:
                return None
            out_axis += 1
            continue
        if isinstance(item, int):
            in_axis += 1
            continue
        if out_axis == axis:
            start, stop, step = item.indices(x.shape[in_axis])
            if step != 1:
                return None
            length = max(stop - start, 0)
            inner = span if span is not None else (0, length)
            return x, in_axis, (inner[0] + start, inner[1] + start), start
        out_axis += 1
        in_axis += 1
    return None


def _through_reshape(x: Value, value: Value, axis: int, span: tuple[int, int] | None) -> Step:
    groups = _reshape_groups(tuple(x.shape), tuple(value.shape))
    if groups is None:
        return None
    for sources, targets in groups:
        if axis not in targets:
            continue
        targets = [t for t in targets if value.shape[t] != 1] or targets
        sources = [s for s in sources if x.shape[s] != 1] or sources[-1:]
        if targets != [axis]:
            return None  # the token axis is split
        if len(sources) == 1:
            return x, sources[0], span, 0
        spatial = {(2, 3), (1, 2)} if len(x.shape) == 4 else set()
        if tuple(sources) in spatial:
            return PatchGrid((int(x.shape[sources[0]]), int(x.shape[sources[1]])), 0)
        return None
    return None


def _reshape_groups(
    src: tuple[int, ...], dst: tuple[int, ...]
) -> list[tuple[list[int], list[int]]] | None:
    """Group the axes of a reshape ``src -> dst`` into runs with equal products."""
    if math.prod(src) != math.prod(dst) or 0 in src:
        return None
    groups, i, j = [], 0, 0
    while i < len(src) and j < len(dst):
        sources, targets = [i], [j]
        left, right = src[i], dst[j]
        i, j = i + 1, j + 1
        while left != right:
            if left < right:
                if i >= len(src):
                    return None
                left *= src[i]
                sources.append(i)
                i += 1
            else:
                if j >= len(dst):
                    return None
                right *= dst[j]
                targets.append(j)
                j += 1
        groups.append((sources, targets))
    if groups:  # trailing size-1 axes join the last group
        groups[-1][0].extend(range(i, len(src)))
        groups[-1][1].extend(range(j, len(dst)))
    return groups


def _unfold_grid(op: Op, x: Value) -> PatchGrid:
    """``F.unfold(x, kernel, dilation, padding, stride)``: the sliding blocks' grid."""
    def pair(value: object) -> tuple[int, int]:
        return (value, value) if isinstance(value, int) else tuple(value)  # type: ignore[return-value]

    kernel, dilation = pair(op.arg(1, "kernel_size")), pair(op.arg(2, "dilation", 1))
    padding, stride = pair(op.arg(3, "padding", 0)), pair(op.arg(4, "stride", 1))
    grid = tuple(
        (x.shape[2 + i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
        for i in range(2))
    return PatchGrid((int(grid[0]), int(grid[1])), 0)


def grid_for_input(
    probe_grid: tuple[int, int],
    probe_input_size: tuple[int, int] | None,
    tokens: int,
    input_size: tuple[int, int] | None,
) -> tuple[int, int]:
    """The patch grid for ``tokens`` patch tokens of an input of ``input_size`` (H, W), scaled
    from the grid found at the probe's input size (same patch stride)."""
    grid_h, grid_w = probe_grid
    if tokens == grid_h * grid_w and (input_size is None or input_size == probe_input_size):
        return grid_h, grid_w
    if input_size is None or probe_input_size is None:
        raise ValueError(f"cannot arrange {tokens} tokens on a grid without the input size")
    want_h = input_size[0] * grid_h / probe_input_size[0]
    want_w = input_size[1] * grid_w / probe_input_size[1]
    pairs = [(r, tokens // r) for r in range(1, tokens + 1) if tokens % r == 0]
    best = min(pairs, key=lambda p: abs(p[0] - want_h) + abs(p[1] - want_w))
    if abs(best[0] - want_h) > 1 or abs(best[1] - want_w) > 1:
        raise ValueError(
            f"cannot arrange {tokens} tokens for an input of {input_size[0]}x{input_size[1]} on "
            f"a patch grid (the probe had {grid_h}x{grid_w} for "
            f"{probe_input_size[0]}x{probe_input_size[1]})"
        )
    return best
