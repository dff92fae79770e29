"""CamCapture: hooks on an unmodified model that keep the last forward's features and logits.

On the model's first forward under the capture, a probe forward on the first sample (eval mode, no
gradients, flags restored; every capture ignores it) discovers the head with
:func:`camplug.discovery.heads.find_head`, unless an earlier capture found it for the same,
unchanged model and call signature (:mod:`camplug.discovery.cache`); then only the hooks needed to
take the tensor that feeds the global pooling are registered. Each forward replaces the previous
one's tensors, so memory stays flat. Problems found during a forward (unsupported head, output
without selector, ...) are kept and raised by the accessors, so ``model(x)`` itself always behaves
as without the capture.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from types import FrameType
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from . import methods
from .discovery import layers
from .discovery.cache import HEAD_CACHE, structure_of
from .discovery.fold import fold_head
from .discovery.heads import (
    CapturePoint,
    HeadInfo,
    LayerSpec,
    OutputSelector,
    check_output_selector,
    compiled_module_reason,
    find_head,
    input_size_of,
    layer_name,
    pooled_vector,
    probing,
    select_output,
    to_feature_map,
)
from .discovery.recorder import first_tensor, func_name, tensors_in
from .errors import UnsupportedHeadError
from .kernels import cam, check_backend
from .methods.gradients import batched_gradients, head_jacobian
from .options import SizeSpec, resolve_size
from .targets import check_targets, resolve_targets


class _Interceptor(TorchFunctionMode):
    """Takes the first tensor argument of the ``index``-th call of the torch function ``name``
    (a window opened and closed by module hooks around the functional pooling)."""

    def __init__(self, name: str, index: int, store: Callable[[torch.Tensor], None]) -> None:
        super().__init__()
        self.name, self.index, self.store, self.seen = name, index, store, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if self.seen <= self.index and func_name(func) == self.name:
            if self.seen == self.index:
                self.store(first_tensor(args, kwargs or {}))
            self.seen += 1
        return func(*args, **(kwargs or {}))


class _ThreadWatches:
    """The exit watches of one thread and the profile function that serves them all (chained
    to the profile function the thread had before). It does as little as possible per event:
    it runs on every call and return while a window is open."""

    def __init__(self, previous: Callable[..., Any] | None) -> None:
        self.previous = previous
        self.frames: dict[FrameType, list[_ExitWatch]] = {}
        self.profile = self._alone if previous is None else self._chained

    def _alone(self, frame: FrameType, event: str, arg: object) -> None:
        if event == "return" and frame in self.frames:
            for watch in list(self.frames[frame]):
                watch.on_exit()

    def _chained(self, frame: FrameType, event: str, arg: object) -> None:
        self.previous(frame, event, arg)
        self._alone(frame, event, arg)


class _ExitWatch:
    """Calls ``on_exit`` when ``frame`` (a module call that opened an interceptor window)
    returns, also when it unwinds through an exception that module hooks never see
    (KeyboardInterrupt, SystemExit): a window can never outlive that call. While any watch of
    a thread is active, one profile function (chained to any existing one) serves them all.
    Not available under a profiler written in C (``cProfile``): its profile function cannot be
    called from Python, so it is left alone (see :meth:`start`)."""

    _active: dict[int, _ThreadWatches] = {}  # thread id -> its watches

    @classmethod
    def start(cls, frame: FrameType, on_exit: Callable[[], None]) -> _ExitWatch | None:
        """A watch of ``frame``, or None when this thread's profile function is one that
        cannot be chained (a C profiler such as ``cProfile``)."""
        previous = sys.getprofile()
        if threading.get_ident() not in cls._active and not (
            previous is None or callable(previous)
        ):
            return None
        return cls(frame, on_exit)

    def __init__(self, frame: FrameType, on_exit: Callable[[], None]) -> None:
        self.frame, self.on_exit = frame, on_exit
        thread = threading.get_ident()
        watches = self._active.get(thread)
        if watches is None:
            watches = self._active[thread] = _ThreadWatches(sys.getprofile())
            sys.setprofile(watches.profile)
        watches.frames.setdefault(frame, []).append(self)

    def stop(self) -> None:
        thread = threading.get_ident()
        watches = self._active.get(thread)
        if watches is None:
            return
        same_frame = watches.frames.get(self.frame, [])
        if self in same_frame:
            same_frame.remove(self)
            if not same_frame:
                del watches.frames[self.frame]
        if not watches.frames:
            del self._active[thread]
            if sys.getprofile() is watches.profile:
                sys.setprofile(watches.previous)


def _call_frame(module: nn.Module) -> FrameType | None:
    """The running frame of ``module``'s ``nn.Module._call_impl``, if on this thread's stack."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is _CALL_IMPL_CODE and frame.f_locals.get("self") is module:
            return frame
        frame = frame.f_back
    return None


