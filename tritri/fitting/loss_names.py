"""The loss names of a fit and where the VGG16 weights are cached, without importing torch.

``tritri fit`` decides its objective from these before it knows whether it needs torch at all
(the CPU fit of :mod:`tritri.fitting.cpu_fit` does not).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "FULL_LOSSES",
    "LOSS_NAMES",
    "PIXEL_LOSSES",
    "VGG_LOSSES",
    "cached_vgg_weights_file",
    "parse_losses",
]

PIXEL_LOSSES = ("l1", "mse")
VGG_LOSSES = ("perceptual", "lpips")
LOSS_NAMES = PIXEL_LOSSES + VGG_LOSSES
#: The full objective (``--losses auto`` on a GPU when the VGG16 weights are at hand).
FULL_LOSSES = ("l1", "mse", "perceptual", "lpips")
#: File name of torchvision's VGG16 ImageNet weights (the end of ``tritri.losses.vgg.VGG16_URL``).
VGG16_FILE = "vgg16-397923af.pth"


def parse_losses(text: str) -> tuple[str, ...]:
    """``"l1,lpips"`` -> ``("l1", "lpips")``; ValueError naming the valid names otherwise."""
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in LOSS_NAMES]
    if not names or bad:
        raise ValueError(
            f"--losses: unknown loss {', '.join(bad) or repr(text)}; choose from "
            f"{','.join(LOSS_NAMES)} (comma-separated) or auto"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"--losses: {text!r} names a loss twice")
    return names


def cached_vgg_weights_file() -> Path | None:
    """torchvision's VGG16 weights in the torch hub cache, if there, found by torch's documented
    rule (``$TORCH_HOME/hub/checkpoints``; ``TORCH_HOME`` defaults to ``$XDG_CACHE_HOME/torch``,
    that to ``~/.cache``) without importing torch. In a process that moved the hub with
    ``torch.hub.set_dir``, use :func:`tritri.fitting.objective.cached_vgg_weights`."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "torch",
    )
    path = Path(os.path.expanduser(home)) / "hub" / "checkpoints" / VGG16_FILE
    return path if path.is_file() else None
