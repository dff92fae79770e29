"""Numeric constants of the CAM semantics, shared by every backend (see docs/cam-semantics.md).

EPS: added to a map's range in min-max normalization, ``(x - lo) / (hi - lo + EPS)``.
CONSTANT_RTOL: a map whose range ``hi - lo`` is at most ``CONSTANT_RTOL * max(|lo|, |hi|)``
counts as constant (summation-order noise of an fp32 channel sum is far below it) and
normalizes to 0 everywhere, on every backend.
"""

from __future__ import annotations

EPS = 1e-7
CONSTANT_RTOL = 1e-5
