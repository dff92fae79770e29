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

from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack, suppress
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from .discovery.cache import HEAD_CACHE
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
from .kernels import cam
from .targets import check_targets, resolve_targets

SizeSpec = Any  # "input", "features", an int or a pair (H, W)


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


def _first_sample(args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """(args, kwargs) with the only input tensor cut to its first sample, if that is safe."""
    found = list(tensors_in((args, kwargs)))
    if len(found) != 1 or found[0].dim() == 0 or found[0].shape[0] <= 1:
        return None
    tensor = found[0]
    swap = lambda v: v[:1] if v is tensor else v  # noqa: E731
    return tuple(swap(a) for a in args), {k: swap(v) for k, v in kwargs.items()}


def _single_sample(args: tuple, kwargs: dict) -> bool:
    """Whether the first probe takes one sample of the only input tensor (batch size not part
    of the head's cache key)."""
    found = list(tensors_in((args, kwargs)))
    return len(found) == 1 and found[0].dim() > 0 and found[0].shape[0] >= 1


class CamCapture:
    """Class activation maps of the last forward of ``model`` (see ``camplug.attach``).

    Use as a context manager (hooks removed on exit, also on exceptions) or call ``close()``.
    The tensors of the last completed forward stay readable after closing.
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
        if backend not in ("auto", "torch", "triton"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
        check_output_selector(output)
        reason = compiled_module_reason(model)
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
        self._names = dict(model.named_modules())
        self._head: HeadInfo | None = None
        self._head_error: Exception | None = None
        self._handles: list[RemovableHandle] = []
        self._closed = False
        self._forward_error: Exception | None = None
        self._logits: torch.Tensor | None = None
        self._captured: torch.Tensor | None = None
        self._input_size: tuple[int, int] | None = None
        self._states: tuple[object, ...] = ()
        self._pending: torch.Tensor | None = None
        self._calls: Counter[str] = Counter()
        self._window: _Interceptor | None = None
        self._handles.append(
            model.register_forward_pre_hook(self._before_forward, with_kwargs=True)
        )
        self._handles.append(model.register_forward_hook(self._after_forward, always_call=True))

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> CamCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook (idempotent). The last forward's results stay readable."""
        self._close_window()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._pending = None
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def head(self) -> HeadInfo:
        """What head discovery found (available after the first forward)."""
        if self._head_error is not None:
            raise self._head_error
        if self._head is None:
            raise RuntimeError("the head is discovered on the first forward: call model(x) first")
        return self._head

    # ------------------------------------------------------------------ hooks
    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if probing():
            return
        self._close_window()
        self._logits = self._captured = self._pending = None
        self._forward_error = None
        self._input_size = input_size_of(args, kwargs)
        self._calls.clear()
        if self._head is None and not isinstance(self._head_error, ValueError):
            # A head error (ValueError) is final; any other failure (e.g. a forward on a bad
            # input) is retried on the next forward.
            self._discover(args, kwargs)
        point = self._head.capture if self._head is not None else None
        if point is not None and point.kind == "function" and not point.module and (
            point.anchor is None
        ):
            self._open_window(point)  # the pooling runs in the model's own forward

    def _discover(self, args: tuple, kwargs: dict) -> None:
        """The head cached for this unchanged model and call signature (see
        ``camplug.discovery.cache``), else a probe on the first sample; if that fails for another
        reason than the head itself (a model that needs the whole batch), on the whole batch.
        Only a head found by the first attempt is cached."""
        first = _first_sample(args, kwargs)
        key = HEAD_CACHE.key(self.model, args, kwargs, layer=self._layer, output=self.output,
                             single_sample=_single_sample(args, kwargs))
        cached = HEAD_CACHE.get(self.model, key) if key is not None else None
        if cached is not None:
            self._head = cached
            self._install(cached.capture)
            return
        attempts = [a for a in (first, (args, kwargs)) if a is not None]
        for attempt, (probe_args, probe_kwargs) in enumerate(attempts):
            try:
                head = find_head(self.model, probe_args, layer=self._layer, output=self.output,
                                 example_kwargs=probe_kwargs)
            except UnsupportedHeadError as error:
                self._head_error = error
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

    def _install(self, point: CapturePoint) -> None:
        module = self._names[point.module]
        if point.kind == "module_input":
            hook = self._counted(f"{point.module}:pre", point.call, self._store_input)
            self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        elif point.kind == "module_output":
            self._handles.append(module.register_forward_hook(
                self._counted(f"{point.module}:post", point.call, self._store_output)))
        elif point.module:  # function window inside a submodule
            if point.anchor is None:
                self._handles.append(module.register_forward_pre_hook(
                    self._counted(f"{point.module}:pre", point.call,
                              lambda *_: self._open_window(point))))
            else:
                self._handles.append(self._names[point.anchor].register_forward_hook(
                    self._counted(f"{point.anchor}:post", point.anchor_call,
                                  lambda *_: self._open_window(point))))
            self._handles.append(module.register_forward_hook(
                lambda *_: self._close_window(), always_call=True))
        elif point.anchor is not None:  # window inside the model's own forward
            self._handles.append(self._names[point.anchor].register_forward_hook(
                self._counted(f"{point.anchor}:post", point.anchor_call,
                              lambda *_: self._open_window(point))))

    def _counted(self, key: str, wanted: int, action: Callable[..., None]) -> Callable[..., None]:
        def hook(*hook_args: Any) -> None:
            if probing():
                return
            seen = self._calls[key]
            self._calls[key] = seen + 1
            if seen == wanted:
                action(*hook_args)

        return hook

    def _store(self, tensor: object) -> None:
        if isinstance(tensor, torch.Tensor):
            self._pending = tensor.detach().clone()

    def _store_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._store(first_tensor(args, kwargs))

    def _store_output(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._store(output)

    def _open_window(self, point: CapturePoint) -> None:
        if self._window is None:
            self._window = _Interceptor(point.func_name, point.op_index, self._store)
            self._window.__enter__()

    def _close_window(self) -> None:
        if self._window is not None:
            window, self._window = self._window, None
            window.__exit__(None, None, None)

    def _after_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        if probing():
            return
        self._close_window()
        pending, self._pending = self._pending, None
        if self._head is None or output is None:
            return
        try:
            logits = select_output(output, self.output)
        except ValueError as error:
            self._forward_error = error
            return
        if pending is None:
            self._forward_error = RuntimeError(
                "the features were not captured during the last forward (the hook "
                f"'{self._head.capture.describe()}' did not run): was the model changed, "
                "compiled with torch.compile after attaching, or run on a different path?"
            )
            return
        if pending.shape[0] != logits.shape[0]:
            self._forward_error = RuntimeError(
                f"the captured features have batch size {pending.shape[0]} but the logits "
                f"{logits.shape[0]}: the hooked module did not see the whole batch"
            )
            return
        self._logits = logits.detach().clone()
        self._captured = pending
        self._states = tuple(step.state() for step in self._head.steps)

    # ------------------------------------------------------------------ results
    def _ready(self) -> HeadInfo:
        """The head, once a forward has completed without problems; raises otherwise."""
        if self._head_error is not None:
            raise self._head_error
        if self._forward_error is not None:
            raise self._forward_error
        if self._head is None or self._logits is None:
            raise RuntimeError(
                "no forward has been captured yet: call model(x) while the capture is attached, "
                "then read logits, features or maps"
            )
        return self._head

    @property
    def logits(self) -> torch.Tensor:
        """The last forward's selected logits [B, N] (a detached copy)."""
        self._ready()
        return self._logits

    @property
    def features(self) -> torch.Tensor:
        """The tensor that fed the global pooling in the last forward, [B, K, h, w] (tokens
        arranged on the patch grid; a detached copy, dtype and memory format as in the model)."""
        head = self._ready()
        return to_feature_map(head, self._captured, self._input_size)

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the last forward's input (the last two dims of its first 3-D+ tensor)."""
        self._ready()
        if self._input_size is None:
            raise RuntimeError("the last forward had no image-like input tensor (3 or more dims)")
        return self._input_size

    def resolve_targets(self, target: Any = None, topk: int | None = None) -> torch.Tensor:
        """Class indices int64 [B, C] (see ``camplug.targets.resolve_targets``)."""
        return resolve_targets(self.logits, target, topk)

    def class_weights(self, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Effective weights fp32 [B, C, K] and biases fp32 [B, C] of classes ``targets`` [B, C]:
        ``logits[i, targets[i, c]] == (features[i].mean((1, 2)) * W[i, c]).sum() + b[i, c]``."""
        head = self._ready()
        targets = check_targets(targets, self._logits.shape[0], head.num_classes)
        features = self.features
        with torch.no_grad(), _no_autocast(features.device):
            needs_pool = any(step.needs_input for step in head.steps)
            pooled = pooled_vector(features) if needs_pool else None
            return fold_head(head.steps, self._states, targets.to(features.device), pooled,
                             head.num_classes)

    def maps(
        self,
        target: Any = None,
        *,
        topk: int | None = None,
        size: SizeSpec = "input",
        relu: bool = False,
        normalize: bool = True,
        out_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Class activation maps of the last forward, [B, C, H, W].

        target: None (each sample's predicted class), an int, one class per sample (sequence
        or 1-D tensor of length B), or several per sample ([B, C] tensor or list of lists);
        topk=k: the k best classes. size: "input" (the input's H, W), "features" (h, w), an
        int or (H, W). relu, normalize, out_dtype: as ``camplug.kernels.cam``.
        """
        targets = self.resolve_targets(target, topk)
        features = self.features
        out_size = self._out_size(size, features)
        weights, _ = self.class_weights(targets)
        with torch.no_grad(), _no_autocast(features.device):
            return cam(features, weights, out_size, relu=relu, normalize=normalize,
                       out_dtype=out_dtype, backend=self.backend)

    def _out_size(self, size: SizeSpec, features: torch.Tensor) -> Any:
        if isinstance(size, str):
            if size == "input":
                return self.input_size
            if size == "features":
                return None
            raise ValueError(f"size must be 'input', 'features', an int or (H, W); got {size!r}")
        if isinstance(size, bool) or size is None:
            raise ValueError(f"size must be 'input', 'features', an int or (H, W); got {size!r}")
        return size


def _no_autocast(device: torch.device) -> Any:
    """A context with autocast off on ``device`` (the fold and the kernel run in fp32)."""
    stack = ExitStack()
    with suppress(RuntimeError):  # a device type without autocast support: nothing to turn off
        stack.enter_context(torch.autocast(device.type, enabled=False))
    return stack
