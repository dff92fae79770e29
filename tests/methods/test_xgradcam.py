"""XGrad-CAM against its formula computed from autograd gradients."""

from __future__ import annotations

import pytest
from method_references import EXACT_CASES, NON_EXACT_CASES, check_method, has_feature_layers


@pytest.mark.parametrize("case", EXACT_CASES, ids=lambda case: case.name)
def test_closed_form_on_exact_heads_equals_autograd_reference(case):
    check_method(case, "xgradcam")


@pytest.mark.skipif(not has_feature_layers(), reason="camplug.discovery.layers not landed")
@pytest.mark.parametrize("case", NON_EXACT_CASES, ids=lambda case: case.name)
def test_batched_backward_on_other_heads_equals_autograd_reference(case):
    check_method(case, "xgradcam")
