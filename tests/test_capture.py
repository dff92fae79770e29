"""CamCapture against independent references, for every supported family and run mode.

References are computed in fp64 on a double copy of the model, by calling its submodules
directly (no hooks) and folding the head with explicit matrices; Captum's LayerGradCam is a
second reference for the plain GAP + linear heads.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from models import SUPPORTED, Case, build, images
from tolerances import assert_close
from torch import nn

import camplug

CASES = {case.name: case for case in SUPPORTED}
Reference = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # A [B,K,h,w], W [B,N,K], b [B,N]


def _same_for_batch(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> Reference:
    batch = a.shape[0]
    return a, weight.expand(batch, -1, -1), bias.expand(batch, -1)


def _linear(a: torch.Tensor, fc: nn.Linear) -> Reference:
    return _same_for_batch(a, fc.weight, fc.bias)


def _layer_norm_fold(a: torch.Tensor, fc: nn.Linear, gamma: torch.Tensor, beta: torch.Tensor,
                     eps: float) -> Reference:
    """W diag(gamma / sigma_i) (I - 11^T / K) per sample, bias W beta + b (explicit matrices)."""
    p = a.mean(dim=(2, 3))
    k = p.shape[1]
    centering = torch.eye(k, dtype=p.dtype) - torch.full((k, k), 1.0 / k, dtype=p.dtype)
    sigma = torch.sqrt(p.var(dim=1, unbiased=False) + eps)
    weights = torch.stack([fc.weight @ torch.diag(gamma / s) @ centering for s in sigma])
    return a, weights, (fc.weight @ beta + fc.bias).expand(a.shape[0], -1)


def _rms_fold(a: torch.Tensor, fc: nn.Linear, norm: nn.RMSNorm) -> Reference:
    p = a.mean(dim=(2, 3))
    rms = torch.sqrt(p.pow(2).mean(dim=1) + norm.eps)
    weights = torch.stack([fc.weight @ torch.diag(norm.weight / r) for r in rms])
    return a, weights, fc.bias.expand(a.shape[0], -1)


def _batch_norm_fold(a: torch.Tensor, fc: nn.Linear, bn: nn.BatchNorm1d) -> Reference:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = fc.weight @ torch.diag(scale)
    return _same_for_batch(a, weight, fc.weight @ (bn.bias - bn.running_mean * scale) + fc.bias)


def _tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    batch, _, dim = tokens.shape
    return tokens.reshape(batch, *grid, dim).permute(0, 3, 1, 2)


def _vit(m: nn.Module, x: torch.Tensor) -> Reference:
    tokens = m.forward_features(x)[:, m.num_prefix_tokens:]
    a = _tokens_to_map(tokens, (4, 4))
    return _layer_norm_fold(a, m.head, m.fc_norm.weight, m.fc_norm.bias, m.fc_norm.eps)


def _linear_chain(m: nn.Module, x: torch.Tensor) -> Reference:
    weight = m.fc.weight @ m.bottleneck.weight / m.temperature
    bias = (m.fc.weight @ m.bottleneck.bias + m.fc.bias) / m.temperature
    return _same_for_batch(m.features(x), weight, bias)


def _convnext(m: nn.Module, x: torch.Tensor) -> Reference:
    ln = m.classifier[0]
    return _layer_norm_fold(m.features(x), m.classifier[2], ln.weight, ln.bias, ln.eps)


REFERENCES: dict[str, Callable[[nn.Module, torch.Tensor], Reference]] = {
    "resnet": lambda m, x: _linear(m.layer2(m.layer1(m.relu(m.bn1(m.conv1(x))))), m.fc),
    "densenet": lambda m, x: _linear(F.relu(m.features(x)), m.classifier),
    "mobilenet_v2": lambda m, x: _linear(m.features(x), m.classifier[1]),
    "efficientnet": lambda m, x: _linear(m.features(x), m.classifier[1]),
    "convnext": _convnext,
    "batchnorm_head": lambda m, x: _batch_norm_fold(m.features(x), m.fc, m.norm),
    "layernorm_head": lambda m, x: _layer_norm_fold(m.features(x), m.fc, m.norm.weight,
                                                    m.norm.bias, m.norm.eps),
    "rmsnorm_head": lambda m, x: _rms_fold(m.features(x), m.fc, m.norm),
    "groupnorm_head": lambda m, x: _layer_norm_fold(m.features(x), m.fc, m.norm.weight,
                                                    m.norm.bias, m.norm.eps),
    "linear_chain": _linear_chain,
    "conv_classifier": lambda m, x: _same_for_batch(
        m.features(x), m.classifier.weight[:, :, 0, 0], m.classifier.bias),
    "timm_style": lambda m, x: _linear(m.forward_features(x), m.fc),
    "timm_head": lambda m, x: _linear(m.forward_features(x), m.head.fc),
    "vit": _vit,
    "mean_pool": lambda m, x: _linear(m.features(x), m.fc),
    "flatten_mean": lambda m, x: _linear(m.features(x), m.fc),
    "token_mean": lambda m, x: _linear(_tokens_to_map(m.mlp(m.patch_embed(x)), (4, 4)), m.head),
    "shared_pool": lambda m, x: _linear(m.stage2(m.stage1(x)), m.fc),
    "mutating": lambda m, x: _linear(m.features(x), m.fc),
    "levit": lambda m, x: m.cam_reference(x),
    "functional_rms": lambda m, x: m.cam_reference(x),
    "attention_tokens": lambda m, x: m.cam_reference(x),
}

# Heads that are plain GAP + affine (no per-sample statistics): Captum's LayerGradCam on the
# layer whose output feeds the pooling gives cam / (h * w).
GRADCAM_LAYERS = {
    "resnet": "layer2", "mobilenet_v2": "features", "efficientnet": "features",
    "batchnorm_head": "features", "linear_chain": "features", "conv_classifier": "features",
    "timm_style": "stages", "timm_head": "final_conv", "mean_pool": "features",
    "shared_pool": "stage2",
}


def reference(case: Case, model: nn.Module, x: torch.Tensor) -> Reference:
    """fp64 (features, effective weights, effective bias) of the model, without camplug."""
    double = copy.deepcopy(model).double()
    with torch.no_grad():
        return REFERENCES[case.name](double, x.double())


def raw_maps(a: torch.Tensor, weights: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """sum_k W[b, t, k] A[b, k] for targets [B, C] (fp64 loops over the batch)."""
    return torch.stack([
        torch.einsum("ck,khw->chw", weights[i, targets[i]], a[i]) for i in range(a.shape[0])
    ])


def all_classes(batch: int, num_classes: int) -> torch.Tensor:
    return torch.arange(num_classes).expand(batch, -1)


def test_every_supported_family_has_a_reference():
    assert set(REFERENCES) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_raw_maps_equal_independent_computation(name):
    case = CASES[name]
    model, x = build(case), images(3, case.size)
    a, weights, _ = reference(case, model, x)
    with camplug.attach(model) as capture:
        logits = model(x)
        targets = all_classes(3, logits.shape[1])
        maps = capture.maps(targets, size="features", normalize=False)
    assert_close(maps, raw_maps(a, weights, targets), torch.float32, f"{name} raw maps")
    assert_close(capture.features, a, torch.float32, f"{name} features")


@pytest.mark.parametrize("name", sorted(CASES))
def test_mean_identity_map_mean_plus_bias_is_the_logit(name):
    """The spatial mean of the raw map plus the effective bias equals the model's logit."""
    case = CASES[name]
    model, x = build(case), images(3, case.size)
    with camplug.attach(model) as capture:
        logits = model(x)
        targets = all_classes(3, logits.shape[1])
        maps = capture.maps(targets, size="features", normalize=False)
        _, bias = capture.class_weights(targets)
    assert_close(maps.double().mean(dim=(2, 3)) + bias, logits, torch.float32, f"{name} identity")
    _, _, ref_bias = reference(case, model, x)
    assert_close(bias, ref_bias, torch.float32, f"{name} effective bias")


