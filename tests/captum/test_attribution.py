"""ClassActivationMap against Captum's LayerGradCam and inside Captum's tools.

References are independent of the code under test: Captum's gradient-based LayerGradCam (equal
to CAM / (h*w) on GAP + affine heads), hand-written loops for sensitivity and infidelity, the
heads' own modules evaluated on a zero vector for the bias, and a per-pixel numpy bilinear.
"""

from __future__ import annotations

import functools

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam, NoiseTunnel, visualization
from captum.metrics import infidelity, sensitivity_max
from kernel_oracle import numpy_bilinear
from models import SUPPORTED, ResNetLike, TupleOutputNet, build, conv_bn_relu, images
from torch import nn
from torch_threads import single_intra_op_thread

from camplug.captum.attribution import ClassActivationMap, to_input_shape, to_visualization

matplotlib.use("Agg")

EXACT = {"atol": 1e-6, "rtol": 1e-6}  # fp32 against LayerGradCam (the tolerance)
CASES = {case.name: case for case in SUPPORTED}


one_thread = pytest.fixture(autouse=True, scope="module")(single_intra_op_thread)

# Heads that are affine in the pooled vector for fixed parameters: there LayerGradCam's
# gradient is the constant W_eff / (h*w) and equals CAM. (LayerNorm/RMSNorm heads normalize
# by the sample's own statistics: CAM freezes them, the gradient does not.)
GRADCAM_EQUAL = [
    "resnet", "mobilenet_v2", "efficientnet", "batchnorm_head", "linear_chain",
    "conv_classifier", "timm_style", "timm_head", "mean_pool", "shared_pool",
]


def model_and_layer(name: str) -> tuple[nn.Module, nn.Module]:
    case = CASES[name]
    model = build(case)
    return model, dict(model.named_modules())[case.feature_module]


def no_hooks_left(model: nn.Module) -> bool:
    return all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)
        for m in model.modules()
    )


# ------------------------------------------------------------------ equality with LayerGradCam
@pytest.mark.parametrize("name", GRADCAM_EQUAL)
def test_equals_layer_grad_cam_for_every_target_form(name):
    model, layer = model_and_layer(name)
    x = images(3, 32, seed=2)
    cam = ClassActivationMap(model)
    grad_cam = LayerGradCam(model, layer)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    forms = {
        "int": 3,
        "0-d tensor": torch.tensor(5),
        "1-element tensor": torch.tensor([1]),
        "1-tuple": (4,),
        "list": [0, 6, 2],
        "1-D tensor": torch.tensor([6, 1, 0]),
        "list of 1-tuples": [(2,), (3,), (5,)],
    }
    for form, target in forms.items():
        expected = grad_cam.attribute(x, target=target)
        got = cam.attribute(x, target=target)
        assert got.shape == (3, 1, *expected.shape[-2:]), form
        torch.testing.assert_close(got, expected.detach(), **EXACT, msg=form)
    expected = grad_cam.attribute(x, target=predicted)
    torch.testing.assert_close(cam.attribute(x), expected.detach(), **EXACT)
    assert no_hooks_left(model)


def test_layer_grad_cam_refuses_none_where_cam_takes_the_prediction():
    model, layer = model_and_layer("resnet")
    x = images(2, 32)
    with pytest.raises(AssertionError, match="Target not provided"):
        LayerGradCam(model, layer).attribute(x, target=None)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    torch.testing.assert_close(ClassActivationMap(model).attribute(x, target=None),
                               ClassActivationMap(model).attribute(x, target=predicted))


def test_explicit_layer_by_module_or_name_and_the_pooling_input():
    model, layer = model_and_layer("resnet")
    x = images(2, 32)
    expected = LayerGradCam(model, layer).attribute(x, target=1).detach()
    for chosen in (layer, "layer2"):
        torch.testing.assert_close(ClassActivationMap(model, chosen).attribute(x, target=1),
                                   expected, **EXACT)
    at_pool = ClassActivationMap(model, model.avgpool)
    got = at_pool.attribute(x, target=1, attribute_to_layer_input=True)
    torch.testing.assert_close(got, expected, **EXACT)
    pool_grad_cam = LayerGradCam(model, model.avgpool)
    torch.testing.assert_close(
        got, pool_grad_cam.attribute(x, target=1, attribute_to_layer_input=True).detach(),
        **EXACT,
    )


