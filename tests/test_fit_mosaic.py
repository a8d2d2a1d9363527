"""The Delaunay triangle-mosaic baseline (tritri.fitting.mosaic) on synthetic images."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tritri.fitting.mosaic import delaunay_mosaic, edge_weights, mosaic_point_counts, sample_points


def _inside(verts: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, P) bool: point strictly inside triangle (independent of the mosaic's point location)."""
    a, b, c = verts[:, None, 0], verts[:, None, 1], verts[:, None, 2]
    p = points[None]

    def cross(u, v, w):
        return (v[..., 0] - u[..., 0]) * (w[..., 1] - u[..., 1]) - (v[..., 1] - u[..., 1]) * (
            w[..., 0] - u[..., 0]
        )

    d1, d2, d3 = cross(a, b, p), cross(b, c, p), cross(c, a, p)
    return ((d1 > 0) & (d2 > 0) & (d3 > 0)) | ((d1 < 0) & (d2 < 0) & (d3 < 0))


def _area(verts: np.ndarray) -> np.ndarray:
    d0, d1 = verts[:, 1] - verts[:, 0], verts[:, 2] - verts[:, 0]
    return 0.5 * np.abs(d0[:, 0] * d1[:, 1] - d0[:, 1] * d1[:, 0])


def test_point_counts_give_the_triangle_count():
    for n in range(2, 300):
        k, m = mosaic_point_counts(n)
        assert k >= 4 or n < 3
        assert k + 2 * m - 2 == n and m >= 0
    with pytest.raises(ValueError, match="n_triangles"):
        mosaic_point_counts(1)


