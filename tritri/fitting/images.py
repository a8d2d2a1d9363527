"""The image a fit targets: any file Pillow reads, as ``(3, H, W)`` float32 RGB in [0, 1] showing
what an image viewer shows (``docs/SPEC.md`` section 5, "Image").

Every Pillow mode is mapped by its own range, never clipped to 8 bits:

- 8-bit modes (``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ``1``, ...): Pillow's conversion to RGB,
  divided by 255 (a 16-bit-per-channel RGB PNG, which Pillow reads as 8-bit ``RGB``, is in here);
- 16-bit grey (``I;16`` and its byte orders) and ``I`` (32-bit integers; Pillow's mode for 16-bit
  PNG and PGM files in older versions): divided by 65535, values beyond clipped (with a note);
- ``F`` (32-bit float): taken as [0, 1], values outside clipped (with a note); a NaN or infinity
  is an error.

Transparency (an alpha band, or a palette or grey image with a transparent colour) is composited
over ``background`` (white by default), as a viewer shows it on a white page; the EXIF orientation
is applied; an animated or multi-page file gives its first frame (with a note).

Torch-free: :func:`load_image` alone returns a tensor (and imports torch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "SAMPLE_IMAGE",
    "WHITE",
    "TargetImage",
    "load_image",
    "load_image_array",
    "read_image",
    "sample_image_path",
]

#: File name of the bundled sample image in ``tritri/data`` (see ``tritri/data/SOURCE.md``).
SAMPLE_IMAGE = "astronaut.png"
#: The default colour transparent pixels are composited over (RGB in [0, 1]).
WHITE = (1.0, 1.0, 1.0)

_16BIT = {"I;16", "I;16L", "I;16B", "I;16N"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def sample_image_path() -> Path:
    """Path of the bundled sample photograph (NASA, public domain; see tritri/data/SOURCE.md)."""
    return Path(str(resources.files("tritri") / "data" / SAMPLE_IMAGE))


@dataclass(frozen=True)
class TargetImage:
    """An image read for a fit.

    Attributes:
        pixels: ``(3, H, W)`` float32 RGB in [0, 1], at the size asked for.
        source_size: ``(width, height)`` of the file's first frame, EXIF orientation applied.
        mode: its Pillow mode (``"RGB"``, ``"I;16"``, ...).
        notes: what was done to it that its user should hear of, one line each (an animated
            file's first frame taken, transparency composited, values clipped).
    """

    pixels: np.ndarray
    source_size: tuple[int, int]
    mode: str
    notes: tuple[str, ...]


class _BadImage(ValueError):
    """A file Pillow decodes whose values cannot be fitted (its message names the file)."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in _ALPHA_MODES or "transparency" in im.info


def _composite(im: Image.Image, background: tuple[float, float, float]) -> tuple[Image.Image, bool]:
    """An 8-bit image with alpha over the ``background`` colour, as RGB; and whether any pixel
    was transparent at all."""
    rgba = im.convert("RGBA")
    low, _ = rgba.getchannel("A").getextrema()
    if low == 255:
        return rgba.convert("RGB"), False
    fill = tuple(int(round(min(max(c, 0.0), 1.0) * 255)) for c in background)
    under = Image.new("RGBA", rgba.size, (*fill, 255))
    return Image.alpha_composite(under, rgba).convert("RGB"), True


def _high_bit(im: Image.Image, name: str, notes: list[str]) -> np.ndarray:
    """``(H, W)`` float64 in [0, 1] of a 16-bit, 32-bit integer or float grey image."""
    arr = np.asarray(im)
    if im.mode == "F":
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise _BadImage(f"{name}: the image holds non-finite values (NaN or infinity)")
        unit = 1.0
        scale = "[0, 1] (float image)"
    else:
        arr = arr.astype(np.float64)
        unit = 65535.0
        scale = "0-65535 (16-bit)"
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0 or hi > unit:
        notes.append(f"{name}: values {lo:g}..{hi:g} clipped to {scale}")
    return np.clip(arr / unit, 0.0, 1.0)


def _resize_float(arr: np.ndarray, new: tuple[int, int]) -> np.ndarray:
    """``(H, W, 3)`` float -> resized (Lanczos, per channel in float32, like the 8-bit path)."""
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(arr[..., c], np.float32))
                   .resize(new, Image.Resampling.LANCZOS))
        for c in range(arr.shape[-1])
    ]  # fmt: skip
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def _fit_size(w: int, h: int, size: int | None, upscale: bool) -> tuple[int, int]:
    if size is None:
        return w, h
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    scale = size / max(w, h)
    if scale > 1 and not upscale:
        return w, h
    return max(1, round(w * scale)), max(1, round(h * scale))


