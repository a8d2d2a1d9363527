"""Images in and out of a fit: load the target, write PNGs, the side-by-side comparison and SVG."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

__all__ = [
    "SAMPLE_IMAGE",
    "load_image",
    "sample_image_path",
    "save_comparison",
    "save_png",
    "save_svg",
    "to_uint8",
]

#: File name of the bundled sample image in ``tritri/data`` (see ``tritri/data/SOURCE.md``).
SAMPLE_IMAGE = "astronaut.png"


def sample_image_path() -> Path:
    """Path of the bundled sample photograph (NASA, public domain; see tritri/data/SOURCE.md)."""
    return Path(str(resources.files("tritri") / "data" / SAMPLE_IMAGE))


def load_image(path: str | os.PathLike[str] | None, size: int | None = None) -> Tensor:
    """Read an image as a ``(3, H, W)`` float32 tensor in [0, 1].

    Args:
        path: any format Pillow reads (EXIF orientation applied, alpha dropped, grey expanded
            to RGB); None for the bundled sample image.
        size: resize (Lanczos) so that the longest side is ``size`` pixels, keeping the aspect
            ratio; None keeps the file's size.

    Raises:
        FileNotFoundError: no such file. ValueError: not an image Pillow can read.
    """
    path = sample_image_path() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {str(path)!r}")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read {str(path)!r} as an image ({err})") from err
    if size is not None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        w, h = im.size
        scale = size / max(w, h)
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        if new != im.size:
            im = im.resize(new, Image.LANCZOS)
    return torch.from_numpy(np.array(im, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def to_uint8(image: Tensor) -> np.ndarray:
    """``(3, H, W)`` tensor in [0, 1] -> ``(H, W, 3)`` uint8 array."""
    arr = image.detach().float().clamp(0, 1).cpu().permute(1, 2, 0).numpy()
    return (arr * 255.0 + 0.5).astype(np.uint8)


def save_png(image: Tensor, path: str | os.PathLike[str]) -> Path:
    """Write a ``(3, H, W)`` image in [0, 1] as PNG."""
    path = Path(path)
    Image.fromarray(to_uint8(image)).save(path)
    return path


def save_comparison(
    target: Tensor, fit: Tensor, path: str | os.PathLike[str], gap: int = 4
) -> Path:
    """Write ``target | fit`` side by side (white ``gap`` pixels between them) as PNG."""
    a, b = to_uint8(target), to_uint8(fit)
    if a.shape != b.shape:
        raise ValueError(f"target {a.shape} and fit {b.shape} differ in size")
    h, w, _ = a.shape
    canvas = np.full((h, 2 * w + gap, 3), 255, dtype=np.uint8)
    canvas[:, :w] = a
    canvas[:, w + gap :] = b
    path = Path(path)
    Image.fromarray(canvas).save(path)
    return path


def _rgb(color: np.ndarray) -> str:
    r, g, b = (int(round(float(c) * 255)) for c in np.clip(color, 0.0, 1.0))
    return f"#{r:02x}{g:02x}{b:02x}"


def save_svg(
    verts: np.ndarray | Tensor,
    colors: np.ndarray | Tensor,
    opacity: np.ndarray | Tensor,
    background: np.ndarray | Tensor,
    path: str | os.PathLike[str],
    *,
    width: int,
    height: int,
    title: str | None = None,
) -> Path:
    """Write triangles as an SVG: a background rectangle, then one ``<polygon>`` per triangle in
    draw order (the last on top), with ``fill-opacity`` = the triangle's opacity (capped at 0.99
    like the renderer's alpha).

    ``verts`` are normalized ``(N, 3, 2)``; the SVG is ``width`` x ``height`` pixels. Edges are
    hard (SVG has no soft edge), so the vector image is a close, slightly crisper twin of the
    render.
    """

    def arr(x: np.ndarray | Tensor) -> np.ndarray:
        if isinstance(x, Tensor):
            x = x.detach().cpu().numpy()
        return np.asarray(x, dtype=np.float64)

    v = arr(verts) * np.array([width, height], dtype=np.float64)
    c, o, bg = arr(colors), arr(opacity), arr(background)
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" shape-rendering="geometricPrecision">',
    ]
    if title:
        lines.append(f"<title>{title.replace('&', '&amp;').replace('<', '&lt;')}</title>")
    lines.append(f'<rect width="{width}" height="{height}" fill="{_rgb(bg)}"/>')
    for tri, color, alpha in zip(v, c, o, strict=True):
        if not np.isfinite(tri).all():
            continue
        points = " ".join(f"{x:.2f},{y:.2f}" for x, y in tri)
        a = float(np.clip(alpha, 0.0, 0.99))
        lines.append(
            f'<polygon points={quoteattr(points)} fill="{_rgb(color)}" fill-opacity="{a:.3f}"/>'
        )
    lines.append("</svg>")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
