"""Map methods of the CAM family, one file each, behind one registry.

``available()`` lists the names; ``get(name)`` returns the method. ``"auto"`` is not a method
but a choice made per model: exact CAM where the head allows it, else Grad-CAM
(:func:`resolve`). How to add a method: docs/internals.md.
"""

from __future__ import annotations

from .base import MapSource, Method
from .cam import CAM
from .gradcam import GradCAM

AUTO = "auto"
_METHODS: dict[str, Method] = {method.name: method for method in (CAM(), GradCAM())}


def available() -> list[str]:
    """The method names ``maps(method=...)`` accepts (plus ``"auto"``)."""
    return list(_METHODS)


def get(name: str) -> Method:
    """The method registered as ``name``; a clear error listing the names otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"method must be a method name (str), got {type(name).__name__}")
    try:
        return _METHODS[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown method {name!r}; available: {', '.join([AUTO, *_METHODS])}"
        ) from None


def resolve(name: str, exact_head: bool) -> Method:
    """``get(name)``, with ``"auto"`` meaning CAM on exact heads and Grad-CAM elsewhere."""
    if isinstance(name, str) and name.lower() == AUTO:
        return _METHODS["cam" if exact_head else "gradcam"]
    return get(name)


__all__ = ["AUTO", "MapSource", "Method", "available", "get", "resolve"]
