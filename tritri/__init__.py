"""tritri: differentiable triangle rendering and balanced image losses, in Triton.

Public API (the contract: ``docs/SPEC.md``):

- :func:`tritri.render` / :class:`tritri.TriangleRenderer` -- tiled soft rasterization of triangles
  (:mod:`tritri.rendering`);
- :mod:`tritri.losses` -- L1 + VGG perceptual + LPIPS on one VGG pass, and the loss balancers;
- :mod:`tritri.fitting` -- fitting an image with triangles (what ``tritri fit`` runs);
- :mod:`tritri.tuning` -- per-GPU kernel configs;
- :mod:`tritri.reference` -- plain PyTorch ground truth.

Importing tritri never touches the GPU and does not import torch: every name above is imported
on first use (``tritri.render`` pulls in torch, ``tritri.losses`` torchvision), so the torch-free
parts (e.g. ``tritri.fitting.export``, ``tritri.fitting.starts``) load fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from tritri._lazy import lazy_getattr

__version__ = "0.1.0"
__all__ = ["TriangleRenderer", "__version__", "fitting", "losses", "reference", "render", "tuning"]

_SUBPACKAGES = ("fitting", "losses", "reference", "tuning")
_names = lazy_getattr(
    __name__, {"render": "tritri.rendering", "TriangleRenderer": "tritri.rendering"}
)


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    value = _names(name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
