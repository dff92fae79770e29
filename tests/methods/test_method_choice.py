"""Choosing a method (registry, "auto", instances with options) and running the gradient
methods where gradients are hard to get: several classes in one batched backward, frozen
models, inference_mode, and a forward that recorded no graph."""

from __future__ import annotations

import re

import pytest
import torch
from method_references import (
    EXACT_CASES,
    GRADIENT_REFERENCES,
    NON_EXACT_CASES,
    autograd_gradients,
    feature_module,
    has_feature_layers,
    reference_maps,
)
from models import build, images
from tolerances import assert_close

import camplug
from camplug import methods

GRADIENT_METHODS = [name for name in methods.available() if methods.get(name).uses_gradients]
EXACT = {case.name: case for case in EXACT_CASES}
needs_layers = pytest.mark.skipif(not has_feature_layers(),
                                  reason="camplug.discovery.layers not landed")


def test_available_lists_every_method():
    assert methods.available() == ["cam", "gradcam", "gradcam++", "xgradcam", "layercam",
                                   "scorecam", "eigencam"]
    assert GRADIENT_METHODS == ["gradcam", "gradcam++", "xgradcam", "layercam"]
    for name in methods.available():
        assert methods.get(name.upper()) is methods.get(name)
        assert methods.get(name).title


def test_unknown_names_list_the_available_ones():
    listed = ", ".join(["auto", *methods.available()])
    with pytest.raises(ValueError, match=re.escape(f"unknown method 'gradcam+++'; available: "
                                                   f"{listed}")):
        camplug.explain(build(EXACT["resnet"]), images(1), method="gradcam+++")
    with pytest.raises(TypeError, match="method name .* or a camplug.methods.Method instance"):
        methods.resolve(3, exact_head=True)


def test_a_method_instance_is_used_as_is():
    class Doubled(methods.GradCAM):
        def weights(self, source, targets):
            return 2 * super().weights(source, targets)

    model, x = build(EXACT["resnet"]), images(2)
    with camplug.attach(model) as capture, torch.no_grad():
        model(x)
        plain = capture.maps(topk=2, method="gradcam", normalize=False, relu=False)
        doubled = capture.maps(topk=2, method=Doubled(), normalize=False, relu=False)
    assert torch.equal(doubled, 2 * plain)


def test_auto_is_cam_on_exact_heads():
    result = camplug.explain(build(EXACT["resnet"]), images(2), method="auto")
    assert result.method == "cam"


@needs_layers
@pytest.mark.parametrize("case", NON_EXACT_CASES, ids=lambda case: case.name)
def test_auto_is_gradcam_elsewhere(case):
    result = camplug.explain(build(case), images(2), method="auto")
    assert result.method == "gradcam"
    expected = camplug.explain(build(case), images(2), method="gradcam")
    assert torch.equal(result.maps, expected.maps)


@needs_layers
@pytest.mark.parametrize("method", GRADIENT_METHODS)
@pytest.mark.parametrize("case", NON_EXACT_CASES, ids=lambda case: case.name)
def test_several_classes_in_one_batched_backward_equal_the_loop(case, method, monkeypatch):
    model, x = build(case), images(3, seed=7)
    grad = torch.autograd.grad
    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs.get("is_grads_batched", False))
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counted)
    result = camplug.explain(model, x, method=method, topk=3, normalize=False, size="features")
    monkeypatch.undo()
    assert calls == [True]  # one backward for the 3 classes of every sample
    for c in range(3):  # one class per call: the loop a per-class implementation runs
        single = camplug.explain(model, x, result.targets[:, c], method=method,
                                 normalize=False, size="features")
        assert_close(result.maps[:, c : c + 1], single.maps, torch.float32, f"class {c}")
    a, g = autograd_gradients(model, x, feature_module(case), result.targets)
    expected = reference_maps(a, GRADIENT_REFERENCES[method](a, g), relu=True)
    assert_close(result.maps, expected, torch.float32, "batched vs autograd loop")


@needs_layers
@pytest.mark.parametrize("method", GRADIENT_METHODS)
@pytest.mark.parametrize("case", NON_EXACT_CASES, ids=lambda case: case.name)
def test_frozen_models_get_gradient_maps_through_explain(case, method):
    model, x = build(case), images(2)
    model.requires_grad_(False)
    result = camplug.explain(model, x, method=method, topk=2, normalize=False, size="features")
    assert not any(p.requires_grad or p.grad is not None for p in model.parameters())
    a, g = autograd_gradients(model, x, feature_module(case), result.targets)
    expected = reference_maps(a, GRADIENT_REFERENCES[method](a, g), relu=True)
    assert_close(result.maps, expected, torch.float32, f"frozen {case.name} {method}")


@pytest.mark.parametrize("method", GRADIENT_METHODS)
@pytest.mark.parametrize("name", ["resnet", "layernorm_head", "convnext"])
def test_closed_forms_work_under_inference_mode(name, method):
    model, x = build(EXACT[name]), images(2)
    expected = camplug.explain(model, x, method=method, topk=2)
    with camplug.attach(model) as capture, torch.inference_mode():
        model(x)
        got = capture.maps(topk=2, method=method)
    assert torch.equal(got, expected.maps)


@needs_layers
@pytest.mark.parametrize("method", GRADIENT_METHODS)
@pytest.mark.parametrize("case", NON_EXACT_CASES, ids=lambda case: case.name)
def test_explain_under_inference_mode_runs_a_real_backward(case, method):
    model, x = build(case), images(2)
    expected = camplug.explain(model, x, method=method, topk=2)
    with torch.inference_mode():
        got = camplug.explain(model, x, method=method, topk=2)
    assert torch.equal(got.maps, expected.maps)


@needs_layers
@pytest.mark.parametrize("method", GRADIENT_METHODS)
@pytest.mark.parametrize("case", NON_EXACT_CASES, ids=lambda case: case.name)
def test_a_forward_without_graph_names_explain(case, method):
    model = build(case)
    with camplug.attach(model) as capture:
        with torch.no_grad():
            model(images(2))
        with pytest.raises(RuntimeError, match=r"camplug\.explain\(model, x, method=\.\.\.\)"):
            capture.maps(method=method)
        capture.maps(method="eigencam")  # the features are there: methods without gradients run
