"""Options shared by the plugin's entry points, parsed in one place: the output size of the
maps. (The backend name is checked by ``camplug.kernels.check_backend``.)"""

from __future__ import annotations

from typing import Any

SizeSpec = Any  # "input", "features", an int or a pair (H, W)


def resolve_size(size: SizeSpec, input_size: tuple[int, int] | None) -> Any:
    """The kernel's ``size`` for a user's ``size``: "input" -> ``input_size`` (H, W),
    "features" -> None (the feature map's own h, w), an int or (H, W) -> unchanged (checked by
    the kernel)."""
    if isinstance(size, str):
        if size == "input":
            if input_size is None:
                raise ValueError("size='input' needs an image-like input [B, ..., H, W]; pass "
                                 "size='features' or an explicit (H, W)")
            return input_size
        if size == "features":
            return None
    elif not isinstance(size, bool) and size is not None:
        return size
    raise ValueError(f"size must be 'input', 'features', an int or (H, W); got {size!r}")
