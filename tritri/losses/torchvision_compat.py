"""Import torchvision (and so lpips) next to a torch whose build its compiled ops do not match.

A CUDA-built torchvision wheel beside a CPU-only torch (the only torchvision on PyPI for Linux)
fails to load its ``_C`` extension, and then ``import torchvision`` raises in
``_meta_registrations`` ("operator torchvision::nms does not exist") although the models never need
those ops. Declaring the two op schemas it registers fakes for lets the import go through.
tritri itself never imports torchvision; the parity tests and the loss benchmark do (the lpips
package imports it too).
"""

from __future__ import annotations

import sys
from types import ModuleType

import torch

_SHIM: torch.library.Library | None = None


def import_torchvision() -> ModuleType:
    """Return the torchvision module, declaring its missing ops first if the plain import fails."""
    global _SHIM
    try:
        import torchvision

        return torchvision
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    if _SHIM is None:
        _SHIM = torch.library.Library("torchvision", "FRAGMENT")
        _SHIM.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _SHIM.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision

    return torchvision
