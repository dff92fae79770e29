"""camplug.kernels: the compute layer. Pure tensor functions, no nn.Module knowledge."""

from .cam import Backend, cam
from .checks import OutputTooLargeError

__all__ = ["Backend", "OutputTooLargeError", "cam"]
