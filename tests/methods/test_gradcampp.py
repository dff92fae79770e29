"""Grad-CAM++ against the paper's closed-form coefficients computed from autograd gradients."""

from __future__ import annotations

import pytest
import torch
from method_references import (
    EXACT_CASES,
    NON_EXACT_CASES,
    check_method,
    gradcampp_weights,
    has_feature_layers,
)

from camplug import methods


@pytest.mark.parametrize("case", EXACT_CASES, ids=lambda case: case.name)
def test_closed_form_on_exact_heads_equals_autograd_reference(case):
    check_method(case, "gradcam++")


@pytest.mark.skipif(not has_feature_layers(), reason="camplug.discovery.layers not landed")
@pytest.mark.parametrize("case", NON_EXACT_CASES, ids=lambda case: case.name)
def test_batched_backward_on_other_heads_equals_autograd_reference(case):
    check_method(case, "gradcam++")


def test_zero_denominator_gives_zero_coefficient():
    """A zero gradient (0 / 0) and a denominator cancelled exactly give alpha = 0, no NaN."""

    class Source:
        features = torch.tensor([[[[1.0, 1.0]]]])  # [1, 1, 1, 2], sum 2

        @staticmethod
        def gradients(targets):
            # g = 0 (0 / 0) and g = -1 (2 g^2 + 2 g^3 = 0) get alpha = 0; g = 1 gets 1 / 4
            return torch.tensor([0.0, -1.0, 1.0]).view(1, 3, 1, 1, 1).expand(1, 3, 1, 1, 2)

    got = methods.get("gradcam++").weights(Source(), torch.zeros(1, 3, dtype=torch.long))
    expected = gradcampp_weights(Source.features.double(), Source.gradients(None).double())
    assert torch.equal(got.double(), expected)
    assert got.flatten().tolist() == [0.0, 0.0, 0.5]
