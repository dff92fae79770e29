"""A per-model cache of discovered heads, so that repeated attaches skip the probe forward.

:class:`HeadCache` maps a live model to the :class:`~camplug.discovery.heads.HeadInfo` found for it,
one per call signature (layer, output selector, the input's non-batch shapes and dtypes, autocast
and inference modes). An entry is reused only while a fingerprint of everything discovery can depend
on is unchanged: each submodule's identity and type (and its class's ``forward``), every parameter
and buffer (identity, version counter, shape, dtype, device), the plain attributes of every module
(values, or identity for other objects), and the user's forward hooks. Any change (a replaced
submodule, an in-place update of a weight, a new hook, ``model.to(...)``) misses and the head is
discovered again. The train/eval flags are left out: the probe always runs in eval.

The cache never keeps a model alive: entries are keyed by ``id`` with a weak reference that
drops the entry when the model is collected, and fingerprints hold ids, values and weak
references only. The cached HeadInfo refers to the model's own parameters (and to constants
recorded in its forward), as every capture's HeadInfo does.
"""

from __future__ import annotations

import enum
import threading
import types
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as module_globals

from .heads import HeadInfo, OutputSelector

MAX_HEADS_PER_MODEL = 8  # call signatures kept per model (e.g. several input sizes)
_MAX_ITEMS = 200_000  # a fingerprint larger than this is not worth computing: no caching
_MAX_DEPTH = 3  # how deep plain attributes (config objects, lists) are followed
_STRUCTURAL = frozenset({"_parameters", "_buffers", "_modules", "training"})
_FORWARD_HOOKS = ("_forward_pre_hooks", "_forward_hooks")
_GLOBAL_FORWARD_HOOKS = ("_global_forward_pre_hooks", "_global_forward_hooks")
_VALUES = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device,
           torch.layout, torch.memory_format, enum.Enum)


class _Uncacheable(Exception):
    """The model or the call holds something the fingerprint cannot follow safely."""


@dataclass(frozen=True)
class Fingerprint:
    """A hashable description (ids and values only) and weak references to every object whose
    id it holds: while they are all alive, equal descriptions mean the same objects."""

    value: Hashable
    refs: tuple[weakref.ref, ...] = field(repr=False, compare=False)

    def matches(self, other: Fingerprint) -> bool:
        return self.value == other.value and all(ref() is not None for ref in self.refs)


@dataclass(frozen=True)
class CacheKey:
    """What a cached head is looked up by (see :meth:`HeadCache.key`)."""

    model: Fingerprint
    call: Fingerprint


