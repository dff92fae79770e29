"""LayerCAM (per-position weights) against ReLU(autograd gradients) * A, position by position."""

from __future__ import annotations

import pytest
import torch
from method_references import (
    EXACT_CASES,
    NON_EXACT_CASES,
    autograd_gradients,
    check_method,
    has_feature_layers,
)
from models import build, images

import camplug


@pytest.mark.parametrize("case", EXACT_CASES, ids=lambda case: case.name)
def test_closed_form_on_exact_heads_equals_autograd_reference(case):
    check_method(case, "layercam")


@pytest.mark.skipif(not has_feature_layers(), reason="camplug.discovery.layers not landed")
@pytest.mark.parametrize("case", NON_EXACT_CASES, ids=lambda case: case.name)
def test_batched_backward_on_other_heads_equals_autograd_reference(case):
    check_method(case, "layercam")


def test_weights_are_per_position_except_on_exact_heads():
    exact = next(case for case in EXACT_CASES if case.name == "resnet")
    model, x = build(exact), images(2)
    with camplug.attach(model) as capture, torch.no_grad():
        model(x)
        targets = capture.resolve_targets(topk=2)
        weights = camplug.methods.get("layercam").weights(capture, targets)
    assert weights.shape == (2, 2, 16, 1, 1)  # constant over space: the per-channel path
    _, grads = autograd_gradients(model, x, "layer2", targets)
    assert grads.shape[-2:] == (8, 8)
    assert torch.allclose(weights.double().expand_as(grads), grads.clamp(min=0), atol=1e-7)