_CALL_IMPL_CODE = nn.Module._call_impl.__code__


def _input_tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors among a call's arguments (one plain tensor argument without a tree walk)."""
    if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
        return [args[0]]
    return list(tensors_in((args, kwargs)))


def _first_sample(args: tuple, kwargs: dict, found: list[torch.Tensor]
                  ) -> tuple[tuple, dict] | None:
    """(args, kwargs) with the only input tensor (``found``: the call's tensors) cut to its
    first sample, if that is safe."""
    if len(found) != 1 or found[0].dim() == 0 or found[0].shape[0] <= 1:
        return None
    tensor = found[0]
    swap = lambda v: v[:1] if v is tensor else v  # noqa: E731
    return tuple(swap(a) for a in args), {k: swap(v) for k, v in kwargs.items()}


def _single_sample(found: list[torch.Tensor]) -> bool:
    """Whether the first probe takes one sample of the only input tensor (``found``: the
    call's tensors), so that the batch size is not part of the head's cache key."""
    return len(found) == 1 and found[0].dim() > 0 and found[0].shape[0] >= 1


class _Forward:
    """What one completed forward left, in the thread that ran it."""

    __slots__ = ("captured", "head_stamp", "input_size", "inputs", "live_captured",
                 "live_logits", "logits", "states")

    def __init__(self) -> None:
        self.logits: torch.Tensor | None = None  # [B, N] detached copy
        self.captured: torch.Tensor | None = None  # the raw captured tensor, detached copy
        self.live_logits: torch.Tensor | None = None  # in the autograd graph (layer mode only)
        self.live_captured: torch.Tensor | None = None
        self.input_size: tuple[int, int] | None = None
        self.inputs: tuple[tuple, dict] | None = None  # references to the forward's arguments
        self.states: tuple[object, ...] = ()
        self.head_stamp: tuple[tuple[torch.Tensor, int], ...] = ()


class _ThreadState:
    """Per-thread capture state: a model called from several threads keeps one last forward
    per thread, and hooks of one thread's forward never see another's tensors."""

    def __init__(self) -> None:
        self.pending: torch.Tensor | None = None
        self.pending_live: torch.Tensor | None = None
        self.calls: Counter[str] = Counter()
        self.window: _Interceptor | None = None
        self.watch: _ExitWatch | None = None
        self.replaying = False
        self.tracking = False
        self.current = _Forward()
        self.last: _Forward | None = None
        self.error: Exception | None = None


