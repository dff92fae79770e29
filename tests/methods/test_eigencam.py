"""Eigen-CAM against the top eigenvector of the activations' covariance (fp64), its sign rule,
its class-agnostic maps, and the documented equivalence with the centred projection."""

from __future__ import annotations

import pytest
import torch
from kernel_oracle import oracle_cam
from method_references import (
    EXACT_CASES,
    NON_EXACT_CASES,
    check_method,
    eigencam_weights,
    has_feature_layers,
)
from models import SUPPORTED, build, images
from tolerances import assert_close

import camplug

CASES = {case.name: case for case in SUPPORTED}


@pytest.mark.parametrize("name", ["resnet", "mobilenet_v2", "efficientnet", "convnext",
                                  "timm_head", "linear_chain"])
def test_exact_heads_equal_the_reference(name):
    check_method(next(case for case in EXACT_CASES if case.name == name), "eigencam")


@pytest.mark.skipif(not has_feature_layers(), reason="camplug.discovery.layers not landed")
@pytest.mark.parametrize("case", NON_EXACT_CASES, ids=lambda case: case.name)
def test_other_heads_equal_the_reference(case):
    check_method(case, "eigencam")


def test_class_agnostic_and_signed_by_the_mean_activation():
    model, x = build(CASES["convnext"]), images(3)  # features of both signs
    with camplug.attach(model) as capture, torch.no_grad():
        model(x)
        targets = capture.resolve_targets(topk=3)
        weights = camplug.methods.get("eigencam").weights(capture, targets)
        features = capture.features.double()
        maps = capture.maps(targets, method="eigencam")
    assert weights.shape == (3, 3, 12)
    assert torch.equal(weights, weights[:, :1].expand_as(weights))
    assert torch.equal(maps, maps[:, :1].expand_as(maps))
    mean = features.mean(dim=(-2, -1))
    assert ((mean * weights[:, 0].double()).sum(dim=-1) > 0).all()
    assert torch.allclose(weights.double().norm(dim=-1), torch.ones(3, 3, dtype=torch.float64))


def test_normalized_map_equals_the_centred_projection():
    """M v and M_c v differ by a constant per map: min-max normalization removes it."""
    model, x = build(CASES["resnet"]), images(2)
    result = camplug.explain(model, x, method="eigencam", size="features")
    with camplug.attach(model) as capture, torch.no_grad():
        model(x)
        features = capture.features.double()
    centred = features - features.mean(dim=(-2, -1), keepdim=True)
    expected = oracle_cam(centred, eigencam_weights(features, 1), tuple(features.shape[-2:]),
                          relu=False, normalize=True)
    assert_close(result.maps, expected, torch.float32, "normalized Eigen-CAM vs centred")
