"""Take the features of a forward without hooks: the argument of one torch call, by position.

The capture (``camplug.capture``) takes the tensor feeding the global pooling with module hooks
and a windowed torch-function interceptor, which ``torch.compile`` cannot trace when they are
registered inside the compiled function (registering a hook mutates a class counter: a graph
break). A deployable model has to leave the wrapped model untouched, so here the same tensor is
located once, at construction, as *the argument at position* ``leaf`` *of call number*
``ordinal`` *of the torch function* ``name`` in the forward (:class:`TapSite`), and each forward
runs the model under a :class:`FeatureTap`, a ``TorchFunctionMode`` that counts calls of that
one name and keeps that argument. A torch-function mode is traced by Dynamo (``fullgraph``),
runs as plain Python under ``torch.export`` (non-strict) and so under ``torch.onnx.export``; it
is thread-local and adds nothing to the traced graph (it only keeps a reference).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ..discovery.heads import CapturePoint, HeadInfo, OutputSelector, probe_mode, select_output
from ..discovery.recorder import first_tensor, func_name


def _tensor_leaves(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors among a call's arguments, in pytree order."""
    leaves, _ = tree_flatten((args, kwargs))
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


@dataclass(frozen=True)
class TapSite:
    """Where the features are in a forward: tensor argument ``leaf`` (pytree order) of call
    number ``ordinal`` (from 0, counted over the whole forward) of the torch function
    ``name``."""

    name: str
    ordinal: int
    leaf: int
    clone: bool = False  # the model changes the tensor in place later in the forward: copy it

    def describe(self) -> str:
        return f"tensor argument {self.leaf} of call {self.ordinal} of torch function {self.name}"


class FeatureTap(TorchFunctionMode):
    """Within the block, keeps the tensor at ``site`` as ``captured`` (a copy when
    ``site.clone``; None if the call did not happen)."""

    def __init__(self, site: TapSite) -> None:
        super().__init__()
        self.site = site
        self.seen = 0
        self.captured: torch.Tensor | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        site = self.site
        if self.seen <= site.ordinal and func_name(func) == site.name:
            if self.seen == site.ordinal:
                self.keep(_tensor_leaves(args, kwargs)[site.leaf])
            self.seen += 1
        return func(*args, **kwargs)

    def keep(self, tensor: torch.Tensor) -> None:
        self.captured = tensor.detach().clone() if self.site.clone else tensor.detach()


class _CheckingTap(FeatureTap):
    """A tap that also keeps a copy of the argument at the time of the call and its in-place
    version counter, to tell whether the forward changes it afterwards."""

    def keep(self, tensor: torch.Tensor) -> None:
        self.captured = tensor
        self.copy = tensor.detach().clone()
        self.version = tensor._version


class _CallLog(TorchFunctionMode):
    """Records every torch call of a forward: its name and the ids of its tensor arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[int]]] = []
        self.paused = False  # while the probe's own hooks copy a tensor

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if not self.paused:
            self.calls.append((func_name(func), [id(t) for t in _tensor_leaves(args, kwargs)]))
        return func(*args, **kwargs)


class _Marks:
    """What the probe's temporary hooks saw: the captured tensor (kept alive, so its id stays
    unique) and its copy, and where in the call log the capture window starts."""

    def __init__(self) -> None:
        self.tensor: torch.Tensor | None = None
        self.copy: torch.Tensor | None = None
        self.start: int | None = None
        self.calls: Counter[str] = Counter()


def locate(
    model: nn.Module, head: HeadInfo, args: tuple[Any, ...], output: OutputSelector
) -> TapSite:
    """The :class:`TapSite` of ``head.capture`` for a forward ``model(*args)``, found by one
    probe forward (eval mode, no gradients, flags restored; the temporary hooks are removed)
    and checked by a second one: the argument found holds the values the capture point takes
    (``clone`` set when the forward changes it in place afterwards). Raises
    RuntimeError when the capture point cannot be expressed as a torch call's argument."""
    point = head.capture
    names = dict(model.named_modules())
    log, marks = _CallLog(), _Marks()

    def counted(key: str, wanted: int, action: Any) -> Any:
        def hook(*hook_args: Any) -> None:
            seen = marks.calls[key]
            marks.calls[key] = seen + 1
            if seen == wanted and marks.start is None:
                action(*hook_args)

        return hook

    def mark(tensor: torch.Tensor | None = None) -> None:
        marks.start = len(log.calls)
        if isinstance(tensor, torch.Tensor):
            log.paused = True
            marks.tensor, marks.copy = tensor, tensor.detach().clone()
            log.paused = False

    handles = []
    if point.kind == "module_input":
        handles.append(names[point.module].register_forward_pre_hook(
            counted("pre", point.call, lambda _m, a, k: mark(first_tensor(a, k))),
            with_kwargs=True))
    elif point.kind == "module_output":
        handles.append(names[point.module].register_forward_hook(
            counted("post", point.call, lambda _m, _a, out: mark(out))))
    elif point.anchor is not None:
        handles.append(names[point.anchor].register_forward_hook(
            counted("post", point.anchor_call, lambda *_: mark())))
    elif point.module:
        handles.append(names[point.module].register_forward_pre_hook(
            counted("pre", point.call, lambda *_: mark())))
    else:
        mark()  # the window opens when the model's own forward starts
    try:
        with probe_mode(model), log:
            select_output(model(*args), output)
    finally:
        for handle in handles:
            handle.remove()
    return _check_site(model, _site_in_log(point, log.calls, marks), args, marks)


def _site_in_log(point: CapturePoint, calls: list[tuple[str, list[int]]],
                 marks: _Marks) -> TapSite:
    """The call of the log that takes the captured tensor (see :func:`locate`)."""
    where = point.describe()
    if marks.start is None:
        raise RuntimeError(f"the capture point ({where}) was not reached in the probe forward")
    index, leaf = None, 0
    if point.kind == "function":
        matches = [i for i in range(marks.start, len(calls)) if calls[i][0] == point.func_name]
        if len(matches) > point.op_index:
            index = matches[point.op_index]
    elif marks.tensor is not None:
        wanted = id(marks.tensor)
        for i in range(marks.start, len(calls)):
            if wanted in calls[i][1]:
                index, leaf = i, calls[i][1].index(wanted)
                break
    if index is None:
        raise RuntimeError(
            f"the features ({where}) are not the argument of a torch call after the capture "
            "point, so they cannot be taken without hooks; use camplug.attach / explain"
        )
    name = calls[index][0]
    ordinal = sum(1 for call_name, _ in calls[:index] if call_name == name)
    return TapSite(name, ordinal, leaf)


def _check_site(model: nn.Module, site: TapSite, args: tuple[Any, ...],
                marks: _Marks) -> TapSite:
    """Run the tap once: the site, with ``clone`` set if the forward changes the tensor in place
    after the call; raises if the argument does not hold what the capture point held."""
    with probe_mode(model), _CheckingTap(site) as tap:
        model(*args)
    if tap.captured is None:
        raise RuntimeError(f"the features tap ({site.describe()}) saw no tensor")
    expected = marks.copy  # None for function windows: the call itself is the capture point
    if expected is not None and (tap.copy.shape != expected.shape
                                 or not torch.equal(tap.copy, expected)):
        raise RuntimeError(
            f"the features tap ({site.describe()}) does not hold the tensor that feeds the "
            "pooling (changed in place in between?): this model cannot be deployed with "
            "CamModel; use camplug.attach / explain"
        )
    return replace(site, clone=tap.captured._version != tap.version)