@pytest.mark.parametrize("n", [2, 7, 64, 257])
def test_mosaic_tiles_the_image_with_mean_colors(n):
    rng = np.random.default_rng(1)
    H, W = 36, 48
    image = np.zeros((H, W, 3))
    image[:, : W // 2] = (0.9, 0.2, 0.1)
    image[:, W // 2 :] = (0.1, 0.3, 0.8)
    image += rng.uniform(0, 0.05, size=image.shape)
    mosaic = delaunay_mosaic(image, n, seed=3)
    assert mosaic.n_triangles == n
    assert mosaic.verts.shape == (n, 3, 2) and mosaic.colors.shape == (n, 3)
    # The triangles cover the image exactly once.
    assert math.isclose(_area(mosaic.verts).sum(), H * W, rel_tol=1e-9)
    assert mosaic.verts[..., 0].min() == 0 and mosaic.verts[..., 0].max() == W
    assert mosaic.verts[..., 1].min() == 0 and mosaic.verts[..., 1].max() == H
    # Each triangle's color is the mean of the pixels whose centers it holds.
    ys, xs = np.mgrid[0:H, 0:W]
    centers = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1)
    inside = _inside(mosaic.verts, centers)
    flat = image.reshape(-1, 3)
    for t in range(n):
        if inside[t].sum() >= 1:
            np.testing.assert_allclose(mosaic.colors[t], flat[inside[t]].mean(0), atol=1e-9)
    # The mosaic image is those colors, and its PSNR is reported right.
    owner = inside.argmax(0)
    held = inside.any(0)
    np.testing.assert_allclose(mosaic.image.reshape(-1, 3)[held], mosaic.colors[owner[held]])
    mse = np.mean((mosaic.image - image) ** 2)
    assert math.isclose(mosaic.psnr, 10 * math.log10(1 / mse), rel_tol=1e-9)


def test_more_triangles_fit_better():
    ys, xs = np.mgrid[0:64, 0:64] / 64.0
    image = np.stack([xs, ys, 0.5 + 0.5 * np.sin(6 * xs * ys)], axis=-1)
    psnrs = [delaunay_mosaic(image, n).psnr for n in (8, 64, 512)]
    assert psnrs[0] < psnrs[1] < psnrs[2]


def test_constant_image_is_exact():
    image = np.full((20, 30, 3), 0.25)
    mosaic = delaunay_mosaic(image, 16)
    assert mosaic.psnr == math.inf
    np.testing.assert_allclose(mosaic.colors, 0.25)


def test_points_follow_the_edges():
    image = np.zeros((64, 64, 3))
    image[:, 32:] = 1.0  # one vertical edge at x = 32
    w = edge_weights(image)
    assert math.isclose(w.sum(), 1.0) and w.min() > 0
    points = sample_points(image, 200, seed=0)
    k, m = mosaic_point_counts(200)
    interior = points[k:]
    assert len(interior) == m
    near = np.abs(interior[:, 0] - 32) < 4
    # 8 of 64 columns are near the edge: 12.5 % under uniform sampling.
    assert near.mean() > 0.5
    # Distinct, inside the image, and reproducible from the seed.
    assert len(np.unique(np.round(points, 6), axis=0)) == len(points)
    assert (interior > 0).all() and (interior[:, 0] < 64).all() and (interior[:, 1] < 64).all()
    np.testing.assert_array_equal(points, sample_points(image, 200, seed=0))
    assert not np.array_equal(points, sample_points(image, 200, seed=1))


def test_uint8_and_bad_images():
    image = (np.random.default_rng(0).uniform(size=(16, 16, 3)) * 255).astype(np.uint8)
    mosaic = delaunay_mosaic(image, 10)
    assert 0 <= mosaic.colors.min() and mosaic.colors.max() <= 1
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        delaunay_mosaic(np.zeros((16, 16)), 10)
    with pytest.raises(ValueError, match="interior points"):
        delaunay_mosaic(np.zeros((2, 2, 3)), 50)


@pytest.mark.parametrize("n_triangles, seed", [(10, 0), (300, 1), (3000, 2)])
def test_numba_delaunay_is_delaunay(n_triangles, seed):
    """Empty circumcircles, the hull covered exactly once, the count the point counts promise,
    and (where scipy is installed) the same triangles as Qhull."""
    from tritri.fitting.delaunay import delaunay

    rng = np.random.default_rng(seed)
    img = rng.random((60, 90, 3))
    points = sample_points(img, n_triangles, seed=seed)
    tri = delaunay(points)
    assert tri.shape == (n_triangles, 3)
    v = points[tri]
    assert _area(v).min() > 0 and _area(v).sum() == pytest.approx(60 * 90)
    # no point strictly inside any circumcircle (relative tolerance for float64 rounding)
    a, b, c = v[:, 0], v[:, 1], v[:, 2]
    d = 2 * (
        a[:, 0] * (b[:, 1] - c[:, 1])
        + b[:, 0] * (c[:, 1] - a[:, 1])
        + c[:, 0] * (a[:, 1] - b[:, 1])
    )
    sa, sb, sc = (a**2).sum(1), (b**2).sum(1), (c**2).sum(1)
    ux = (sa * (b[:, 1] - c[:, 1]) + sb * (c[:, 1] - a[:, 1]) + sc * (a[:, 1] - b[:, 1])) / d
    uy = (sa * (c[:, 0] - b[:, 0]) + sb * (a[:, 0] - c[:, 0]) + sc * (b[:, 0] - a[:, 0])) / d
    r2 = (a[:, 0] - ux) ** 2 + (a[:, 1] - uy) ** 2
    for lo in range(0, len(points), 500):
        p = points[lo : lo + 500]
        dist2 = (p[None, :, 0] - ux[:, None]) ** 2 + (p[None, :, 1] - uy[:, None]) ** 2
        assert (dist2 >= r2[:, None] * (1 - 1e-9)).all()
    spatial = pytest.importorskip("scipy.spatial")
    ref = spatial.Delaunay(points).simplices
    if n_triangles > 10:  # the 10-triangle case has cocircular border points: either split is valid
        assert set(map(tuple, np.sort(tri, 1))) == set(map(tuple, np.sort(ref, 1)))


def test_pixel_owner_holds_each_pixel_center():
    from tritri.fitting.delaunay import delaunay, pixel_owner

    img = np.random.default_rng(3).random((23, 37, 3))
    points = sample_points(img, 80, seed=3)
    verts = points[delaunay(points)]
    owner = pixel_owner(verts, 23, 37)
    assert (owner >= 0).all()
    ys, xs = np.mgrid[0:23, 0:37]
    centers = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1)
    inside = _inside(verts, centers)  # strictly inside: where any is, the owner is that one
    strict = inside.any(0)
    assert inside[owner[strict], np.flatnonzero(strict)].all()
