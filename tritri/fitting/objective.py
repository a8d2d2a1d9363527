"""The fit's image losses: pixel losses (``l1``, ``mse``) plus tritri's VGG losses on demand.

``l1`` and ``mse`` need nothing; ``perceptual`` and ``lpips`` run on
:class:`tritri.losses.ImageLosses` (one shared VGG16 pass) and need pretrained VGG16 weights:
torchvision's ImageNet weights, from the torch hub cache or downloaded once, or a file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tritri.fitting.loss_names import (
    FULL_LOSSES,
    LOSS_NAMES,
    PIXEL_LOSSES,
    VGG_LOSSES,
    parse_losses,
)

__all__ = [
    "FULL_LOSSES",
    "LOSS_NAMES",
    "PIXEL_LOSSES",
    "FitLosses",
    "cached_vgg_weights",
    "parse_losses",
]


def cached_vgg_weights() -> Path | None:
    """The torch hub cache's copy of torchvision's VGG16 ImageNet weights, if it is there.

    Looks where ``weights="DEFAULT"`` downloads to (``$TORCH_HOME/hub/checkpoints``); never
    touches the network.
    """
    from tritri.losses.vgg import VGG16_URL

    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(VGG16_URL)
    return path if path.is_file() else None


@dataclass
class _Encoded:
    image: Tensor
    vgg: Any


class FitLosses(nn.Module):
    """``{name: loss}`` for a fit, in the order of ``names``.

    Args:
        names: any of ``l1`` (mean absolute error), ``mse`` (mean squared error), ``perceptual``
            and ``lpips`` (see :class:`tritri.losses.ImageLosses`).
        weights: VGG16 weights for the VGG losses, as :class:`tritri.losses.ImageLosses` takes
            them (``"DEFAULT"`` may download). Unused without VGG losses.

    ``encode(target)`` caches the target's VGG features; ``forward(pred, target_or_encoded)``
    takes ``(B, 3, H, W)`` images in [0, 1] and returns scalars.
    """

    def __init__(self, names: Sequence[str], weights: Any = "DEFAULT") -> None:
        super().__init__()
        self.names = tuple(names)
        bad = [n for n in self.names if n not in LOSS_NAMES]
        if bad or not self.names:
            raise ValueError(f"names must be from {LOSS_NAMES}, got {self.names}")
        vgg = tuple(n for n in self.names if n in VGG_LOSSES)
        self.image_losses: nn.Module | None = None
        if vgg:
            from tritri.losses import ImageLosses

            self.image_losses = ImageLosses(vgg, weights=weights)

    @property
    def min_size(self) -> int:
        """Smallest image side the losses accept."""
        return int(getattr(self.image_losses, "min_size", 1)) if self.image_losses else 1

    @torch.no_grad()
    def encode(self, target: Tensor) -> _Encoded:
        """Cache ``target``'s VGG features (a no-op without VGG losses)."""
        vgg = self.image_losses.encode(target) if self.image_losses is not None else None
        return _Encoded(target.detach(), vgg)

    def forward(self, pred: Tensor, target: Tensor | _Encoded) -> dict[str, Tensor]:
        enc = target if isinstance(target, _Encoded) else self.encode(target)
        diff = pred.float() - enc.image.float()
        out: dict[str, Tensor] = {}
        if "l1" in self.names:
            out["l1"] = diff.abs().mean()
        if "mse" in self.names:
            out["mse"] = diff.square().mean()
        if self.image_losses is not None:
            out.update(self.image_losses(pred, enc.vgg))
        return {n: out[n] for n in self.names}
