"""camplug: Class Activation Maps for any GAP + linear PyTorch classifier."""

from .api import CamResult, attach, decorate, describe, explain, undecorate
from .audit import audit
from .capture import CamCapture
from .errors import UnsupportedHeadError
from .kernels import cam

__all__ = [
    "CamCapture",
    "CamResult",
    "UnsupportedHeadError",
    "attach",
    "audit",
    "cam",
    "decorate",
    "describe",
    "explain",
    "undecorate",
]
__version__ = "0.1.0"
