"""LPIPS v0.1 "lin" weights, read from the installed ``lpips`` package's files.

The ``lpips`` wheel (BSD-2-Clause) ships ``lpips/weights/v0.1/vgg.pth``: an OrderedDict with keys
``lin{k}.model.1.weight`` of shape ``(1, C_k, 1, 1)``, saved from CUDA tensors (hence
``map_location="cpu"``). The package itself is not imported (it imports torchvision).
"""

from __future__ import annotations

import importlib.util
import os

import torch

__all__ = ["lpips_weights_path", "load_lpips_lin_weights"]


def lpips_weights_path(net: str = "vgg", version: str = "0.1") -> str:
    """Path of the lin weights file inside the installed ``lpips`` package."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the LPIPS lin weights come from the 'lpips' package's files: pip install lpips, "
            "or pass lpips_weights=<path to vgg.pth>"
        )
    return os.path.join(spec.submodule_search_locations[0], "weights", f"v{version}", f"{net}.pth")


def load_lpips_lin_weights(path: str | os.PathLike | None = None) -> list[torch.Tensor]:
    """The five VGG lin weight vectors, fp32 on the CPU, shapes ``(64,), (128,), (256,), (512,),
    (512,)`` for relu1_2 ... relu5_3. ``path`` defaults to the installed package's v0.1 ``vgg.pth``.
    """
    path = os.fspath(path) if path is not None else lpips_weights_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"lpips_weights={path!r} is not a file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    out = []
    for k, ch in enumerate((64, 128, 256, 512, 512)):
        key = f"lin{k}.model.1.weight"
        if key not in state:
            raise ValueError(f"lpips_weights={path!r} has no {key!r}; is it an LPIPS vgg.pth?")
        w = state[key].detach().to(torch.float32).reshape(-1)
        if w.numel() != ch:
            raise ValueError(f"lpips_weights={path!r}: {key} has {w.numel()} values, expected {ch}")
        out.append(w.clone())
    return out
