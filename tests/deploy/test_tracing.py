"""CamModel through the tracers: torch.compile(fullgraph=True), torch.export with dynamic
shapes, and torch.onnx.export run by onnxruntime; each equal to the eager CamModel."""

from __future__ import annotations

import contextlib
import io
import warnings

import pytest
import torch
from deploy_references import FAMILIES, family
from models import SUPPORTED, build, images
from torch.export import Dim
from torch_threads import single_intra_op_thread

import camplug
from camplug.deploy import CamModel

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning",
                                        "ignore::DeprecationWarning")
one_thread = pytest.fixture(autouse=True, scope="module")(single_intra_op_thread)
BATCH = {0: Dim("batch")}
CASES = {case.name: case for case in SUPPORTED}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _assert_same(got, want, atol=1e-6, what=""):
    (logits, maps), (want_logits, want_maps) = got, want
    assert maps.dtype == want_maps.dtype and maps.shape == want_maps.shape, what
    torch.testing.assert_close(logits, want_logits, rtol=0, atol=atol, msg=what)
    torch.testing.assert_close(maps.double(), want_maps.double(), rtol=0, atol=atol, msg=what)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("method", ["cam", "gradcam++"])
def test_compile_fullgraph(name, method):
    case, model = family(name)
    deployed = CamModel(model, method=method, topk=2)
    compiled = torch.compile(deployed, fullgraph=True, backend="eager")
    for seed, batch in ((1, 3), (2, 5)):
        x = images(batch, case.size, seed=seed)
        _assert_same(compiled(x), deployed(x), what=f"{name} {method} batch {batch}")


@pytest.mark.parametrize("name", ["densenet", "vit"])  # functional pooling, token averaging
def test_no_graph_break(name):
    case, model = family(name)
    explanation = torch._dynamo.explain(CamModel(model, method="layercam"))(images(2, case.size))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_no_graph_break_on_a_head_of_two_affine_branches():
    """LeViT-style distillation head (BatchNorm1d + Linear branches averaged): the fold of a
    chain of steps traces as one graph."""
    case = CASES["levit"]
    model = build(case)
    x = images(2, case.size)
    deployed = CamModel(model, method="cam", example_input=images(1, case.size))
    explanation = torch._dynamo.explain(deployed)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    _assert_same(torch.compile(deployed, fullgraph=True, backend="eager")(x), deployed(x))


def test_compile_aot_eager_uint8_and_other_spatial_size():
    case, model = family("convnext")
    deployed = CamModel(model, method="gradcam", out_dtype=torch.uint8)
    compiled = torch.compile(deployed, fullgraph=True, backend="aot_eager")
    for size in (32, 48):
        x = images(2, size, seed=3)
        logits, maps = compiled(x)
        assert maps.shape == (2, 1, size, size)
        _assert_same((logits, maps), deployed(x), atol=1, what=f"uint8 {size}px")
        # uint8 may round a value at a .5 boundary the other way: at most one level, rarely
        assert (maps.int() - deployed(x)[1].int()).abs().gt(0).float().mean() < 1e-3


@pytest.mark.slow
def test_compile_inductor():
    case, model = family("resnet")
    deployed = CamModel(model, topk=2)
    x = images(2, case.size)
    _assert_same(torch.compile(deployed, fullgraph=True)(x), deployed(x), atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_export_dynamic_batch(name):
    case, model = family(name)
    deployed = CamModel(model, method="xgradcam", topk=2)
    program = torch.export.export(deployed, (images(3, case.size),), dynamic_shapes=(BATCH,))
    x = images(5, case.size, seed=9)
    _assert_same(program.module()(x), deployed(x), what=f"{name} exported, batch 5")


def test_export_dynamic_height_and_width():
    case, model = family("resnet")
    deployed = CamModel(model)
    shapes = ({0: Dim("batch"), 2: Dim("h", min=16, max=256), 3: Dim("w", min=16, max=256)},)
    program = torch.export.export(deployed, (images(2, 32),), dynamic_shapes=shapes)
    x = torch.randn(3, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    logits, maps = program.module()(x)
    assert maps.shape == (3, 1, 48, 40)
    _assert_same((logits, maps), deployed(x))


def test_export_dynamic_size_of_a_token_head_is_refused_clearly():
    case, model = family("vit")
    shapes = ({0: Dim("batch"), 2: Dim("h", min=16, max=64), 3: Dim("w", min=16, max=64)},)
    with pytest.raises(ValueError, match="dynamic batch only"):
        torch.export.export(CamModel(model), (images(2, case.size),), dynamic_shapes=shapes)


def _onnx_session(deployed, x, path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(deployed, (x,), dynamo=True, dynamic_shapes=(BATCH,),
                                    input_names=["x"], output_names=["logits", "maps"])
    program.save(str(path))
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(("name", "method", "out_dtype"), [
    *((name, "cam", torch.float32) for name in FAMILIES),
    ("resnet", "gradcam++", torch.uint8),
])
def test_onnx_runtime(name, method, out_dtype, tmp_path):
    case, model = family(name)
    deployed = CamModel(model, method=method, topk=2, out_dtype=out_dtype)
    session = _onnx_session(deployed, images(3, case.size), tmp_path / f"{name}.onnx")
    x = images(5, case.size, seed=11)
    logits, maps = session.run(None, {"x": x.numpy()})
    got = (torch.from_numpy(logits), torch.from_numpy(maps))
    # fp32 tolerance; uint8: a value at a rounding boundary may move one level
    _assert_same(got, deployed(x), atol=1e-5 if out_dtype == torch.float32 else 1,
                 what=f"{name} {method} onnxruntime batch 5")


@pytest.fixture
def custom_op_on_cpu(monkeypatch):
    """Route the CPU maps through torch.ops.camplug.cam, as CUDA does (its CPU body is the
    eager reference), to check the wiring and that the tracers keep it as one node."""
    from camplug.deploy import cam_model

    monkeypatch.setattr(cam_model, "CUSTOM_OP_DEVICES", frozenset({"cpu", "cuda"}))


def test_custom_op_kept_as_one_node(custom_op_on_cpu):
    case, model = family("convnext")
    deployed = CamModel(model, method="gradcam++", topk=2, out_dtype=torch.uint8)
    x = images(3, case.size, seed=2)
    logits, maps = deployed(x)
    expected = camplug.explain(model, x, method="gradcam++", topk=2, out_dtype=torch.uint8)
    assert maps.dtype == torch.uint8
    assert (maps.int() - expected.maps.int()).abs().max() <= 1
    program = torch.export.export(deployed, (x,), dynamic_shapes=(BATCH,))
    calls = [node for node in program.graph.nodes if "camplug.cam" in str(node.target)]
    assert len(calls) == 1, program.graph
    x5 = images(5, case.size, seed=8)
    _assert_same(program.module()(x5), deployed(x5), what="exported with the custom op")
    compiled = torch.compile(deployed, fullgraph=True, backend="aot_eager")
    _assert_same(compiled(x5), deployed(x5), what="compiled with the custom op")
