"""tritri: differentiable triangle rendering and balanced image losses, in Triton.

Public API (see SPEC.md):

- :func:`tritri.render` / :class:`tritri.TriangleRenderer` -- tiled soft rasterization of triangles;
- :mod:`tritri.losses` -- L1 + VGG perceptual + LPIPS on one VGG pass, and the loss balancers;
- :mod:`tritri.tuning` -- per-GPU kernel configs;
- :mod:`tritri.reference` -- plain PyTorch ground truth.

Importing tritri never touches the GPU. ``tritri.losses`` is imported on first use (it pulls in
torchvision).
"""

from __future__ import annotations

import importlib
from typing import Any

from tritri.render import TriangleRenderer, render

__version__ = "0.1.0"
__all__ = ["render", "TriangleRenderer", "losses", "reference", "tuning", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("losses", "reference", "tuning"):
        return importlib.import_module(f"tritri.{name}")
    raise AttributeError(f"module 'tritri' has no attribute {name!r}")
