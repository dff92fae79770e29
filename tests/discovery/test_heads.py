"""Head discovery (find_head): what is found for each family, exact folds, refusals."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from models import (
    SUPPORTED,
    UNSUPPORTED,
    AttentionTokenNet,
    Case,
    CollapsingHeadNet,
    ViTLike,
    build,
    images,
    randomize_norms,
)
from tolerances import assert_close
from torch import nn

import camplug
from camplug.discovery.fold import fold_head
from camplug.discovery.heads import DegenerateMapWarning, find_head
from camplug.errors import UnsupportedHeadError

CASES = {case.name: case for case in SUPPORTED}

# (K, h, w) for a 32x32 input, from each architecture's strides and widths.
FEATURE_SHAPES = {
    "resnet": (16, 8, 8), "densenet": (12, 16, 16), "mobilenet_v2": (16, 16, 16),
    "efficientnet": (16, 16, 16), "convnext": (12, 8, 8), "batchnorm_head": (10, 16, 16),
    "layernorm_head": (10, 16, 16), "rmsnorm_head": (10, 16, 16), "groupnorm_head": (10, 16, 16),
    "linear_chain": (10, 16, 16), "conv_classifier": (10, 16, 16), "timm_style": (12, 8, 8),
    "timm_head": (12, 16, 16), "vit": (12, 4, 4), "mean_pool": (10, 16, 16),
    "flatten_mean": (10, 16, 16), "token_mean": (12, 4, 4), "shared_pool": (10, 16, 16),
    "mutating": (10, 16, 16), "levit": (12, 4, 4), "functional_rms": (10, 16, 16),
    "attention_tokens": (16, 4, 4),
}

# The affine steps between pooling and logits, in forward order (description prefixes).
FOLDED = {
    "convnext": ["layer_norm in `classifier.0` (LayerNorm2d)", "linear 12 -> 7 in `classifier.2`"],
    "batchnorm_head": ["batch_norm in `norm` (BatchNorm1d)", "linear 10 -> 7 in `fc`"],
    "layernorm_head": ["layer_norm in `norm`", "linear 10 -> 7 in `fc`"],
    "rmsnorm_head": ["rms_norm in `norm`", "linear 10 -> 7 in `fc`"],
    "groupnorm_head": ["group_norm, 1 group, in `norm`", "linear 10 -> 7 in `fc`"],
    "linear_chain": ["linear 10 -> 6 in `bottleneck`", "linear 6 -> 7 in `fc`",
                     "division by a constant in LinearChainNet.forward"],
    "conv_classifier": ["1x1 convolution 10 -> 7 in `classifier` (Conv2d), before the pooling"],
    "vit": ["layer_norm in `fc_norm`", "linear 12 -> 7 in `head`"],
    "efficientnet": ["linear 16 -> 7 in `classifier.1`"],
    "timm_head": ["linear 12 -> 7 in `head.fc`"],
    "levit": ["sum of 2 branches in LeViTLike.forward: [batch_norm in `head.bn`",
              "division by a constant in LeViTLike.forward"],
    "functional_rms": ["multiplication by a per-sample scale (pow -> mean -> add -> rsqrt) in "
                       "FunctionalRMSHeadNet.forward", "scaling by a constant",
                       "linear 10 -> 7 in `fc`"],
}

CAPTURE_KINDS = {
    "resnet": ("module_input", "avgpool"), "densenet": ("function", ""),
    "mobilenet_v2": ("function", ""), "efficientnet": ("module_input", "avgpool"),
    "conv_classifier": ("module_input", "classifier"),
    "timm_style": ("module_input", "global_pool.pool"),
    "timm_head": ("module_input", "head.global_pool.pool"), "vit": ("function", ""),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_discovery_finds_features_shape_and_layer(name):
    case = CASES[name]
    info = find_head(build(case), images(1, case.size))
    assert info.feature_shape == FEATURE_SHAPES[name]
    assert info.num_features == FEATURE_SHAPES[name][0]
    assert info.num_classes == 7
    assert info.feature_module == case.feature_module
    if case.feature_module is not None:
        assert f"`{case.feature_module}`" in info.feature_source
    if name in FOLDED:
        assert len(info.folded) == len(FOLDED[name])
        for found, expected in zip(info.folded, FOLDED[name], strict=True):
            assert found.startswith(expected), (found, expected)
    if name in CAPTURE_KINDS:
        assert (info.capture.kind, info.capture.module) == CAPTURE_KINDS[name]


def test_describe_text_names_layers_shapes_and_folds():
    info = find_head(build(CASES["convnext"]), images(1))
    text = info.describe()
    assert "output of `features` (Sequential) -> [B, 12, 8, 8]" in text
    assert "adaptive_avg_pool2d in `avgpool`" in text
    assert "layer_norm in `classifier.0` (LayerNorm2d)" in text
    assert "(7 classes)" in text


def test_token_models_report_layout_and_grid():
    info = find_head(build(CASES["vit"]), images(1))
    assert info.layout == "nlc" and info.token_grid == (4, 4)
    assert info.feature_module is None  # the map is a slice of `norm`'s output, reshaped
    assert "[:, 3:]" in info.feature_source and "`norm`" in info.feature_source
    assert find_head(build(CASES["flatten_mean"]), images(1)).layout == "ncl"


def test_densenet_features_are_the_functional_relu_of_features():
    info = find_head(build(CASES["densenet"]), images(1))
    assert info.feature_module is None
    assert info.feature_source.startswith("relu (in DenseNetLike.forward) of output of `features`")
    assert info.capture.anchor == "features"


def test_without_example_input_a_probe_image_is_built():
    resnet = find_head(build(CASES["resnet"]))
    assert resnet.probe_input_size == (224, 224) and resnet.feature_shape == (16, 56, 56)
    vit = find_head(build(CASES["vit"]))  # declares img_size = 32 (fixed position embedding)
    assert vit.probe_input_size == (32, 32) and vit.token_grid == (4, 4)


@pytest.mark.parametrize(
    ("name", "blocker"),
    [("mobilenet_v3", "`hardswish` in `classifier.1` (Hardswish)"),
     ("vgg", "`relu` in `classifier.1` (ReLU)"),
     ("max_pool", "global max pooling (`adaptive_max_pool2d` in `pool` (AdaptiveMaxPool2d))"),
     ("vit_all_tokens", "averages 19 tokens")],
)
def test_models_without_exact_cam_are_refused_naming_the_blocker(name, blocker):
    case = next(c for c in UNSUPPORTED if c.name == name)
    with pytest.raises(UnsupportedHeadError) as error:
        find_head(build(case), images(1, case.size))
    assert blocker in str(error.value)
    assert isinstance(error.value, ValueError)
    assert "method='gradcam'" in str(error.value)


class _Head(nn.Module):
    """features (conv + ReLU) -> GAP -> flatten -> ``head`` (a callable on [B, K])."""

    def __init__(self, head: nn.Module | None = None, fn=None) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.head = head
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.fn(self, pooled) if self.fn is not None else self.head(pooled)


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda m, p: p @ torch.ones(6, 4) + p.relu().sum(1, keepdim=True),
         "combines 2 tensors that depend on the input"),
        (lambda m, p: p[:, [5, 4, 3, 2, 1, 0]] @ torch.ones(6, 3), "reorders or selects"),
        (lambda m, p: F.layer_norm(p.view(-1, 2, 3), (3,)).flatten(1), "normalizes groups"),
        (lambda m, p: p * torch.arange(1.0, 3.0)[:, None], "different constant for each sample"),
        (lambda m, p: 1.0 / p, "divides by the features"),
        (lambda m, p: torch.softmax(p, dim=1), "`softmax`"),
    ],
)
def test_non_affine_heads_are_refused(fn, message):
    torch.manual_seed(0)
    with pytest.raises(UnsupportedHeadError, match=message):
        find_head(_Head(fn=fn).eval(), torch.randn(2, 3, 8, 8))


def test_local_pooling_is_not_global_pooling():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(16, 5))
    with pytest.raises(UnsupportedHeadError, match="adaptive_avg_pool2d"):
        find_head(model, torch.randn(1, 3, 12, 12))


def test_output_not_depending_on_the_input_is_refused():
    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.logits = nn.Parameter(torch.zeros(1, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.logits

    with pytest.raises(UnsupportedHeadError, match="does not depend on the model input"):
        find_head(Constant(), torch.randn(1, 3, 8, 8))


def test_no_global_pooling_is_explained():
    no_pool = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    with pytest.raises(UnsupportedHeadError, match="no global average pooling found") as error:
        find_head(no_pool, torch.randn(1, 3, 4, 4))
    assert "method='gradcam'" in str(error.value)


def test_avg_pool2d_covering_the_map_and_mean_over_nhwc():
    class AvgPoolNet(nn.Module):
        def __init__(self, kernel: int = 8) -> None:
            super().__init__()
            self.features = nn.Conv2d(3, 5, 3, padding=1)
            self.pool = nn.AvgPool2d(kernel, stride=8)
            self.fc = nn.Linear(5, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.pool(self.features(x)).flatten(1))

    class NHWCMean(AvgPoolNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.features(x).permute(0, 2, 3, 1).mean((1, 2)))

    assert find_head(AvgPoolNet(), torch.randn(1, 3, 8, 8)).capture.module == "pool"
    assert find_head(NHWCMean(), torch.randn(1, 3, 8, 8)).layout == "nhwc"
    with pytest.raises(UnsupportedHeadError, match="avg_pool2d"):  # 4x4 of 8x8: not global
        find_head(AvgPoolNet(kernel=4), torch.randn(1, 3, 8, 8))


def test_layer_override_validation():
    model = build(CASES["resnet"])
    info = find_head(model, images(1), layer=model.layer2)
    assert (info.capture.kind, info.capture.module) == ("module_output", "layer2")
    with pytest.raises(ValueError, match="`relu` in `layer2.0.relu`"):
        find_head(model, images(1), layer="layer1")
    with pytest.raises(ValueError, match="no submodule named 'layer9'"):
        find_head(model, images(1), layer="layer9")
    with pytest.raises(ValueError, match="not a submodule"):
        find_head(model, images(1), layer=nn.ReLU())
    densenet = build(CASES["densenet"])
    with pytest.raises(ValueError, match="`relu` in DenseNetLike.forward"):
        find_head(densenet, images(1), layer="features")


# ----------------------------------------------------------------------------- exact folds
def _pooled_head(norm: nn.Module, before_flatten: bool = False) -> nn.Module:
    """GAP -> [norm] -> Linear on the model input itself (so the pooled vector is known)."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.norm = norm
            self.fc = nn.Linear(6, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.pool(x)
            x = self.norm(x).flatten(1) if before_flatten else self.norm(x.flatten(1))
            return self.fc(x)

    torch.manual_seed(0)
    net = Net().double()
    with torch.no_grad():
        for name, param in net.norm.named_parameters():
            param.copy_(torch.randn_like(param) * 0.5 + (1.0 if name == "weight" else 0.0))
        if isinstance(norm, nn.BatchNorm1d):
            norm.running_mean.copy_(torch.randn(6, dtype=torch.float64))
            norm.running_var.copy_(torch.rand(6, dtype=torch.float64) + 0.5)
    return net


def _fold(net: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    info = find_head(net, x)
    states = tuple(step.state() for step in info.steps)
    return fold_head(info.steps, states, targets, x.mean(dim=(2, 3)).float(), info.num_classes)


def _explicit_ln(net: nn.Module, p: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp64 matrices: W diag(gamma / sigma_i) (I - 11^T / K), bias W beta + b."""
    k = p.shape[1]
    centering = torch.eye(k, dtype=p.dtype) - torch.ones(k, k, dtype=p.dtype) / k
    sigma = torch.sqrt(((p - p.mean(1, keepdim=True)) ** 2).mean(1) + eps)
    weights = torch.stack([net.fc.weight @ torch.diag(gamma / s) @ centering for s in sigma])
    return weights, (net.fc.weight @ beta + net.fc.bias).expand(p.shape[0], -1)


ALL = torch.arange(5).expand(4, -1)


@pytest.mark.parametrize("kind", ["layernorm", "groupnorm"])
def test_layer_norm_fold_is_exact(kind):
    norm = nn.LayerNorm(6, eps=1e-3) if kind == "layernorm" else nn.GroupNorm(1, 6, eps=1e-3)
    net = _pooled_head(norm, before_flatten=kind == "groupnorm").eval()
    x = torch.randn(4, 6, 3, 5, dtype=torch.float64)
    weights, bias = _fold(net, x, ALL)
    p = x.mean(dim=(2, 3))
    expected_w, expected_b = _explicit_ln(net, p, norm.weight, norm.bias, 1e-3)
    assert_close(weights, expected_w, torch.float32, "LN effective weights")
    assert_close(bias, expected_b, torch.float32, "LN effective bias")
    with torch.no_grad():
        logits = net(x)
    assert_close((weights.double() * p[:, None]).sum(-1) + bias, logits, torch.float32, "LN logits")


@pytest.mark.parametrize("training", [False, True])
def test_batch_norm_fold_is_exact(training):
    norm = nn.BatchNorm1d(6, eps=1e-3)
    net = _pooled_head(norm).train(training)
    x = torch.randn(4, 6, 3, 5, dtype=torch.float64)
    p = x.mean(dim=(2, 3))
    if training:  # batch statistics, biased variance
        mean, var = p.mean(0), p.var(0, unbiased=False)
    else:
        mean, var = norm.running_mean.clone(), norm.running_var.clone()
    with torch.no_grad():
        logits = net(x)
    weights, bias = _fold(net, x, ALL)
    scale = norm.weight / torch.sqrt(var + 1e-3)
    expected_w = (net.fc.weight @ torch.diag(scale)).expand(4, -1, -1)
    expected_b = net.fc.weight @ (norm.bias - mean * scale) + net.fc.bias
    assert_close(weights, expected_w, torch.float32, "BN effective weights")
    assert_close(bias, expected_b.expand(4, -1), torch.float32, "BN effective bias")
    assert_close((weights.double() * p[:, None]).sum(-1) + bias, logits, torch.float32, "BN logits")


def test_rms_norm_fold_is_exact():
    norm = nn.RMSNorm(6, eps=1e-3)
    net = _pooled_head(norm).eval()
    x = torch.randn(4, 6, 3, 5, dtype=torch.float64)
    p = x.mean(dim=(2, 3))
    weights, bias = _fold(net, x, ALL)
    rms = torch.sqrt((p ** 2).mean(1) + 1e-3)
    expected = torch.stack([net.fc.weight @ torch.diag(norm.weight / r) for r in rms])
    assert_close(weights, expected, torch.float32, "RMSNorm effective weights")
    assert_close(bias, net.fc.bias.expand(4, -1), torch.float32, "RMSNorm effective bias")


def test_constant_arithmetic_and_matmul_fold():
    scale = torch.tensor([1.0, -2.0, 0.5, 3.0, 1.5, -1.0])
    matrix = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))

    def fn(m: nn.Module, p: torch.Tensor) -> torch.Tensor:
        return (0.5 - (p * scale + 1.0) / 4.0) @ matrix - 2.0

    net = _Head(fn=fn).eval()
    x = torch.randn(3, 3, 8, 8)
    info = find_head(net, x)
    targets = torch.arange(4).expand(3, -1)
    with torch.no_grad():
        features = net.features(x)
        logits = net(x)
    p = features.mean(dim=(2, 3))
    weights, bias = fold_head(info.steps, (None,) * len(info.steps), targets, p, 4)
    expected_w = (-(matrix.t() * scale) / 4.0).expand(3, -1, -1)
    expected_b = ((0.5 - 0.25) * matrix.sum(0) - 2.0).expand(3, -1)
    assert_close(weights, expected_w, torch.float32, "arithmetic weights")
    assert_close(bias, expected_b, torch.float32, "arithmetic bias")
    assert_close((weights * p[:, None]).sum(-1) + bias, logits, torch.float32, "arithmetic logits")


# ----------------------------------------------------------------------------- branch sums, scales
def _captured_identity(model: nn.Module, x: torch.Tensor) -> None:
    """mean(map) + b == logit through capture.class_weights, for every class."""
    with camplug.attach(model) as capture, torch.no_grad():
        logits = model(x)
        targets = torch.arange(logits.shape[1]).expand(len(x), -1)
        weights, bias = capture.class_weights(targets)
        maps = torch.einsum("bck,bkhw->bchw", weights.double(), capture.features.double())
    assert_close(maps.mean(dim=(2, 3)) + bias, logits, torch.float32, "mean(map) + b vs logits")


@pytest.mark.parametrize("name", sorted(CASES))
def test_mean_of_the_map_plus_bias_is_the_logit(name):
    case = CASES[name]
    _captured_identity(build(case), images(3, case.size))


REFERENCED = sorted(name for name, case in CASES.items()
                    if hasattr(case.build, "cam_reference"))


@pytest.mark.parametrize("name", REFERENCED)
def test_folded_weights_equal_the_models_own_reference(name):
    """Features, effective weights and biases against fp64 explicit matrices (cam_reference)."""
    case = CASES[name]
    model, x = build(case), images(3, case.size)
    with torch.no_grad():
        a, expected_w, expected_b = copy.deepcopy(model).double().cam_reference(x.double())
    with camplug.attach(model) as capture, torch.no_grad():
        model(x)
        targets = torch.arange(7).expand(3, -1)
        weights, bias = capture.class_weights(targets)
        assert_close(capture.features, a, torch.float32, f"{name} features")
    assert_close(weights, expected_w, torch.float32, f"{name} effective weights")
    assert_close(bias, expected_b, torch.float32, f"{name} effective bias")


def test_sum_of_affine_branches_folds_exactly():
    """(bn1(p) W1 + b1) - 0.5 (bn2(p) W2 + b2) (alpha), then / 3: explicit fp64 matrices."""
    torch.manual_seed(0)
    branches = [nn.Sequential(nn.BatchNorm1d(6), nn.Linear(6, 5)).double().eval()
                for _ in range(2)]
    for branch in branches:
        randomize_norms(branch)

    def fn(m: nn.Module, p: torch.Tensor) -> torch.Tensor:
        return torch.sub(branches[0](p), branches[1](p), alpha=0.5) / 3.0

    net = _Head(fn=fn).double().eval()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    explicit = []
    for bn, fc in branches:
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        explicit.append((fc.weight @ torch.diag(scale),
                         fc.weight @ (bn.bias - bn.running_mean * scale) + fc.bias))
    expected_w = (explicit[0][0] - 0.5 * explicit[1][0]) / 3.0
    expected_b = (explicit[0][1] - 0.5 * explicit[1][1]) / 3.0
    info = find_head(net, x)
    assert info.folded[0].startswith("difference of 2 branches in _Head.forward")
    with torch.no_grad():
        p = net.features(x).mean(dim=(2, 3))
        weights, bias = fold_head(info.steps, tuple(s.state() for s in info.steps),
                                  torch.arange(5).expand(4, -1), p.float(), 5)
        logits = net(x)
    assert_close(weights, expected_w.expand(4, -1, -1), torch.float32, "branch-sum weights")
    assert_close(bias, expected_b.expand(4, -1), torch.float32, "branch-sum bias")
    assert_close((weights.double() * p[:, None]).sum(-1) + bias, logits, torch.float32, "logits")


def test_per_sample_scale_from_the_vector_folds_exactly():
    """An L2 normalization written functionally: W diag(1 / ||p_i||) per sample."""
    matrix = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    net = _Head(fn=lambda m, p: p / p.pow(2).sum(1, keepdim=True).sqrt() @ matrix).double()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    info = find_head(net.eval(), x)
    assert info.folded[0].startswith("division by a per-sample scale (pow -> sum -> sqrt)")
    with torch.no_grad():
        p = net.features(x).mean(dim=(2, 3))
        weights, bias = fold_head(info.steps, (None,) * len(info.steps),
                                  torch.arange(4).expand(3, -1), p.float(), 4)
    expected = torch.stack([matrix.t() / p[i].norm() for i in range(3)])
    assert_close(weights, expected, torch.float32, "L2-normalized head weights")
    assert_close(bias, torch.zeros(3, 4), torch.float32, "L2-normalized head bias")


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda m, p: p * torch.sigmoid(p), "not one scale per sample"),  # a gate per feature
        (lambda m, p: p * p.sum(1, keepdim=True).relu(), "computed with `relu`"),
        (lambda m, p: p.relu() + p, "`relu`"),  # one branch is not affine
        (lambda m, p: p[:, :3] @ torch.ones(3, 2) + p[:, 3:] @ torch.ones(3, 2),
         "reorders or selects"),
    ],
)
def test_non_affine_joins_are_refused(fn, message):
    torch.manual_seed(0)
    with pytest.raises(UnsupportedHeadError, match=message):
        find_head(_Head(fn=fn).eval(), torch.randn(2, 3, 8, 8))


# ----------------------------------------------------------------------------- patch grids
@pytest.mark.parametrize(("dim", "probe"), [(16, (32, 32)), (24, (32, 48))])
def test_patch_grid_comes_from_the_patch_embedding_when_width_equals_tokens(dim, probe):
    """The attention's [B, N, heads, head_dim] has as many positions as the patch grid; the grid
    must still be the patch embedding's, for the probe size and for other input sizes."""
    model = build(Case("wide", lambda: AttentionTokenNet(dim=dim)))
    info = find_head(model, torch.randn(1, 3, *probe))
    assert info.token_grid == (probe[0] // 8, probe[1] // 8)
    with camplug.attach(model) as capture, torch.no_grad():
        for size in (probe, (32, 48), (48, 32), (16, 40)):
            x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(size[1]))
            model(x)
            expected, _, _ = model.cam_reference(x)
            assert_close(capture.features, expected, torch.float32, f"features at {size}")


def test_patch_grid_from_an_unfold_patch_embedding():
    class UnfoldTokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(3 * 16, 8)
            self.head = nn.Linear(8, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            patches = F.unfold(x, kernel_size=4, stride=4).transpose(1, 2)  # [B, L, 3 * 16]
            return self.head(self.embed(patches).mean(1))

    info = find_head(UnfoldTokens().eval(), torch.randn(1, 3, 16, 24))
    assert info.token_grid == (4, 6) and info.layout == "nlc"


def test_pooling_part_of_the_patch_tokens_is_refused():
    class HalfPool(ViTLike):
        def forward_head(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x[:, 3:11].mean(dim=1))

    with pytest.raises(UnsupportedHeadError, match="are 8 of the 16 patch tokens"):
        find_head(build(Case("half", HalfPool)), images(1))


# ----------------------------------------------------------------------------- degenerate maps
def test_a_one_by_one_feature_map_warns_naming_the_nearest_spatial_layer():
    model = build(Case("collapsing", CollapsingHeadNet))
    with pytest.warns(DegenerateMapWarning, match=r"1x1 for a 32x32 input") as caught:
        info = find_head(model, images(1))
    assert len(caught) == 1 and issubclass(DegenerateMapWarning, UserWarning)
    assert info.feature_shape == (12, 1, 1)
    assert "output of `features` (Sequential), [B, 8, 8, 8]" in info.spatial_warning
    assert "layer='features'" in info.spatial_warning
    assert f"warning   : {info.spatial_warning}" in info.describe()
    with pytest.warns(DegenerateMapWarning):  # the capture's discovery warns too
        _captured_identity(model, images(2))  # still exact, only constant


def test_spatial_maps_do_not_warn(recwarn):
    for case in SUPPORTED:
        assert find_head(build(case), images(1, case.size)).spatial_warning is None, case.name
    assert not [w for w in recwarn if issubclass(w.category, DegenerateMapWarning)]


# ----------------------------------------------------------------------------- probe input
class SpaceToDepthNet(nn.Module):
    """A space-to-depth stem (TResNet-style): pixel_unshuffle(4) then a Conv2d on 48 channels,
    so the first Conv2d's in_channels is not the image's."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(48, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stem(F.pixel_unshuffle(x, 4)).relu()).flatten(1))


def test_undeclared_input_that_fails_asks_for_example_input():
    with pytest.raises(ValueError, match="Pass example_input") as error:
        find_head(SpaceToDepthNet().eval())
    text = str(error.value)
    assert "[1, 48, 224, 224]" in text and "guessed from the first Conv2d" in text
    assert isinstance(error.value.__cause__, RuntimeError)
    with pytest.raises(ValueError, match="pass example_input"):
        find_head(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)))  # nothing to guess from


@pytest.mark.parametrize(
    ("declare", "size"),
    [(lambda m: setattr(m, "pretrained_cfg", {"input_size": (3, 64, 48)}), (64, 48)),
     (lambda m: setattr(m, "default_cfg", {"input_size": (3, 32, 32)}), (32, 32)),
     (lambda m: (setattr(m, "in_chans", 3), setattr(m, "img_size", (40, 56))), (40, 56))],
)
def test_declared_input_configuration_is_preferred(declare, size):
    model = SpaceToDepthNet().eval()
    declare(model)
    info = find_head(model)
    assert info.probe_input_size == size
    assert info.feature_shape == (8, size[0] // 4, size[1] // 4)
    assert camplug.describe(model, quiet=True).probe_input_size == size