def test_wrong_layers_are_refused_with_the_reason():
    model, _ = model_and_layer("resnet")
    other = ResNetLike()
    with pytest.raises(ValueError, match="not a submodule"):
        ClassActivationMap(model, other.layer2)
    with pytest.raises(ValueError, match="no submodule named 'layer9'"):
        ClassActivationMap(model, "layer9")
    with pytest.raises(ValueError, match="does not feed the global pooling"):
        ClassActivationMap(model, model.layer1).attribute(images(2, 32), target=0)
    with pytest.raises(ValueError, match="is not the tensor that feeds the global pooling"):
        ClassActivationMap(model, model.layer2).attribute(
            images(2, 32), target=0, attribute_to_layer_input=True
        )
    assert no_hooks_left(model)


# ------------------------------------------------------------------ resolution and options
def test_interpolate_relu_and_normalize_follow_the_layer_map():
    model, layer = model_and_layer("mobilenet_v2")
    x = images(2, 20, seed=3)
    cam = ClassActivationMap(model)
    raw = LayerGradCam(model, layer).attribute(x, target=2).detach().double()
    h, w = raw.shape[-2:]
    for interpolate, size in (("input", (20, 20)), ((13, 27), (13, 27))):
        for relu in (False, True):
            got = cam.attribute(x, target=2, interpolate=interpolate, relu_attributions=relu)
            low = raw.clamp_min(0) if relu else raw
            want = np.stack([numpy_bilinear(m[0].numpy(), *size) for m in low])[:, None]
            np.testing.assert_allclose(got.numpy(), want, atol=1e-6, rtol=1e-5)
    normalized = cam.attribute(x, target=2, interpolate="input", normalize=True)
    low = raw.numpy()[:, 0]
    scaled = [(m - m.min()) / (m.max() - m.min() + 1e-7) for m in low]
    want = np.stack([numpy_bilinear(m, 20, 20) for m in scaled])[:, None]
    np.testing.assert_allclose(normalized.numpy(), want, atol=1e-6)
    assert normalized.min() >= 0 and normalized.max() <= 1
    assert cam.attribute(x, target=2, normalize=True).shape == (2, 1, h, w)


@pytest.mark.parametrize(("interpolate", "message"), [
    ("nearest", "size must be 'input', 'features', an int or"), ((0, 4), "size must be positive"),
    ((4,), "size must be None, an int or a pair"), (True, "size must be 'input'"),
])
def test_bad_interpolate_is_refused(interpolate, message):
    model, _ = model_and_layer("resnet")
    with pytest.raises(ValueError, match=message):
        ClassActivationMap(model).attribute(images(1, 32), interpolate=interpolate)


def test_interpolate_takes_an_int_for_a_square_size_as_the_plugin():
    model, _ = model_and_layer("resnet")
    x = images(2, 32)
    square = ClassActivationMap(model).attribute(x, target=1, interpolate=7)
    assert torch.equal(square, ClassActivationMap(model).attribute(x, target=1, interpolate=(7, 7)))


# ------------------------------------------------------------------ completeness
def bias_of(model: nn.Module, name: str, classes: torch.Tensor) -> torch.Tensor:
    """The logits at a zero pooled vector: the head's bias for heads affine in that vector."""
    with torch.no_grad():
        if name == "resnet":
            logits = model.fc(torch.zeros(1, 16))
        elif name == "linear_chain":
            logits = model.fc(model.bottleneck(torch.zeros(1, 10))) / model.temperature
        elif name == "batchnorm_head":
            logits = model.fc(model.norm(torch.zeros(1, 10)))
        else:
            raise KeyError(name)
    return logits[0, classes]


