"""Closed-form gradients on exact heads equal autograd through the whole model."""

from __future__ import annotations

import pytest
import torch
from method_references import autograd_gradients
from models import SUPPORTED, build, images
from tolerances import assert_close

import camplug

# MutatingNet changes its feature map in place after pooling: autograd cannot differentiate it.
WITH_MODULE = [case for case in SUPPORTED if case.feature_module and case.name != "mutating"]


@pytest.mark.parametrize("case", WITH_MODULE, ids=lambda case: case.name)
def test_closed_form_gradients_equal_autograd(case):
    model = build(case).eval()
    x = images(3, seed=5)
    with camplug.attach(model) as capture, torch.no_grad():
        model(x)
        targets = capture.resolve_targets(topk=2)
        closed = capture.gradients(targets)
        features = capture.features
    _, expected = autograd_gradients(model, x, case.feature_module, targets)
    if tuple(features.shape[1:]) != tuple(expected.shape[2:]):
        pytest.skip("the feature module's output is not the feature map itself")
    assert closed.shape[:3] == expected.shape[:3] and closed.shape[-2:] == (1, 1)
    assert_close(closed.expand_as(expected), expected, torch.float32, f"{case.name} gradients")


def test_closed_form_works_under_inference_mode():
    model = build(next(c for c in SUPPORTED if c.name == "layernorm_head")).eval()
    x = images(2)
    with camplug.attach(model) as capture:
        with torch.no_grad():
            model(x)
        expected = capture.gradients(capture.resolve_targets())
        with torch.inference_mode():
            model(x)
            got = capture.gradients(capture.resolve_targets())
    assert torch.equal(got, expected)


def test_gradcam_on_a_gap_head_is_cam_divided_by_area():
    """The known LayerGradCam identity, on heads folded without per-sample scale."""
    model = build(next(c for c in SUPPORTED if c.name == "resnet")).eval()
    x = images(2)
    cam = camplug.explain(model, x, topk=3, normalize=False, size="features")
    grad = camplug.explain(model, x, topk=3, method="gradcam", relu=False, normalize=False,
                           size="features")
    assert grad.method == "gradcam" and cam.method == "cam"
    area = cam.maps.shape[-1] * cam.maps.shape[-2]
    assert_close(grad.maps, cam.maps / area, torch.float32, "Grad-CAM = CAM / (h*w)")
