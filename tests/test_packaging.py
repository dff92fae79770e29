"""Packaging: the wheel holds every subpackage, and a plain ``pip install camplug`` (no extras)
has every third-party module the main job imports; captum and numba stay behind their extras,
imported only by the modules that need them."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# import name -> distribution name, where they differ
DISTRIBUTIONS = {"PIL": "pillow"}
# Modules that may import the optional captum: the Captum adapter, the comparison harness and
# the baselines of `camplug demo --baselines` (the CLI names the extra before they run).
CAPTUM_USERS = ("camplug.captum", "camplug.comparison", "camplug.audit.baselines")
# optional module -> (the extra that installs it, the modules allowed to import it); numba: the
# compiled connected components (camplug.metrics.components falls back to torch without it)
OPTIONAL = {
    "captum": ("captum", CAPTUM_USERS),
    "numba": ("fast", ("camplug.metrics.components_compiled",)),
}


def source_files() -> dict[str, Path]:
    """Module name -> file, for camplug/ and kernels/ (installed as camplug.kernels)."""
    files = {}
    for base, package in ((ROOT / "camplug", "camplug"), (ROOT / "kernels", "camplug.kernels")):
        for path in sorted(base.rglob("*.py")):
            parts = path.relative_to(base).with_suffix("").parts
            files[".".join((package, *parts)).removesuffix(".__init__")] = path
    return files


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of the non-stdlib, non-camplug modules ``path`` imports anywhere."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.partition(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "camplug"}


def requirement_name(requirement: str) -> str:
    for stop in "<>=!~;[ ":
        requirement = requirement.partition(stop)[0]
    return requirement.lower()


def test_every_subpackage_is_packaged():
    packages = PROJECT["tool"]["setuptools"]["packages"]
    if not isinstance(packages, list):
        pytest.skip("packages are found by setuptools, not listed")
    listed = set(packages)
    found = {name for name, path in source_files().items() if path.name == "__init__.py"}
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - found == set(), "pyproject.toml lists packages that do not exist"


def test_core_dependencies_cover_every_import_but_the_optional_ones():
    core = {requirement_name(r) for r in PROJECT["project"]["dependencies"]}
    extras = PROJECT["project"]["optional-dependencies"]
    for module, (extra, _) in OPTIONAL.items():
        assert module in {requirement_name(r) for r in extras[extra]}
        assert module not in core
    for name, path in source_files().items():
        for module in third_party_imports(path):
            if module in OPTIONAL:
                extra, users = OPTIONAL[module]
                assert name.startswith(users), (
                    f"{name} imports {module}, which a plain install lacks (extra {extra!r})")
            else:
                assert DISTRIBUTIONS.get(module, module).lower() in core, (
                    f"{name} imports {module}: make it a core dependency")
