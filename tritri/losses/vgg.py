"""The frozen VGG16 trunk shared by the perceptual loss and LPIPS.

The trunk is ``torchvision.models.vgg16().features`` rebuilt with plain ``torch.nn`` modules at the
same indices (so a torchvision-format state dict loads as is), cut after the deepest ReLU that is
asked for. It does not import torchvision: importing torchvision costs about a second and fails
outright when its compiled extension does not match the installed torch.

Inputs are images ``(B, 3, H, W)`` in [0, 1]; the trunk applies ImageNet normalization itself (in
fp32, then casts to the trunk's dtype). LPIPS v0.1's ScalingLayer applied to ``2x - 1`` is the same
affine map, so one pass serves both losses.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import torch
from torch import nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LAYER_CHANNELS",
    "LAYER_INDEX",
    "LPIPS_LAYERS",
    "PERCEPTUAL_LAYERS",
    "VGG16_URL",
    "VGG16Features",
    "WeightsSpec",
    "load_vgg16_state_dict",
]

#: The file torchvision's ``VGG16_Weights.IMAGENET1K_V1`` (= ``DEFAULT``) downloads; fetched with
#: ``torch.hub.load_state_dict_from_url`` exactly as torchvision does, into the same cache
#: (``$TORCH_HOME/hub/checkpoints``), with the same hash check.
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's VGG16 "D" configuration, features[0:30] (the last max-pool is never needed).
_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)

#: ReLU output name -> index of that ReLU in ``vgg16().features``.
LAYER_INDEX: dict[str, int] = {
    "relu1_1": 1,
    "relu1_2": 3,
    "relu2_1": 6,
    "relu2_2": 8,
    "relu3_1": 11,
    "relu3_2": 13,
    "relu3_3": 15,
    "relu4_1": 18,
    "relu4_2": 20,
    "relu4_3": 22,
    "relu5_1": 25,
    "relu5_2": 27,
    "relu5_3": 29,
}
LAYER_CHANNELS: dict[str, int] = {
    name: (64, 128, 256, 512, 512)[int(name[4]) - 1] for name in LAYER_INDEX
}
#: Number of 2x2 max-pools in front of each layer (its feature map is H / 2**k, floored).
LAYER_POOLS: dict[str, int] = {name: int(name[4]) - 1 for name in LAYER_INDEX}

PERCEPTUAL_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
LPIPS_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")

WeightsSpec = str | os.PathLike | Mapping[str, torch.Tensor] | None

_OPTIONS = (
    "pass weights='DEFAULT' (torchvision's ImageNet VGG16 weights, downloaded on first use "
    "into $TORCH_HOME/hub/checkpoints; needs network access once), weights=<path to a "
    "torchvision-format VGG16 state dict> (e.g. a copy of vgg16-397923af.pth), or weights=None "
    "(random trunk: tests only)"
)


def _build_features(n_modules: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for v in _CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.Conv2d(in_ch, v, kernel_size=3, padding=1))
            layers.append(nn.ReLU(inplace=True))
            in_ch = v
    layers = layers[:n_modules]
    for m in layers:
        if isinstance(m, nn.Conv2d):  # torchvision's VGG init
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)


def load_vgg16_state_dict(weights: WeightsSpec) -> dict[str, torch.Tensor] | None:
    """Resolve ``weights`` to a features-only state dict (keys ``"<index>.weight"``), or None.

    ``weights`` is ``"DEFAULT"`` (download, see :data:`VGG16_URL`), a path to a torchvision-format
    state dict (keys ``features.<i>.weight`` as saved from ``vgg16()``, or ``<i>.weight`` as saved
    from ``vgg16().features``), an already-loaded mapping of either form, or None (random init).
    Raises RuntimeError/FileNotFoundError/ValueError naming the three options when the weights
    cannot be had.
    """
    if weights is None:
        return None
    if isinstance(weights, Mapping):
        raw = dict(weights)
    elif isinstance(weights, str) and weights == "DEFAULT":
        try:
            raw = torch.hub.load_state_dict_from_url(
                VGG16_URL, map_location="cpu", progress=True, check_hash=True
            )
        except Exception as e:  # no network, proxy, corrupt cache, ...
            raise RuntimeError(
                f"weights='DEFAULT': could not download the VGG16 ImageNet weights from "
                f"{VGG16_URL} ({type(e).__name__}: {e}). Either {_OPTIONS}."
            ) from e
    elif isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights={path!r} is not a file. Either {_OPTIONS}.")
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(
                f"weights={path!r} could not be read as a state dict ({type(e).__name__}: {e}). "
                f"Either {_OPTIONS}."
            ) from e
        if not isinstance(raw, Mapping):
            raise ValueError(f"weights={path!r} holds a {type(raw).__name__}, not a state dict.")
    else:
        raise TypeError(
            f"weights must be 'DEFAULT', a path, a state dict or None, got {type(weights).__name__}"
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        k = key[len("features.") :] if key.startswith("features.") else key
        head = k.split(".", 1)[0]
        if head.isdigit() and int(head) < 30:
            out[k] = value
    return out


class VGG16Features(nn.Module):
    """Frozen VGG16 trunk returning the ReLU outputs named in ``layers``.

    Args:
        weights: see :func:`load_vgg16_state_dict`.
        layers: ReLU names (keys of :data:`LAYER_INDEX`); the trunk is cut after the deepest.

    ``forward(images)`` takes ``(B, 3, H, W)`` images in [0, 1] and returns ``{name: (B, C, h, w)}``
    in the trunk's dtype. Parameters never require grad and the module stays in eval mode whatever
    ``train()`` is called with.
    """

    def __init__(self, weights: WeightsSpec, layers: Iterable[str]) -> None:
        super().__init__()
        layers = tuple(layers)
        unknown = [n for n in layers if n not in LAYER_INDEX]
        if unknown or not layers:
            raise ValueError(
                f"layers: unknown VGG16 layer(s) {unknown}; choose from {list(LAYER_INDEX)}"
            )
        # Trunk order, duplicates removed.
        self.layers = tuple(sorted(set(layers), key=LAYER_INDEX.__getitem__))
        n_modules = LAYER_INDEX[self.layers[-1]] + 1
        state = load_vgg16_state_dict(weights)
        self.features = _build_features(n_modules)
        if state is not None:
            wanted = self.features.state_dict()
            missing = [k for k in wanted if k not in state]
            if missing:
                more = "..." if len(missing) > 4 else ""
                raise ValueError(
                    f"weights: the state dict lacks {missing[:4]}{more}"
                    f" (expected torchvision VGG16 keys such as 'features.0.weight'). "
                    f"Either {_OPTIONS}."
                )
            bad = [k for k in wanted if tuple(state[k].shape) != tuple(wanted[k].shape)]
            if bad:
                raise ValueError(
                    f"weights: wrong shapes for {bad[:4]}; is this a VGG16 state dict?"
                )
            self.features.load_state_dict({k: state[k] for k in wanted})
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._taps = {LAYER_INDEX[n]: n for n in self.layers}
        super().train(False)

    def train(self, mode: bool = True) -> VGG16Features:  # noqa: ARG002 - always eval
        return super().train(False)

    @property
    def dtype(self) -> torch.dtype:
        return self.features[0].weight.dtype

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        # Normalize in at least fp32 whatever the input and trunk dtypes are.
        ct = torch.promote_types(torch.promote_types(images.dtype, self.dtype), torch.float32)
        x = (images.to(ct) - self.mean.to(ct)) / self.std.to(ct)
        x = x.to(self.dtype)
        out: dict[str, torch.Tensor] = {}
        for i, module in enumerate(self.features):
            x = module(x)
            name = self._taps.get(i)
            if name is not None:
                # Safe to keep without a clone: the next module is a conv or a max-pool, and the
                # in-place ReLUs only ever overwrite conv outputs, never a tapped ReLU output.
                out[name] = x
        return out
