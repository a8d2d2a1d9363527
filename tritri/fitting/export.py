"""Images out of a fit: PNGs, the side-by-side comparison and the SVG (and, re-exported from
:mod:`tritri.fitting.images`, the target's loader).

Torch-free at import: the writers take torch tensors or numpy arrays; only :func:`load_image`
(which returns a tensor) imports torch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from tritri.fitting.files import atomic_path
from tritri.fitting.images import SAMPLE_IMAGE, load_image, load_image_array, sample_image_path
from tritri.fitting.numeric import as_numpy

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "SAMPLE_IMAGE",
    "load_image",
    "load_image_array",
    "sample_image_path",
    "save_comparison",
    "save_png",
    "save_svg",
    "to_uint8",
]

#: zlib level of the PNGs written here: 1 encodes a 516x256 comparison 3.4x faster than Pillow's
#: default (6) for 9 % more bytes (8 vs 26 ms: a CPU fit takes about 2 s).
PNG_COMPRESS_LEVEL = 1


def to_uint8(image: Tensor | np.ndarray) -> np.ndarray:
    """``(3, H, W)`` tensor or array in [0, 1] -> ``(H, W, 3)`` uint8 array (NaN -> 0)."""
    arr = np.clip(np.nan_to_num(as_numpy(image), nan=0.0), 0.0, 1.0).transpose(1, 2, 0)
    return (arr * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)


def save_png(image: Tensor | np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write a ``(3, H, W)`` image in [0, 1] as PNG (atomically: :mod:`tritri.fitting.files`)."""
    pixels = Image.fromarray(to_uint8(image))
    with atomic_path(path) as tmp:
        pixels.save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return Path(path)


def save_comparison(
    target: Tensor | np.ndarray,
    fit: Tensor | np.ndarray,
    path: str | os.PathLike[str],
    gap: int = 4,
) -> Path:
    """Write ``target | fit`` side by side (white ``gap`` pixels between them) as PNG
    (atomically)."""
    a, b = to_uint8(target), to_uint8(fit)
    if a.shape != b.shape:
        raise ValueError(f"target {a.shape} and fit {b.shape} differ in size")
    h, w, _ = a.shape
    canvas = np.full((h, 2 * w + gap, 3), 255, dtype=np.uint8)
    canvas[:, :w] = a
    canvas[:, w + gap :] = b
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return Path(path)


def _rgb(color: np.ndarray) -> str:
    """``#rrggbb`` of an RGB in [0, 1] (clipped; NaN as 0)."""
    color = np.clip(np.nan_to_num(np.asarray(color, np.float64), nan=0.0), 0.0, 1.0)
    r, g, b = (int(round(float(c) * 255)) for c in color)
    return f"#{r:02x}{g:02x}{b:02x}"


