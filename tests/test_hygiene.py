"""The model is left exactly as it was: no hook, no mode, same parameters, flags and buffers;
memory stays flat; several captures coexist; torch.compile is handled."""

from __future__ import annotations

import cProfile
import gc
import sys
import warnings
import weakref

import pytest
import torch
from models import SUPPORTED, UNSUPPORTED, build, images
from torch import nn
from torch.nn.modules import module as module_globals
from torch.overrides import _get_current_function_mode_stack

import camplug
from camplug.discovery.heads import find_head

CASES = {case.name: case for case in SUPPORTED}
HOOK_DICTS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
    "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)
GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                "_global_backward_pre_hooks", "_global_forward_hooks_always_called")


def hook_count(model: nn.Module) -> int:
    return sum(len(getattr(m, name)) for m in model.modules() for name in HOOK_DICTS)


def assert_pristine(model: nn.Module) -> None:
    """No hook on any submodule, no global hook, no torch-function mode left active."""
    for name, module in model.named_modules():
        for attr in HOOK_DICTS:
            assert not getattr(module, attr), f"{attr} of `{name}` is not empty"
    for attr in GLOBAL_HOOKS:
        assert not getattr(module_globals, attr), f"torch global {attr} is not empty"
    assert _get_current_function_mode_stack() == []


def live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on deprecated torch proxies warns
        warnings.simplefilter("ignore")
        return sum(isinstance(o, torch.Tensor) for o in gc.get_objects())


