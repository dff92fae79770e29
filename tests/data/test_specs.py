"""Model specs (camplug.data.specs)."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from camplug.data.specs import SpecError, load_model, model_fingerprint


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
