"""Score-CAM against the paper's masked forwards (fp64 model copy, one input at a time, with the
baseline term), batching of the masked forwards, and its options."""

from __future__ import annotations

import pytest
import torch
from method_references import EXACT_CASES, NON_EXACT_CASES, check_method, has_feature_layers
from models import SUPPORTED, build, images
from tolerances import assert_close

import camplug
from camplug.methods import ScoreCAM

CASES = {case.name: case for case in SUPPORTED}


@pytest.mark.parametrize("name", ["resnet", "mobilenet_v2", "convnext", "layernorm_head",
                                  "timm_style"])
def test_exact_heads_equal_the_reference(name):
    check_method(next(case for case in EXACT_CASES if case.name == name), "scorecam", batch=2)


@pytest.mark.skipif(not has_feature_layers(), reason="camplug.discovery.layers not landed")
@pytest.mark.parametrize("case", NON_EXACT_CASES, ids=lambda case: case.name)
def test_other_heads_equal_the_reference(case):
    check_method(case, "scorecam", batch=2)


def test_masked_forwards_run_in_batches_of_the_chosen_size():
    model, x = build(CASES["resnet"]), images(2)  # K = 16: 32 masked inputs
    rows = []
    with camplug.attach(model) as capture, torch.no_grad():
        model(x)
        expected = capture.maps(topk=2, method="scorecam", normalize=False)
        handle = model.register_forward_pre_hook(lambda _m, args: rows.append(len(args[0])))
        got = capture.maps(topk=2, method=ScoreCAM(batch_size=5), normalize=False)
        handle.remove()
    assert rows == [5] * 6 + [2]
    assert_close(got, expected, torch.float32, "batch 5 vs the default batch")


def test_default_batch_size_and_its_check():
    assert camplug.methods.get("scorecam").batch_size == 32
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="batch_size"):
            ScoreCAM(batch_size=bad)


def test_input_batch_must_match_the_features():
    class Source:
        features = torch.ones(2, 3, 4, 4)
        input = torch.ones(3, 3, 16, 16)

    with pytest.raises(ValueError, match=r"B=2 like the features.*\(3, 3, 16, 16\)"):
        ScoreCAM().weights(Source(), torch.zeros(2, 1, dtype=torch.long))
