"""camplug: Class Activation Maps for any GAP + linear PyTorch classifier."""

from .kernels import cam

__all__ = ["cam"]
__version__ = "0.1.0"
