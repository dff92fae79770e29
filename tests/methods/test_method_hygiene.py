"""Every method leaves the model as it was: no hook, no requires_grad flag, no gradient, no mode
or parameter changed, also when it raises (helpers from tests/test_hygiene.py)."""

from __future__ import annotations

import pytest
import torch
from method_references import NON_EXACT_CASES, has_feature_layers
from models import SUPPORTED, build, images
from test_hygiene import assert_pristine, assert_same_state, snapshot
from torch import nn

import camplug
from camplug import methods

CASES = {case.name: case for case in SUPPORTED + NON_EXACT_CASES}
NON_EXACT = [case.name for case in NON_EXACT_CASES]
MODELS = ["resnet", "convnext", "vit"] + (NON_EXACT if has_feature_layers() else [])


def prepared(name: str, frozen: bool) -> tuple[nn.Module, dict]:
    """The model (eval mode) with one parameter frozen, or all of them, and its snapshot."""
    model = build(CASES[name])
    if frozen:
        model.requires_grad_(False)
    else:
        next(model.parameters()).requires_grad_(False)
    return model, snapshot(model)


def assert_untouched(model: nn.Module, before: dict) -> None:
    assert_pristine(model)
    assert_same_state(model, before)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("frozen", [False, True], ids=["mixed", "frozen"])
@pytest.mark.parametrize("method", methods.available())
@pytest.mark.parametrize("name", MODELS)
def test_explain_leaves_the_model_as_it_was(name, method, frozen):
    model, before = prepared(name, frozen)
    x = images(2, CASES[name].size)
    if method == "cam" and name in NON_EXACT:
        with pytest.raises(camplug.UnsupportedHeadError, match="method='gradcam'"):
            camplug.explain(model, x, method=method, topk=2)
    else:
        result = camplug.explain(model, x, method=method, topk=2)
        assert result.maps.shape == (2, 2, 32, 32) and not result.maps.requires_grad
    assert_untouched(model, before)


class Failing(methods.Method):
    """Runs ``inner`` (its gradients, masked forwards, ...) then raises."""

    name, title = "failing", "fails after its inner method"

    def __init__(self, inner: str) -> None:
        self.inner = methods.get(inner)

    def weights(self, source, targets):
        self.inner.weights(source, targets)
        raise ArithmeticError("method failed")


@pytest.mark.parametrize("method", methods.available())
@pytest.mark.parametrize("name", MODELS)
def test_a_method_that_raises_leaves_the_model_as_it_was(name, method):
    model, before = prepared(name, frozen=False)
    with camplug.attach(model) as capture:
        with torch.enable_grad():
            model(images(2, CASES[name].size))
        expected = (camplug.UnsupportedHeadError if method == "cam" and name in NON_EXACT
                    else ArithmeticError)
        with pytest.raises(expected):
            capture.maps(method=Failing(method))
    assert_untouched(model, before)


def test_a_forward_failing_inside_scorecam_leaves_the_capture_usable():
    """The masked forwards (5 at a time here) raise: the capture still sees later forwards."""
    model, before = prepared("resnet", frozen=False)

    def fail_on_masked_batches(_module, args):
        if len(args[0]) == 5:
            raise OverflowError("masked forward failed")

    x = images(2)
    with camplug.attach(model) as capture, torch.no_grad():
        model(x)
        handle = model.register_forward_pre_hook(fail_on_masked_batches)
        with pytest.raises(OverflowError, match="masked forward failed"):
            capture.maps(method=methods.ScoreCAM(batch_size=5))
        handle.remove()
        logits = model(images(2, seed=9))
        assert torch.equal(capture.logits, logits)  # later forwards are captured again
        capture.maps(method="scorecam")
    assert_untouched(model, before)


class BackwardFails(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise FloatingPointError("backward failed")


@pytest.mark.skipif(not has_feature_layers(), reason="camplug.discovery.layers not landed")
@pytest.mark.parametrize("frozen", [False, True], ids=["mixed", "frozen"])
@pytest.mark.parametrize("method", [m for m in methods.available()
                                    if methods.get(m).uses_gradients])
def test_a_failing_backward_in_explain_leaves_the_model_as_it_was(method, frozen):
    model, before = prepared("vgg", frozen)
    handle = model.classifier.register_forward_hook(
        lambda _module, _args, output: BackwardFails.apply(output))
    with pytest.raises(FloatingPointError, match="backward failed"):
        camplug.explain(model, images(2), method=method)
    handle.remove()
    assert_untouched(model, before)


def test_gradient_methods_after_a_forward_without_graph_raise_and_leave_nothing():
    if not has_feature_layers():
        pytest.skip("camplug.discovery.layers not landed")
    model, before = prepared("vgg", frozen=False)
    with camplug.attach(model) as capture:
        with torch.no_grad():
            model(images(2))
        for method in ("gradcam", "gradcam++", "xgradcam", "layercam"):
            with pytest.raises(RuntimeError, match="camplug.explain"):
                capture.maps(method=method)
    assert_untouched(model, before)


def test_scorecam_on_a_train_mode_model_leaves_its_statistics():
    model = build(CASES["resnet"]).train()
    x = images(2)
    with camplug.attach(model) as capture, torch.no_grad():
        model(x)
        before = snapshot(model)
        capture.maps(method="scorecam")
    assert_same_state(model, before)
