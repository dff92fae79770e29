"""The shipped demo model: loading, structure, accuracy and localization, and the trainer."""

from __future__ import annotations

import json

import pytest
import torch
from tolerances import assert_close
from torch import nn

from camplug import zoo
from camplug.data.synthetic import SyntheticLocalization, to_tensors
from camplug.zoo import train as train_module

FRESH_SEED = 12345  # the shipped models were trained on seed 0 and validated on seed 1
SPLITS = ("easy", "hard")


@pytest.mark.parametrize("split", SPLITS)
def test_weights_are_shipped_small_and_load_with_weights_only(split):
    path = zoo.weights_path(split)
    assert path.is_file() and path.stat().st_size < 2**20
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert set(checkpoint) >= {"state_dict", "num_classes", "widths", "class_names"}
    assert checkpoint["split"] == split
    assert checkpoint["class_names"] == SyntheticLocalization(0, split).class_names


@pytest.mark.parametrize("split", SPLITS)
def test_load_demo_model_is_gap_linear_in_eval_mode(split):
    model = zoo.load_demo_model(split)
    assert isinstance(model, zoo.DemoCNN) and not model.training
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d) and model.pool.output_size in (1, (1, 1))
    assert isinstance(model.classifier, nn.Linear)
    assert isinstance(model.features[-1], nn.ReLU)
    ds = SyntheticLocalization(4, split, 96, seed=FRESH_SEED)
    x = to_tensors(ds)["images"]
    with torch.no_grad():
        features = model.features(model.input_norm(x))
        logits = model(x)
    assert features.shape == (4, zoo.DEMO_WIDTHS[-1], 12, 12)
    w, b = model.classifier.weight.double(), model.classifier.bias.double()
    expected = features.double().mean(dim=(2, 3)) @ w.T + b
    assert_close(logits, expected, torch.float32, "logits vs GAP + linear")
    assert model.class_names == ds.class_names


@pytest.mark.parametrize(("split", "bound"), [("easy", 0.85), ("hard", 0.85)])
def test_shipped_model_accuracy_and_cam_pointing_on_fresh_data(split, bound):
    """On 200 images never seen in training: accuracy above ``bound`` and the CAM of the true
    class peaks inside the object's box far more often than the image centre lies in it."""
    model = zoo.load_demo_model(split)
    data = to_tensors(SyntheticLocalization(200, split, 96, seed=FRESH_SEED))
    with torch.no_grad():
        features = model.features(model.input_norm(data["images"]))
        logits = model(data["images"])
    accuracy = (logits.argmax(1) == data["labels"]).double().mean().item()
    assert accuracy >= bound, f"accuracy {accuracy:.3f} < {bound}"

    weights = model.classifier.weight[data["labels"]]  # [N, K]
    cams = torch.einsum("nk,nkhw->nhw", weights, features)  # [N, 12, 12]
    peak = cams.flatten(1).argmax(1)
    stride = data["images"].shape[-1] / cams.shape[-1]
    px = (peak % cams.shape[-1]).double() * stride + (stride - 1) / 2  # cell centre, pixels
    py = (peak // cams.shape[-1]).double() * stride + (stride - 1) / 2
    boxes = data["boxes"].double()

    def inside(x, y):
        return ((boxes[:, 0] - stride / 2 <= x) & (x <= boxes[:, 2] + stride / 2)
                & (boxes[:, 1] - stride / 2 <= y) & (y <= boxes[:, 3] + stride / 2))

    cam_hits = inside(px, py).double().mean().item()
    centre = (data["images"].shape[-1] - 1) / 2
    centre_hits = inside(torch.tensor(centre), torch.tensor(centre)).double().mean().item()
    assert cam_hits >= 0.8 and cam_hits >= centre_hits + 0.4, (cam_hits, centre_hits)


@pytest.mark.parametrize("split", SPLITS)
def test_training_record_is_shipped_and_consistent(split):
    record = zoo.load_training_record(split)
    assert record["split"] == split
    assert record["final_val_accuracy"] >= 0.9
    assert record["epochs"] == len(record["history"])
    assert record["val_seed"] != record["seed"]
    assert record["data"]["image_size"] == 96


def test_untrained_model_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = zoo.untrained_demo_model(3), zoo.untrained_demo_model(3), zoo.untrained_demo_model(4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not a.training
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.features[0].weight, c.features[0].weight)
    assert zoo.untrained_demo_model(0, num_classes=5).classifier.out_features == 5


def test_missing_weights_and_bad_arguments_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        zoo.load_demo_model("medium")
    with pytest.raises(ValueError, match="num_classes must be"):
        zoo.build_demo_model(0)
    with pytest.raises(ValueError, match="widths must be"):
        zoo.build_demo_model(3, widths=(8, 8))
    with pytest.raises(FileNotFoundError, match="no demo weights"):
        zoo.load_demo_model(weights=tmp_path / "missing.pt")


def test_train_script_runs_end_to_end_into_a_directory(tmp_path, capsys):
    argv = ["--epochs", "1", "--n-train", "24", "--n-val", "8", "--image-size", "48",
            "--batch-size", "8", "--threads", "1", "--seed", "5", "--out", str(tmp_path)]
    assert train_module.main(argv) == 0
    printed = capsys.readouterr().out
    assert "epoch   1/1" in printed and "val acc" in printed
    record = json.loads((tmp_path / "demo_cnn.json").read_text())
    assert record["epochs"] == 1 and record["seed"] == 5 and record["val_seed"] == 6
    assert record["data"]["n_train"] == 24 and record["data"]["image_size"] == 48
    assert 0.0 <= record["final_val_accuracy"] <= 1.0
    model = zoo.load_demo_model(weights=tmp_path / "demo_cnn.pt")
    x = to_tensors(SyntheticLocalization(2, "easy", 48, seed=9))["images"]
    assert model(x).shape == (2, 8)


def test_training_is_deterministic_for_a_seed(tmp_path):
    def run(out, seed):
        argv = ["--epochs", "1", "--n-train", "16", "--n-val", "8", "--image-size", "48",
                "--batch-size", "8", "--threads", "1", "--seed", str(seed), "--out", str(out)]
        train_module.main(argv)
        return torch.load(out / "demo_cnn.pt", weights_only=True)["state_dict"]

    first, again, other = run(tmp_path / "a", 2), run(tmp_path / "b", 2), run(tmp_path / "c", 3)
    for name, value in first.items():
        assert torch.equal(value, again[name]), name
    assert not torch.equal(first["classifier.weight"], other["classifier.weight"])


def test_train_script_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        train_module.parse_args(["--epochs", "0"])
    with pytest.raises(SystemExit):
        train_module.parse_args(["--split", "medium"])