@pytest.mark.parametrize("name", ["resnet", "linear_chain", "batchnorm_head"])
def test_spatial_sum_is_logit_minus_bias(name):
    model, _ = model_and_layer(name)
    x = images(3, 32, seed=4)
    targets = torch.tensor([1, 4, 6])
    cam = ClassActivationMap(model)
    maps, delta = cam.attribute(x, target=targets, return_convergence_delta=True)
    with torch.no_grad():
        logits = model(x)[torch.arange(3), targets]
    expected = logits.double() - bias_of(model, name, targets).double()
    torch.testing.assert_close(maps.double().sum((1, 2, 3)), expected, atol=1e-5, rtol=1e-5)
    assert delta.shape == (3,)
    assert delta.abs().max() < 1e-5
    torch.testing.assert_close(cam.compute_convergence_delta(maps, x, targets), delta,
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["layernorm_head", "rmsnorm_head", "convnext", "vit"])
def test_completeness_on_normalized_and_token_heads(name):
    model = build(CASES[name])
    x = images(2, CASES[name].size, seed=5)
    cam = ClassActivationMap(model)
    maps = cam.attribute(x, target=[0, 3])
    assert cam.compute_convergence_delta(maps, x, [0, 3]).abs().max() < 1e-5


def test_delta_of_a_wrong_attribution_is_its_error():
    model, _ = model_and_layer("resnet")
    x = images(2, 32, seed=6)
    cam = ClassActivationMap(model)
    maps = cam.attribute(x, target=2)
    h, w = maps.shape[-2:]
    doubled = cam.compute_convergence_delta(2 * maps, x, 2)
    torch.testing.assert_close(doubled.double(), maps.double().sum((1, 2, 3)),
                               atol=1e-5, rtol=1e-5)
    shifted = cam.compute_convergence_delta(maps + 1.0, x, 2)
    torch.testing.assert_close(shifted, torch.full((2,), float(h * w)), atol=1e-4, rtol=0)
    upsampled = cam.attribute(x, target=2, interpolate="input")
    assert cam.compute_convergence_delta(upsampled, x, 2).abs().min() > 1e-2
    with pytest.raises(ValueError, match="batch sizes"):
        cam.compute_convergence_delta(maps[:1], x, 2)


# ------------------------------------------------------------------ inputs and forward_func
class MaskedNet(nn.Module):
    """forward(x, mask, scale): two input tensors and an additional argument."""

    def __init__(self) -> None:
        super().__init__()
        self.features = conv_bn_relu(3, 10, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(10, 5)

    def forward(self, x, mask, scale):  # noqa: ANN001, ANN201
        return self.fc(self.pool(self.features(x * mask * scale)).flatten(1))


def test_tuple_inputs_with_additional_forward_args_give_a_tuple():
    torch.manual_seed(0)
    model = MaskedNet().eval()
    x = images(3, 16, seed=7)
    mask = (torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1)) > 0.3).float()
    scale = torch.tensor([0.5, 1.0, 2.0]).view(3, 1, 1, 1)
    got = ClassActivationMap(model).attribute(
        (x, mask), target=[0, 1, 4], additional_forward_args=(scale,)
    )
    expected = LayerGradCam(model, model.features).attribute(
        (x, mask), target=[0, 1, 4], additional_forward_args=(scale,)
    )
    assert isinstance(got, tuple) and len(got) == 1
    torch.testing.assert_close(got[0], expected.detach(), **EXACT)
    single = ClassActivationMap(model).attribute(
        (x, mask), target=[0, 1, 4], additional_forward_args=scale
    )
    torch.testing.assert_close(single[0], got[0], **EXACT)


def test_forward_func_may_wrap_the_model():
    model, layer = model_and_layer("resnet")
    x = images(2, 32)
    expected = LayerGradCam(model, layer).attribute(x, target=3).detach()

    class Holder:
        def __init__(self, model: nn.Module) -> None:
            self.model = model

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

    wrappers = [
        ClassActivationMap(model.forward),
        ClassActivationMap(functools.partial(model)),
        ClassActivationMap(Holder(model)),
        ClassActivationMap(lambda t: model(t).softmax(-1), model=model),
    ]
    for cam in wrappers:
        torch.testing.assert_close(cam.attribute(x, target=3), expected, **EXACT)
    bypass = ClassActivationMap(lambda t: model.forward(t), model=model)
    with pytest.raises(RuntimeError, match="did not call the model through model"):
        bypass.attribute(x, target=3)
    assert no_hooks_left(model)
    with pytest.raises(TypeError, match="pass the module itself|model=the_module"):
        ClassActivationMap(lambda t: model(t))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        ClassActivationMap(lambda t: model(t), model="resnet")


