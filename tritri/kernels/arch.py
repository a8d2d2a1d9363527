"""The GPU architecture a kernel launch targets, for the launchers' arch-dependent choices.

Launchers adapt a few policies to the compute capability (register caps, warps per tile):
:func:`target_arch` gives it. On a CUDA device it is the device's own, queried on the first launch
(never at import); ``tritri check`` compiles launches for other architectures without a GPU and
sets the one it targets with :func:`targeting`, so that what it compiles is what a launch on that
GPU would get. This module is the whole contract between the two: the launch path never imports
the check's tooling.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

__all__ = ["target_arch", "targeting"]

_TARGET: ContextVar[int | None] = ContextVar("tritri_target_arch", default=None)


def target_arch(device: Any) -> int | None:
    """Compute capability (80 for sm_80, ...) a launch on ``device`` targets: the one set by an
    enclosing :func:`targeting`, else a CUDA device's own, else None (CPU, interpreter)."""
    chosen = _TARGET.get()
    if chosen is not None:
        return chosen
    if getattr(device, "type", None) == "cuda":
        import torch

        major, minor = torch.cuda.get_device_capability(device)
        return 10 * major + minor
    return None


@contextmanager
def targeting(arch: int | None) -> Iterator[None]:
    """Within the block, launches target ``sm_<arch>`` whatever their device (None: their own)."""
    token = _TARGET.set(arch)
    try:
        yield
    finally:
        _TARGET.reset(token)
