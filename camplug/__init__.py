"""camplug: Class Activation Maps for any GAP + linear PyTorch classifier."""

from .api import CamResult, attach, decorate, describe, explain, undecorate
from .audit import audit
from .capture import CamCapture
from .compare import compare
from .errors import UnsupportedHeadError
from .kernels import cam

__all__ = [
    "CamCapture",
    "CamResult",
    "ClassActivationMap",
    "UnsupportedHeadError",
    "attach",
    "audit",
    "cam",
    "compare",
    "decorate",
    "describe",
    "explain",
    "undecorate",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``camplug.ClassActivationMap`` needs captum (an optional dependency): imported on use."""
    if name == "ClassActivationMap":
        from .captum_attr import ClassActivationMap

        return ClassActivationMap
    raise AttributeError(f"module 'camplug' has no attribute {name!r}")
