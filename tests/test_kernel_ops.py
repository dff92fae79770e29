"""torch.ops.camplug.cam: the CAM as one custom operator (CPU here; CUDA runs the kernel)."""

from __future__ import annotations

import pytest
import torch
from camplug.kernels import cam
from camplug.kernels.ops import cam_op
from camplug.kernels.reference import cam_reference
from kernel_oracle import make_inputs
from tolerances import assert_close

CASES = [
    pytest.param(dict(per_sample_weights=False), (7, 5), False, True, None, id="CK-fp32"),
    pytest.param(dict(per_sample_weights=True), (4, 4), True, True, torch.uint8, id="BCK-u8"),
    pytest.param(dict(per_position_weights=True), (3, 4), False, False, torch.float16,
                 id="BCKhw-raw-fp16"),
    pytest.param(dict(dtype=torch.float16, channels_last=True), (9, 9), True, True,
                 torch.bfloat16, id="fp16-channels_last"),
]  # fmt: skip


def inputs(kw):
    return make_inputs(2, 6, 3, 4, 3, seed=30, **kw)


@pytest.mark.parametrize(("kw", "size", "relu", "normalize", "out_dtype"), CASES)
def test_op_equals_cam_and_passes_opcheck(kw, size, relu, normalize, out_dtype):
    features, weights = inputs(kw)
    args = (features, weights, *size, relu, normalize, out_dtype)
    out = torch.ops.camplug.cam(*args)
    want, _ = cam_reference(features, weights, size, relu=relu, normalize=normalize,
                            out_dtype=out_dtype)  # fmt: skip
    assert out.dtype == want.dtype and torch.equal(out, want)  # CPU: the eager reference
    public = cam(features, weights, size, relu=relu, normalize=normalize, out_dtype=out_dtype,
                 backend="torch")  # fmt: skip
    assert_close(out, public, out_dtype or torch.float32, "op vs cam()")
    torch.library.opcheck(cam_op, args)


def test_bad_input_is_refused_with_the_usual_message():
    features, weights = make_inputs(2, 6, 3, 4, 3)
    with pytest.raises(ValueError, match="channel mismatch"):
        torch.ops.camplug.cam(features, weights[:, :5], 4, 4, False, True, None)


def test_export_keeps_one_cam_node():
    class Head(torch.nn.Module):
        def forward(self, features, weights):
            return torch.ops.camplug.cam(features, weights, 8, 8, False, True, None) * 2

    features, weights = make_inputs(2, 6, 3, 4, 3)
    program = torch.export.export(Head(), (features, weights))
    targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.camplug.cam.default) == 1
    assert torch.equal(program.module()(features, weights), Head()(features, weights))


def test_compile_traces_without_graph_break():
    features, weights = make_inputs(2, 6, 3, 4, 3)

    def f(features, weights):
        return torch.ops.camplug.cam(features, weights, 5, 5, True, True, torch.uint8)

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    assert torch.equal(compiled(features, weights), f(features, weights))
