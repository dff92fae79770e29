"""A per-model cache of discovered heads, so that repeated attaches skip the probe forward.

:class:`HeadCache` maps a live model to the :class:`~camplug.discovery.heads.HeadInfo` found for it,
one per call signature (layer, output selector, the input's non-batch shapes and dtypes, autocast
and inference modes). An entry is reused only while a fingerprint of everything discovery can depend
on is unchanged: each submodule's identity and type (and its class's ``forward``), every parameter
and buffer (identity, data pointer, version counter, shape, strides, dtype, device), the plain
attributes of every module (values, or identity for other objects), and the user's forward hooks.
Any change (a replaced submodule, an in-place update of a weight, a new hook, ``model.to(...)``)
misses and the head is discovered again. nn.Module's own bookkeeping is left out: the train/eval
flags (the probe always runs in eval), its hook dicts (forward hooks are compared on their own)
and which buffers a state dict leaves out.

Each model keeps up to ``MAX_STATES_PER_MODEL`` states: the one a probe started from and the one
it left (a model whose forward fills a cache of its own, or whose ``train()`` clears one, then
hits in both). A known state is recognised by a fast :class:`_Plan` (identities, versions and
C-level comparisons) instead of a full fingerprint; the full fingerprint decides when it fails.

The cache never keeps a model alive: entries are keyed by ``id`` with a weak reference that
drops the entry when the model is collected, and fingerprints hold ids, values and weak
references only; never a weak reference to a tensor (``torch.utils.swap_tensors``, which
``Module.to`` may use, refuses weakly referenced tensors): a tensor's id counts while its storage
lives. The cached HeadInfo refers to the model's own parameters (and to constants
recorded in its forward), as every capture's HeadInfo does.
"""

from __future__ import annotations

import copy
import enum
import functools
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

# Use torch's C++ guard helpers where they exist: its tensor check for the tensors' layouts,
# and dict version tags to see that a model's dicts are untouched (tests turn them off to test
# the Python comparisons that serve without them)
USE_TORCH_GUARDS = True
MAX_HEADS_PER_MODEL = 8  # call signatures kept per model state (e.g. several input sizes)
MAX_STATES_PER_MODEL = 4  # states kept per model (e.g. a cache of its own empty and filled)
_MAX_ITEMS = 200_000  # a fingerprint larger than this is not worth computing: no caching
_MAX_DEPTH = 3  # how deep plain attributes (config objects, lists) are followed
_FORWARD_HOOKS = ("_forward_pre_hooks", "_forward_hooks")
# the dicts of each module read by name: parameters, buffers and submodules (compared by
# content, by the fingerprint and by the plan), then its forward hooks (the users' compared)
_SLOTS = ("_parameters", "_buffers", "_modules", *_FORWARD_HOOKS)
# nn.Module's own bookkeeping (the train/eval flag, its hook dicts, which buffers a state
# dict leaves out): discovery does not depend on it (the probe runs in eval; forward hooks
# are compared on their own, camplug's left out). Every other attribute, a user's own
# ``hooks`` list included, is fingerprinted.
_BOOKKEEPING = frozenset(key for key in vars(nn.Module()) if "hook" in key) | {
    "training", "_non_persistent_buffers_set"}
_GLOBAL_FORWARD_HOOKS = ("_global_forward_pre_hooks", "_global_forward_hooks")
_VALUES = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device,
           torch.layout, torch.memory_format, enum.Enum)


class _Uncacheable(Exception):
    """The model or the call holds something the fingerprint cannot follow safely."""


@dataclass(frozen=True)
class Fingerprint:
    """A hashable description (ids and values only) and weak references to every object whose
    id it holds (for a tensor, to its storage): while they are all alive, equal descriptions
    mean the same objects."""

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
        return ("tensor", self.tensor_identity(tensor), tensor.data_ptr(), version,
                tuple(tensor.shape), strides, *meta)

    def tensor_identity(self, tensor: torch.Tensor) -> int:
        """``id(tensor)``, with a weak reference to its storage rather than to the tensor
        (``torch.utils.swap_tensors``, which ``Module.to`` and ``load_state_dict`` may use,
        refuses weakly referenced tensors). A tensor whose id a new one takes after it died
        lost its storage too, unless the storage is shared, and then the new tensor's data
        pointer, version and metadata say whether it holds the same."""
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError, TypeError) as error:
            raise _Uncacheable("a tensor without storage") from error
        self.identity(storage)
        return id(tensor)

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
            if key not in _SLOTS and key not in _BOOKKEEPING
        )
        return (
            name, type(module), self.identity(module), self.value(type(module).forward),
            self.tensors(module._parameters), self.tensors(module._buffers), attributes,
            tuple(user_hooks(getattr(module, hooks)) for hooks in _FORWARD_HOOKS),
        )

    def tensors(self, tensors: dict[str, torch.Tensor | None]) -> Hashable:
        return tuple((name, None if t is None else self.tensor(t)) for name, t in tensors.items())


