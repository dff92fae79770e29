"""camplug.kernels: the compute layer. Pure tensor functions, no nn.Module knowledge."""

from .cam import Backend, cam

__all__ = ["Backend", "cam"]
