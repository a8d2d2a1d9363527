"""The classic Delaunay triangle mosaic: the baseline ``tritri fit`` is measured against.

Sample points on the image, denser where it has edges; triangulate them (Delaunay); fill each
triangle with the mean color of the pixels whose centers it holds. With ``k`` points on the image
border (the 4 corners among them) and ``m`` inside, a Delaunay triangulation has exactly
``k + 2m - 2`` triangles, so the point counts are chosen to give the requested number.

The mosaic is also ``tritri fit --init delaunay``'s starting point. The triangulation and the
pixel ownership are numba (:mod:`tritri.fitting.delaunay`, loaded on first use); everything else is
numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tritri.fitting.numeric import psnr

__all__ = ["Mosaic", "delaunay_mosaic", "edge_weights", "mosaic_point_counts", "sample_points"]

#: Share of the sampling density spread uniformly over the image (the rest follows the edges).
UNIFORM_SHARE = 0.2


@dataclass
class Mosaic:
    """A triangle mosaic of an ``(H, W, 3)`` image.

    Attributes:
        verts: ``(N, 3, 2)`` float64 vertex positions in pixels (x right, y down; the image spans
            ``[0, W] x [0, H]``).
        colors: ``(N, 3)`` mean color of each triangle, in [0, 1].
        image: ``(H, W, 3)`` the mosaic itself (each pixel the color of the triangle holding its
            center).
        points: ``(P, 2)`` the sampled points.
        psnr: PSNR of ``image`` against the input, in dB.
    """

    verts: np.ndarray
    colors: np.ndarray
    image: np.ndarray
    points: np.ndarray
    psnr: float

    @property
    def n_triangles(self) -> int:
        return int(self.verts.shape[0])


def _as_float_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 2:
        raise ValueError(f"image must be (H, W, 3) with H, W >= 2, got {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    if not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"image must be uint8 or float in [0, 1], got {image.dtype}")
    return image.astype(np.float64)


def _blur(a: np.ndarray, radius: int) -> np.ndarray:
    """Separable box-ish (binomial) blur with edge padding."""
    kernel = np.array([math.comb(2 * radius, i) for i in range(2 * radius + 1)], dtype=np.float64)
    kernel /= kernel.sum()
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        p = np.pad(a, pad, mode="edge")
        n = a.shape[axis]
        a = sum(w * (p[i : i + n] if axis == 0 else p[:, i : i + n]) for i, w in enumerate(kernel))
    return a


def edge_weights(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` sampling density: Sobel gradient magnitude of the lightly blurred luminance.

    Normalized to sum to 1; ``UNIFORM_SHARE`` of the mass is spread evenly so flat regions still
    get points.
    """
    img = _as_float_image(image)
    lum = img @ np.array([0.299, 0.587, 0.114])
    lum = _blur(lum, 1)
    p = np.pad(lum, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    mag = _blur(np.hypot(gx, gy), 1)
    total = mag.sum()
    edge = mag / total if total > 0 else np.full_like(mag, 1.0 / mag.size)
    return (1.0 - UNIFORM_SHARE) * edge + UNIFORM_SHARE / mag.size


def mosaic_point_counts(n_triangles: int) -> tuple[int, int]:
    """``(border, interior)`` point counts whose Delaunay triangulation has ``n_triangles``.

    A triangulation of ``k`` hull points and ``m`` interior points has ``k + 2m - 2`` triangles;
    ``k`` (>= 4: the corners) grows like ``1.5·sqrt(N)`` and has the parity of ``N``.
    """
    if isinstance(n_triangles, bool) or not isinstance(n_triangles, int) or n_triangles < 2:
        raise ValueError(f"n_triangles must be an integer >= 2, got {n_triangles!r}")
    k = max(4, round(1.5 * math.sqrt(n_triangles)))
    if (n_triangles - k) % 2:
        k += 1
    k = min(k, n_triangles + 2)
    return k, (n_triangles - k + 2) // 2


def _border_points(k: int, width: int, height: int) -> np.ndarray:
    """``k`` points on the image border: the 4 corners, the rest spread by perimeter length."""
    corners = [(0.0, 0.0), (width, 0.0), (width, height), (0.0, height)]
    sides = [width, height, width, height]
    extra = k - 4
    perimeter = 2.0 * (width + height)
    # Points per side proportional to its length (largest remainders).
    share = [extra * s / perimeter for s in sides]
    counts = [int(math.floor(s)) for s in share]
    for i in sorted(range(4), key=lambda i: counts[i] - share[i])[: extra - sum(counts)]:
        counts[i] += 1
    pts = list(corners)
    for i, c in enumerate(counts):
        (x0, y0), (x1, y1) = corners[i], corners[(i + 1) % 4]
        for j in range(1, c + 1):
            t = j / (c + 1)
            pts.append((x0 + t * (x1 - x0), y0 + t * (y1 - y0)))
    return np.asarray(pts, dtype=np.float64)


def sample_points(image: np.ndarray, n_triangles: int, seed: int = 0) -> np.ndarray:
    """``(P, 2)`` pixel-space points (border first) for a mosaic of ``n_triangles`` triangles.

    Interior points are distinct pixels drawn without replacement with probability
    :func:`edge_weights`, each jittered inside its pixel (so no three are collinear by accident).
    """
    img = _as_float_image(image)
    H, W = img.shape[:2]
    k, m = mosaic_point_counts(n_triangles)
    if m > H * W:
        raise ValueError(f"{n_triangles} triangles need {m} interior points; the image has {H * W}")
    rng = np.random.default_rng(seed)
    border = _border_points(k, W, H)
    if m == 0:
        return border
    prob = edge_weights(img).ravel()
    idx = rng.choice(prob.size, size=m, replace=False, p=prob / prob.sum())
    y, x = np.divmod(idx, W)
    jitter = rng.uniform(-0.4, 0.4, size=(m, 2))
    interior = np.stack([x + 0.5, y + 0.5], axis=1) + jitter
    return np.concatenate([border, interior])


def delaunay_mosaic(image: np.ndarray, n_triangles: int, seed: int = 0) -> Mosaic:
    """The Delaunay triangle mosaic of ``image`` with ``n_triangles`` triangles.

    Args:
        image: ``(H, W, 3)`` uint8, or float in [0, 1].
        n_triangles: number of triangles (>= 2). The triangulation has exactly this many unless
            sampled points are degenerate (practically never); then the count may differ by a few.
        seed: seed of the point sampling.

    Returns:
        a :class:`Mosaic`. Colors are the mean over the pixels whose centers fall in a triangle
        (the L2-optimal flat color for that partition); a triangle holding no pixel center takes
        the color of the pixel under its centroid.
    """
    img = _as_float_image(image)
    H, W = img.shape[:2]
    from tritri.fitting.delaunay import delaunay, pixel_owner

    points = sample_points(img, n_triangles, seed)
    simplices = delaunay(points)
    verts = points[simplices]  # (N, 3, 2)
    owner = pixel_owner(verts, H, W)
    # Pixel centers sit strictly inside [0, W] x [0, H], the hull; -1 only from round-off.
    if (owner < 0).any():
        missing = owner < 0
        ys, xs = np.mgrid[0:H, 0:W]
        centers = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1)
        c = verts.mean(axis=1)
        d = ((centers[missing, None, :] - c[None]) ** 2).sum(-1)
        owner[missing] = d.argmin(axis=1)
    n = len(simplices)
    flat = img.reshape(-1, 3)
    counts = np.bincount(owner, minlength=n).astype(np.float64)
    sums = np.stack([np.bincount(owner, weights=flat[:, c], minlength=n) for c in range(3)], 1)
    colors = np.empty((n, 3))
    has = counts > 0
    colors[has] = sums[has] / counts[has, None]
    if (~has).any():
        c = verts[~has].mean(axis=1)
        cx = np.clip(c[:, 0].astype(int), 0, W - 1)
        cy = np.clip(c[:, 1].astype(int), 0, H - 1)
        colors[~has] = img[cy, cx]
    mosaic = colors[owner].reshape(H, W, 3)
    return Mosaic(verts=verts, colors=colors, image=mosaic, points=points, psnr=psnr(mosaic, img))
