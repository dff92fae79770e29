"""camplug: Class Activation Maps for PyTorch classifiers.

``import camplug`` stays light (it does not even import torch): every public name and
subpackage loads on first use, so ``camplug --help`` is instant and ``camplug.attach`` pays
only for the plugin, not for the audit, the comparison harness or Captum.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import DegenerateMapWarning, UnsupportedHeadError
from .version import __version__

__all__ = [
    "CamCapture",
    "CamModel",
    "CamResult",
    "ClassActivationMap",
    "DegenerateMapWarning",
    "UnsupportedHeadError",
    "attach",
    "cam",
    "compare",
    "decorate",
    "describe",
    "explain",
    "overlay",
    "run_audit",
    "undecorate",
    "__version__",
]

# name -> (module, attribute): loaded on first access.
_LAZY_ATTRIBUTES = {
    **{name: ("camplug.api", name)
       for name in ("CamResult", "attach", "decorate", "describe", "explain", "undecorate")},
    "CamCapture": ("camplug.capture", "CamCapture"),
    "CamModel": ("camplug.deploy", "CamModel"),
    "cam": ("camplug.kernels", "cam"),
    "ClassActivationMap": ("camplug.captum.attribution", "ClassActivationMap"),
    "compare": ("camplug.comparison.harness", "compare"),
    "run_audit": ("camplug.audit.pipeline", "run_audit"),
    "overlay": ("camplug.drawing", "overlay"),
}
_LAZY_SUBPACKAGES = (
    "audit", "captum", "comparison", "data", "deploy", "diff", "discovery", "drawing", "kernels",
    "methods", "metrics", "sanity", "zoo",
)


def __getattr__(name: str) -> Any:
    """Lazy public names and subpackages (see ``_LAZY_ATTRIBUTES``)."""
    if name in _LAZY_ATTRIBUTES:
        module, attribute = _LAZY_ATTRIBUTES[name]
        return getattr(importlib.import_module(module), attribute)
    if name in _LAZY_SUBPACKAGES:
        return importlib.import_module(f"camplug.{name}")
    raise AttributeError(f"module 'camplug' has no attribute {name!r}")