@pytest.mark.parametrize("name", sorted(GRADCAM_LAYERS))
def test_raw_maps_equal_captum_layer_gradcam_times_hw(name):
    from captum.attr import LayerGradCam

    case = CASES[name]
    model, x = build(case), images(2, case.size)
    gradcam = LayerGradCam(model, model.get_submodule(GRADCAM_LAYERS[name]))
    with camplug.attach(model) as capture:
        with torch.no_grad():
            model(x)
        for target in (0, 4):
            maps = capture.maps(target, size="features", normalize=False)
            h, w = maps.shape[-2:]
            expected = gradcam.attribute(x, target=target) * (h * w)
            assert_close(maps, expected, torch.float32, f"{name} vs LayerGradCam, class {target}")


@pytest.mark.parametrize("name", ["resnet", "vit", "convnext", "densenet"])
def test_normalized_maps_at_input_size(name):
    """Default maps: min-max normalized at feature resolution, then bilinear to the input."""
    case = CASES[name]
    model, x = build(case), images(2, case.size)
    a, weights, _ = reference(case, model, x)
    with camplug.attach(model) as capture:
        logits = model(x)
        maps = capture.maps()
    raw = raw_maps(a, weights, logits.argmax(1, keepdim=True))
    low, high = raw.amin(dim=(2, 3), keepdim=True), raw.amax(dim=(2, 3), keepdim=True)
    expected = F.interpolate((raw - low) / (high - low + 1e-7), size=x.shape[-2:],
                             mode="bilinear", align_corners=False)
    assert_close(maps, expected, torch.float32, f"{name} normalized maps")