def test_output_selection_for_tuple_outputs():
    torch.manual_seed(0)
    model = TupleOutputNet().eval()
    x = images(2, 32)
    expected = LayerGradCam(lambda t: model(t)[0], model.layer2).attribute(x, target=[1, 2])
    got = ClassActivationMap(model, output=0).attribute(x, target=[1, 2])
    torch.testing.assert_close(got, expected.detach(), **EXACT)
    with pytest.raises(ValueError, match="pass output="):
        ClassActivationMap(model).attribute(x, target=1)
    assert no_hooks_left(model)


def test_runs_under_inference_mode_where_layer_grad_cam_cannot():
    model, layer = model_and_layer("efficientnet")
    x = images(2, 32, seed=8)
    expected = LayerGradCam(model, layer).attribute(x, target=[2, 5]).detach()
    with torch.inference_mode():
        got = ClassActivationMap(model).attribute(x, target=[2, 5])
        with pytest.raises(RuntimeError):
            LayerGradCam(model, layer).attribute(x, target=[2, 5])
    torch.testing.assert_close(got.clone(), expected, **EXACT)


def test_attributions_hold_no_autograd_graph_under_grad_mode():
    """LayerGradCam's maps keep their call's whole autograd graph (the forward's saved
    activations) alive until detached; CAM's are plain tensors even with grad enabled."""
    model, layer = model_and_layer("resnet")
    x = images(2, 32, seed=9).requires_grad_()
    assert all(p.requires_grad for p in model.parameters())
    with torch.enable_grad():
        got = ClassActivationMap(model).attribute(x, target=1)
        from_grad_cam = LayerGradCam(model, layer).attribute(x, target=1)
    assert from_grad_cam.grad_fn is not None, "the contrast this test documents has changed"
    assert got.grad_fn is None and not got.requires_grad
    torch.testing.assert_close(got, from_grad_cam.detach(), **EXACT)


@pytest.mark.parametrize(
    ("target", "error", "message"),
    [
        (7, ValueError, r"class index 7 is out of range.*0\.\.6"),
        (-1, ValueError, "out of range"),
        ([0, 1, 2], ValueError, "target has 3 entries but the batch has 2 samples"),
        (torch.tensor([0.0, 1.0]), TypeError, "integer class indices, got torch.float32"),
        (torch.tensor([[0], [1]]), ValueError, "got shape \\(2, 1\\)"),
        (torch.tensor([0, 1, 2]), ValueError, "batch has 2 samples"),
        ((0, 1), ValueError, "exactly one class index"),
        ([(0, 1), (1, 2)], ValueError, "exactly one class index"),
        (True, TypeError, "integer tensor; got bool"),
        ("cat", TypeError, "integer tensor; got str"),
        ([0, "dog"], TypeError, r"target\[1\] must be an integer class index"),
    ],
)
def test_bad_targets_give_clear_errors_and_leave_no_hook(target, error, message):
    model, _ = model_and_layer("resnet")
    with pytest.raises(error, match=message):
        ClassActivationMap(model).attribute(images(2, 32), target=target)
    assert no_hooks_left(model)


def test_bad_inputs_are_refused():
    model, _ = model_and_layer("resnet")
    cam = ClassActivationMap(model)
    with pytest.raises(TypeError, match="inputs must be a Tensor or a non-empty tuple"):
        cam.attribute([images(1, 32)])
    with pytest.raises(ValueError, match="share the batch dimension"):
        cam.attribute((images(2, 32), images(3, 32)))


def test_captum_identity():
    model, _ = model_and_layer("resnet")
    cam = ClassActivationMap(model)
    assert isinstance(cam, LayerAttribution)
    assert cam.get_name() == "Class Activation Map"
    assert cam.has_convergence_delta()
    assert hasattr(ClassActivationMap.attribute, "__wrapped__")  # Captum's @log_usage()


# ------------------------------------------------------------------ Captum's tools
@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel_matches_noise_tunnel_of_layer_grad_cam(nt_type):
    model, layer = model_and_layer("resnet")
    x = images(2, 32, seed=9)
    kwargs = {"nt_type": nt_type, "nt_samples": 4, "stdevs": 0.3, "target": [1, 5]}
    torch.manual_seed(11)
    got = NoiseTunnel(ClassActivationMap(model)).attribute(x, **kwargs)
    torch.manual_seed(11)
    expected = NoiseTunnel(LayerGradCam(model, layer)).attribute(x, **kwargs)
    torch.testing.assert_close(got, expected.detach(), atol=1e-6, rtol=1e-5)
    assert no_hooks_left(model)