class _Freezer:
    """Turns module state and call arguments into a Fingerprint."""

    def __init__(self) -> None:
        self.refs: dict[int, weakref.ref] = {}
        self.items = 0

    def fingerprint(self, value: Hashable) -> Fingerprint:
        return Fingerprint(value, tuple(self.refs.values()))

    def identity(self, obj: object) -> int:
        """``id(obj)``, with a weak reference kept so that a later reuse of the id is seen."""
        key = id(obj)
        if key not in self.refs:
            try:
                self.refs[key] = weakref.ref(obj)
            except TypeError as error:
                raise _Uncacheable(f"{type(obj).__name__} has no weak reference") from error
        return key

    def tensor(self, tensor: torch.Tensor, *, is_input: bool = False) -> Hashable:
        """Inputs by metadata (non-batch shape); model tensors also by identity and version."""
        self.items += 1
        strides = tuple(tensor.stride()) if tensor.layout == torch.strided else ()
        meta = (type(tensor), tensor.dtype, tensor.device, tensor.layout)
        if is_input:
            return ("input", tuple(tensor.shape), strides[1:], *meta)
        try:
            version = tensor._version
        except RuntimeError as error:  # inference tensors track no version
            raise _Uncacheable("a tensor without a version counter") from error
        return ("tensor", self.identity(tensor), version, tuple(tensor.shape), strides, *meta)

    def value(self, value: Any, depth: int = 0, *, is_input: bool = False) -> Hashable:
        """Plain values by value, containers element-wise, other objects by identity (and their
        attributes, up to ``_MAX_DEPTH`` levels)."""
        self.items += 1
        if self.items > _MAX_ITEMS:
            raise _Uncacheable("the model state is too large to fingerprint")
        if isinstance(value, _VALUES) or _is_builtin_function(value):
            return type(value), value
        if isinstance(value, types.MethodType):  # a new object at each attribute access
            return "method", self.identity(value.__self__), self.identity(value.__func__)
        if isinstance(value, torch.Tensor):
            return self.tensor(value, is_input=is_input)
        if isinstance(value, (tuple, list)):
            return type(value), tuple(self.value(v, depth, is_input=is_input) for v in value)
        if isinstance(value, dict):
            return type(value), tuple(
                (self.value(k, depth), self.value(v, depth, is_input=is_input))
                for k, v in value.items())
        if isinstance(value, (set, frozenset)):
            return type(value), frozenset(self.value(v, depth) for v in value)
        ident = self.identity(value)
        own = type(value).__module__.startswith("camplug.")  # e.g. a decorating CamCapture
        attributes = getattr(value, "__dict__", None)
        if own or depth >= _MAX_DEPTH or not isinstance(attributes, dict) or isinstance(
            value, (type, types.FunctionType, types.ModuleType)
        ):
            return "object", type(value), ident
        return "object", type(value), ident, self.value(attributes, depth + 1)

    def module(self, name: str, module: nn.Module) -> Hashable:
        attributes = tuple(
            (key, self.value(value)) for key, value in vars(module).items()
            if key not in _STRUCTURAL and "hook" not in key
        )
        return (
            name, type(module), self.identity(module), self.value(type(module).forward),
            self.tensors(module._parameters), self.tensors(module._buffers), attributes,
            tuple(user_hooks(getattr(module, hooks)) for hooks in _FORWARD_HOOKS),
        )

    def tensors(self, tensors: dict[str, torch.Tensor | None]) -> Hashable:
        return tuple((name, None if t is None else self.tensor(t)) for name, t in tensors.items())


def _is_builtin_function(value: object) -> bool:
    """A C function of a Python module (``torch.relu``): immortal, compared by identity."""
    return isinstance(value, types.BuiltinFunctionType) and (
        value.__self__ is None or isinstance(value.__self__, types.ModuleType))


def user_hooks(hooks: dict[int, Any]) -> tuple[int, ...]:
    """Handle ids of the hooks not registered by camplug (whose own ignore the probe)."""
    return tuple(key for key, hook in hooks.items()
                 if not str(getattr(hook, "__module__", "")).startswith("camplug."))


def model_fingerprint(model: nn.Module) -> Fingerprint:
    """What head discovery on ``model`` depends on (raises _Uncacheable)."""
    freezer = _Freezer()
    modules = tuple(freezer.module(name, module) for name, module in model.named_modules())
    global_hooks = tuple(user_hooks(getattr(module_globals, name))
                         for name in _GLOBAL_FORWARD_HOOKS)
    return freezer.fingerprint((modules, global_hooks))