def read_image(
    path: str | os.PathLike[str] | None,
    size: int | None = None,
    *,
    background: tuple[float, float, float] = WHITE,
    upscale: bool = True,
) -> TargetImage:
    """Read an image for a fit (module docstring: modes, transparency, orientation, frames).

    Args:
        path: any file Pillow reads; None for the bundled sample image.
        size: resize (Lanczos) so that the longest side is ``size`` pixels, keeping the aspect
            ratio; None keeps the file's size.
        background: RGB in [0, 1] that transparent pixels are composited over.
        upscale: whether an image smaller than ``size`` is enlarged to it (else it keeps its own
            size).

    Raises:
        FileNotFoundError: no such file. ValueError: a directory, an empty file, a file that is
        not an image Pillow can decode (truncated, corrupt), or one holding NaN values; the
        message is one line naming the file.
    """
    path = sample_image_path() if path is None else Path(path)
    name = str(path)
    if path.is_dir():
        raise ValueError(f"{name!r} is a directory, not an image file")
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {name!r}")
    if path.stat().st_size == 0:
        raise ValueError(f"cannot read {name!r} as an image: the file is empty")
    notes: list[str] = []
    try:
        with Image.open(path) as opened:
            frames = int(getattr(opened, "n_frames", 1) or 1)
            opened.load()
            im = ImageOps.exif_transpose(opened)
            mode = im.mode
            if mode in _16BIT or mode in ("I", "F"):
                grey = _high_bit(im, name, notes)
                rgb: Image.Image | np.ndarray = np.repeat(grey[..., None], 3, axis=-1)
            elif _has_alpha(im):
                rgb, transparent = _composite(im, background)
                if transparent:
                    notes.append(f"{name}: transparent pixels composited over "
                                 f"{_colour_name(background)}")  # fmt: skip
            else:
                rgb = im.convert("RGB")
    except _BadImage:
        raise
    except Exception as err:  # a decoder's error for a file that is not a readable image
        raise ValueError(f"cannot read {name!r} as an image ({_first_line(err)})") from err
    if frames > 1:
        notes.append(f"{name} has {frames} frames (animated or multi-page): fitting the first")
    w, h = im.size
    new = _fit_size(w, h, size, upscale)
    if isinstance(rgb, Image.Image):
        if new != rgb.size:
            rgb = rgb.resize(new, Image.Resampling.LANCZOS)
        arr = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
    else:
        arr = _resize_float(rgb, new) if new != (w, h) else rgb
    pixels = np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)
    return TargetImage(pixels=pixels, source_size=(w, h), mode=mode, notes=tuple(notes))


def _colour_name(rgb: tuple[float, float, float]) -> str:
    if tuple(rgb) == WHITE:
        return "white"
    return "#" + "".join(f"{int(round(min(max(c, 0.0), 1.0) * 255)):02x}" for c in rgb)


def load_image_array(
    path: str | os.PathLike[str] | None,
    size: int | None = None,
    *,
    background: tuple[float, float, float] = WHITE,
    upscale: bool = True,
) -> np.ndarray:
    """Read an image as a ``(3, H, W)`` float32 numpy array in [0, 1]: :func:`read_image`'s
    pixels (same arguments and errors; its notes are dropped)."""
    return read_image(path, size, background=background, upscale=upscale).pixels


def load_image(
    path: str | os.PathLike[str] | None,
    size: int | None = None,
    *,
    background: tuple[float, float, float] = WHITE,
    upscale: bool = True,
) -> Tensor:
    """Read an image as a ``(3, H, W)`` float32 tensor in [0, 1] (:func:`load_image_array` as a
    CPU tensor; same arguments and errors)."""
    import torch

    return torch.from_numpy(load_image_array(path, size, background=background, upscale=upscale))