def test_noise_tunnel_returns_the_convergence_delta():
    model, _ = model_and_layer("resnet")
    maps, delta = NoiseTunnel(ClassActivationMap(model)).attribute(
        images(2, 32), nt_samples=3, stdevs=0.2, target=0, return_convergence_delta=True
    )
    assert maps.shape == (2, 1, 8, 8)
    assert delta.shape == (6,) and delta.abs().max() < 1e-5


def fixed_perturbation(inputs: torch.Tensor, radius: float) -> torch.Tensor:
    """A deterministic perturbation: sample-dependent signs of +-radius."""
    n = inputs.shape[0]
    signs = torch.sin(torch.arange(inputs[0].numel(), dtype=torch.float32) * 0.7
                      + torch.arange(n, dtype=torch.float32)[:, None]).sign()
    return inputs + radius * signs.view_as(inputs)


@pytest.mark.parametrize("batch", [1, 3])
def test_sensitivity_max_against_a_loop(batch):
    model, _ = model_and_layer("resnet")
    x = images(batch, 32, seed=10)
    cam = ClassActivationMap(model)
    targets = list(range(batch))
    score = sensitivity_max(cam.attribute, x, perturb_func=fixed_perturbation,
                            perturb_radius=0.1, n_perturb_samples=2, target=targets)
    perturbed = fixed_perturbation(x.repeat_interleave(2, dim=0), 0.1)
    expected = []
    for i in range(batch):
        base = cam.attribute(x[i : i + 1], target=i)
        ratios = [
            (cam.attribute(perturbed[2 * i + j : 2 * i + j + 1], target=i) - base).norm()
            / base.norm()
            for j in range(2)
        ]
        expected.append(max(ratios))
    torch.testing.assert_close(score, torch.stack(expected), atol=1e-6, rtol=1e-5)


def test_infidelity_against_a_loop():
    model, _ = model_and_layer("resnet")
    x = images(2, 32, seed=12)
    cam = ClassActivationMap(model)
    attributions = to_input_shape(cam.attribute(x, target=[3, 4]), x)
    noise = 0.05 * torch.randn(2, *x.shape[1:], generator=torch.Generator().manual_seed(3))

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        step = noise.repeat(inputs.shape[0] // 2, 1, 1, 1)
        return step, inputs - step

    score = infidelity(model, perturb, x, attributions, target=[3, 4], n_perturb_samples=2)
    with torch.no_grad():
        drop = model(x)[[0, 1], [3, 4]] - model(x - noise)[[0, 1], [3, 4]]
    predicted = (noise * attributions).flatten(1).sum(1)
    torch.testing.assert_close(score, (predicted - drop) ** 2, atol=1e-6, rtol=1e-4)


def test_to_input_shape_upsamples_expands_and_conserves_the_total():
    maps = torch.randn(2, 1, 4, 5, generator=torch.Generator().manual_seed(4))
    x = torch.zeros(2, 3, 12, 10)
    scale = torch.zeros(2, 7)
    out = to_input_shape(maps, x)
    assert out.shape == x.shape
    for n in range(2):
        want = numpy_bilinear(maps[n, 0].double().numpy(), 12, 10) * (4 * 5) / (12 * 10 * 3)
        for c in range(3):
            np.testing.assert_allclose(out[n, c].numpy(), want, atol=1e-7, rtol=1e-6)
    plain = to_input_shape(maps, x, conserve_total=False)
    torch.testing.assert_close(plain, out * (12 * 10 * 3) / (4 * 5))
    constant = torch.full((2, 1, 4, 5), 2.0)
    torch.testing.assert_close(to_input_shape(constant, x).sum((1, 2, 3)),
                               constant.sum((1, 2, 3)))
    pair = to_input_shape((maps,), (x, scale))
    assert isinstance(pair, tuple) and pair[0].shape == x.shape
    assert pair[1].shape == scale.shape and not pair[1].any()
    with pytest.raises(ValueError, match=r"\[N, 1, h, w\]"):
        to_input_shape(torch.zeros(2, 3, 4, 5), x)


def test_visualize_image_attr_draws_the_map():
    from matplotlib.figure import Figure

    model, _ = model_and_layer("resnet")
    x = images(2, 32, seed=13)
    maps = ClassActivationMap(model).attribute(x, target=1)
    attr, picture = to_visualization(maps, x, index=1)
    assert attr.shape == (32, 32) and picture.shape == (32, 32, 3)
    assert picture.min() >= 0 and picture.max() <= 1
    np.testing.assert_allclose(attr, numpy_bilinear(maps[1, 0].double().numpy(), 32, 32),
                               atol=1e-6)
    for method, sign in (("heat_map", "all"), ("blended_heat_map", "all"),
                         ("masked_image", "absolute_value")):
        figure, axis = visualization.visualize_image_attr(
            attr, picture, method=method, sign=sign, use_pyplot=False
        )
        assert isinstance(figure, Figure) and axis.images
    with pytest.raises(ValueError, match="zero everywhere"):
        to_visualization(torch.zeros(1, 4, 4), x[0])
    with pytest.raises(ValueError, match="expected a map"):
        to_visualization(torch.zeros(2, 4, 4), x[0])


def test_to_visualization_keeps_images_already_in_unit_range():
    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(5))
    _, picture = to_visualization(torch.ones(2, 2), image)
    np.testing.assert_array_equal(picture, image.permute(1, 2, 0).double().numpy())


