"""``camplug explain``: overlay PNGs per image and class, printed classes, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import camplug
from camplug.cli import main
from camplug.data.synthetic import MEAN, STD, SyntheticLocalization
from camplug.drawing import overlay

HELP_PROBE = """
import sys
from camplug.cli import main
try:
    main(["explain", "--help"])
except SystemExit as exit:
    assert exit.code == 0, exit.code
print("torch imported:", "torch" in sys.modules)
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Three demo-benchmark images saved as PNGs at a size other than the model's (120x90)."""
    folder = tmp_path_factory.mktemp("images")
    data = SyntheticLocalization(n=3, image_size=96, seed=5)
    paths = []
    for k in range(3):
        path = folder / f"sample {k}.png"
        Image.fromarray(data.rgb(k)).resize((120, 90)).save(path)
        paths.append(path)
    return paths


def test_help_imports_no_torch():
    result = subprocess.run([sys.executable, "-c", HELP_PROBE], capture_output=True, text=True,
                            check=True)
    assert "usage: camplug explain" in result.stdout and "--topk" in result.stdout
    assert result.stdout.rstrip().endswith("torch imported: False")


def reference(path: Path, topk: int) -> tuple[list[int], list[np.ndarray]]:
    """The demo model's top classes and their overlays, computed here from the library."""
    model = camplug.zoo.load_demo_model("easy")
    with Image.open(path) as opened:
        original = np.asarray(opened.convert("RGB"), dtype=np.float64) / 255.0
        resized = np.asarray(opened.convert("RGB").resize((96, 96), Image.Resampling.BILINEAR),
                             dtype=np.float32) / 255.0
    x = (torch.from_numpy(resized).permute(2, 0, 1) - torch.tensor(MEAN).view(3, 1, 1)) / (
        torch.tensor(STD).view(3, 1, 1))
    result = camplug.explain(model, x[None], topk=topk, size="features")
    classes = result.targets[0].tolist()
    return classes, [overlay(original, result.maps[0, k]) for k in range(topk)]


def test_writes_one_overlay_per_image_and_class(images, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["explain", *map(str, images), "--out", str(out), "--topk", "2"]) == 0
    printed = capsys.readouterr().out
    names = camplug.zoo.load_demo_model("easy").class_names
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 6
    for k, path in enumerate(images):
        classes, pictures = reference(path, 2)
        assert f"{path} (cam):" in printed
        for rank, (cls, expected) in enumerate(zip(classes, pictures, strict=True), start=1):
            target = out / f"sample_{k}_top{rank}_{names[cls]}.png"
            assert f"  {rank}. {names[cls]} ({cls})  p = " in printed and str(target) in printed
            pixels = np.asarray(Image.open(target))
            assert pixels.shape == (90, 120, 3)  # the image's own size
            assert np.abs(pixels.astype(int) - expected).max() <= 1
    assert written[0] == "sample_0_top1_" + names[reference(images[0], 1)[0][0]] + ".png"


def test_same_stems_get_their_position(images, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    twin = other / images[0].name
    twin.write_bytes(images[1].read_bytes())
    out = tmp_path / "out"
    assert main(["explain", str(images[0]), str(twin), "--out", str(out), "--topk", "1",
                 "--method", "gradcam", "--alpha", "0.3", "--colormap", "viridis"]) == 0
    assert "(gradcam):" in capsys.readouterr().out
    assert sorted(p.name[:4] for p in out.iterdir()) == ["000_", "001_"]


def test_unreadable_images_are_named_and_nothing_is_written(images, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(images[0].read_bytes()[:200])
    out = tmp_path / "out"
    argv = ["explain", str(images[0]), str(bad), str(tmp_path / "missing.jpg"), str(tmp_path),
            str(truncated), "--out", str(out)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("camplug: error: cannot read ")
    assert f"{bad}: not an image Pillow can read" in error
    assert f"{tmp_path / 'missing.jpg'}: no such file" in error
    assert f"{tmp_path}: is a directory, not an image" in error
    assert f"{truncated}: " in error and str(images[0]) not in error
    assert not out.exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--alpha", "2"], "--alpha must be in [0, 1], got 2.0"),
    (["--colormap", "nope"], "unknown colormap 'nope'"),
    (["--topk", "9"], "topk must be an int in 1..8, got 9"),
    (["--mean", "0.5,0.5"], "--mean needs 3 values (R, G, B), got 2"),
    (["--model", "nowhere.module:factory"], "cannot import 'nowhere.module'"),
])
def test_bad_options(images, tmp_path, capsys, extra, message):
    assert main(["explain", str(images[0]), "--out", str(tmp_path / "o"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_models_without_class_names_print_indices(images, tmp_path, capsys):
    factory = tmp_path / "tiny.py"
    factory.write_text(
        "import torch\nfrom torch import nn\n\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))\n")
    out = tmp_path / "out"
    assert main(["explain", str(images[1]), "--model", f"{factory}:build", "--out", str(out),
                 "--image-size", "0", "--topk", "3"]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"sample_1_top{r}_{c}.png" for r, c in zip((1, 2, 3), _ranked(printed), strict=True))
    assert all(np.asarray(Image.open(p)).shape == (90, 120, 3) for p in out.iterdir())


def _ranked(printed: str) -> list[str]:
    """The class indices printed, in rank order."""
    return [line.split(".", 1)[1].split()[0] for line in printed.splitlines()
            if line.startswith("  ")]