# ``operator.call`` from Python 3.11
_call = getattr(operator, "call", None) or (lambda function, argument: function(argument))


def _flat_keys(dicts: list[dict]) -> list[Hashable]:
    """The keys of all ``dicts``, in order, as one list."""
    return list(itertools.chain.from_iterable(dicts))


def _picker(keys: list[Any]) -> Any:
    """A function giving ``(container[k] for k in keys)`` as a tuple (C level, as
    ``operator.itemgetter`` is, which gives a bare item for one key)."""
    if len(keys) == 1:
        key = keys[0]
        return lambda container: (container[key],)
    return operator.itemgetter(*keys) if keys else lambda container: ()


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


_versions = operator.attrgetter("_version")
_shape_and_dtype = operator.attrgetter("shape", "dtype")


def _any_none(items: list[object]) -> bool:
    """``None in items`` by identity (``==`` on a tensor would run a comparison op)."""
    return not all(map(operator.is_not, items, itertools.repeat(None)))


def _plain(value: object) -> bool:
    """An immutable value that cannot refer to a model (compared by value, kept alive)."""
    if isinstance(value, _VALUES) or _is_builtin_function(value):
        return True
    return type(value) is tuple and all(_plain(item) for item in value)


def _plain_container(value: object) -> bool:
    """A dict, list, set or tuple of plain values (compared by content, as a copy)."""
    if not isinstance(value, (dict, list, set, frozenset, tuple)):
        return False
    return _plain(tuple(value.items()) if isinstance(value, dict) else tuple(value))


_slots_of = operator.itemgetter(*_SLOTS)