def test_targets_forms_select_the_same_maps():
    case = CASES["resnet"]
    model, x = build(case), images(3)
    with camplug.attach(model) as capture:
        logits = model(x)
        every = capture.maps(all_classes(3, logits.shape[1]))
        top = capture.resolve_targets(topk=3)
        assert torch.equal(top, logits.topk(3, dim=1).indices)
        gathered = every.gather(1, top[:, :, None, None].expand(-1, -1, *every.shape[-2:]))
        assert_close(capture.maps(topk=3), gathered, torch.float32, "topk")
        assert torch.equal(capture.maps(), capture.maps(logits.argmax(1).tolist()))
        assert_close(capture.maps(5), every[:, 5:6], torch.float32, "int target")
        per_sample = [4, 0, 6]
        assert_close(capture.maps(per_sample), every[torch.arange(3), per_sample][:, None],
                     torch.float32, "one class per sample")
        assert torch.equal(capture.maps(torch.tensor(per_sample)), capture.maps(per_sample))
        pairs = [[1, 2], [3, 3], [6, 0]]
        assert torch.equal(capture.maps(pairs), capture.maps(torch.tensor(pairs)))
        assert_close(capture.maps(pairs)[2, 1], every[2, 0], torch.float32, "list of lists")


def test_size_options():
    case = CASES["resnet"]
    model = build(case)
    x = torch.randn(2, 3, 32, 24)
    with camplug.attach(model) as capture:
        model(x)
        assert capture.input_size == (32, 24)
        assert capture.maps().shape == (2, 1, 32, 24)
        assert capture.maps(size="features").shape == (2, 1, 8, 6)
        assert capture.maps(size=(10, 7)).shape == (2, 1, 10, 7)
        assert capture.maps(size=9).shape == (2, 1, 9, 9)
        assert capture.maps(out_dtype=torch.uint8).dtype == torch.uint8


def test_a_failed_first_forward_does_not_stick():
    model = build(next(c for c in SUPPORTED if c.name == "resnet"))
    with camplug.attach(model) as capture:
        with pytest.raises(RuntimeError, match="channels"):
            model(torch.randn(2, 5, 32, 32))  # wrong channel count: the probe fails too
        with pytest.raises(RuntimeError, match="channels"):
            capture.maps()
        x = images(2)
        logits = model(x)
        assert torch.equal(capture.logits, logits)
        assert capture.maps().shape == (2, 1, 32, 32)