class CamCapture:
    """Class activation maps of the last forward of ``model`` (see ``camplug.attach``).

    Use as a context manager (hooks removed on exit, also on exceptions) or call ``close()``.
    The tensors of the last completed forward stay readable after closing. Each thread sees
    the last forward it ran itself.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec = None,
        *,
        backend: str = "auto",
        output: OutputSelector = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_backend(backend)
        check_output_selector(output)
        # A model seen before is checked for compiled modules by its discovery (a cached head
        # means an unchanged model, in which the probe found none; a changed one is probed,
        # and the probe refuses compiled modules): no walk over its modules here.
        reason = None if model in HEAD_CACHE else compiled_module_reason(model)
        if reason is not None:
            raise ValueError(reason)
        if isinstance(model, nn.DataParallel) and len(model.device_ids or []) > 1:
            raise NotImplementedError(
                "a DataParallel model on several GPUs runs replicas in worker threads; attach "
                "to the wrapped module (model.module) and run it on one device, or use "
                "DistributedDataParallel (one model per process)"
            )
        self.model = model
        self.backend = backend
        self.output = output
        self._layer = layer_name(model, layer)
        self._lock = threading.Lock()
        self._head: HeadInfo | None = None
        self._feature_layer: layers.FeatureLayer | None = None
        self._head_error: Exception | None = None  # why there is no exact CAM (or no map)
        self._structure: tuple[int, ...] = ()
        self._point_handles: list[RemovableHandle] = []
        self._handles: list[RemovableHandle] = []
        self._closed = False
        self._threads: dict[int, _ThreadState] = {}
        self._handles.append(
            model.register_forward_pre_hook(self._before_forward, with_kwargs=True)
        )
        self._handles.append(model.register_forward_hook(self._after_forward, always_call=True))

    @property
    def _thread(self) -> _ThreadState:
        """This thread's state (kept in a plain dict keyed by thread id, which torch.compile
        traces through, unlike ``threading.local``)."""
        key = threading.get_ident()
        state = self._threads.get(key)
        if state is None:
            state = self._threads[key] = _ThreadState()
        return state

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> CamCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook (idempotent). The last forward's results stay readable."""
        self._close_window()
        for handle in (*self._handles, *self._point_handles):
            handle.remove()
        self._handles.clear()
        self._point_handles.clear()
        self._thread.pending = self._thread.pending_live = None
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def head(self) -> HeadInfo:
        """What head discovery found (available after the first forward)."""
        if self._head_error is not None and self._feature_layer is None:
            raise self._head_error
        if self._head is None:
            if self._feature_layer is not None:
                raise self._head_error
            raise RuntimeError("the head is discovered on the first forward: call model(x) first")
        return self._head

    @property
    def feature_layer(self) -> layers.FeatureLayer | None:
        """The layer whose output the gradient methods use when the model has no exact CAM
        head (None on exact heads, or before the first forward)."""
        return self._feature_layer

    @property
    def exact_head(self) -> bool:
        """Whether the model's head allows exact CAM (GAP + foldable affine head); known after
        the first forward or :meth:`discover`."""
        if self._head is None and self._feature_layer is None:
            if self._head_error is not None:
                raise self._head_error
            raise RuntimeError("the head is discovered on the first forward: call model(x) first")
        return self._head is not None

    def discover(self, *args: Any, **kwargs: Any) -> None:
        """Discover the head (or, without an exact CAM, the feature layer) for a call
        ``model(*args, **kwargs)`` now, by its probe forward, instead of on the first forward;
        nothing is captured. Raises the discovery error, if any."""
        with self._lock:
            if self._head is None and self._feature_layer is None and not isinstance(
                self._head_error, ValueError
            ):
                self._discover(args, kwargs)
        self.exact_head  # noqa: B018  (raises when nothing usable was found)

    @contextmanager
    def tracking_gradients(self) -> Iterator[None]:
        """Within this block, a feature layer output that does not require grad (a frozen
        model) is replaced by a leaf that does, so gradients can be taken with respect to it
        (used by ``camplug.explain`` for its own forward)."""
        self._thread.tracking = True
        try:
            yield
        finally:
            self._thread.tracking = False

    # ------------------------------------------------------------------ hooks
    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        state = self._thread
        if probing() or state.replaying:
            return
        self._close_window()
        state.pending = state.pending_live = None
        state.error = None
        state.current = _Forward()
        state.current.input_size = input_size_of(args, kwargs)
        state.current.inputs = (args, kwargs)
        state.last = None  # a forward that fails leaves no results
        state.calls.clear()
        with self._lock:
            if self._structure and self._structure != structure_of(self.model):
                self._forget_discovery()  # modules or parameters were replaced: discover again
            if self._head is None and self._feature_layer is None and not isinstance(
                self._head_error, ValueError
            ):
                # A head error (ValueError) is final; any other failure (e.g. a forward on a
                # bad input) is retried on the next forward.
                self._discover(args, kwargs)
        point = self._head.capture if self._head is not None else None
        if point is not None and point.kind == "function" and not point.module and (
            point.anchor is None
        ):
            self._open_window(point)  # the pooling runs in the model's own forward

    def _module(self, name: str) -> nn.Module:
        """The submodule of the model called ``name`` ("" is the model itself)."""
        return self.model.get_submodule(name)

    def _forget_discovery(self) -> None:
        for handle in self._point_handles:
            handle.remove()
        self._point_handles.clear()
        self._head = self._feature_layer = self._head_error = None

    def _discover(self, args: tuple, kwargs: dict) -> None:
        """The head cached for this unchanged model and call signature (see
        ``camplug.discovery.cache``), else a probe on the first sample; if that fails for
        another reason than the head itself (a model that needs the whole batch), on the whole
        batch. Only a head found by the first attempt is cached. A model without an exact CAM
        head gets the feature layer for the gradient methods instead."""
        found = _input_tensors(args, kwargs)
        key = HEAD_CACHE.key(self.model, args, kwargs, layer=self._layer, output=self.output,
                             single_sample=_single_sample(found))
        # the plan that recognised (or was just made of) this state knows its structure
        plan = key.plan if key is not None else None
        self._structure = plan.structure if plan is not None else structure_of(self.model)
        cached = HEAD_CACHE.get(self.model, key) if key is not None else None
        if isinstance(cached, layers.FeatureLayer):
            self._head_error = UnsupportedHeadError(cached.reason)
            self._install_feature_layer(cached)
            return
        if cached is not None:
            self._head = cached
            self._install(cached.capture)
            return
        first = _first_sample(args, kwargs, found)
        attempts = [a for a in (first, (args, kwargs)) if a is not None]
        for attempt, (probe_args, probe_kwargs) in enumerate(attempts):
            try:
                head = find_head(self.model, probe_args, layer=self._layer, output=self.output,
                                 example_kwargs=probe_kwargs)
            except UnsupportedHeadError as error:
                self._head_error = error
                self._discover_feature_layer(probe_args, probe_kwargs)
                if self._feature_layer is not None and attempt == 0 and key is not None:
                    HEAD_CACHE.put(self.model, key, self._feature_layer)
                return
            except Exception as error:  # kept and raised by the accessors
                self._head_error = error
                continue
            self._head_error = None
            self._head = head
            self._install(head.capture)
            if attempt == 0 and key is not None:
                HEAD_CACHE.put(self.model, key, head)
            return

    def _discover_feature_layer(self, args: tuple, kwargs: dict) -> None:
        """No exact CAM: find the layer for the gradient methods (kept refusal otherwise)."""
        try:
            found = layers.find_feature_layer(self.model, args, layer=self._layer,
                                              output=self.output, example_kwargs=kwargs)
        except (ValueError, RuntimeError):
            return  # the head's refusal stays the error raised by the accessors
        self._install_feature_layer(found)

    def _install_feature_layer(self, found: layers.FeatureLayer) -> None:
        self._feature_layer = found
        self._point_handles.append(self._module(found.module).register_forward_hook(
            self._counted(f"{found.module}:post", found.call, self._store_layer_output)))

    def _install(self, point: CapturePoint) -> None:
        module = self._module(point.module)
        add = self._point_handles.append
        if point.kind == "module_input":
            hook = self._counted(f"{point.module}:pre", point.call, self._store_input)
            add(module.register_forward_pre_hook(hook, with_kwargs=True))
        elif point.kind == "module_output":
            add(module.register_forward_hook(
                self._counted(f"{point.module}:post", point.call, self._store_output)))
        elif point.module:  # function window inside a submodule
            if point.anchor is None:
                add(module.register_forward_pre_hook(
                    self._counted(f"{point.module}:pre", point.call,
                                  lambda *_: self._open_window(point))))
            else:
                add(self._module(point.anchor).register_forward_hook(
                    self._counted(f"{point.anchor}:post", point.anchor_call,
                                  lambda *_: self._open_window(point))))
            add(module.register_forward_hook(lambda *_: self._close_window(), always_call=True))
        elif point.anchor is not None:  # window inside the model's own forward
            add(self._module(point.anchor).register_forward_hook(
                self._counted(f"{point.anchor}:post", point.anchor_call,
                              lambda *_: self._open_window(point))))

    def _counted(self, key: str, wanted: int, action: Callable[..., None]) -> Callable[..., None]:
        def hook(*hook_args: Any) -> None:
            state = self._thread
            if probing() or state.replaying:
                return
            seen = state.calls[key]
            state.calls[key] = seen + 1
            return action(*hook_args) if seen == wanted else None

        return hook

    def _store(self, tensor: object) -> None:
        if isinstance(tensor, torch.Tensor):
            state = self._thread
            state.pending = tensor.detach().clone()
            keep_graph = self._feature_layer is not None and tensor.requires_grad
            state.pending_live = tensor if keep_graph else None

    def _store_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._store(first_tensor(args, kwargs))

    def _store_output(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._store(output)

    def _store_layer_output(self, module: nn.Module, args: tuple, output: Any) -> Any:
        """The feature layer's output; under :meth:`tracking_gradients` a frozen model's
        output becomes a leaf requiring grad (the model goes on with a copy of it)."""
        if (self._thread.tracking and isinstance(output, torch.Tensor)
                and torch.is_grad_enabled() and not output.requires_grad):
            leaf = output.detach().requires_grad_(True)
            self._store(leaf)
            return leaf.clone()
        self._store(output)
        return None

    def _open_window(self, point: CapturePoint) -> None:
        state = self._thread
        if state.window is None:
            window = _Interceptor(point.func_name, point.op_index, self._store)
            state.window = window
            window.__enter__()
            frame = _call_frame(self._module(point.module))
            if frame is not None:
                state.watch = _ExitWatch.start(frame, self._close_window)

    def _close_window(self) -> None:
        state = self._thread
        window, state.window = state.window, None
        watch, state.watch = state.watch, None
        if watch is not None:
            watch.stop()
        if window is not None:
            window.__exit__(None, None, None)

    def _after_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        state = self._thread
        if probing() or state.replaying:
            return
        self._close_window()
        pending, state.pending = state.pending, None
        pending_live, state.pending_live = state.pending_live, None
        if (self._head is None and self._feature_layer is None) or output is None:
            return
        try:
            logits = select_output(output, self.output)
        except ValueError as error:
            state.error = error
            return
        where = (self._head.capture.describe() if self._head is not None
                 else f"forward hook on `{self._feature_layer.module}`")
        if pending is None:
            state.error = RuntimeError(
                f"the features were not captured during the last forward (the hook '{where}' "
                "did not run): was the model changed, compiled with torch.compile after "
                "attaching, or run on a different path?"
            )
            return
        if pending.shape[0] != logits.shape[0]:
            state.error = RuntimeError(
                f"the captured features have batch size {pending.shape[0]} but the logits "
                f"{logits.shape[0]}: the hooked module did not see the whole batch"
            )
            return
        forward = state.current
        forward.logits = logits.detach().clone()
        forward.captured = pending
        if pending_live is not None and logits.requires_grad:
            forward.live_captured, forward.live_logits = pending_live, logits
        if self._head is not None:
            forward.states = tuple(step.state() for step in self._head.steps)
            forward.head_stamp = _head_stamp(self._head)
        state.last = forward

    # ------------------------------------------------------------------ results
    def _ready(self) -> _Forward:
        """The last completed forward of this thread; raises if there is none or it failed."""
        state = self._thread
        if self._head is None and self._feature_layer is None and self._head_error is not None:
            raise self._head_error
        if state.error is not None:
            raise state.error
        if state.last is None:
            raise RuntimeError(
                "no forward has been captured yet: call model(x) while the capture is attached, "
                "then read logits, features or maps"
            )
        return state.last

    def _exact_head(self) -> HeadInfo:
        """The exact head, checked to be the one (with the weights) the last forward used."""
        forward = self._ready()
        if self._head is None:
            raise UnsupportedHeadError(f"{self._head_error} (method='cam' needs an exact head)")
        changed = [t for t, version in forward.head_stamp if t._version != version]
        if changed:
            raise RuntimeError(
                f"{len(changed)} head tensor(s) of shape(s) "
                f"{sorted({tuple(t.shape) for t in changed})} changed in place since the "
                "forward that produced these features (e.g. optimizer.step() or a weight "
                "update): compute the maps before updating the weights, or run the forward again"
            )
        return self._head

    @property
    def logits(self) -> torch.Tensor:
        """The last forward's selected logits [B, N] (a detached copy)."""
        return self._ready().logits

    @property
    def features(self) -> torch.Tensor:
        """The map the methods weight, [B, K, h, w]: the tensor that fed the global pooling in
        the last forward (or, without an exact head, the output of ``feature_layer``); tokens
        arranged on the patch grid; a detached copy, dtype and memory format as in the model."""
        forward = self._ready()
        if self._head is not None:
            return to_feature_map(self._head, forward.captured, forward.input_size)
        return layers.to_grid(self._feature_layer, forward.captured, forward.input_size)

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the last forward's input (the last two dims of its first 3-D+ tensor)."""
        forward = self._ready()
        if forward.input_size is None:
            raise RuntimeError("the last forward had no image-like input tensor (3 or more dims)")
        return forward.input_size

    @property
    def input(self) -> torch.Tensor:
        """The last forward's input tensor [B, ...] (for methods that run extra forwards)."""
        forward = self._ready()
        args, kwargs = forward.inputs
        found = list(tensors_in((args, kwargs)))
        if len(found) != 1:
            raise ValueError(
                f"this method re-runs the model on modified inputs, which needs a model called "
                f"with exactly one tensor argument; the last forward had {len(found)}"
            )
        return found[0]

    def resolve_targets(self, target: Any = None, topk: int | None = None) -> torch.Tensor:
        """Class indices int64 [B, C] (see ``camplug.targets.resolve_targets``)."""
        return resolve_targets(self.logits, target, topk)

    def resolve_method(self, method: str | methods.Method = "cam") -> methods.Method:
        """The method ``maps(method=...)`` runs (``"auto"``: CAM on an exact head, else
        Grad-CAM); known once the head is discovered."""
        return methods.resolve(method, self.exact_head)

    def class_weights(self, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Effective weights fp32 [B, C, K] and biases fp32 [B, C] of classes ``targets`` [B, C]:
        ``logits[i, targets[i, c]] == (features[i].mean((1, 2)) * W[i, c]).sum() + b[i, c]``."""
        head = self._exact_head()
        forward = self._ready()
        targets = check_targets(targets, forward.logits.shape[0], head.num_classes)
        features = self.features
        if features.shape[1] != head.num_features:
            raise RuntimeError(
                f"the captured features have {features.shape[1]} channels but the head folds "
                f"{head.num_features}: the model changed since discovery; attach again"
            )
        with torch.no_grad(), _no_autocast(features.device):
            needs_pool = any(step.needs_input for step in head.steps)
            pooled = pooled_vector(features) if needs_pool else None
            return fold_head(head.steps, forward.states, targets.to(features.device), pooled,
                             head.num_classes)

    # ------------------------------------------------------------------ MapSource
    def head_weights(self, targets: torch.Tensor) -> torch.Tensor:
        """CAM weights fp32 [B, C, K] (see ``camplug.methods.MapSource``)."""
        return self.class_weights(targets)[0]

    def gradients(self, targets: torch.Tensor) -> torch.Tensor:
        """d logit[b, targets[b, c]] / d A[b], fp32 [B, C, K, h, w] ([B, C, K, 1, 1] on exact
        heads, where it is constant over space and needs no backward pass)."""
        forward = self._ready()
        targets = check_targets(targets, forward.logits.shape[0], forward.logits.shape[1])
        features = self.features
        if self._head is not None:
            head = self._exact_head()
            with _no_autocast(features.device):
                jacobian = head_jacobian(head.steps, forward.states, pooled_vector(features),
                                         targets.to(features.device), head.num_classes)
            return (jacobian / (features.shape[-2] * features.shape[-1]))[..., None, None]
        if forward.live_logits is None:
            raise RuntimeError(
                "gradient methods on a model without an exact CAM head need the autograd graph "
                "of the forward, and the last forward recorded none (it ran under no_grad or "
                "inference_mode, or nothing before the feature layer requires grad). Use "
                "camplug.explain(model, x, method=...), which runs its own forward"
            )
        try:
            grads = batched_gradients(forward.live_logits, forward.live_captured,
                                      targets.to(forward.live_logits.device))
        except RuntimeError as error:
            if "backward through the graph a second time" not in str(error):
                raise
            raise RuntimeError(
                "the autograd graph of the last forward was already freed (by a backward "
                "call): compute gradient maps before loss.backward(), or use "
                "camplug.explain(model, x, method=...)"
            ) from error
        b, c = grads.shape[:2]
        grid = layers.to_grid(self._feature_layer, grads.flatten(0, 1), forward.input_size)
        return grid.unflatten(0, (b, c))

    def class_scores(self, inputs: torch.Tensor, samples: torch.Tensor,
                     targets: torch.Tensor) -> torch.Tensor:
        """Logits fp32 [M, C] of each row of ``inputs`` [M, ...] (a variant of the last
        forward's sample ``samples[m]``) for that sample's classes ``targets`` [B, C]; the
        model runs in eval mode (flags restored after) without gradients, and this capture
        ignores these forwards."""
        state = self._thread
        state.replaying = True
        modes = [(module, module.training) for module in self.model.modules()]
        try:
            self.model.eval()  # no batch statistics of masked copies, no dropout
            with torch.no_grad():
                logits = select_output(self.model(inputs), self.output)
        finally:
            state.replaying = False
            for module, training in modes:
                module.training = training
        return logits.float().gather(1, targets.to(logits.device)[samples.to(logits.device)])

    # ------------------------------------------------------------------ maps
    def maps(
        self,
        target: Any = None,
        *,
        method: str | methods.Method = "cam",
        topk: int | None = None,
        size: SizeSpec = "input",
        relu: bool | None = None,
        normalize: bool = True,
        out_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Class activation maps of the last forward, [B, C, H, W].

        target: None (each sample's predicted class), an int, one class per sample (sequence
        or 1-D tensor of length B), or several per sample ([B, C] tensor or list of lists);
        topk=k: the k best classes. method: a name from ``camplug.methods.available()`` or
        "auto" (CAM on exact heads, else Grad-CAM). size: "input" (the input's H, W),
        "features" (h, w), an int or (H, W). relu: None applies the method's paper convention
        (CAM: none; the Grad-CAM family: ReLU). normalize, out_dtype: as
        ``camplug.kernels.cam``.
        """
        self._ready()
        chosen = self.resolve_method(method)
        targets = self.resolve_targets(target, topk)
        features = self.features
        out_size = resolve_size(size, self._ready().input_size)
        with _no_autocast(features.device):
            weights = chosen.weights(self, targets)
        if weights.dim() == 5 and weights.shape[-2:] == (1, 1):
            weights = weights[..., 0, 0]  # per-position weights constant over space
        with torch.no_grad(), _no_autocast(features.device):
            return cam(features, weights.detach(), out_size,
                       relu=chosen.relu if relu is None else relu, normalize=normalize,
                       out_dtype=out_dtype, backend=self.backend)


def _head_stamp(head: HeadInfo) -> tuple[tuple[torch.Tensor, int], ...]:
    """Each tensor the head's steps fold with, and its in-place version counter now."""
    return tuple((value, value._version) for step in head.steps for value in vars(step).values()
                 if isinstance(value, torch.Tensor))


def _no_autocast(device: torch.device) -> Any:
    """A context with autocast off on ``device`` (the fold and the kernel run in fp32)."""
    stack = ExitStack()
    with suppress(RuntimeError):  # a device type without autocast support: nothing to turn off
        stack.enter_context(torch.autocast(device.type, enabled=False))
    return stack