class _Plan:
    """A fast test that a model is still in the state its :func:`model_fingerprint` described.

    It holds weak references to the modules and to the tensors' storages (not to tensors:
    see :meth:`_Freezer.tensor_identity`). Five dicts of every module are read by name
    (:data:`_SLOTS`): the parameter, buffer and submodule dicts, compared by content (lengths,
    keys, value ids), and the forward hook dicts (the users' hooks compared). One getter per
    module gives its other attributes (for all modules, one flat list), with positions in that
    list for those compared by identity (plain immutable values, kept alive so that their ids
    cannot be reused), and places (module, name) for the rare rest: tensors kept as plain
    attributes (by identity), plain containers (by copies), other objects (by their
    fingerprint, recomputed at each test). Tensors are compared by class, data pointer,
    version, shape, dtype, strides and device. Each of these is a flat list compared at C
    level: a cached attach does not pay for a full fingerprint. Where torch gives dict version
    tags, a test whose module dicts (attributes, parameters, buffers, submodules) all still
    carry the versions of the last successful test skips the attribute and dict comparisons:
    untouched dicts hold the same keys and objects. ``structure`` is :func:`structure_of` the
    planned state (a capture reuses it when the plan matches).

    ``matches`` is True only when :func:`model_fingerprint` would describe the same state, up
    to the order of attributes, with one premise: that nn.Module's own bookkeeping attributes
    (``training``, the hook dicts) are never deleted, which no working module does. (Each
    module holds as many attributes as planned and every planned one is found by name, so
    the names are the planned ones unless a bookkeeping attribute was swapped for another.)
    A False only means "fingerprint again". Train/eval flags are ignored, as by the
    fingerprint.
    """

    @classmethod
    def build(cls, model: nn.Module) -> _Plan | None:
        """The plan of ``model``'s current state, or None if it cannot be tested fast."""
        try:
            return cls(model)
        except (RuntimeError, TypeError, KeyError, _Uncacheable):  # e.g. sparse tensors
            return None

    def __init__(self, model: nn.Module) -> None:
        modules = submodules(model)
        dicts = [module.__dict__ for module in modules]
        self.modules = [weakref.ref(module) for module in modules]
        self.types = list(map(type, modules))
        self.forwards = {kind: kind.forward for kind in set(self.types)}
        self.lengths = list(map(len, dicts))
        slots = self._slots(dicts)
        # the parameter, buffer and submodule dicts among the slots
        self.structural = _picker([i for i in range(len(slots)) if i % 5 < 3])
        self.structures = self._structures(self.structural(slots))
        self.hooks = self._hooks(slots)
        names = [[key for key in d if key not in _BOOKKEEPING and key not in _SLOTS]
                 for d in dicts]
        self.getters = list(map(_picker, names))
        values = self._values(dicts)
        self.structure = _structure_ids(modules)
        freezer = _Freezer()
        # positions in ``values``, and places (module, name), by how each is compared
        plain: list[int] = []
        self.attribute_places: list[tuple[int, str]] = []  # tensors
        self.copy_places: list[tuple[int, str]] = []
        self.deep: list[tuple[int, str, Hashable]] = []
        keys = ((index, key) for index, d in enumerate(names) for key in d)
        for position, ((index, key), value) in enumerate(zip(keys, values, strict=True)):
            if _plain(value):
                plain.append(position)
            elif isinstance(value, torch.Tensor):
                self.attribute_places.append((index, key))
            elif _plain_container(value):
                self.copy_places.append((index, key))
            else:
                self.deep.append((index, key, freezer.value(value)))
        self.plain = _picker(plain)
        self.pins = list(self.plain(values))
        self.copies = [copy.copy(value) for value in _at(dicts, self.copy_places)]
        self.copy_types = list(map(type, self.copies))
        self.deep_refs = tuple(freezer.refs.values())
        attributes = _at(dicts, self.attribute_places)
        self.attribute_ids = list(map(id, attributes))
        # the parameters and buffers, from the dicts that hold any (positions planned)
        self.filled = _picker([i for i, d in enumerate(slots) if d and i % 5 < 2])
        held = self._held(slots)
        self.held = _picker([i for i, t in enumerate(held) if t is not None])
        tensors = [*attributes, *self.held(held)]
        # tensors are compared by id while their storages live (see Freezer.tensor_identity)
        self.storages = [weakref.ref(t.untyped_storage()) for t in tensors]
        self.tensor_identity = self._tensor_identity(tensors)
        self.tensor_layout = self._tensor_layout(tensors)
        self.tensor_guards = _tensor_guards(tensors)
        self.dict_version = _dict_version_function()
        self.versions = self._versions(dicts, slots)

    def _values(self, dicts: list[dict]) -> list[object]:
        """The attributes the plan reads, of all modules, as one flat list (KeyError: one of
        them is missing)."""
        return list(itertools.chain.from_iterable(map(_call, self.getters, dicts)))

    @staticmethod
    def _slots(dicts: list[dict]) -> list[dict]:
        """The :data:`_SLOTS` dicts of all modules, five per module (KeyError: one lacks
        one)."""
        return list(itertools.chain.from_iterable(map(_slots_of, dicts)))

    def _held(self, slots: list[dict]) -> list[object]:
        """The values of the parameter and buffer dicts that held any when planned."""
        return list(itertools.chain.from_iterable(map(dict.values, self.filled(slots))))

    def _versions(self, dicts: list[dict], slots: list[dict]) -> tuple[list, ...] | None:
        """The version tags of the modules' attribute dicts and of their parameter, buffer and
        submodule dicts (for an empty one its length says all), or None without torch's dict
        versions."""
        if self.dict_version is None:
            return None
        inner = [slots[0::5], slots[1::5], slots[2::5]]
        lengths = [list(map(len, kind)) for kind in inner]
        filled = itertools.chain.from_iterable(
            itertools.compress(kind, counts) for kind, counts in zip(inner, lengths, strict=True))
        return (lengths, list(map(self.dict_version, dicts)),
                list(map(self.dict_version, filled)))

    @staticmethod
    def _structures(inner: tuple[dict, ...]) -> tuple[list[int], list[Hashable], list[int]]:
        """Lengths, keys and value ids of the modules' module/parameter/buffer dicts (the
        empty ones, most of them, are not iterated)."""
        lengths = list(map(len, inner))
        filled = list(itertools.compress(inner, lengths))
        return lengths, _flat_keys(filled), list(
            map(id, itertools.chain.from_iterable(map(dict.values, filled))))

    @staticmethod
    def _tensor_identity(tensors: list[torch.Tensor]) -> tuple[list, ...]:
        """Per tensor: class, data pointer and version (a tensor that is not strided has no
        data pointer: RuntimeError, so no plan)."""
        return (list(map(type, tensors)), list(map(torch.Tensor.data_ptr, tensors)),
                list(map(_versions, tensors)))

    @staticmethod
    def _tensor_layout(tensors: list[torch.Tensor]) -> tuple[list, ...]:
        """Per tensor: shape, dtype, strides and device index. With the data pointer these
        tell everything the fingerprint compares, device type included: ``.data =`` onto
        another device type changes the device index (-1 on the CPU) and the pointer, and
        refuses meta tensors; ``torch.utils.swap_tensors`` gives the tensor another storage
        (a new data pointer, or the plan's weak reference to the old storage dies)."""
        return (list(map(_shape_and_dtype, tensors)), list(map(torch.Tensor.stride, tensors)),
                list(map(torch.Tensor.get_device, tensors)))

    @staticmethod
    def _hooks(slots: list[dict]) -> list[Hashable]:
        """(position, user hooks) of the modules' forward hook dicts with user hooks, then the
        global user hooks (camplug's own hooks, e.g. an attached capture's, are left out)."""
        hooks = slots[3::5] + slots[4::5]
        users: list[Hashable] = [
            (i, found) for i in itertools.compress(itertools.count(), map(len, hooks))
            if (found := user_hooks(hooks[i]))]
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
        try:
            slots = self._slots(dicts)
        except KeyError:  # a module lost one of its dicts
            return False
        versions = self._versions(dicts, slots)
        untouched = versions is not None and versions == self.versions
        if not untouched and not self._same_attributes(dicts, slots):
            return False
        copied = _at(dicts, self.copy_places)
        if list(map(type, copied)) != self.copy_types or copied != self.copies:
            return False
        freezer = _Freezer()
        if any(freezer.value(dicts[i][key]) != frozen for i, key, frozen in self.deep) or not all(
            ref() is not None for ref in self.deep_refs
        ):
            return False
        attributes = _at(dicts, self.attribute_places)
        if list(map(id, attributes)) != self.attribute_ids or _any_none(
            list(map(_call, self.storages))
        ):
            return False
        tensors = [*attributes, *self.held(self._held(slots))]
        if self._tensor_identity(tensors) != self.tensor_identity:
            return False
        # a False from the C++ check may only mean that the dispatch state (autocast,
        # inference mode) is not the one it was made in: compare from Python then
        guarded = self.tensor_guards is not None and self.tensor_guards.check(*tensors)
        if not guarded and self._tensor_layout(tensors) != self.tensor_layout:
            return False
        if self._hooks(slots) != self.hooks:
            return False
        self.versions = versions  # the state seen now, with its dicts' current versions
        return True

    def _same_attributes(self, dicts: list[dict], slots: list[dict]) -> bool:
        """The comparison of the modules' attributes and module/parameter/buffer dicts that
        untouched dict versions make unnecessary."""
        if list(map(len, dicts)) != self.lengths:
            return False
        try:
            values = self._values(dicts)
        except KeyError:  # an attribute was removed (and another added)
            return False
        if not all(map(operator.is_, self.plain(values), self.pins)):
            return False
        return self._structures(self.structural(slots)) == self.structures


