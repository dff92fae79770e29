"""Map methods of the CAM family, one file each, behind one registry.

``available()`` lists the names; ``get(name)`` returns the method (with its default options).
``"auto"`` is not a method but a choice made per model: exact CAM where the head allows it,
else Grad-CAM (:func:`resolve`). A :class:`Method` instance is accepted wherever a name is, to
pass options: ``capture.maps(method=camplug.methods.ScoreCAM(batch_size=64))``. How to add a
method: docs/internals.md.
"""

from __future__ import annotations

from .base import MapSource, Method
from .cam import CAM
from .eigencam import EigenCAM
from .gradcam import GradCAM
from .gradcampp import GradCAMPlusPlus
from .layercam import LayerCAM
from .scorecam import ScoreCAM
from .xgradcam import XGradCAM

AUTO = "auto"
_METHODS: dict[str, Method] = {
    method.name: method
    for method in (CAM(), GradCAM(), GradCAMPlusPlus(), XGradCAM(), LayerCAM(), ScoreCAM(),
                   EigenCAM())
}


def available() -> list[str]:
    """The method names ``maps(method=...)`` accepts (plus ``"auto"``)."""
    return list(_METHODS)


def get(name: str) -> Method:
    """The method registered as ``name``; a clear error listing the names otherwise."""
    if not isinstance(name, str):
        raise TypeError(
            f"method must be a method name (str) or a camplug.methods.Method instance, got "
            f"{type(name).__name__}"
        )
    try:
        return _METHODS[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown method {name!r}; available: {', '.join([AUTO, *_METHODS])}"
        ) from None


def resolve(method: str | Method, exact_head: bool) -> Method:
    """The method to run: a :class:`Method` instance as is (a method with options, e.g.
    ``ScoreCAM(batch_size=64)``), else ``get(method)``, with ``"auto"`` meaning CAM on exact
    heads and Grad-CAM elsewhere."""
    if isinstance(method, Method):
        return method
    if isinstance(method, str) and method.lower() == AUTO:
        return _METHODS["cam" if exact_head else "gradcam"]
    return get(method)


__all__ = [
    "AUTO", "CAM", "EigenCAM", "GradCAM", "GradCAMPlusPlus", "LayerCAM", "MapSource", "Method",
    "ScoreCAM", "XGradCAM", "available", "get", "resolve",
]
