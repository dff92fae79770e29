"""Models that used to be refused (no exact CAM: VGG- and MobileNetV3-style heads) audit end to
end with ``--method auto``, which runs Grad-CAM through one batched backward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import camplug
from camplug.audit.store import ResultStore
from camplug.cli import main


@pytest.mark.parametrize("case_name", ["vgg", "mobilenet_v3"])
def test_method_auto_audits_a_model_without_exact_cam(tmp_path, case_name, capsys):
    tests = str(Path(__file__).resolve().parents[1])
    (tmp_path / "net.py").write_text(
        f"import sys\nsys.path.insert(0, {tests!r})\nfrom models import UNSUPPORTED, build\n\n"
        f"def make():\n    case = next(c for c in UNSUPPORTED if c.name == {case_name!r})\n"
        "    return build(case).eval()\n")
    out = tmp_path / "out"
    status = main(["audit", "--model", f"{tmp_path / 'net.py'}:make", "--data", "synthetic",
                   "--num-images", "6", "--image-size", "32", "--batch-size", "3",
                   "--method", "auto", "--out", str(out), "--no-progress",
                   "--thresholds-step", "0.25"])
    assert status == 0, capsys.readouterr().err
    with ResultStore(out / "audit.sqlite") as store:
        (run,) = store.runs()
        rows = store.rows(run.run_id, maps=True)
    assert run.config["method"] == "auto" and len(rows) == 6
    assert all(row.error is None and row.box_ious is not None for row in rows)
    assert (out / "report.html").is_file()

    # the stored label maps are Grad-CAM's, computed independently through explain
    from camplug.data.specs import load_model
    from camplug.data.synthetic import SyntheticLocalization

    model = load_model(f"{tmp_path / 'net.py'}:make")
    data = SyntheticLocalization(n=6, image_size=32, seed=2)
    images = torch.stack([data[i]["image"] for i in range(6)])
    labels = torch.tensor([int(data[i]["label"]) for i in range(6)])
    with ResultStore(out / "audit.sqlite") as store:
        stored = store.load_maps(run.run_id)
    expected = camplug.explain(model, images, target=labels, method="auto", normalize=False,
                               size="features")
    assert expected.method == "gradcam"
    for i, row in enumerate(rows):
        got = torch.from_numpy(stored[row.sample_id][0])
        want = expected.maps[i, 0]
        scale = float(want.abs().max()) or 1.0
        assert torch.allclose(got, want, atol=2e-3 * scale), row.sample_id
