"""A per-model cache of discovered heads, so that repeated attaches skip the probe forward.

:class:`HeadCache` maps a live model to the :class:`~camplug.discovery.heads.HeadInfo` found for it,
one per call signature (layer, output selector, the input's non-batch shapes and dtypes, autocast
and inference modes). An entry is reused only while a fingerprint of everything discovery can depend
on is unchanged: each submodule's identity and type (and its class's ``forward``), every parameter
and buffer (identity, version counter, shape, dtype, device), the plain attributes of every module
(values, or identity for other objects), and the user's forward hooks. Any change (a replaced
submodule, an in-place update of a weight, a new hook, ``model.to(...)``) misses and the head is
discovered again. The train/eval flags are left out: the probe always runs in eval.

Each model keeps up to ``MAX_STATES_PER_MODEL`` states: the one a probe started from and the one
it left (a model whose forward fills a cache of its own, or whose ``train()`` clears one, then
hits in both). A known state is recognised by a fast :class:`_Plan` (identities, versions and
C-level comparisons) instead of a full fingerprint; the full fingerprint decides when it fails.

The cache never keeps a model alive: entries are keyed by ``id`` with a weak reference that
drops the entry when the model is collected, and fingerprints hold ids, values and weak
references only. The cached HeadInfo refers to the model's own parameters (and to constants
recorded in its forward), as every capture's HeadInfo does.
"""

from __future__ import annotations

import copy
import enum
import itertools
import operator
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
from .layers import FeatureLayer
from .walk import submodules

MAX_HEADS_PER_MODEL = 8  # call signatures kept per model state (e.g. several input sizes)
MAX_STATES_PER_MODEL = 4  # states kept per model (e.g. a cache of its own empty and filled)
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
        return self.value == other.value and self.alive()

    def alive(self) -> bool:
        """Whether every object whose id the description holds still exists (else the state it
        describes can never be seen again)."""
        return all(ref() is not None for ref in self.refs)


@dataclass(frozen=True)
class CacheKey:
    """What a cached head is looked up by (see :meth:`HeadCache.key`): the model's state (its
    fingerprint, and the fast plan that recognises that state again) and the call's."""

    model: Fingerprint
    call: Fingerprint
    plan: _Plan | None = field(default=None, repr=False, compare=False)


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


_structure_dicts = operator.itemgetter("_modules", "_parameters", "_buffers")


def _flat_keys(dicts: list[dict]) -> list[Hashable]:
    """The keys of all ``dicts``, in order, as one list."""
    return list(itertools.chain.from_iterable(dicts))


def _flat_ids(dicts: list[dict]) -> list[int]:
    """The ids of the values of all ``dicts``, in order, as one list."""
    return list(map(id, itertools.chain.from_iterable(map(dict.values, dicts))))


def _attributes(dicts: list[dict], places: tuple[list[int], list[str]]) -> list[object]:
    """The values ``dicts[index][name]`` for the (index, name) pairs of ``places``, as one
    flat list (C-level iteration only)."""
    return list(map(operator.getitem, map(dicts.__getitem__, places[0]), places[1]))


def structure_of(model: nn.Module) -> tuple[int, ...]:
    """Identities of the model's modules, parameters and buffers: changes when one of them is
    replaced (a new classifier, ``load_state_dict(assign=True)``), not on in-place updates.
    One walk over the modules (``parameters()``/``buffers()`` would walk them twice more)."""
    return _structure_ids(submodules(model))


def _structure_ids(modules: list[nn.Module]) -> tuple[int, ...]:
    """:func:`structure_of` the model whose ``submodules`` are ``modules``."""
    found: list[int] = []
    for module in modules:
        found.append(id(module))
        found.extend(map(id, module._parameters.values()))
        found.extend(map(id, module._buffers.values()))
    return tuple(found)


_tensor_meta = operator.attrgetter(
    "__class__", "_version", "shape", "dtype", "device", "layout")


