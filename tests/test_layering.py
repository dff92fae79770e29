"""The package's layers: imports point down (or sideways within a layer), never up.

``camplug.kernels`` (the compute layer, installed from ``kernels/``) imports nothing from
camplug; the plugin never imports the audit; the audit never imports the CLI; and so on.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A module may import from its own layer and the layers below it.
LAYERS: list[tuple[str, ...]] = [
    ("camplug.kernels",),
    ("camplug.errors", "camplug.version", "camplug.targets", "camplug.options"),
    ("camplug.discovery",),
    ("camplug.capture", "camplug.methods"),
    ("camplug.api", "camplug.metrics", "camplug.data", "camplug.zoo", "camplug.deploy",
     "camplug.drawing"),
    ("camplug.captum", "camplug.comparison", "camplug.sanity"),
    ("camplug.audit", "camplug.diff"),
    ("camplug.cli", "camplug.__main__", "camplug"),
]


def layer_of(module: str) -> int:
    """Index of the layer owning ``module`` (longest matching prefix)."""
    best, best_len = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise AssertionError(f"module {module} is in no layer: add it to LAYERS")
    return best


def module_files() -> dict[str, Path]:
    files = {}
    for base, package in ((ROOT / "camplug", "camplug"), (ROOT / "kernels", "camplug.kernels")):
        for path in base.rglob("*.py"):
            parts = path.relative_to(base).with_suffix("").parts
            name = ".".join((package, *parts))
            files[name.removesuffix(".__init__")] = path
    return files


FILES = module_files()
SUBPACKAGES = {name for name, path in FILES.items() if path.name == "__init__.py"}


def imported_modules(name: str, path: Path) -> set[str]:
    """Absolute names of the camplug modules ``path`` imports (anywhere in the file)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import sub` imports the subpackage `pkg.sub` when it is one.
            subs = {f"{target}.{alias.name}" for alias in node.names}
            found |= (subs & SUBPACKAGES) or {target}
    return {m for m in found if m == "camplug" or m.startswith("camplug.")}


@pytest.mark.parametrize("name", sorted(FILES))
def test_imports_point_down(name):
    here = layer_of(name)
    upward = sorted(m for m in imported_modules(name, FILES[name]) if layer_of(m) > here)
    assert not upward, f"{name} (layer {here}) imports higher layers: {upward}"


def test_kernels_import_nothing_from_the_plugin():
    for name, path in FILES.items():
        if name.startswith("camplug.kernels"):
            outside = {m for m in imported_modules(name, path)
                       if not m.startswith("camplug.kernels")}
            assert not outside, f"{name} imports {sorted(outside)}"


def test_every_module_has_a_layer():
    for name in FILES:
        layer_of(name)