def test_only_the_last_forward_is_kept():
    case = CASES["resnet"]
    model = build(case)
    first, second = images(4, seed=3), images(2, seed=4)
    with camplug.attach(model) as capture:
        model(first)
        model(second)
        assert capture.logits.shape[0] == 2
        assert torch.equal(capture.logits, model(second))
        expected = camplug.explain(model, second).maps
        assert torch.equal(capture.maps(), expected)


def test_in_place_change_after_the_pooling_does_not_reach_the_capture():
    """MutatingNet scales its feature map in place after pooling it."""
    case = CASES["mutating"]
    model, x = build(case), images(2)
    a, _, _ = reference(case, model, x)
    with camplug.attach(model) as capture:
        model(x)
    assert_close(capture.features, a, torch.float32, "features before the in-place change")


def test_shared_pooling_module_takes_the_call_that_feeds_the_logits():
    case = CASES["shared_pool"]
    model, x = build(case), images(2)
    with camplug.attach(model) as capture:
        model(x)
        assert capture.head.capture.call == 1
    assert_close(capture.features, reference(case, model, x)[0], torch.float32, "second call")


@pytest.mark.parametrize("context", ["no_grad", "inference_mode", "grad"])
def test_grad_modes(context):
    case = CASES["densenet"]
    model, x = build(case), images(2)
    expected = camplug.explain(model, x).maps
    contexts = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode,
                "grad": torch.enable_grad}
    with camplug.attach(model) as capture:
        with contexts[context]():
            model(x)
            inside = capture.maps()
        outside = capture.maps()
    assert torch.equal(inside, expected) and torch.equal(outside, expected)
    assert not capture.features.requires_grad and not inside.requires_grad


@pytest.mark.parametrize("name", ["batchnorm_head", "layernorm_head", "resnet"])
def test_train_mode_identity_holds_with_batch_statistics(name):
    """In train mode BatchNorm uses the batch's statistics: the fold uses them too."""
    case = CASES[name]
    model, x = build(case).train(), images(4)
    with camplug.attach(model) as capture:
        logits = model(x)
        targets = capture.resolve_targets(topk=2)
        maps = capture.maps(targets, size="features", normalize=False)
        _, bias = capture.class_weights(targets)
    assert model.training
    assert_close(maps.double().mean(dim=(2, 3)) + bias, logits.gather(1, targets),
                 torch.float32, f"{name} train identity")


def test_train_mode_dropout_maps_use_the_dropout_free_weights():
    case = CASES["linear_chain"]
    model, x = build(case), images(3)
    with camplug.attach(model) as capture:
        model(x)
        targets = all_classes(3, 7)
        eval_weights, eval_bias = capture.class_weights(targets)
        model.train()
        model(x)
        train_weights, train_bias = capture.class_weights(targets)
    assert torch.equal(eval_weights, train_weights) and torch.equal(eval_bias, train_bias)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["resnet", "convnext", "vit"])
def test_autocast(name, dtype):
    case = CASES[name]
    model, x = build(case), images(2, case.size)
    a, weights, _ = reference(case, model, x)
    with camplug.attach(model) as capture, torch.autocast("cpu", dtype=dtype):
        logits = model(x)
        targets = capture.resolve_targets(topk=2)
        maps = capture.maps(targets, size="features", normalize=False)
        normalized = capture.maps(targets)
    features = capture.features
    # autocast runs layer_norm in fp32: the ViT's tokens feeding the pooling are fp32
    assert features.dtype == (torch.float32 if name == "vit" else dtype)
    assert maps.dtype == torch.float32
    assert normalized.dtype == torch.float32 and normalized.min() >= 0 and normalized.max() <= 1
    # exact given the captured features, and close to the fp32 model
    folded, _ = capture.class_weights(targets)
    exact = raw_maps(features.double(), folded.double(), torch.arange(2).expand(2, -1))
    assert_close(maps, exact, torch.float32, "maps from the captured low-precision features")
    # end to end through the low-precision model the rounding compounds: bf16's tolerance
    assert_close(maps, raw_maps(a, weights, targets), torch.bfloat16, "maps vs fp32 reference")
    _, bias = capture.class_weights(targets)
    assert_close(maps.double().mean(dim=(2, 3)) + bias, logits.gather(1, targets),
                 torch.bfloat16, "identity under autocast")


