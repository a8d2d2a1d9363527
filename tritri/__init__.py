"""tritri: differentiable triangle rendering and balanced image losses, in Triton.

Public API (see SPEC.md):

- :func:`tritri.render` / :class:`tritri.TriangleRenderer` -- tiled soft rasterization of triangles;
- :mod:`tritri.losses` -- L1 + VGG perceptual + LPIPS on one VGG pass, and the loss balancers;
- :mod:`tritri.tuning` -- per-GPU kernel configs;
- :mod:`tritri.reference` -- plain PyTorch ground truth.

Importing tritri never touches the GPU and does not import torch: every name above is imported
on first use (``tritri.render`` pulls in torch, ``tritri.losses`` torchvision), so the torch-free
parts (e.g. ``tritri.fitting.export``, ``tritri.fitting.starts``) load fast.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"
__all__ = ["render", "TriangleRenderer", "losses", "reference", "tuning", "__version__"]

_RENDER_NAMES = ("render", "TriangleRenderer")


class _Package(types.ModuleType):
    """The ``tritri`` module's class: keeps ``tritri.render`` the function.

    ``tritri.render`` names both a submodule and the public function. Importing the submodule
    (``import tritri.render``, or the lazy ``__getattr__`` below) makes the import system run
    ``setattr(tritri, "render", <module tritri.render>)``, which would shadow the function; this
    turns that one assignment into the function ``tritri.render.render``. Any other assignment
    (e.g. a test's ``monkeypatch.setattr(tritri, "render", fake)``) goes through unchanged.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            name == "render"
            and isinstance(value, types.ModuleType)
            and value.__name__ == f"{self.__name__}.render"
        ):
            value = value.render
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name in _RENDER_NAMES:
        module = importlib.import_module("tritri.render")
        value = getattr(module, name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    if name in ("losses", "reference", "tuning"):
        return importlib.import_module(f"tritri.{name}")
    raise AttributeError(f"module 'tritri' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_RENDER_NAMES))