def _at(dicts: list[dict], places: list[tuple[int, str]]) -> list[object]:
    """``dicts[index][name]`` for each place (few: a plain loop)."""
    return [dicts[index][name] for index, name in places]


def _tensor_guards(tensors: list[torch.Tensor]) -> Any:
    """torch's C++ check that tensors keep their dtype, device, dispatch keys, shape and
    strides (``torch._C._dynamo.guards.TensorGuards``, what torch.compile's guards use, about
    ten times faster than reading them from Python), or None where this torch has no such
    check (or ``USE_TORCH_GUARDS`` is off). A True is trusted; a False is checked
    again from Python (the C++ check also compares ``requires_grad`` and the thread's dispatch
    state)."""
    if not USE_TORCH_GUARDS:
        return None
    try:
        from torch._C._dynamo.guards import TensorGuards

        guards = TensorGuards(*tensors, dynamic_dims_sizes=None, dynamic_dims_strides=None)
        return guards if guards.check(*tensors) is True else None
    except Exception:  # noqa: BLE001  (another torch: the Python comparison serves)
        return None


def _dict_version_function() -> Any:
    """torch's ``dict_version`` (CPython's dict version tag, which changes at every change of a
    dict), or None where it is missing, does not pass a self-test, or ``USE_TORCH_GUARDS`` is
    off."""
    return _tested_dict_version() if USE_TORCH_GUARDS else None


@functools.cache
def _tested_dict_version() -> Any:
    try:
        from torch._C._dynamo.guards import dict_version
    except ImportError:
        return None
    seen = []
    try:
        for probe in ({}, OrderedDict()):
            seen.append(dict_version(probe))
            probe["key"] = 1
            seen.append(dict_version(probe))
            probe["key"] = 2
            seen.append(dict_version(probe))
            del probe["key"]
            seen.append(dict_version(probe))
    except Exception:  # noqa: BLE001  (another torch or Python: the comparisons serve)
        return None
    return dict_version if len(set(seen)) == len(seen) else None


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
