"""Public API: explain, decorate/undecorate, describe, output selection and every error path."""

from __future__ import annotations

import io

import pytest
import torch
from models import (
    SUPPORTED,
    UNSUPPORTED,
    DictOutputNet,
    TupleOutputNet,
    build,
    images,
)
from tolerances import assert_close
from torch import nn

import camplug

CASES = {case.name: case for case in SUPPORTED}


@pytest.fixture
def resnet() -> nn.Module:
    return build(CASES["resnet"])


def test_explain_equals_an_attached_capture(resnet):
    x = images(3)
    result = camplug.explain(resnet, x, topk=2, size="features", normalize=False)
    assert isinstance(result, camplug.CamResult)
    logits, maps, targets, method = result
    assert method == "cam"
    with camplug.attach(resnet) as capture:
        expected_logits = resnet(x)
        expected = capture.maps(topk=2, size="features", normalize=False)
    assert torch.equal(logits, expected_logits) and torch.equal(maps, expected)
    assert torch.equal(targets, expected_logits.topk(2, dim=1).indices)
    assert maps.shape == (3, 2, 8, 8) and not maps.requires_grad


def test_explain_passes_output_and_layer(resnet):
    x = images(2)
    tuple_model = build(CASES["resnet"])  # same seed: the fixture's weights
    tuple_model.__class__ = TupleOutputNet
    result = camplug.explain(tuple_model, x, target=3, output=0, layer="layer2")
    assert torch.equal(result.maps, camplug.explain(resnet, x, target=3).maps)
    assert torch.equal(result.targets, torch.full((2, 1), 3))


def test_decorate_keeps_outputs_and_exposes_the_capture(resnet):
    x = images(2)
    twin = build(CASES["resnet"])
    model = camplug.decorate(resnet)
    assert model is resnet and isinstance(model.cam, camplug.CamCapture)
    for seed in (5, 6):
        batch = images(2, seed=seed)
        assert torch.equal(model(batch), twin(batch))
    expected = camplug.explain(twin, images(2, seed=6))
    assert torch.equal(model.cam.maps(), expected.maps)
    assert torch.equal(model.cam.logits, expected.logits)
    with pytest.raises(ValueError, match="already decorated"):
        camplug.decorate(model)
    assert camplug.undecorate(model) is model
    assert not hasattr(model, "cam")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch.equal(model(x), twin(x))
    with pytest.raises(ValueError, match="not decorated"):
        camplug.undecorate(model)


def test_decorate_refuses_to_shadow_an_attribute(resnet):
    resnet.cam = "user data"
    with pytest.raises(ValueError, match="already has an attribute 'cam'"):
        camplug.decorate(resnet)
    assert resnet.cam == "user data" and not resnet._forward_pre_hooks


def test_decorated_unsupported_model_still_runs_and_maps_explain_why():
    case = next(c for c in UNSUPPORTED if c.name == "mobilenet_v3")
    model, twin = camplug.decorate(build(case)), build(case)
    x = images(2)
    assert torch.equal(model(x), twin(x))
    with pytest.raises(camplug.UnsupportedHeadError, match="classifier.1"):
        model.cam.maps()
    camplug.undecorate(model)


def test_describe_prints_and_returns_the_head(resnet):
    out = io.StringIO()
    info = camplug.describe(resnet, images(1), file=out)
    text = out.getvalue()
    assert text.startswith("ResNetLike\n") and info.describe() in text
    assert "`layer2`" in text and "[B, 16, 8, 8]" in text and "`fc`" in text
    assert info.feature_module == "layer2"
    quiet = io.StringIO()
    camplug.describe(resnet, images(1), file=quiet, quiet=True)
    assert quiet.getvalue() == ""


@pytest.mark.parametrize(
    ("model_class", "selector"),
    [(TupleOutputNet, 0), (TupleOutputNet, lambda out: out[0]), (DictOutputNet, "logits")],
)
def test_output_selector(model_class, selector, resnet):
    model = build(CASES["resnet"])
    model.__class__ = model_class
    x = images(2)
    expected = camplug.explain(resnet, x, topk=2)
    with camplug.attach(model, output=selector) as capture:
        model(x)
        assert torch.equal(capture.logits, expected.logits)
        assert torch.equal(capture.maps(topk=2), expected.maps)


def test_index_selector_on_a_tensor_output_keeps_the_tensor(resnet):
    """Inception-like models return a tuple in train mode but a tensor in eval mode."""
    x = images(2)
    with camplug.attach(resnet, output=0) as capture:
        logits = resnet(x)
        assert torch.equal(capture.logits, logits)
    with camplug.attach(resnet, output=lambda out: out[:, :3]) as capture:  # callables apply
        resnet(x)
        with pytest.raises(camplug.UnsupportedHeadError,
                           match=r"`__getitem__` in code outside the model.*reorders or selects"):
            capture.maps()


@pytest.mark.parametrize("model_class", [TupleOutputNet, DictOutputNet])
def test_tuple_or_dict_output_without_selector_is_an_error(model_class):
    model = build(CASES["resnet"])
    model.__class__ = model_class
    with camplug.attach(model) as capture:
        out = model(images(2))
        assert isinstance(out, (tuple, dict))
        with pytest.raises(ValueError, match="pass output= to select the logits"):
            capture.maps()
        with pytest.raises(ValueError, match="output="):
            capture.logits  # noqa: B018


def test_bad_output_selectors():
    model = build(CASES["resnet"])
    model.__class__ = DictOutputNet
    with pytest.raises(TypeError, match="output must be None"):
        camplug.attach(model, output=1.5)
    with camplug.attach(model, output="scores") as capture:
        model(images(1))
        with pytest.raises(ValueError, match="'scores' could not select"):
            capture.maps()
    with camplug.attach(model, output="embedding") as capture:  # the pooled vector itself
        model(images(1))
        maps = capture.maps(3, size="features", normalize=False)
        assert capture.head.folded == ()
        assert torch.equal(maps, capture.features[:, 3:4])