#: Soft edges in SVG. The render's coverage of a triangle is sigmoid(d / sigma), d the smallest
#: signed distance to its edges, so its level sets {d >= t} are the triangle grown or shrunk
#: about its incenter. The SVG draws each triangle as nested copies at these levels (in units of
#: sigma), each with the opacity that makes the stack's coverage step through the sigmoid, and
#: blurs them a little (px per px of sigma) to smooth the steps. A single blurred polygon cannot do
#: it: a thin or tiny triangle renders as a soft blob much larger than the polygon (measured: 3 dB
#: below final.png at 1024 triangles, against about 1 dB with the levels; tests/test_fit_svg.py).
SVG_LEVELS = (-2.5, -1.5, -0.5, 0.5, 1.5, 2.5)
SVG_BLUR_PER_SIGMA = 0.7


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _levels(tri: np.ndarray, alpha: float, sigma: float) -> list[tuple[np.ndarray, float]]:
    """(polygon, fill-opacity) of the nested copies that draw one soft triangle (pixels)."""
    a = np.linalg.norm(tri[1] - tri[2])
    b = np.linalg.norm(tri[2] - tri[0])
    c = np.linalg.norm(tri[0] - tri[1])
    perimeter = a + b + c
    d0, d1 = tri[1] - tri[0], tri[2] - tri[0]
    r = abs(d0[0] * d1[1] - d0[1] * d1[0]) / max(perimeter, 1e-12)  # inradius
    if not (r > 1e-9 and math.isfinite(r)):
        return []
    incenter = (a * tri[0] + b * tri[1] + c * tri[2]) / perimeter
    out = []
    covered = 0.0  # the stack's coverage inside the previous level
    for j, x in enumerate(SVG_LEVELS):
        mid = (x + SVG_LEVELS[j + 1]) / 2 if j + 1 < len(SVG_LEVELS) else x + 1.0
        goal = min(0.99, alpha * _sigmoid(mid))
        layer = 1.0 - (1.0 - goal) / (1.0 - covered)
        covered = goal
        t = x * sigma
        if t < r and layer > 0.002:
            out.append((incenter + (tri - incenter) * ((r - t) / r), layer))
    return out


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
    sigma: float | None = None,
) -> Path:
    """Write triangles as an SVG: a background rectangle, then one ``<polygon>`` per triangle in
    draw order (the last on top), with ``fill-opacity`` = the triangle's opacity (capped at 0.99
    like the renderer's alpha).

    ``verts`` are normalized ``(N, 3, 2)``; the SVG is ``width`` x ``height`` pixels. With
    ``sigma`` (the render's edge softness, px) each triangle is a group of nested polygons through
    one shared Gaussian blur filter (see ``SVG_LEVELS``), so the vector image has the render's soft
    edges; without it each triangle is one hard-edged polygon. A triangle with a non-finite
    position is left out; non-finite colors and opacities are drawn as 0. Written atomically.

    Raises:
        ValueError: ``sigma`` not None and not a finite number > 0.
    """
    if sigma is not None and not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be None or a finite number > 0 (pixels), got {sigma!r}")

    v = as_numpy(verts, np.float64) * np.array([width, height], dtype=np.float64)
    c, o, bg = (as_numpy(x, np.float64) for x in (colors, opacity, background))
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" shape-rendering="geometricPrecision">',
    ]
    if title:
        lines.append(f"<title>{title.replace('&', '&amp;').replace('<', '&lt;')}</title>")
    lines.append(f'<rect width="{width}" height="{height}" fill="{_rgb(bg)}"/>')
    soft = sigma is not None and sigma > 0
    if soft:
        std = SVG_BLUR_PER_SIGMA * sigma
        pad = math.ceil(4 * std + 3 * sigma) + 1
        lines.append(
            f'<defs><filter id="soft" filterUnits="userSpaceOnUse" x="{-pad}" y="{-pad}" '
            f'width="{width + 2 * pad}" height="{height + 2 * pad}" '
            f'color-interpolation-filters="sRGB"><feGaussianBlur stdDeviation="{std:.4f}"/>'
            "</filter></defs>"
        )
    for tri, color, alpha in zip(v, c, o, strict=True):
        if not np.isfinite(tri).all():
            continue
        a = float(np.clip(np.nan_to_num(alpha, nan=0.0), 0.0, 0.99))
        fill = _rgb(color)
        if soft:
            parts = [f'<g fill="{fill}" filter="url(#soft)">']
            for poly, layer in _levels(tri, a, float(sigma)):
                points = " ".join(f"{x:.2f},{y:.2f}" for x, y in poly)
                parts.append(f'<polygon points="{points}" fill-opacity="{layer:.3f}"/>')
            lines.append("".join(parts) + "</g>")
        else:
            points = " ".join(f"{x:.2f},{y:.2f}" for x, y in tri)
            lines.append(f'<polygon points="{points}" fill="{fill}" fill-opacity="{a:.3f}"/>')
    lines.append("</svg>")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)
