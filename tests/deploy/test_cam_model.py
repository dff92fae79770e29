"""CamModel in eager mode: equal to camplug.explain, to fp64 references written from the
models, the wrapped model left untouched, and clear errors at construction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from deploy_references import FAMILIES, family, reference_maps
from kernel_oracle import expected_output
from models import UNSUPPORTED, build, images
from tolerances import assert_close
from torch import nn
from torch_threads import single_intra_op_thread

import camplug
from camplug.deploy import DEPLOYABLE_METHODS, CamModel

pytestmark = pytest.mark.filterwarnings("ignore::camplug.DegenerateMapWarning")
one_thread = pytest.fixture(autouse=True, scope="module")(single_intra_op_thread)


def _explain(model, x, method, **kw):
    target = kw.pop("target", "top1")
    return camplug.explain(model, x, None if target == "top1" else target, method=method, **kw)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("method", DEPLOYABLE_METHODS)
def test_equals_explain(name, method):
    case, model = family(name)
    x = images(3, case.size, seed=4)
    logits, maps = CamModel(model, method=method, topk=2)(x)
    expected = _explain(model, x, method, topk=2)
    assert maps.shape == (3, 2, case.size, case.size) and maps.dtype == torch.float32
    torch.testing.assert_close(logits, expected.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(maps, expected.maps, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("method", ["cam", "gradcam++", "layercam", "xgradcam"])
def test_matches_fp64_reference(name, method):
    case, model = family(name)
    x = images(3, case.size, seed=6)
    deployed = CamModel(model, method=method, target=5, size=(20, 28), normalize=False)
    _, maps = deployed(x)
    targets = torch.full((3, 1), 5)
    expected = reference_maps(name, model, x, method, targets, (20, 28), relu=method != "cam",
                              normalize=False)
    assert_close(maps, expected, torch.float32, f"{name} {method} raw maps")


@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcam++"])
def test_distillation_head_of_two_branches(method):
    case = next(c for c in __import__("models").SUPPORTED if c.name == "levit")
    model = build(case)
    x = images(3, case.size, seed=2)
    _, maps = CamModel(model, method=method, topk=2, example_input=images(1, case.size))(x)
    torch.testing.assert_close(maps, _explain(model, x, method, topk=2).maps, rtol=0,
                               atol=1e-6)


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16, torch.uint8])
def test_out_dtypes(out_dtype):
    case, model = family("convnext")
    x = images(2, case.size, seed=7)
    _, maps = CamModel(model, topk=3, out_dtype=out_dtype)(x)
    assert maps.dtype == out_dtype
    targets = model(x).topk(3, dim=1).indices
    oracle = reference_maps("convnext", model, x, "cam", targets, (case.size, case.size),
                            relu=False)
    assert_close(maps, expected_output(oracle, out_dtype), out_dtype, f"{out_dtype} maps")


def test_size_features_and_relu_override():
    case, model = family("resnet")
    x = images(2, case.size)
    _, maps = CamModel(model, method="gradcam", size="features", relu=False)(x)
    expected = _explain(model, x, "gradcam", size="features", relu=False)
    assert maps.shape == (2, 1, 8, 8)
    torch.testing.assert_close(maps, expected.maps, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["resnet", "densenet", "convnext"])
def test_other_spatial_size_than_the_example(name):
    case, model = family(name)
    deployed = CamModel(model, example_input=images(1, 32))
    x = torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(2))
    logits, maps = deployed(x)
    expected = _explain(model, x, "cam")
    assert maps.shape == (2, 1, 48, 40)
    torch.testing.assert_close(maps, expected.maps, rtol=0, atol=1e-6)


def _hooks(model: nn.Module) -> list:
    return [(name, kind) for name, module in model.named_modules()
            for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                         "_backward_pre_hooks") if getattr(module, kind)]


@pytest.mark.parametrize("name", FAMILIES)
def test_model_is_not_modified(name):
    case, model = family(name)
    model.train()
    model.blocks.eval() if name == "vit" else None  # a mix of flags to restore
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attributes = set(vars(model))
    deployed = CamModel(model, method="gradcam++", example_input=images(1, case.size))
    for key, value in model.state_dict().items():  # the probes ran in eval mode
        assert torch.equal(value, state[key]), f"{key} changed by the construction"
    deployed(images(2, case.size))
    assert _hooks(model) == []
    assert [m.training for m in model.modules()] == flags
    assert set(vars(model)) == attributes
    assert deployed.model is model


def test_train_mode_batchnorm_head_cam_and_gradient_refusal():
    from models import NormHeadNet

    torch.manual_seed(0)
    model = NormHeadNet("batchnorm").train()
    x = images(4, 32, seed=3)
    _, maps = CamModel(model)(x)
    expected = camplug.explain(model, x)  # both fold the batch statistics of this batch
    torch.testing.assert_close(maps, expected.maps, rtol=0, atol=1e-6)
    deployed = CamModel(model, method="gradcam")
    with pytest.raises(RuntimeError, match="batch statistics"):
        deployed(x)


def test_model_changing_its_features_in_place_after_pooling():
    case = next(c for c in __import__("models").SUPPORTED if c.name == "mutating")
    model = build(case)
    x = images(2, case.size)
    deployed = CamModel(model)
    assert deployed.site.clone
    torch.testing.assert_close(deployed(x)[1], camplug.explain(model, x).maps, rtol=0,
                               atol=1e-6)


@pytest.mark.parametrize("name", ["resnet", "convnext"])
def test_under_autocast(name):
    case, model = family(name)
    x = images(2, case.size)
    deployed = CamModel(model, method="gradcam")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, maps = deployed(x)
        expected = _explain(model, x, "gradcam")
    assert logits.dtype == torch.bfloat16 and maps.dtype == torch.float32
    torch.testing.assert_close(maps, expected.maps, rtol=0, atol=1e-6)


def test_threads_each_see_their_own_forward():
    from concurrent.futures import ThreadPoolExecutor

    case, model = family("densenet")
    deployed = CamModel(model, topk=2)
    batches = [images(2, case.size, seed=seed) for seed in range(6)]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda x: deployed(x)[1], batches))
    for x, maps in zip(batches, results, strict=True):
        torch.testing.assert_close(maps, _explain(model, x, "cam", topk=2).maps, rtol=0,
                                   atol=1e-6)


class _ExtraPoolingInTraining(nn.Module):
    """Pools its input once more in training mode only, before the head's pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            x = x + 0 * F.adaptive_avg_pool2d(x, 1)
        return self.fc(F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1).flatten(1))


