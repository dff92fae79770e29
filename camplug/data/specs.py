"""Model specs: where the audit's model comes from.

Model specs (``load_model``):
  - ``demo`` (or ``demo:hard``): the shipped demo model (``camplug.zoo.load_demo_model``);
  - ``torchvision:NAME`` (e.g. ``torchvision:resnet50``) or ``timm:NAME`` (e.g.
    ``timm:convnext_tiny``): the architecture built by that package without weights (neither
    package is a camplug dependency; camplug never downloads weights): give them with
    ``checkpoint``, or pass ``random_weights=True`` to audit the random initialization;
  - ``package.module:factory`` or ``path/to/file.py:factory``: a callable returning an
    ``nn.Module`` (called with no arguments). This imports and runs that Python code, with
    the permissions of the user running camplug.
  TorchScript files are refused: PyTorch runs no Python forward hooks on ScriptModules, so no
  map can be captured from them.
  ``checkpoint``: a state dict file (or a dict holding one under ``state_dict``, ``model`` or
  ``model_state_dict``) loaded with ``torch.load(weights_only=True)`` into the model, strictly.

Datasets: see ``camplug.data.folders``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
DEMO_MODEL_SPECS = ("demo", "demo:easy", "demo:hard")
MODEL_ZOOS = ("torchvision", "timm")  # packages whose architectures ``ZOO:NAME`` builds


class SpecError(ValueError):
    """A model or dataset spec that cannot be used (the message says why and what works)."""


# models -----------------------------------------------------------------------------------
# The source of the file a factory came from, per model built by ``load_model`` (weakly held):
# part of ``model_fingerprint``, so a changed factory file makes another run.
_FACTORY_SOURCES: weakref.WeakKeyDictionary[nn.Module, bytes] = weakref.WeakKeyDictionary()


def load_model(spec: str, checkpoint: str | Path | None = None, *,
               random_weights: bool = False) -> nn.Module:
    """The model named by ``spec`` (see module docstring), with ``checkpoint`` loaded, in eval
    mode on the CPU. ``random_weights``: allow a ``torchvision:`` / ``timm:`` model without a
    checkpoint (its random initialization)."""
    zoo_name, _, arch = spec.partition(":")
    if zoo_name in MODEL_ZOOS:
        if checkpoint is None and not random_weights:
            raise SpecError(f"model spec {spec!r} has no weights without --checkpoint (camplug "
                            "never downloads any): pass --checkpoint FILE, or --random-weights "
                            "to audit the random initialization")
        model = zoo_model(zoo_name, arch)
    elif spec in DEMO_MODEL_SPECS:
        from camplug import zoo

        model = zoo.load_demo_model(spec.partition(":")[2] or "easy")
    elif Path(spec).is_file():
        raise SpecError(_file_spec_message(Path(spec)))
    elif ":" in spec:
        try:
            model = _call_factory(spec)
        except SpecError as error:
            if spec.startswith("demo:"):  # most likely a mistyped demo split
                raise SpecError(
                    f"{error}; for the shipped model use one of {', '.join(DEMO_MODEL_SPECS)}"
                ) from None
            raise
    else:
        raise SpecError(
            f"model spec {spec!r} is neither 'demo', 'package.module:factory' nor "
            "'file.py:factory'"
        )
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.eval()


def zoo_model(package: str, name: str) -> nn.Module:
    """Architecture ``name`` of ``package`` (``torchvision`` or ``timm``) without pretrained
    weights. Raises ``SpecError`` when the package is not installed or has no such model."""
    if not name:
        example = "resnet50" if package == "torchvision" else "convnext_tiny"
        raise SpecError(f"model spec '{package}:': name the architecture, e.g. "
                        f"{package}:{example}")
    try:
        module = importlib.import_module("torchvision.models" if package == "torchvision"
                                         else package)
    except ImportError:
        raise SpecError(f"model spec '{package}:{name}' needs {package}, which is not "
                        f"installed: pip install {package}") from None
    if package == "timm":
        try:
            model = module.create_model(name, pretrained=False)
        except RuntimeError as error:  # timm's "Unknown model (...)"
            raise SpecError(f"model spec 'timm:{name}': {error}") from None
    else:
        builder = getattr(module, name, None)
        if name.startswith("_") or not callable(builder) or isinstance(builder, type):
            raise SpecError(f"model spec 'torchvision:{name}': torchvision.models has no model "
                            f"builder {name!r} (e.g. resnet50, convnext_tiny, vit_b_16)")
        model = builder(weights=None)
    if not isinstance(model, nn.Module):
        raise SpecError(f"model spec '{package}:{name}' built a {type(model).__name__}, not an "
                        "nn.Module")
    return model


TORCHSCRIPT_REFUSAL = (
    "TorchScript models cannot be audited or explained: PyTorch does not run Python forward "
    "hooks on ScriptModules, and a map needs the features that feed the global pooling. "
    "Workaround: use the Python model with the scripted weights, e.g. "
    "torch.save(torch.jit.load('model.pt').state_dict(), 'weights.pt'), then "
    "--model package.module:factory --checkpoint weights.pt"
)


def _file_spec_message(path: Path) -> str:
    """Why a model spec naming a file is refused: TorchScript, or weights without a model."""
    import zipfile

    names: list[str] = []
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    if any("/code/" in name or name.endswith("constants.pkl") for name in names):
        return f"{path} is a TorchScript archive. {TORCHSCRIPT_REFUSAL}"
    return (f"model spec {path} is a file, not a model: name the model's code, "
            f"--model package.module:factory or file.py:factory, and pass the weights with "
            f"--checkpoint {path}")


def _call_factory(spec: str) -> nn.Module:
    module_name, _, attribute = spec.rpartition(":")
    if not module_name or not attribute:
        raise SpecError(f"model spec {spec!r}: expected 'package.module:factory'")
    if module_name.endswith(".py"):
        module = _import_file(Path(module_name))
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise SpecError(
                f"model spec {spec!r}: cannot import {module_name!r}: {error}"
            ) from None
        except Exception as error:  # the user's module failed while importing
            raise SpecError(f"model spec {spec!r}: importing {module_name!r} raised "
                            f"{type(error).__name__}: {error}") from None
    factory = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise SpecError(f"model spec {spec!r}: {module_name!r} has no attribute {attribute!r}")
        factory = getattr(factory, part)
    if isinstance(factory, nn.Module):
        model = factory
    elif not callable(factory):
        raise SpecError(f"model spec {spec!r}: {attribute!r} is not callable")
    else:
        try:
            model = factory()
        except Exception as error:  # any failure of the user's factory
            raise SpecError(f"model spec {spec!r}: the factory raised "
                            f"{type(error).__name__}: {error}") from None
    if not isinstance(model, nn.Module):
        raise SpecError(
            f"model spec {spec!r}: the factory returned {type(model).__name__}, not an nn.Module"
        )
    if isinstance(model, torch.jit.ScriptModule):
        raise SpecError(f"model spec {spec!r} returned a ScriptModule. {TORCHSCRIPT_REFUSAL}")
    _FACTORY_SOURCES[model] = _module_source(module)
    return model


def _module_source(module: Any) -> bytes:
    """The bytes of the file a module was loaded from (empty when it has none)."""
    try:
        source_file = inspect.getsourcefile(module)
        return Path(source_file).read_bytes() if source_file else b""
    except (OSError, TypeError):
        return b""


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise SpecError(f"model spec: no such file {path}")
    name = f"camplug_user_model_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # the user's file failed while running
        del sys.modules[name]
        raise SpecError(f"model spec: running {path} raised {type(error).__name__}: "
                        f"{error}") from None
    return module


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a state dict file into ``model`` (strict), with ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"checkpoint {path} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler raises many types; all mean "cannot load"
        raise SpecError(
            f"checkpoint {path} cannot be loaded with torch.load(weights_only=True): "
            f"{str(error).splitlines()[0]}"
        ) from None
    state = _find_state_dict(loaded)
    if state is None:
        keys = list(loaded)[:8] if isinstance(loaded, dict) else type(loaded).__name__
        raise SpecError(
            f"checkpoint {path} holds no state dict (a dict of tensors, or one under "
            f"{', '.join(STATE_DICT_KEYS)}); found {keys}"
        )
    missing, unexpected = _state_dict_mismatch(model, state)
    if missing or unexpected:
        raise SpecError(
            f"checkpoint {path} does not fit the model: missing keys {missing[:8]}, "
            f"unexpected keys {unexpected[:8]}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise SpecError(f"checkpoint {path} does not fit the model: {error}") from None


def _find_state_dict(loaded: Any) -> dict[str, torch.Tensor] | None:
    if not isinstance(loaded, dict):
        return None
    if loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return loaded
    for key in STATE_DICT_KEYS:
        inner = loaded.get(key)
        if isinstance(inner, dict) and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    return None


def _state_dict_mismatch(model: nn.Module, state: dict) -> tuple[list[str], list[str]]:
    expected = set(model.state_dict())
    return sorted(expected - set(state)), sorted(set(state) - expected)


def model_fingerprint(model: nn.Module) -> str:
    """A hex digest of the model's state (parameter and buffer values) and code: the source of
    every module class in it (``inspect``, when available; the class's name otherwise) and, for
    a model built by ``load_model`` from a factory, the factory's file. Used as the model's part
    of a run's identity, so other weights or changed code never resume an old run."""
    import hashlib

    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        data = tensor.detach().cpu().contiguous()
        digest.update(str(data.dtype).encode() + str(tuple(data.shape)).encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    # by qualified name and source, not module name: a file imported by path gets a module
    # name that differs between processes
    # each class once (inspect parses the class's whole file per call)
    sources = sorted((t.__qualname__, _class_source(t)) for t in set(map(type, model.modules())))
    for name, source in sources:
        digest.update(name.encode() + b"\0" + source)
    digest.update(_FACTORY_SOURCES.get(model, b""))
    return digest.hexdigest()[:16]


def _class_source(cls: type) -> bytes:
    try:
        return inspect.getsource(cls).encode()
    except (OSError, TypeError):  # defined interactively, or a built-in
        return b"<no source>"