def call_fingerprint(
    args: tuple[Any, ...], kwargs: dict[str, Any], layer: str | None, output: OutputSelector,
    single_sample: bool,
) -> Fingerprint:
    """The call's side of the key: ``layer``, ``output``, the arguments (tensors by dtype,
    device, strides and shape, without the batch dim when the probe takes one sample) and the
    autocast / inference / default-dtype state the probe runs under."""
    freezer = _Freezer()
    arguments = freezer.value((args, kwargs), is_input=True)
    if single_sample:  # drop the batch size of the one input tensor (the probe cuts it)
        arguments = _drop_batch(arguments)
    devices = sorted({str(leaf.device.type) for leaf in _tensors((args, kwargs))} | {"cpu"})
    modes = tuple((d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in devices)
    state = (modes, torch.is_inference_mode_enabled(), torch.get_default_dtype())
    return freezer.fingerprint((layer, freezer.value(output), arguments, state))


def _tensors(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (tuple, list)):
        return [t for item in tree for t in _tensors(item)]
    if isinstance(tree, dict):
        return [t for item in tree.values() for t in _tensors(item)]
    return []


def _drop_batch(frozen: Hashable) -> Hashable:
    """The frozen arguments with the leading dim removed from the (one) input tensor's shape."""
    if isinstance(frozen, tuple) and frozen and frozen[0] == "input":
        return ("input", frozen[1][1:], *frozen[2:])
    if isinstance(frozen, tuple):
        return tuple(_drop_batch(item) for item in frozen)
    return frozen


@dataclass
class _Entry:
    model: weakref.ref
    fingerprint: Fingerprint
    heads: OrderedDict[Hashable, tuple[Fingerprint, HeadInfo]]


class HeadCache:
    """Discovered heads per live model (thread-safe; see the module docstring)."""

    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, model: nn.Module) -> bool:
        entry = self._entries.get(id(model))
        return entry is not None and entry.model() is model

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def key(
        self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], *,
        layer: str | None, output: OutputSelector, single_sample: bool,
    ) -> CacheKey | None:
        """The key of a discovery on ``model`` with these arguments; None if not cacheable."""
        try:
            return CacheKey(model_fingerprint(model),
                            call_fingerprint(args, kwargs, layer, output, single_sample))
        except _Uncacheable:
            return None

    def get(self, model: nn.Module, key: CacheKey) -> HeadInfo | None:
        """The head cached for ``key``, if ``model`` is unchanged since it was stored.

        A changed model drops every head cached for it."""
        with self._lock:
            entry = self._entries.get(id(model))
            if entry is None or entry.model() is not model:
                return None
            if not entry.fingerprint.matches(key.model):
                del self._entries[id(model)]
                return None
            found = entry.heads.get(key.call.value)
            if found is None or not found[0].matches(key.call):
                return None
            entry.heads.move_to_end(key.call.value)
            return found[1]

    def put(self, model: nn.Module, key: CacheKey, head: HeadInfo) -> bool:
        """Cache ``head``, found from the state ``key`` describes, if the probe left the model
        in that state (a forward that changes its own attributes is never cached) and the head
        does not refer to the model itself. Returns whether it was stored."""
        try:
            unchanged = model_fingerprint(model).matches(key.model)
        except _Uncacheable:
            return False
        if not unchanged or _refers_to(head, model):
            return False
        with self._lock:
            entry = self._entries.get(id(model))
            if (entry is None or entry.model() is not model
                    or not entry.fingerprint.matches(key.model)):
                entry = _Entry(weakref.ref(model, self._forget_callback(id(model))),
                               key.model, OrderedDict())
                self._entries[id(model)] = entry
            entry.heads[key.call.value] = (key.call, head)
            entry.heads.move_to_end(key.call.value)
            while len(entry.heads) > MAX_HEADS_PER_MODEL:
                entry.heads.popitem(last=False)
        return True

    def _forget_callback(self, key: int) -> Any:
        entries = self._entries

        def forget(ref: weakref.ref) -> None:  # the model is being collected
            entry = entries.get(key)
            if entry is not None and entry.model is ref:
                entries.pop(key, None)

        return forget


def _refers_to(head: HeadInfo, model: nn.Module) -> bool:
    """Whether ``head``'s steps or capture point hold ``model`` itself (caching it would keep
    the model alive)."""
    pending: list[Any] = [head.steps, head.capture.path]
    while pending:
        obj = pending.pop()
        if obj is model:
            return True
        if isinstance(obj, (tuple, list)):
            pending.extend(obj)
        elif isinstance(obj, dict):
            pending.extend(obj.values())
        elif not isinstance(obj, (torch.Tensor, nn.Module)) and hasattr(obj, "__dict__") and (
            type(obj).__module__.startswith("camplug.")
        ):
            pending.extend(vars(obj).values())
    return False


HEAD_CACHE = HeadCache()
