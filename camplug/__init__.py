"""camplug: Class Activation Maps for PyTorch classifiers.

``import camplug`` stays light: the plugin (``attach``, ``explain``, ``decorate``,
``describe``) and the kernel (``cam``) are imported at once; the comparison harness, the audit,
the Captum adapter and the subpackages load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .api import CamResult, attach, decorate, describe, explain, undecorate
from .capture import CamCapture
from .errors import UnsupportedHeadError
from .kernels import cam
from .version import __version__

__all__ = [
    "CamCapture",
    "CamResult",
    "ClassActivationMap",
    "UnsupportedHeadError",
    "attach",
    "cam",
    "compare",
    "decorate",
    "describe",
    "explain",
    "run_audit",
    "undecorate",
    "__version__",
]

# name -> (module, attribute): loaded on first access (they import sqlite3, captum, ...).
_LAZY_ATTRIBUTES = {
    "ClassActivationMap": ("camplug.captum.attribution", "ClassActivationMap"),
    "compare": ("camplug.comparison.harness", "compare"),
    "run_audit": ("camplug.audit.pipeline", "run_audit"),
}
_LAZY_SUBPACKAGES = ("audit", "captum", "comparison", "data", "discovery", "metrics", "zoo")


def __getattr__(name: str) -> Any:
    """Lazy public names and subpackages (see ``_LAZY_ATTRIBUTES``)."""
    if name in _LAZY_ATTRIBUTES:
        module, attribute = _LAZY_ATTRIBUTES[name]
        return getattr(importlib.import_module(module), attribute)
    if name in _LAZY_SUBPACKAGES:
        return importlib.import_module(f"camplug.{name}")
    raise AttributeError(f"module 'camplug' has no attribute {name!r}")