def test_channels_last():
    case = CASES["resnet"]
    model, x = build(case), images(2)
    expected = camplug.explain(model, x)
    model = model.to(memory_format=torch.channels_last)
    with camplug.attach(model) as capture:
        model(x.to(memory_format=torch.channels_last))
        assert capture.features.is_contiguous(memory_format=torch.channels_last)
        assert_close(capture.maps(), expected.maps, torch.float32, "channels_last maps")


@pytest.mark.parametrize("name", ["resnet", "densenet"])
def test_data_parallel_wrapper(name):
    case = CASES[name]
    model, x = build(case), images(2)
    expected = camplug.explain(model, x)
    wrapped = nn.DataParallel(model)
    with camplug.attach(wrapped) as capture:
        wrapped(x)
        assert torch.equal(capture.maps(), expected.maps)
        assert capture.head.capture.module.startswith("module")  # names inside the wrapper


def test_token_grid_follows_the_input_size():
    """A patch-token model: 8 px patches on 32x32 give 4x4, then 32x48 gives 4x6."""
    case = CASES["token_mean"]
    model = build(case)
    with camplug.attach(model) as capture:
        model(images(1))
        assert capture.features.shape == (1, 12, 4, 4)
        x = torch.randn(2, 3, 32, 48)
        logits = model(x)
        assert capture.features.shape == (2, 12, 4, 6)
        maps = capture.maps(size="features", normalize=False)
        _, bias = capture.class_weights(capture.resolve_targets())
    tokens = model.mlp(model.patch_embed(x))
    expected = _tokens_to_map(tokens, (4, 6))
    assert_close(capture.features, expected, torch.float32, "token grid")
    assert_close(maps.double().mean(dim=(2, 3)) + bias, logits.max(1, keepdim=True).values,
                 torch.float32, "token identity")


@pytest.mark.parametrize("layer", ["layer2", "module"])
def test_layer_override_gives_the_same_maps(layer):
    case = CASES["resnet"]
    model, x = build(case), images(2)
    chosen = model.layer2 if layer == "module" else layer
    with camplug.attach(model, chosen) as capture:
        model(x)
        assert capture.head.capture.kind == "module_output"
        assert torch.equal(capture.maps(), camplug.explain(model, x).maps)


def test_layer_override_on_tokens_replays_the_slice():
    case = CASES["vit"]
    model, x = build(case), images(2)
    with camplug.attach(model, "norm") as capture:
        model(x)
        assert capture.features.shape == (2, 12, 4, 4)
        assert torch.equal(capture.maps(), camplug.explain(model, x).maps)


def test_fp64_model():
    case = CASES["convnext"]
    model, x = build(case).double(), images(2).double()
    a, weights, bias = reference(case, model, x)
    with camplug.attach(model) as capture:
        logits = model(x)
        targets = all_classes(2, 7)
        maps = capture.maps(targets, size="features", normalize=False)
    assert capture.features.dtype == torch.float64
    assert_close(maps, raw_maps(a, weights, targets), torch.float32, "fp64 model maps")
    assert_close(maps.double().mean(dim=(2, 3)) + bias, logits, torch.float32, "fp64 identity")


@pytest.mark.parametrize("name", ["resnet", "vit"])
def test_triton_backend_matches_the_torch_backend(name):
    """The fused kernel reads the captured features in place (token maps are strided views);
    on CPU it runs under Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py)."""
    pytest.importorskip("triton")
    case = CASES[name]
    model, x = build(case), images(2, case.size)
    with camplug.attach(model, backend="torch") as reference_capture:
        model(x)
        expected = reference_capture.maps(topk=2, size=(20, 12))
    with camplug.attach(model, backend="triton") as capture:
        model(x)
        maps = capture.maps(topk=2, size=(20, 12))
    assert_close(maps, expected, torch.float32, f"{name} triton vs torch backend")