def test_upsampling_in_helpers_is_bilinear_not_captums_nearest():
    maps = torch.arange(4.0).view(1, 1, 2, 2) + 1
    attr, _ = to_visualization(maps, torch.rand(1, 3, 4, 4))
    nearest = LayerAttribution.interpolate(maps, (4, 4))[0, 0].numpy()
    bilinear = F.interpolate(maps, (4, 4), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(attr, bilinear.numpy(), atol=1e-7)
    assert not np.allclose(attr, nearest)


def test_triton_backend_gives_the_same_maps():
    pytest.importorskip("triton")
    model, _ = model_and_layer("resnet")
    x = images(2, 16, seed=14)
    kwargs = {"target": [2, 3], "interpolate": "input", "relu_attributions": True}
    got = ClassActivationMap(model, backend="triton").attribute(x, **kwargs)
    expected = ClassActivationMap(model, backend="torch").attribute(x, **kwargs)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_numpy_integer_targets_and_top_level_export():
    import camplug

    model, _ = model_and_layer("resnet")
    x = images(2, 32)
    cam = camplug.ClassActivationMap(model)
    assert cam.__class__ is ClassActivationMap
    torch.testing.assert_close(cam.attribute(x, target=np.int64(2)), cam.attribute(x, target=2))
    torch.testing.assert_close(cam.attribute(x, target=[np.int64(1), 2]),
                               cam.attribute(x, target=[1, 2]))


def test_importing_camplug_does_not_import_captum():
    import subprocess
    import sys

    code = "import sys, camplug; camplug.compare; assert 'captum' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ------------------------------------------------------------------ method=
@pytest.mark.parametrize("name", ["resnet", "layernorm_head", "rmsnorm_head", "convnext"])
def test_gradcam_method_equals_layer_grad_cam_also_on_per_sample_heads(name):
    """method="gradcam" is the true gradient (closed form, no backward): it equals
    LayerGradCam even where the head normalizes per sample and CAM does not."""
    model, layer = model_and_layer(name)
    x = images(2, 32, seed=4)
    with torch.no_grad():
        target = model(x).argmax(1)
    expected = LayerGradCam(model, layer).attribute(x, target=target).detach()
    got = ClassActivationMap(model, method="gradcam").attribute(x, target=target)
    torch.testing.assert_close(got, expected, **EXACT)
    assert no_hooks_left(model)


def test_unknown_method_and_delta_of_other_methods_are_refused():
    model, _ = model_and_layer("resnet")
    with pytest.raises(ValueError, match="unknown method 'gradcan'.*available: auto, cam"):
        ClassActivationMap(model, method="gradcan")
    explainer = ClassActivationMap(model, method="gradcam")
    assert not explainer.has_convergence_delta()
    with pytest.raises(ValueError, match="needs method='cam'"):
        explainer.attribute(images(2, 32), target=0, return_convergence_delta=True)
