"""Maps belong to the forward that produced them: weights changed since raise, replaced modules
re-discover, each thread sees its own last forward."""

from __future__ import annotations

import io
import threading

import pytest
import torch
from models import SUPPORTED, UNSUPPORTED, build, images
from torch import nn

import camplug

CASES = {case.name: case for case in (*SUPPORTED, *UNSUPPORTED)}


def test_optimizer_step_after_the_forward_makes_maps_raise():
    model = build(CASES["resnet"]).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    camplug.decorate(model)
    try:
        logits = model(images(4))
        before = model.cam.maps()  # the recipe: maps of this step before the update
        logits.logsumexp(1).mean().backward()
        optimizer.step()
        with pytest.raises(RuntimeError, match=r"changed in place since the forward.*optimizer"):
            model.cam.maps()
        model(images(4))
        after = model.cam.maps()
        assert after.shape == before.shape
    finally:
        camplug.undecorate(model)


def test_in_place_weight_edit_after_the_forward_raises():
    model = build(CASES["batchnorm_head"]).eval()
    with camplug.attach(model) as capture, torch.no_grad():
        model(images(2))
        model.fc.weight.mul_(2)
        with pytest.raises(RuntimeError, match="changed in place"):
            capture.maps()
        with pytest.raises(RuntimeError, match="changed in place"):
            capture.maps(method="gradcam")


@pytest.mark.parametrize("change", ["replace_fc", "assign_state_dict"])
def test_replaced_classifier_is_rediscovered_on_the_next_forward(change):
    model = build(CASES["resnet"]).eval()
    x = images(2)
    with camplug.attach(model) as capture, torch.no_grad():
        model(x)
        if change == "replace_fc":
            model.fc = nn.Linear(model.fc.in_features, 5)
        else:
            state = {k: torch.randn_like(v) if k.startswith("fc.") else v
                     for k, v in model.state_dict().items()}
            model.load_state_dict(state, assign=True)
        logits = model(x)
        weights, bias = capture.class_weights(capture.resolve_targets(topk=2))
        pooled = capture.features.float().mean((2, 3))
        identity = (pooled[:, None, :] * weights).sum(-1) + bias
        torch.testing.assert_close(identity, logits.gather(1, logits.topk(2, 1).indices))


def test_replacing_the_feature_path_with_other_channels_rediscovers():
    model = build(CASES["mean_pool"]).eval()
    x = images(2, size=16)
    with camplug.attach(model) as capture, torch.no_grad():
        model(x)
        channels = capture.features.shape[1]
        last_conv = [m for m in model.features.modules() if isinstance(m, nn.Conv2d)][-1]
        model.features.append(nn.Conv2d(last_conv.out_channels, channels + 3, 3, padding=1))
        model.fc = nn.Linear(channels + 3, model.fc.out_features)
        model(x)
        assert capture.features.shape[1] == channels + 3
        assert capture.maps().shape == (2, 1, 16, 16)


def test_each_thread_reads_the_maps_of_its_own_forward():
    model = build(CASES["resnet"]).eval()
    inputs = [images(2, seed=s) for s in range(4)]
    with torch.no_grad():
        expected = [camplug.explain(model, x).maps for x in inputs]
    camplug.decorate(model)
    barrier = threading.Barrier(len(inputs))
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            with torch.no_grad():
                for _ in range(5):
                    model(inputs[i])
                    barrier.wait()  # every thread has run its forward before any reads maps
                    results[i] = model.cam.maps()
                    barrier.wait()
        except BaseException as error:  # noqa: BLE001 (reported by the main thread)
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        camplug.undecorate(model)
    assert not errors, errors
    for i, maps in results.items():
        assert torch.equal(maps, expected[i]), f"thread {i} got another thread's maps"


def test_describe_names_the_gradient_layer_of_a_model_without_exact_cam():
    case = CASES["vgg"]
    out = io.StringIO()
    layer = camplug.describe(build(case), images(1, case.size), file=out)
    text = out.getvalue()
    assert "exact CAM: none" in text and "`features`" in text
    assert layer.module == case.feature_layer[0]
