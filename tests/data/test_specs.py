"""Model specs (camplug.data.specs)."""

from __future__ import annotations

import importlib.util
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
def test_torchscript_is_refused_and_a_state_dict_file_is_explained(tmp_path, model_module):
    scripted = tmp_path / "net.pt"
    torch.jit.script(TinyNet().eval()).save(str(scripted))
    with pytest.raises(SpecError, match="TorchScript archive.*forward hooks.*Workaround"):
        load_model(str(scripted))
    plain = tmp_path / "state.pt"
    torch.save(TinyNet().state_dict(), plain)
    with pytest.raises(SpecError, match="is a file, not a model.*--checkpoint"):
        load_model(str(plain))
    (tmp_path / "scripted_factory.py").write_text(textwrap.dedent(f"""
        import torch
        def make():
            return torch.jit.load({str(scripted)!r})
    """))
    with pytest.raises(SpecError, match="returned a ScriptModule.*forward hooks"):
        load_model(f"{tmp_path / 'scripted_factory.py'}:make")


def test_failing_user_code_is_a_spec_error(tmp_path, model_module):
    broken = tmp_path / "broken_models.py"
    broken.write_text("def make():\n    raise RuntimeError('no GPU here')\n")
    with pytest.raises(SpecError, match="the factory raised RuntimeError: no GPU here"):
        load_model(f"{broken}:make")
    crashing = tmp_path / "crashing_models.py"
    crashing.write_text("import torch\nraise ImportError('needs timm')\n")
    with pytest.raises(SpecError, match="running .*crashing_models.py raised ImportError"):
        load_model(f"{crashing}:make")
    (tmp_path / "raising_module.py").write_text("x = 1 / 0\n")
    with pytest.raises(SpecError, match="importing 'raising_module' raised ZeroDivisionError"):
        load_model("raising_module:make")


def test_the_fingerprint_covers_the_models_code(tmp_path, monkeypatch):
    """Same weights, changed forward (class source) or changed factory file: another
    fingerprint, so an audit never resumes a run of other code."""
    source = textwrap.dedent("""
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.conv = nn.Conv2d(3, 4, 3, padding=1)
                self.fc = nn.Linear(4, 3)

            def forward(self, x):
                return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

        def make():
            return Net()
    """)
    path = tmp_path / "coded_models.py"
    path.write_text(source)
    first = model_fingerprint(load_model(f"{path}:make"))
    assert model_fingerprint(load_model(f"{path}:make")) == first  # deterministic
    path.write_text(source.replace("torch.relu(self.conv(x))", "self.conv(x).abs()"))
    changed_forward = model_fingerprint(load_model(f"{path}:make"))
    path.write_text(source + "\nSCALE = 2  # the factory's file changed, the class did not\n")
    changed_file = model_fingerprint(load_model(f"{path}:make"))
    assert len({first, changed_forward, changed_file}) == 3
    # without a factory file (a model built in-process): the class's own source counts
    versions = []
    for k, body in enumerate(("torch.relu(self.conv(x))", "self.conv(x).abs()")):
        module_path = tmp_path / f"net_v{k}.py"
        module_path.write_text(source.replace("torch.relu(self.conv(x))", body))
        spec = importlib.util.spec_from_file_location(f"net_v{k}", module_path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, f"net_v{k}", module)  # as an import does
        spec.loader.exec_module(module)
        versions.append(module.Net())
    assert versions[0].state_dict().keys() == versions[1].state_dict().keys()
    assert model_fingerprint(versions[0]) != model_fingerprint(versions[1])
    # a model built in this process: its class source counts, the weights too
    net = TinyNet()
    other = TinyNet()
    other.load_state_dict(net.state_dict())
    assert model_fingerprint(net) == model_fingerprint(other)
    with torch.no_grad():
        other.fc.bias.add_(1.0)
    assert model_fingerprint(net) != model_fingerprint(other)


# torchvision: / timm: specs (neither package is a dependency: fake modules stand in) -------
class Small(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


@pytest.fixture
def fake_zoos(monkeypatch):
    """Fake ``torchvision.models`` and ``timm`` modules that record how they were called."""
    import types

    calls = []
    vision = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")

    def resnet50(*, weights):
        calls.append(("torchvision", "resnet50", weights))
        return Small()

    models.resnet50 = resnet50
    models.ResNet = Small  # a class, not a builder
    vision.models = models
    timm = types.ModuleType("timm")

    def create_model(name, pretrained):
        calls.append(("timm", name, pretrained))
        if name != "convnext_tiny":
            raise RuntimeError(f"Unknown model ({name})")
        return Small(7)

    timm.create_model = create_model
    monkeypatch.setitem(sys.modules, "torchvision", vision)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    monkeypatch.setitem(sys.modules, "timm", timm)
    return calls


def test_zoo_specs_build_without_pretrained_weights(fake_zoos, tmp_path):
    model = load_model("torchvision:resnet50", random_weights=True)
    assert isinstance(model, Small) and not model.training
    assert isinstance(load_model("timm:convnext_tiny", random_weights=True), Small)
    assert fake_zoos == [("torchvision", "resnet50", None), ("timm", "convnext_tiny", False)]
    weights = Small()
    torch.save(weights.state_dict(), tmp_path / "w.pt")
    loaded = load_model("torchvision:resnet50", tmp_path / "w.pt")
    assert torch.equal(loaded.fc.weight, weights.fc.weight)


@pytest.mark.parametrize("spec, message", [
    ("torchvision:resnet50", "has no weights without --checkpoint"),
    ("torchvision:nonesuch", "torchvision.models has no model builder 'nonesuch'"),
    ("torchvision:ResNet", "no model builder 'ResNet'"),
    ("timm:nonesuch", r"timm:nonesuch': Unknown model \(nonesuch\)"),
    ("timm:", "name the architecture, e.g. timm:convnext_tiny"),
])
def test_bad_zoo_specs_say_what_is_wrong(fake_zoos, spec, message):
    random = "without --checkpoint" not in message
    with pytest.raises(SpecError, match=message):
        load_model(spec, random_weights=random)


@pytest.mark.parametrize("package", ["torchvision", "timm"])
def test_a_missing_zoo_package_names_what_to_install(monkeypatch, package):
    monkeypatch.setitem(sys.modules, "torchvision.models" if package == "torchvision"
                        else package, None)  # None in sys.modules: the import fails
    with pytest.raises(SpecError, match=f"needs {package}, which is not installed: "
                                        f"pip install {package}"):
        load_model(f"{package}:anything", random_weights=True)
