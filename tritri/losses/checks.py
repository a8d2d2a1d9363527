"""Argument checks shared by the balancers and the monitor (torch-free)."""

from __future__ import annotations

import math

__all__ = ["check_finite"]


def check_finite(
    value: float, argument: str, *, positive: bool = False, nonneg: bool = False
) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` naming ``argument``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{argument} must be a number, got {type(value).__name__} {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{argument} must be finite, got {value!r}")
    if positive and out <= 0:
        raise ValueError(f"{argument} must be > 0, got {value!r}")
    if nonneg and out < 0:
        raise ValueError(f"{argument} must be >= 0, got {value!r}")
    return out