def _any_none(items: list[object]) -> bool:
    """``None in items`` by identity (``==`` on a tensor would run a comparison op)."""
    return not all(map(operator.is_not, items, itertools.repeat(None)))


def _plain(value: object) -> bool:
    """An immutable value that cannot refer to a model (compared by value, kept alive)."""
    if isinstance(value, _VALUES) or _is_builtin_function(value):
        return True
    return type(value) is tuple and all(_plain(item) for item in value)


class _Plan:
    """A fast test that a model is still in the state its :func:`model_fingerprint` described.

    It holds weak references to the modules and tensors, the attribute names of every module,
    the ids of the attributes compared by identity (immutable values kept alive so that their
    ids cannot be reused), the contents of the module/parameter/buffer dicts, each tensor's
    version and metadata, copies of plain containers, and, for attributes that are other
    objects, their fingerprint (recomputed at each test). Each of these is one flat list
    compared at C level: a cached attach does not pay for a full fingerprint. ``structure``
    is :func:`structure_of` the planned state (a capture reuses it when the plan matches).
    ``matches`` is True only when :func:`model_fingerprint` would give the same value; a False
    only means "fingerprint again". Train/eval flags are ignored, as by the fingerprint.
    """

    @classmethod
    def build(cls, model: nn.Module) -> _Plan | None:
        """The plan of ``model``'s current state, or None if it cannot be tested fast."""
        try:
            return cls(model)
        except (RuntimeError, TypeError, _Uncacheable):  # sparse tensors, storage-less ones
            return None

    def __init__(self, model: nn.Module) -> None:
        modules = submodules(model)
        dicts = [module.__dict__ for module in modules]
        self.modules = [weakref.ref(module) for module in modules]
        self.types = list(map(type, modules))
        self.forwards = {kind: kind.forward for kind in set(self.types)}
        # Attribute names of all modules as one flat list (one C-level comparison); the
        # per-module lengths keep the boundaries.
        self.lengths = list(map(len, dicts))
        self.keys = _flat_keys(dicts)
        self.structures = self._structures(dicts)
        self.structure = _structure_ids(modules)
        self.pins: list[object] = []
        # (module index, name), types and copies of the containers compared by content
        self.copies: tuple[tuple[list[int], list[str]], list[type], list[object]] = (
            ([], []), [], [])
        self.deep: list[tuple[int, str, Hashable]] = []
        freezer = _Freezer()
        tensors: list[torch.Tensor] = []
        # (module index, name) of the attributes compared by identity (the others are
        # compared by content: module/parameter/buffer dicts, containers, objects; or ignored:
        # train/eval flags, hook dicts).
        self.by_identity: tuple[list[int], list[str]] = ([], [])
        for index, attributes in enumerate(dicts):
            for key, value in attributes.items():
                if key not in _STRUCTURAL and not self._classify(
                        index, key, value, freezer, tensors):
                    self.by_identity[0].append(index)
                    self.by_identity[1].append(key)
        self.ids = list(map(id, _attributes(dicts, self.by_identity)))
        self.deep_refs = tuple(freezer.refs.values())
        tensors += [t for module in modules for group in (module._parameters, module._buffers)
                    for t in group.values() if t is not None]
        self.tensors = [weakref.ref(t) for t in tensors]
        self.tensor_state = self._tensor_state(tensors)
        self.hooks = self._hooks(dicts)

    def _classify(self, index: int, key: str, value: object, freezer: _Freezer,
                  tensors: list[torch.Tensor]) -> bool:
        """Record how attribute ``key`` of module ``index`` is tested; True when its id may
        change without changing the fingerprint (compared by content or ignored)."""
        if key == "training" or (key not in _STRUCTURAL and "hook" in key):
            return True
        if key in _STRUCTURAL:
            return False
        if _plain(value):
            self.pins.append(value)
            return False
        if isinstance(value, torch.Tensor):
            tensors.append(value)
            return False
        if isinstance(value, (dict, list, set, frozenset, tuple)) and _plain(
            tuple(value.items()) if isinstance(value, dict) else tuple(value)
        ):
            self.copies[0][0].append(index)
            self.copies[0][1].append(key)
            self.copies[1].append(type(value))
            self.copies[2].append(copy.copy(value))
            return True
        self.deep.append((index, key, freezer.value(value)))
        return True

    @staticmethod
    def _structures(dicts: list[dict]) -> tuple[list[int], list[Hashable], list[int]]:
        """Lengths, keys and value ids of every module's module/parameter/buffer dicts."""
        inner = list(itertools.chain.from_iterable(map(_structure_dicts, dicts)))
        return list(map(len, inner)), _flat_keys(inner), _flat_ids(inner)


    @staticmethod
    def _tensor_state(tensors: list[torch.Tensor]) -> tuple[list, ...]:
        return (list(map(_tensor_meta, tensors)), list(map(torch.Tensor.data_ptr, tensors)),
                list(map(torch.Tensor.stride, tensors)))

    @staticmethod
    def _hooks(dicts: list[dict]) -> list[Hashable]:
        """(position, user hooks) of the modules with user forward hooks, then the global user
        hooks (camplug's own hooks, e.g. an attached capture's, are left out)."""
        counts = map(operator.add, *(map(len, map(operator.itemgetter(name), dicts))
                                     for name in _FORWARD_HOOKS))
        hooked = [(i, tuple(user_hooks(dicts[i][name]) for name in _FORWARD_HOOKS))
                  for i in itertools.compress(itertools.count(), counts)]
        users: list[Hashable] = [(i, hooks) for i, hooks in hooked if any(hooks)]
        users.append(tuple(user_hooks(getattr(module_globals, name))
                           for name in _GLOBAL_FORWARD_HOOKS))
        return users

    def matches(self, model: nn.Module) -> bool:
        """Whether ``model`` is certainly still in the planned state (see the class docstring)."""
        modules = [ref() for ref in self.modules]
        if modules[0] is not model or _any_none(modules) or list(map(type, modules)) != self.types:
            return False
        if any(kind.forward is not forward for kind, forward in self.forwards.items()):
            return False
        dicts = list(map(operator.attrgetter("__dict__"), modules))
        if list(map(len, dicts)) != self.lengths or _flat_keys(dicts) != self.keys:
            return False
        if list(map(id, _attributes(dicts, self.by_identity))) != self.ids:
            return False
        if self._structures(dicts) != self.structures:
            return False
        copied = _attributes(dicts, self.copies[0])
        if list(map(type, copied)) != self.copies[1] or copied != self.copies[2]:
            return False
        freezer = _Freezer()
        if any(freezer.value(dicts[i][key]) != frozen for i, key, frozen in self.deep) or not all(
            ref() is not None for ref in self.deep_refs
        ):
            return False
        tensors = [ref() for ref in self.tensors]
        if _any_none(tensors) or self._tensor_state(tensors) != self.tensor_state:
            return False
        return self._hooks(dicts) == self.hooks


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
class _State:
    """One state of a model (its fingerprint and fast plan) and the heads found in it."""

    fingerprint: Fingerprint
    plan: _Plan | None
    heads: OrderedDict[Hashable, tuple[Fingerprint, HeadInfo | FeatureLayer]] = field(
        default_factory=OrderedDict)


