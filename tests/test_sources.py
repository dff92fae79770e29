"""Model specs and user datasets (camplug.audit.sources)."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from camplug.audit import sources
from camplug.audit.sources import (
    AnnotatedImageFolder,
    SpecError,
    load_model,
    model_fingerprint,
    open_dataset,
    read_annotations,
    scale_box,
)


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


@pytest.fixture
def model_module(tmp_path, monkeypatch):
    """An importable module ``tiny_models`` with a factory, a class and a non-module."""
    (tmp_path / "tiny_models.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3, padding=1)
                self.pool = nn.AdaptiveAvgPool2d(1)
                self.fc = nn.Linear(4, 3)

            def forward(self, x):
                return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))

        def make():
            torch.manual_seed(0)
            return Net()

        def not_a_model():
            return 3

        VALUE = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("tiny_models", None)


# model specs ------------------------------------------------------------------------------
def test_factory_spec_builds_the_model_in_eval_mode(model_module):
    model = load_model("tiny_models:make")
    assert type(model).__name__ == "Net" and not model.training
    model_class = load_model("tiny_models:Net")  # a class is a callable too
    assert type(model_class).__name__ == "Net"
    from_file = load_model(f"{model_module / 'tiny_models.py'}:make")
    assert model_fingerprint(from_file) == model_fingerprint(model)


@pytest.mark.parametrize("spec, message", [
    ("tiny_models:missing", "has no attribute 'missing'"),
    ("tiny_models:VALUE", "is not callable"),
    ("tiny_models:not_a_model", "returned int, not an nn.Module"),
    ("no_such_module_xyz:make", "cannot import 'no_such_module_xyz'"),
    ("just_a_name", "neither 'demo'"),
    ("demo:medium", "cannot import 'demo'.*use one of demo, demo:easy, demo:hard"),
])
def test_bad_model_specs_say_what_is_wrong(model_module, spec, message):
    with pytest.raises(SpecError, match=message):
        load_model(spec)


def test_checkpoint_is_loaded_strictly_with_weights_only(model_module, tmp_path):
    trained = load_model("tiny_models:make")
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, path)
    model = load_model("tiny_models:make", checkpoint=path)
    for a, b in zip(model.state_dict().values(), trained.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # a pickle that weights_only refuses (an arbitrary object) is rejected, not executed
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": trained.state_dict(), "obj": TinyNet()}, evil)
    with pytest.raises(SpecError, match="weights_only=True"):
        load_model("tiny_models:make", checkpoint=evil)
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(SpecError, match="missing keys"):
        load_model("tiny_models:make", checkpoint=wrong)
    with pytest.raises(SpecError, match="does not exist"):
        load_model("tiny_models:make", checkpoint=tmp_path / "absent.pt")


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_file_loads_and_a_state_dict_file_is_explained(tmp_path):
    net = TinyNet().eval()
    scripted = tmp_path / "net.pt"
    torch.jit.script(net).save(str(scripted))
    loaded = load_model(str(scripted))
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(loaded(x), net(x))
    plain = tmp_path / "state.pt"
    torch.save(net.state_dict(), plain)
    with pytest.raises(SpecError, match="not a TorchScript archive.*--checkpoint"):
        load_model(str(plain))


# annotations ------------------------------------------------------------------------------
def test_csv_groups_objects_by_file(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("filename,label,x0,y0,x1,y1,extra\n"
                    "a.png,2,1,2,3,4,x\nb.png,0,0,0,5,5,y\na.png,2,6,6,7,9,z\n")
    records = read_annotations(path)
    assert [(r.file, r.label) for r in records] == [("a.png", 2), ("b.png", 0)]
    assert records[0].boxes == ((1, 2, 3, 4), (6, 6, 7, 9))


@pytest.mark.parametrize("body, message", [
    ("filename,label,x0,y0,x1\na.png,1,0,0,1\n", "header must contain"),
    ("filename,label,x0,y0,x1,y1\na.png,1,5,0,1,3\n", "x1 < x0"),
    ("filename,label,x0,y0,x1,y1\na.png,1,0,0,1,z\n", "is not 4 numbers"),
    ("filename,label,x0,y0,x1,y1\na.png,cat,0,0,1,1\n", "label 'cat' is not a class index"),
    ("filename,label,x0,y0,x1,y1\na.png,1,0,0,1,1\na.png,2,0,0,1,1\n", "one label"),
    ("filename,label,x0,y0,x1,y1\n", "no annotation rows"),
])
def test_bad_csv_rows_name_the_line(tmp_path, body, message):
    path = tmp_path / "a.csv"
    path.write_text(body)
    with pytest.raises(SpecError, match=message):
        read_annotations(path)


def test_json_format_and_class_names(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([
        {"file": "a.png", "label": "dog", "boxes": [[0, 0, 3, 3], [4, 4, 5, 5]]},
        {"file": "b.png", "label": 0, "boxes": [[1, 1, 2, 2]], "mask": "b_mask.png"},
    ]))
    records = read_annotations(path, class_names=["cat", "dog"])
    assert records[0].label == 1 and len(records[0].boxes) == 2
    assert records[1].mask == "b_mask.png"
    with pytest.raises(SpecError, match="not a class index nor one of the class names"):
        read_annotations(path, class_names=["cat", "cow"])
    path.write_text(json.dumps([{"file": "a.png", "label": 0}]))
    with pytest.raises(SpecError, match="'file', 'label' and 'boxes'"):
        read_annotations(path)


def test_scale_box_maps_pixel_extents():
    # pixels 0..9 of a 10-wide image cover [0, 10); at half size they cover [0, 5): 0..4
    assert scale_box((0, 0, 9, 9), (10, 10), (5, 5)) == (0, 0, 4, 4)
    # pixels 2..3 cover [2, 4) -> [4, 8) at double size: 4..7
    assert scale_box((2, 2, 3, 3), (10, 10), (20, 20)) == (4, 4, 7, 7)
    # boxes reaching past the image are clipped to it
    assert scale_box((-3, 5, 12, 20), (10, 10), (10, 10)) == (0, 5, 9, 9)
    # independent reference: rasterize the box, resize the mask (nearest at pixel centres)
    rng = np.random.default_rng(0)
    for _ in range(50):
        old = tuple(int(v) for v in rng.integers(5, 40, size=2))
        new = tuple(int(v) for v in rng.integers(5, 40, size=2))
        x0, x1 = sorted(int(v) for v in rng.integers(0, old[1], size=2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, old[0], size=2))
        got = scale_box((x0, y0, x1, y1), old, new)
        # a new pixel j (covering [j, j+1)) overlaps the box's span [x0, x1+1) scaled
        cols = [j for j in range(new[1])
                if j < (x1 + 1) * new[1] / old[1] and j + 1 > x0 * new[1] / old[1]]
        rows = [i for i in range(new[0])
                if i < (y1 + 1) * new[0] / old[0] and i + 1 > y0 * new[0] / old[0]]
        assert got == (cols[0], rows[0], cols[-1], rows[-1])


def _write_png(path, size=(20, 30), colour=(200, 10, 10)):
    Image.new("RGB", (size[1], size[0]), colour).save(path)


def test_image_folder_items(tmp_path):
    _write_png(tmp_path / "a.png", (20, 30))
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 3:8] = 255
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    (tmp_path / "ann.json").write_text(json.dumps([
        {"file": "a.png", "label": 1, "boxes": [[3, 5, 7, 9]], "mask": "a_mask.png"}]))
    ds = AnnotatedImageFolder(tmp_path, tmp_path / "ann.json", image_size=(40, 60),
                              mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    item = ds[0]
    assert item["image"].shape == (3, 40, 60) and item["image"].dtype == torch.float32
    torch.testing.assert_close(item["image"][:, 0, 0],
                               (torch.tensor([200, 10, 10]) / 255 - 0.5) / 0.25)
    assert item["boxes"].tolist() == [[6, 10, 15, 19]]
    assert item["mask"].shape == (40, 60) and item["mask"].sum() == 10 * 10  # 5x5 doubled
    ys, xs = item["mask"].nonzero(as_tuple=True)
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == (6, 10, 15, 19)
    assert item["id"] == "a.png" and item["label"] == 1
    keep = AnnotatedImageFolder(tmp_path, tmp_path / "ann.json", image_size=None)
    assert keep[0]["image"].shape == (3, 20, 30) and keep[0]["boxes"].tolist() == [[3, 5, 7, 9]]


def test_unreadable_images_raise_oserror(tmp_path):
    _write_png(tmp_path / "good.png")
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "ann.csv").write_text(
        "filename,label,x0,y0,x1,y1\ngood.png,0,0,0,5,5\ncut.png,0,0,0,5,5\n"
        "text.png,0,0,0,5,5\nmissing.png,0,0,0,5,5\ngood2.png,0,50,0,55,5\n")
    _write_png(tmp_path / "good2.png")
    ds = AnnotatedImageFolder(tmp_path, tmp_path / "ann.csv", image_size=16)
    assert ds[0]["image"].shape == (3, 16, 16)
    for index in (1, 2, 3):
        with pytest.raises(OSError):
            ds[index]
    with pytest.raises(ValueError, match="outside the image"):
        ds[4]


def test_open_dataset_specs(tmp_path):
    from camplug.datasets import SyntheticLocalization

    ds = open_dataset("synthetic:hard", n=4, seed=3, image_size=32)
    assert isinstance(ds, SyntheticLocalization)
    assert (ds.n, ds.split, ds.seed, ds.image_size) == (4, "hard", 3, 32)
    with pytest.raises(SpecError, match="synthetic splits"):
        open_dataset("synthetic:medium")
    with pytest.raises(SpecError, match="neither 'synthetic"):
        open_dataset(str(tmp_path / "absent"))
    with pytest.raises(SpecError, match="no annotation file given"):
        open_dataset(str(tmp_path))
    _write_png(tmp_path / "a.png")
    (tmp_path / "boxes.csv").write_text("filename,label,x0,y0,x1,y1\na.png,cow,0,0,5,5\n")
    (tmp_path / "class_names.txt").write_text("cat\ncow\n")
    folder = open_dataset(str(tmp_path), image_size=0)
    assert folder[0]["label"] == 1 and folder[0]["image"].shape == (3, 20, 30)
    assert sources.DEFAULT_ANNOTATIONS[-1] == "boxes.csv"