def snapshot(model: nn.Module) -> dict:
    return {
        "params": {n: (id(p), p.detach().clone(), p.requires_grad)
                   for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "training": {n: m.training for n, m in model.named_modules()},
        "attributes": {n: sorted(vars(m)) for n, m in model.named_modules()},
    }


def assert_same_state(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["attributes"] == before["attributes"]
    for name, (ident, value, requires_grad) in before["params"].items():
        now_id, now_value, now_requires_grad = after["params"][name]
        assert now_id == ident and now_requires_grad == requires_grad, name
        assert torch.equal(now_value, value), name
    for name, value in before["buffers"].items():
        assert torch.equal(after["buffers"][name], value), name


@pytest.mark.parametrize("case", SUPPORTED + UNSUPPORTED, ids=lambda c: c.name)
def test_with_block_leaves_the_model_as_it_was(case):
    model = build(case)
    next(model.parameters()).requires_grad_(False)
    before = snapshot(model)
    with camplug.attach(model) as capture:
        model(images(2, case.size))
        try:
            capture.maps(topk=2)
        except camplug.UnsupportedHeadError:
            assert case in UNSUPPORTED
    assert_pristine(model)
    assert_same_state(model, before)


@pytest.mark.parametrize("name", ["resnet", "densenet", "vit"])
def test_only_the_needed_hooks_are_registered(name):
    model = build(CASES[name])
    def registered() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    with camplug.attach(model) as capture:
        assert registered() == 2  # the model's own pre and post hooks
        model(images(1))
        assert registered() == 3, capture.head.capture  # + the capture point (or anchor)
    assert_pristine(model)


def test_exception_inside_the_with_block():
    model = build(CASES["densenet"])
    with pytest.raises(KeyError), camplug.attach(model):
        model(images(1))
        raise KeyError("user code failed")
    assert_pristine(model)


def test_exception_inside_the_forward_closes_the_interceptor():
    """DenseNet's capture opens a torch-function interceptor after `features`; a failure later
    in the forward must not leave it active."""
    model = build(CASES["densenet"])

    def fail(module, args):
        raise RuntimeError("classifier exploded")

    with camplug.attach(model) as capture:
        model(images(2))
        handle = model.classifier.register_forward_pre_hook(fail)
        with pytest.raises(RuntimeError, match="exploded"):
            model(images(2))
        assert _get_current_function_mode_stack() == []
        with pytest.raises(RuntimeError, match="no forward has been captured"):
            capture.maps()  # the failed forward dropped the previous results
        handle.remove()
        model(images(2))
        assert capture.maps().shape == (2, 1, 32, 32)
    assert_pristine(model)


def test_failed_discovery_leaves_nothing():
    case = next(c for c in UNSUPPORTED if c.name == "mobilenet_v3")
    model = build(case).train()
    before = snapshot(model)
    with pytest.raises(camplug.UnsupportedHeadError):
        find_head(model, images(1))
    assert_pristine(model)
    assert_same_state(model, before)


def test_errors_leave_the_model_untouched():
    model = build(CASES["resnet"])
    before = snapshot(model)
    with camplug.attach(model) as capture:
        model(images(2))
        for bad in (lambda: capture.maps(99), lambda: capture.maps(size="x"),
                    lambda: capture.maps([1, 2, 3])):
            with pytest.raises(ValueError):
                bad()
    with pytest.raises(ValueError):
        camplug.attach(model, "nope")
    assert_pristine(model)
    assert_same_state(model, before)


def test_repeated_attach_and_close():
    model = build(CASES["vit"])
    for _ in range(10):
        capture = camplug.attach(model)
        model(images(1))
        capture.maps()
        capture.close()
        capture.close()  # idempotent
        assert capture.closed
        assert_pristine(model)
    assert capture.maps().shape == (1, 1, 32, 32)  # results stay readable after close


@pytest.mark.parametrize(("name", "layer"), [("resnet", "layer2"), ("densenet", None)])
def test_nested_and_concurrent_captures(name, layer):
    """DenseNet's captures each open their own torch-function interceptor: they nest."""
    model = build(CASES[name])
    x, y = images(3, seed=2), images(2, seed=3)
    outer = camplug.attach(model)
    model(x)
    with camplug.attach(model, layer) as inner:
        assert outer.logits.shape[0] == 3
        model(y)  # the inner capture's probe forward must not reach the outer one
        assert outer.logits.shape[0] == 2 and inner.logits.shape[0] == 2
        assert torch.equal(outer.maps(topk=2), inner.maps(topk=2))
        with camplug.attach(model) as third:
            model(x)
            assert torch.equal(third.maps(), outer.maps())
            assert torch.equal(inner.maps(), outer.maps())
    model(y)
    assert outer.logits.shape[0] == 2 and inner.logits.shape[0] == 3
    outer.close()
    assert_pristine(model)


@pytest.mark.parametrize("name", ["densenet", "batchnorm_head"])
def test_train_mode_forward_is_unchanged_by_the_capture(name):
    """Same outputs and the same BatchNorm running statistics as without the capture: the probe
    forward (eval, no grad) updates nothing."""
    case = CASES[name]
    model, twin = build(case).train(), build(case).train()
    model.features.eval()  # mixed flags must be restored exactly
    twin.features.eval()
    before = snapshot(model)
    with camplug.attach(model) as capture:
        for seed in (1, 2):
            torch.manual_seed(seed)
            out = model(images(4, seed=seed))
            torch.manual_seed(seed)
            assert torch.equal(out, twin(images(4, seed=seed)))
        capture.maps()
    for (name_a, a), (name_b, b) in zip(model.state_dict().items(), twin.state_dict().items(),
                                        strict=True):
        assert name_a == name_b and torch.equal(a, b), name_a
    assert snapshot(model)["training"] == before["training"]
    assert_pristine(model)


@pytest.mark.parametrize("name", ["linear_chain", "mean_pool"])  # pre-hook and interceptor
def test_memory_stays_flat_over_1000_forwards(name):
    model = build(CASES[name])
    x = images(2, size=8)
    with camplug.attach(model) as capture, torch.no_grad():
        model(x)
        first = weakref.ref(capture.features)
        for _ in range(9):
            model(x)
        tensors_at_10 = live_tensors()
        hooks_at_10 = hook_count(model)
        for _ in range(990):
            model(x)
        assert live_tensors() == tensors_at_10
        assert first() is None  # earlier batches are released
        assert hook_count(model) == hooks_at_10
        assert capture.logits.shape == (2, 7)
    assert_pristine(model)


def test_compiled_model_is_refused_with_the_alternative():
    model = build(CASES["resnet"])
    compiled = torch.compile(model)
    with pytest.raises(ValueError, match=r"torch.compile.*_orig_mod.*before compiling"):
        camplug.attach(compiled)
    model.layer2 = torch.compile(model.layer2)
    with pytest.raises(ValueError, match="submodule `layer2` was compiled"):
        camplug.attach(model)
    assert_pristine(compiled)


def test_a_submodule_compiled_after_a_cached_attach_is_refused_by_discovery():
    """A model in the head cache is not walked at attach: the probe that its changed state
    needs refuses the compiled submodule, with the same message."""
    model, x = build(CASES["resnet"]), images(2)
    with camplug.attach(model), torch.no_grad():
        model(x)
    original = model.layer2
    model.layer2 = torch.compile(original)
    with camplug.attach(model) as capture, pytest.raises(
        ValueError, match="submodule `layer2` was compiled"
    ):
        capture.discover(x)
    model.layer2 = original
    assert_pristine(model)


@pytest.mark.slow
def test_attach_before_compile_works():
    """The documented alternative: hooks registered before torch.compile are traced into the
    compiled graph (checked with the eager backend to keep it cheap)."""
    case = CASES["mean_pool"]
    model = build(case)
    x = images(2, size=16)
    expected = camplug.explain(model, x)
    capture = camplug.attach(model)
    compiled = torch.compile(model, backend="eager")
    with torch.no_grad():
        assert torch.equal(compiled(x), expected.logits)
    assert torch.equal(capture.maps(), expected.maps)
    capture.close()
    assert_pristine(model)
    with torch.no_grad():
        assert torch.equal(compiled(x), expected.logits)
        compiled(images(3, size=16))  # a closed capture sees no more forwards
    assert capture.logits.shape[0] == 2


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_interrupt_between_features_and_pooling_leaves_no_interceptor(interrupt):
    """Module hooks do not run when a BaseException unwinds a forward; the interceptor window
    (DenseNet: opened after `features`, closed after the pooling) must still close."""
    model = build(CASES["densenet"])
    calls = {"n": 0}

    def interrupt_once(module, args, output):
        calls["n"] += 1
        if calls["n"] == 1:
            raise interrupt()

    with camplug.attach(model) as capture:
        model(images(2))
        handle = model.features.register_forward_hook(interrupt_once)
        with pytest.raises(interrupt):
            model(images(2))
        assert _get_current_function_mode_stack() == []
        assert sys.getprofile() is None
        model(images(2))
        assert capture.maps().shape == (2, 1, 32, 32)
        handle.remove()
    assert_pristine(model)


class _PythonProfiler:
    """A profile function written in Python; records the classes whose ``forward`` returned."""

    def __init__(self) -> None:
        self.returns: list[str] = []

    def __call__(self, frame, event, arg) -> None:
        if event == "return" and frame.f_code.co_name == "forward":
            self.returns.append(type(frame.f_locals.get("self")).__name__)

    def enable(self) -> None:
        sys.setprofile(self)

    def disable(self) -> None:
        sys.setprofile(None)


@pytest.mark.parametrize("kind", ["cProfile", "python"])
def test_a_capture_under_a_profiler_leaves_it_in_place(kind):
    """A C profiler's profile function (cProfile) cannot be chained from Python: the capture
    must neither fail nor replace it. A Python profile function is chained through the
    interceptor window (DenseNet opens one in the model's forward) and restored."""
    model = build(CASES["densenet"])
    x = images(2)
    expected = camplug.explain(model, x)
    profiler = cProfile.Profile() if kind == "cProfile" else _PythonProfiler()
    profiler.enable()
    try:
        with camplug.attach(model) as capture:
            model(x)
            maps = capture.maps()
        still_profiling = sys.getprofile()
    finally:
        profiler.disable()
    assert still_profiling is profiler
    if kind == "python":  # the classifier runs while the window (features -> pooling) is open
        assert type(model.classifier).__name__ in profiler.returns
    assert torch.equal(maps, expected.maps)
    assert _get_current_function_mode_stack() == []
    assert_pristine(model)
