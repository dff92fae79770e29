"""How the environment selects Triton's CPU interpreter: read in one place."""

from __future__ import annotations

import os


def triton_interpreter() -> bool:
    """Whether ``TRITON_INTERPRET`` asks Triton to interpret kernels on the CPU (set before
    triton is imported; "1", "true", "yes" or "on", as Triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "yes", "on")