def test_a_forward_taking_another_path_is_reported():
    torch.manual_seed(0)
    model = _ExtraPoolingInTraining()
    deployed = CamModel(model.train())  # the probes run in eval mode
    with pytest.raises(RuntimeError, match=r"has shape \[2, 3, 16, 16\], not \[B, 6, h, w\]"):
        deployed(images(2, 16))
    model.eval()
    torch.testing.assert_close(deployed(images(2, 16))[1],
                               camplug.explain(model, images(2, 16)).maps, rtol=0, atol=1e-6)


def test_logits_keep_their_graph_and_maps_are_detached():
    case, model = family("resnet")
    logits, maps = CamModel(model)(images(2, case.size))
    assert logits.requires_grad and not maps.requires_grad
    logits.sum().backward()
    assert model.fc.weight.grad is not None


def test_in_place_weight_updates_are_seen_and_replacements_rediscovered():
    case, model = family("resnet")
    x = images(2, case.size)
    deployed = CamModel(model, target=1)
    with torch.no_grad():
        model.fc.weight.mul_(-1.0)
    torch.testing.assert_close(deployed(x)[1], _explain(model, x, "cam", target=1).maps,
                               rtol=0, atol=1e-6)
    model.fc = nn.Linear(16, 7)  # a new classifier: the next forward discovers again
    torch.testing.assert_close(deployed(x)[1], _explain(model, x, "cam", target=1).maps,
                               rtol=0, atol=1e-6)
    assert deployed.head.steps[-1].weight is model.fc.weight


def test_conversion_rediscovers_before_compiling():
    from models import NormHeadNet

    torch.manual_seed(0)
    model = NormHeadNet("batchnorm").eval()
    deployed = CamModel(model, example_input=images(1, 32)).to(torch.float64)  # new buffers
    with torch.no_grad():
        model.norm.running_var.mul_(torch.linspace(0.2, 5.0, 10))  # the new buffer only
    x = images(2, 32, seed=3).double()
    compiled = torch.compile(deployed, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x)[1], camplug.explain(model, x).maps, rtol=0,
                               atol=1e-6)


@pytest.mark.parametrize("case", UNSUPPORTED, ids=lambda c: c.name)
def test_models_without_an_exact_head_are_refused_at_construction(case):
    with pytest.raises(camplug.UnsupportedHeadError, match="CamModel needs an exact CAM head"):
        CamModel(build(case), example_input=images(1, case.size))


@pytest.mark.parametrize("method", ["scorecam", "eigencam"])
def test_methods_needing_more_than_the_forward_are_refused(method):
    case, model = family("resnet")
    with pytest.raises(ValueError, match=f"method '{method}' cannot be deployed"):
        CamModel(model, method=method)


def test_gradient_method_on_a_head_without_a_written_jacobian_is_refused():
    case = next(c for c in __import__("models").SUPPORTED if c.name == "functional_rms")
    model = build(case)
    with pytest.raises(ValueError, match="SampleScaleStep"):
        CamModel(model, method="gradcam")
    CamModel(model)  # CAM itself is fine


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"target": 7}, ValueError, "out of range"),
    ({"target": "top2"}, TypeError, "'top1' or an int"),
    ({"target": 1, "topk": 2}, ValueError, "either target or topk"),
    ({"topk": 0}, ValueError, "topk must be an int in 1..7"),
    ({"size": "huge"}, ValueError, "size must be"),
    ({"size": (0, 4)}, ValueError, "size must be positive"),
    ({"out_dtype": torch.uint8, "normalize": False}, ValueError, "needs normalize=True"),
    ({"out_dtype": torch.int32}, ValueError, "unsupported out_dtype"),
    ({"method": "nope"}, ValueError, "unknown method"),
    ({"example_input": (torch.zeros(1, 3, 32, 32),)}, TypeError, "example_input must be"),
])
def test_bad_options(kwargs, error, match):
    case, model = family("resnet")
    with pytest.raises(error, match=match):
        CamModel(model, **kwargs)


def test_not_a_module():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        CamModel(lambda x: x)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", FAMILIES)
def test_cuda_equals_explain(name):
    case, model = family(name)
    model = model.cuda()
    x = images(3, case.size, seed=4).cuda()
    logits, maps = CamModel(model, method="gradcam++", topk=2)(x)
    expected = _explain(model, x, "gradcam++", topk=2)
    torch.testing.assert_close(maps, expected.maps, rtol=0, atol=1e-5)
