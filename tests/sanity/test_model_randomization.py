"""Model and data randomization checks (Adebayo et al. 2018): the trained demo model's CAM
decorrelates as its layers are randomized, an edge detector that ignores the model is flagged,
the user's model is left exactly as it was, and each step is one forward of all samples."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from models import SUPPORTED, UNSUPPORTED, build, images
from torch import nn

from camplug import sanity, zoo
from camplug.data.synthetic import SyntheticLocalization

SAMPLES = 16
CASES = {case.name: case for case in SUPPORTED + UNSUPPORTED}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def edges(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the grey image: an "explanation" that ignores the model."""
    grey = images.mean(dim=1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    gx, gy = F.conv2d(grey, kx, padding=1), F.conv2d(grey, kx.transpose(2, 3), padding=1)
    return (gx.square() + gy.square()).sqrt()[:, 0]


def snapshot(model: nn.Module) -> dict:
    return {
        "params": {n: (id(p), p.detach().clone(), p.requires_grad)
                   for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                     for m in model.modules()),
        "attributes": {n: sorted(vars(m)) for n, m in model.named_modules()},
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    for key in ("training", "hooks", "attributes"):
        assert after[key] == before[key], key
    for name, (ident, value, requires_grad) in before["params"].items():
        now_id, now_value, now_requires_grad = after["params"][name]
        assert (now_id, now_requires_grad) == (ident, requires_grad), name
        assert torch.equal(now_value, value), name
    for name, value in before["buffers"].items():
        assert torch.equal(after["buffers"][name], value), name


@pytest.fixture(scope="module")
def demo():
    model = zoo.load_demo_model()
    data = SyntheticLocalization(SAMPLES, image_size=96, seed=2)
    before = snapshot(model)
    result = sanity.model_randomization(model, data, methods=["cam", edges], samples=SAMPLES)
    return model, before, result


def test_trained_cam_decorrelates_as_layers_are_randomized(demo):
    _, _, result = demo
    cascade = result.curve("cascading", "cam")
    assert [s.layer for s in cascade] == list(reversed(result.layers))
    correlations = [s.mean_abs_spearman for s in cascade]
    similarities = [s.stats("ssim")["mean"] for s in cascade]
    # the trained maps correlate perfectly with themselves; one random top layer already
    # takes most of that away, and no later step brings it back
    assert correlations[0] < 0.6, correlations
    assert max(correlations[3:]) < 0.5, correlations
    assert max(similarities) < 0.5, similarities
    assert all(s.spearman.shape == (SAMPLES,) and s.ssim.shape == (SAMPLES,) for s in cascade)
    verdict = {v.method: v for v in result.verdicts}["cam"]
    assert verdict.passed is True, verdict.reason


def test_an_edge_detector_that_ignores_the_model_is_flagged(demo):
    _, _, result = demo
    for variant in ("cascading", "independent"):
        for step in result.curve(variant, "edges"):
            assert step.spearman.min() > 1 - 1e-9 and step.ssim.min() > 1 - 1e-9
    verdict = {v.method: v for v in result.verdicts}["edges"]
    assert verdict.passed is False
    assert "not under 0.5" in verdict.reason
    assert "edges: FAIL" in result.to_markdown()
    assert "necessary, not sufficient" in result.to_markdown()


def test_independent_randomization_changes_one_layer_at_a_time(demo):
    model, _, result = demo
    owners = [n for n, m in model.named_modules() if list(m.parameters(recurse=False))]
    assert result.layers == owners  # DemoCNN defines its layers in call order
    independent = result.curve("independent", "cam")
    assert [s.randomized for s in independent] == [(n,) for n in reversed(owners)]
    cascade = result.curve("cascading", "cam")
    assert [len(s.randomized) for s in cascade] == list(range(1, len(owners) + 1))
    # the top layer alone is the first step of both variants: the same random draw
    assert torch.equal(torch.from_numpy(independent[0].spearman),
                       torch.from_numpy(cascade[0].spearman))
    # randomizing a BatchNorm's affine parameters alone keeps most of the map; a conv does not
    by_layer = {s.layer: s.mean_abs_spearman for s in independent}
    assert by_layer["features.16"] > by_layer["features.15"]


def test_the_users_model_is_left_exactly_as_it_was(demo):
    model, before, _ = demo
    assert_unchanged(model, before)


class CountingResNet(CASES["resnet"].build().__class__):
    """ResNetLike recording the batch size of every forward (the list is shared by copies)."""

    calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CountingResNet.calls.append(x.shape[0])
        return super().forward(x)


def test_one_forward_of_all_samples_per_step_and_train_mode_kept():
    torch.manual_seed(0)
    model = CountingResNet().train()
    before = snapshot(model)
    CountingResNet.calls.clear()
    result = sanity.model_randomization(model, images(6, 32), methods=["cam", "gradcam"],
                                        samples=6)
    n_layers = len(result.layers)
    assert len(result.steps) == 2 * 2 * n_layers  # variants x methods x layers
    # the reference forward and one per step (the other calls are 1-sample probes)
    assert CountingResNet.calls.count(6) == 1 + 2 * n_layers
    assert set(CountingResNet.calls) <= {1, 6}
    assert_unchanged(model, before)
    assert model.training


def test_gradient_methods_on_a_model_without_exact_cam():
    model = build(CASES["vgg"])
    model.features[0].weight.requires_grad_(False)  # a partly frozen model
    before = snapshot(model)
    with torch.inference_mode():
        result = sanity.model_randomization(model, images(4, 16), methods="gradcam", samples=4,
                                            variants=["cascading"])
    assert result.layers == ["features.0", "classifier.0", "classifier.3"]
    assert [s.layer for s in result.steps] == ["classifier.3", "classifier.0", "features.0"]
    assert_unchanged(model, before)


class OutOfOrder(nn.Module):
    """Defines the head before the body, and a layer the forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)
        self.unused = nn.Linear(4, 4)
        self.body = nn.Conv2d(3, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x * self.scale).mean(dim=(2, 3)))


def test_parameterized_layers_follow_the_forward_not_the_definitions():
    model = OutOfOrder()
    assert sanity.parameterized_layers(model, torch.zeros(1, 3, 8, 8)) == ["", "body", "head"]
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_randomize_layer_keeps_scale_and_buffers_and_is_seeded():
    layer = nn.BatchNorm1d(512)
    with torch.no_grad():
        layer.weight.copy_(1.5 + 0.2 * torch.randn(512, generator=torch.Generator().manual_seed(3)))
    layer.running_mean.fill_(0.7)
    trained = layer.weight.detach().clone()
    sanity.randomize_layer(layer, torch.Generator().manual_seed(0))
    assert not torch.equal(layer.weight, trained)
    assert abs(float(layer.weight.detach().mean()) - float(trained.mean())) < 0.05
    assert abs(float(layer.weight.detach().std()) / float(trained.std()) - 1) < 0.15
    assert float(layer.bias.detach().std()) > 0.5  # a constant (zero) tensor: std 1
    assert torch.equal(layer.running_mean, torch.full((512,), 0.7))
    first = layer.weight.detach().clone()
    layer.weight.data.copy_(trained)
    sanity.randomize_layer(layer, torch.Generator().manual_seed(0))
    assert torch.equal(layer.weight, first)


def test_data_randomization_compares_with_the_retrained_model():
    model = zoo.load_demo_model()
    data = SyntheticLocalization(8, image_size=96, seed=2)
    before = snapshot(model)
    result = sanity.data_randomization(model, zoo.untrained_demo_model(seed=5), data,
                                       methods=["cam", edges], samples=8)
    verdicts = {v.method: v.passed for v in result.verdicts}
    assert verdicts == {"cam": True, "edges": False}
    assert [s.variant for s in result.steps] == ["data", "data"]
    same = sanity.data_randomization(model, model, data, methods="cam", samples=8)
    assert same.steps[0].spearman.min() > 1 - 1e-9
    assert same.verdicts[0].passed is False
    assert_unchanged(model, before)


def bad_shape(model, images, classes):
    return torch.zeros(len(images), 1, 4, 4)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"methods": ["nope"]}, ValueError, "unknown method 'nope'; available: auto, cam"),
    ({"methods": []}, ValueError, "at least one method"),
    ({"methods": [3]}, TypeError, "a method is a name"),
    ({"methods": ["cam", "CAM"]}, ValueError, "distinct"),
    ({"variants": ["sideways"]}, ValueError, "subset of"),
    ({"threshold": 1.5}, ValueError, r"in \[-1, 1\]"),
    ({"top_fraction": 0.0}, ValueError, r"\(0, 1\]"),
    ({"samples": 0}, ValueError, "positive int"),
    ({"methods": [bad_shape]}, ValueError, r"must return maps \[N, H, W\] with N = 2"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    model = build(CASES["resnet"])
    with pytest.raises(error, match=match):
        sanity.model_randomization(model, images(2, 16), **kwargs)


def test_bad_models_and_data_are_named():
    with pytest.raises(ValueError, match="owns no parameters"):
        sanity.model_randomization(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                                   images(2, 16), methods=[edges])
    model = build(CASES["resnet"])
    with pytest.raises(ValueError, match="different shapes"):
        sanity.model_randomization(model, [images(1, 16)[0], images(1, 20)[0]])
    with pytest.raises(TypeError, match="not an image tensor"):
        sanity.model_randomization(model, [{"picture": 1}])
    with pytest.raises(ValueError, match="empty"):
        sanity.model_randomization(model, [])
    with pytest.raises(TypeError, match="torch.nn.Module"):
        sanity.model_randomization("model", images(2, 16))
