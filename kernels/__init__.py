"""camplug.kernels: the compute layer. Pure tensor functions, no nn.Module knowledge."""

from .cam import BACKENDS, Backend, cam, check_backend
from .checks import OutputTooLargeError

__all__ = ["BACKENDS", "Backend", "OutputTooLargeError", "cam", "check_backend"]