# ------------------------------------------------------------------------------ target errors
@pytest.mark.parametrize(
    ("target", "error", "message"),
    [
        (7, ValueError, "class index 7 is out of range: the model has 7 classes"),
        (-1, ValueError, "class index -1 is out of range"),
        ([0, 1], ValueError, "target has 2 entries but the batch has 3 samples"),
        (torch.tensor([1, 2, 3, 4]), ValueError, "target has 4 entries"),
        ([[0, 1], [2], [3, 4]], ValueError, "different lengths"),
        (torch.zeros(3, 0, dtype=torch.long), ValueError, r"\[B, C\] = \[3, C>=1\]"),
        (torch.zeros(2, 2, dtype=torch.long), ValueError, r"\[B, C\] = \[3, C>=1\]"),
        ([0, 9, 1], ValueError, "class index 9"),
        (torch.tensor([0.0, 1.0, 2.0]), TypeError, "integer class indices"),
        (1.0, TypeError, "target must be None, an int"),
        (True, TypeError, "target must be None, an int"),
        ("cat", TypeError, "target must be None, an int"),
        (torch.zeros(3, 1, 1, dtype=torch.long), ValueError, "0-D, 1-D or 2-D"),
    ],
)
def test_bad_targets(target, error, message, resnet):
    with camplug.attach(resnet) as capture:
        resnet(images(3))
        with pytest.raises(error, match=message):
            capture.maps(target)


def test_bad_topk(resnet):
    with camplug.attach(resnet) as capture:
        resnet(images(2))
        with pytest.raises(ValueError, match="either target or topk"):
            capture.maps(1, topk=2)
        for topk in (0, 8, 2.0):
            with pytest.raises(ValueError, match=r"topk must be an int in 1..7"):
                capture.maps(topk=topk)


def test_class_weights_validates_targets(resnet):
    with camplug.attach(resnet) as capture:
        resnet(images(2))
        with pytest.raises(ValueError, match=r"int64 tensor \[B=2, C\]"):
            capture.class_weights(torch.tensor([1, 2]))
        with pytest.raises(ValueError, match="out of range"):
            capture.class_weights(torch.tensor([[1], [7]]))
        weights, bias = capture.class_weights(torch.tensor([[1], [6]]))
    assert weights.dtype == bias.dtype == torch.float32
    assert_close(weights[:, 0], resnet.fc.weight[[1, 6]], torch.float32, "plain fc rows")
    assert_close(bias[:, 0], resnet.fc.bias[[1, 6]], torch.float32, "plain fc bias")


# ------------------------------------------------------------------------------ state errors
def test_maps_before_any_forward(resnet):
    with camplug.attach(resnet) as capture:
        for read in (capture.maps, lambda: capture.logits, lambda: capture.features,
                     lambda: capture.input_size, capture.resolve_targets):
            with pytest.raises(RuntimeError, match="no forward has been captured yet"):
                read()
        with pytest.raises(RuntimeError, match="discovered on the first forward"):
            capture.head  # noqa: B018


def test_empty_batch(resnet):
    with camplug.attach(resnet) as capture:
        logits = resnet(torch.zeros(0, 3, 32, 32))
        assert logits.shape == (0, 7)
        with pytest.raises(ValueError, match="empty batch"):
            capture.maps()
        with pytest.raises(ValueError, match="empty batch"):
            camplug.explain(resnet, torch.zeros(0, 3, 32, 32))


@pytest.mark.parametrize(
    ("size", "message"),
    [("inputs", "size must be 'input', 'features'"), (True, "size must be"),
     (None, "size must be"), (0, "size must be positive"), ((4, -1), "size must be positive"),
     ((1, 2, 3), "pair")],
)
def test_bad_size(size, message, resnet):
    with camplug.attach(resnet) as capture:
        resnet(images(1))
        with pytest.raises(ValueError, match=message):
            capture.maps(size=size)


def test_bad_attach_arguments(resnet):
    with pytest.raises(TypeError, match="torch.nn.Module"):
        camplug.attach(lambda x: x)
    with pytest.raises(ValueError, match="backend must be"):
        camplug.attach(resnet, backend="cuda")
    with pytest.raises(ValueError, match="no submodule named 'layer5'"):
        camplug.attach(resnet, "layer5")
    with pytest.raises(TypeError, match="layer must be"):
        camplug.attach(resnet, 3)
    assert not resnet._forward_pre_hooks and not resnet._forward_hooks


def test_layer_off_the_pooling_path_is_reported_at_maps(resnet):
    with camplug.attach(resnet, "layer1") as capture:
        resnet(images(1))
        with pytest.raises(ValueError, match="does not feed the global pooling"):
            capture.maps()


def test_unsupported_model_error_at_maps_names_module_and_grad_cam():
    case = next(c for c in UNSUPPORTED if c.name == "vgg")
    model = build(case)
    with camplug.attach(model) as capture:
        out = model(images(2))
        assert out.shape == (2, 7)
        with pytest.raises(camplug.UnsupportedHeadError, match="method=.gradcam.") as error:
            capture.maps()
    assert "`classifier.1` (ReLU)" in str(error.value)
    with pytest.raises(camplug.UnsupportedHeadError):
        camplug.explain(model, images(2))


def test_data_parallel_on_several_gpus_is_refused(resnet, monkeypatch):
    wrapped = nn.DataParallel(resnet)
    monkeypatch.setattr(wrapped, "device_ids", [0, 1])
    with pytest.raises(NotImplementedError, match="several GPUs"):
        camplug.attach(wrapped)