@dataclass
class _Entry:
    model: weakref.ref
    states: list[_State]  # most recently used last


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
        """The key of a discovery on ``model`` with these arguments; None if not cacheable.

        A state of the model seen before is recognised by its fast plan (no full fingerprint);
        otherwise the model is fingerprinted."""
        try:
            call = call_fingerprint(args, kwargs, layer, output, single_sample)
            with self._lock:
                state = self._known_state(model)
            if state is not None:
                return CacheKey(state.fingerprint, call, state.plan)
            fingerprint, plan = model_fingerprint(model), _Plan.build(model)
        except _Uncacheable:
            return None
        with self._lock:  # a state fingerprinted again (its plan had gone stale): renew it
            entry = self._entry(model)
            for state in entry.states if entry is not None else ():
                if state.fingerprint.matches(fingerprint):
                    state.plan = plan
                    return CacheKey(state.fingerprint, call, plan)
        return CacheKey(fingerprint, call, plan)

    def _entry(self, model: nn.Module) -> _Entry | None:
        entry = self._entries.get(id(model))
        return entry if entry is not None and entry.model() is model else None

    def _known_state(self, model: nn.Module) -> _State | None:
        """The cached state the model is in, by fast plan (most recently used first)."""
        entry = self._entry(model)
        if entry is None:
            return None
        for state in reversed(entry.states):
            try:
                if state.plan is not None and state.plan.matches(model):
                    return state
            except (RuntimeError, TypeError, _Uncacheable):  # e.g. a tensor turned sparse
                state.plan = None
        # on a miss, drop the states that can never be seen again (a plan that matches
        # checks that what it compares by identity is alive itself)
        entry.states = [s for s in entry.states if s.fingerprint.alive()]
        return None

    def get(self, model: nn.Module, key: CacheKey) -> HeadInfo | FeatureLayer | None:
        """The head (or, for a model without an exact head, the feature layer) cached for
        ``key``, if ``model`` is (again) in the state it describes."""
        with self._lock:
            entry = self._entry(model)
            state = self._state(entry, key.model) if entry is not None else None
            if state is None:
                return None
            found = state.heads.get(key.call.value)
            if found is None or not found[0].matches(key.call):
                return None
            state.heads.move_to_end(key.call.value)
            return found[1]

    @staticmethod
    def _state(entry: _Entry, fingerprint: Fingerprint) -> _State | None:
        for state in entry.states:
            if state.fingerprint is fingerprint or state.fingerprint.matches(fingerprint):
                entry.states.remove(state)
                entry.states.append(state)
                return state
        return None

    def put(self, model: nn.Module, key: CacheKey, head: HeadInfo | FeatureLayer) -> bool:
        """Cache ``head``, found by a probe from the state ``key`` describes, under that state
        and under the state the probe left (a forward that fills a cache of its own changes its
        model). Not when the head refers to the model itself. Returns whether it was stored."""
        if _refers_to(head, model):
            return False
        try:
            after = model_fingerprint(model)
            after_plan = _Plan.build(model) if not after.matches(key.model) else None
        except _Uncacheable:
            after = None
        with self._lock:
            entry = self._entry(model)
            if entry is None:
                entry = _Entry(weakref.ref(model, self._forget_callback(id(model))), [])
                self._entries[id(model)] = entry
            states = [(key.model, key.plan)]
            if after is not None and after_plan is not None:
                states.append((after, after_plan))
            for fingerprint, plan in states:
                state = self._state(entry, fingerprint)
                if state is None:
                    state = _State(fingerprint, plan)
                    entry.states.append(state)
                    del entry.states[:-MAX_STATES_PER_MODEL]
                state.heads[key.call.value] = (key.call, head)
                state.heads.move_to_end(key.call.value)
                while len(state.heads) > MAX_HEADS_PER_MODEL:
                    state.heads.popitem(last=False)
        return True

    def _forget_callback(self, key: int) -> Any:
        entries = self._entries

        def forget(ref: weakref.ref) -> None:  # the model is being collected
            entry = entries.get(key)
            if entry is not None and entry.model is ref:
                entries.pop(key, None)

        return forget


def _refers_to(head: HeadInfo | FeatureLayer, model: nn.Module) -> bool:
    """Whether ``head``'s steps or capture point hold ``model`` itself (caching it would keep
    the model alive). A FeatureLayer holds names and shapes only."""
    if isinstance(head, FeatureLayer):
        return False
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
