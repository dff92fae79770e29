"""Record one forward pass as a data-flow graph of torch calls and module calls.

Head discovery (``heads.py``) runs the model once under a :class:`ForwardRecorder` and walks
the graph backwards from the logits. The recorder keeps no activations alive: a tensor that
depends on the model input is described by its shape and dtype only; tensors that do not
(parameters, buffers, constants built in ``forward``) are kept, since the head needs them.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map


@dataclass(eq=False)
class ModuleCall:
    """One call of a submodule during the recorded forward."""

    name: str
    module: nn.Module
    call_index: int  # calls of this module that began earlier in the same forward
    ops_before: int  # number of recorded ops when the call began
    input_value: Value | None  # the first tensor argument
    done_index: int = -1  # calls of this module that finished earlier in the same forward
    ops_at_done: int = -1  # number of recorded ops when the call returned

    def __repr__(self) -> str:
        return f"ModuleCall({self.label}, call {self.call_index})"

    @property
    def label(self) -> str:
        """```name`` (ClassName)``; the root as ``ClassName.forward``."""
        kind = type(self.module).__name__
        return f"`{self.name}` ({kind})" if self.name else f"{kind}.forward"


@dataclass(eq=False)
class Value:
    """One version of a tensor: what produced it and whether it depends on the model input."""

    producer: Op | None
    shape: tuple[int, ...]
    dtype: torch.dtype
    tainted: bool  # depends on the model input
    tensor: torch.Tensor | None = None  # kept for constants only
    module_outputs: list[ModuleCall] = field(default_factory=list)

    def __repr__(self) -> str:
        made = f"{self.producer.name}#{self.producer.index}" if self.producer else "leaf"
        return f"Value({made}, {list(self.shape)}, tainted={self.tainted})"


@dataclass(eq=False)
class Op:
    """One torch function or tensor method call seen during the forward."""

    index: int
    name: str
    func: Callable[..., Any]
    args: tuple[Any, ...]  # tensors replaced by their Value
    kwargs: dict[str, Any]
    outputs: tuple[Value, ...]
    owner: ModuleCall | None  # innermost module running when the call was made
    anchor: ModuleCall | None  # last module call that returned inside ``owner`` before this op

    def __repr__(self) -> str:
        return f"Op(#{self.index} {self.name} in {self.site})"

    @property
    def inputs(self) -> list[Value]:
        leaves, _ = tree_flatten((self.args, self.kwargs))
        return [leaf for leaf in leaves if isinstance(leaf, Value)]

    @property
    def tainted_inputs(self) -> list[Value]:
        return [value for value in self.inputs if value.tainted]

    @property
    def site(self) -> str:
        """The module the call ran in, for messages."""
        return self.owner.label if self.owner else "code outside the model (an output selector)"

    @property
    def where(self) -> str:
        """The call and its site, for messages."""
        return f"`{self.name}` in {self.site}"

    def arg(self, position: int, name: str, default: Any = None) -> Any:
        """The argument passed at ``position`` or as keyword ``name``."""
        if position < len(self.args):
            return self.args[position]
        return self.kwargs.get(name, default)


def ancestors(value: Value) -> dict[int, Value]:
    """``value`` and every input-dependent value it was computed from, by ``id``."""
    found: dict[int, Value] = {}
    pending = [value]
    while pending:
        item = pending.pop()
        if id(item) not in found:
            found[id(item)] = item
            pending.extend(item.producer.tainted_inputs if item.producer else ())
    return found


def func_name(func: Callable[..., Any]) -> str:
    """``mean`` for torch.mean and Tensor.mean, ``__getitem__`` for indexing, etc."""
    return getattr(func, "__name__", type(func).__name__)


def tensors_in(tree: Any) -> Iterator[torch.Tensor]:
    leaves, _ = tree_flatten(tree)
    return (leaf for leaf in leaves if isinstance(leaf, torch.Tensor))


def first_tensor(args: tuple, kwargs: dict, min_dim: int = 0) -> torch.Tensor | None:
    """The first tensor with at least ``min_dim`` dims among a call's arguments (fast path for
    plain tensor arguments, which forward hooks see on every call)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            if value.dim() >= min_dim:
                return value
        elif isinstance(value, (tuple, list, dict)):
            nested = next((t for t in tensors_in(value) if t.dim() >= min_dim), None)
            if nested is not None:
                return nested
    return None


class ForwardRecorder(TorchFunctionMode):
    """Context manager recording every top-level torch call and module call of one forward.

    Usage: ``with ForwardRecorder(model) as rec: rec.mark_inputs(args); out = model(*args)``.
    Hooks on every submodule are registered on entry and removed on exit.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.ops: list[Op] = []
        self._names = {module: name for name, module in model.named_modules()}
        self._values: dict[int, tuple[weakref.ref[torch.Tensor], Value]] = {}
        self._stack: list[ModuleCall] = []
        self._last_done: ModuleCall | None = None
        self._starts: Counter[int] = Counter()
        self._dones: Counter[int] = Counter()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._internal = False
        self._thread = threading.get_ident()  # module hooks of other threads' calls are ignored

    def __enter__(self) -> ForwardRecorder:
        try:
            for module in self._names:
                self._handles.append(
                    module.register_forward_pre_hook(self._enter_module, with_kwargs=True)
                )
                self._handles.append(
                    module.register_forward_hook(self._exit_module, always_call=True)
                )
            return super().__enter__()
        except BaseException:
            self._remove_hooks()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def mark_inputs(self, tree: Any) -> None:
        """Declare the tensors in ``tree`` as the model input (everything they reach is tainted)."""
        for tensor in tensors_in(tree):
            self._bind(tensor, Value(None, tuple(tensor.shape), tensor.dtype, tainted=True))

    def value_of(self, tensor: torch.Tensor) -> Value:
        """The current Value of ``tensor``; a tensor never seen before is a constant."""
        entry = self._values.get(id(tensor))
        if entry is not None and entry[0]() is tensor:
            return entry[1]
        value = Value(None, tuple(tensor.shape), tensor.dtype, tainted=False, tensor=tensor)
        self._bind(tensor, value)
        return value

    def _bind(self, tensor: torch.Tensor, value: Value) -> None:
        self._values[id(tensor)] = (weakref.ref(tensor), value)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self._internal:
            self._record(func, args, kwargs, out)
        return out

    def _record(self, func: Callable[..., Any], args: tuple, kwargs: dict, out: Any) -> None:
        outputs = list(tensors_in(out))
        name = func_name(func)
        if name == "__setitem__" and args and isinstance(args[0], torch.Tensor):
            outputs = [args[0]]  # x[...] = y changes x in place and returns None
        if not outputs:
            return
        to_value = lambda leaf: self.value_of(leaf) if isinstance(leaf, torch.Tensor) else leaf  # noqa: E731
        rec_args = tree_map(to_value, tuple(args))
        rec_kwargs = tree_map(to_value, dict(kwargs))
        tainted = any(v.tainted for v in tree_flatten((rec_args, rec_kwargs))[0]
                      if isinstance(v, Value))
        owner = self._stack[-1] if self._stack else None
        anchor = self._last_done
        if anchor is not None and owner is not None and anchor.ops_before < owner.ops_before:
            anchor = None  # the last finished call is not inside the owner's call
        op = Op(len(self.ops), name, func, rec_args, rec_kwargs, (), owner, anchor)
        values = []
        for tensor in outputs:
            value = Value(op, tuple(tensor.shape), tensor.dtype, tainted,
                          tensor=None if tainted else tensor)
            self._bind(tensor, value)
            values.append(value)
        op.outputs = tuple(values)
        self.ops.append(op)

    def _enter_module(self, module: nn.Module, args: tuple, kwargs: dict | None = None) -> None:
        if threading.get_ident() != self._thread:
            return  # another thread runs the model meanwhile: not the recorded forward
        self._internal = True
        try:
            first = next(tensors_in((args, kwargs)), None)
            call = ModuleCall(
                self._names.get(module, "?"), module, self._starts[id(module)], len(self.ops),
                self.value_of(first) if first is not None else None,
            )
            self._starts[id(module)] += 1
            self._stack.append(call)
        finally:
            self._internal = False

    def _exit_module(self, module: nn.Module, args: tuple, output: Any) -> None:
        if threading.get_ident() != self._thread:
            return
        self._internal = True
        try:
            while self._stack:
                call = self._stack.pop()
                if call.module is module:
                    break
            else:
                return
            call.done_index = self._dones[id(module)]
            call.ops_at_done = len(self.ops)
            self._dones[id(module)] += 1
            self._last_done = call
            for tensor in tensors_in(output):
                self.value_of(tensor).module_outputs.append(call)
        finally:
            self._internal = False

    def value_if_known(self, tensor: torch.Tensor) -> Value | None:
        """The Value of a tensor produced or seen during the recording, else None."""
        entry = self._values.get(id(tensor))
        return entry[1] if entry is not None and entry[0]() is tensor else None
