"""Greedy triangle placement (tritri.fitting.greedy) against brute force, and the relocation it
drives (tritri.fitting.schedule.relocation_placement)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from tritri.cpu import get_num_threads, set_num_threads  # noqa: E402
from tritri.fitting.greedy import ALPHAS, _best, _gather, place, row_sums  # noqa: E402
from tritri.fitting.schedule import relocation_placement  # noqa: E402


def _images(H=21, W=34, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((3, H, W)), rng.random((3, H, W))


def _inside(v, H, W):
    """(H, W) bool: pixel centers inside triangle v (3, 2) px, edges included."""
    y, x = np.mgrid[0:H, 0:W] + 0.5

    def side(a, b):
        return (b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0])

    s = [side(v[k], v[(k + 1) % 3]) for k in range(3)]
    return ((s[0] >= 0) & (s[1] >= 0) & (s[2] >= 0)) | ((s[0] <= 0) & (s[1] <= 0) & (s[2] <= 0))


def _sums(image, target):
    C, H, W = image.shape
    sums = np.empty((H, W + 1, 4 * C))
    row_sums(image, target, sums, 0, H)
    return sums


def test_row_sums_are_running_sums():
    image, target = _images()
    sums = _sums(image, target)
    e = image - target
    for k, f in enumerate([image, image**2, e, e * image]):
        want = np.concatenate([np.zeros((3, 21, 1)), np.cumsum(f, axis=2)], axis=2)
        np.testing.assert_allclose(sums[:, :, k::4].transpose(2, 0, 1), want, atol=1e-9)


@pytest.mark.parametrize(
    "v",
    [
        [[3.2, 1.1], [30.5, 6.7], [12.0, 19.9]],
        [[-5.0, -3.0], [40.0, 10.0], [2.0, 30.0]],  # clipped by the image
        [[10.3, 4.0], [10.9, 15.0], [11.4, 9.5]],  # thin
        [[3.3, 5.2], [20.7, 5.2], [10.1, 15.6]],  # flat top
        [[10.1, 1.7], [20.7, 15.2], [3.3, 15.2]],  # flat bottom
    ],
)
def test_gather_and_best_match_brute_force(v):
    H, W = 21, 34
    image, target = _images(H, W)
    v = np.array(v, float)
    acc = np.empty(13)
    count = _gather(v, _sums(image, target), H, W, acc)
    mask = _inside(v, H, W)
    assert count == mask.sum()
    I, t = image[:, mask], target[:, mask]
    e = I - t
    want = np.stack([f.sum(1) for f in (I, I**2, e, e * I)], 1)  # (channel, sum)
    assert acc[0] == mask.sum()
    np.testing.assert_allclose(acc[1:].reshape(3, 4), want, rtol=1e-9, atol=1e-9)
    color = np.empty(3)
    change, alpha = _best(acc, ALPHAS, color)
    assert alpha in ALPHAS

    def error_change(a, c):
        new = (1 - a) * I + a * c[:, None]
        return ((new - t) ** 2).sum() - (e**2).sum()

    assert change == pytest.approx(error_change(alpha, color), rel=1e-9, abs=1e-9)
    for a in ALPHAS:  # no other opacity, and no nearby color, does better
        assert error_change(a, np.clip(color, 0.001, 0.999)) >= change - 1e-9 or a == alpha
    for d in np.eye(3) * 0.01:
        for c in (color + d, color - d):
            if np.all((c >= 0.001) & (c <= 0.999)):
                assert error_change(alpha, c) >= change - 1e-12


def test_rgb_score_matches_the_generic_one():
    """The climb's RGB fast path (sums in local variables) scores like _gather + _best."""
    from tritri.fitting.greedy import _score, _score_rgb

    H, W = 21, 34
    image, target = _images(H, W)
    sums = _sums(image, target)
    rng = np.random.default_rng(3)
    acc, color = np.empty(13), np.empty(3)
    for _ in range(200):
        v = rng.uniform(-8, 40, (3, 2))
        want = _score(v, sums, H, W, acc, ALPHAS, color)
        got = _score_rgb(v, sums, H, W, ALPHAS)
        assert got[1] == want[1]
        assert got[0] == pytest.approx(want[0], rel=1e-12, abs=1e-12) or got[0] == want[0]


def test_place_finds_a_triangle_and_does_not_depend_on_threads():
    H, W = 40, 56
    truth = np.array([[8.0, 6.0], [47.0, 12.0], [20.0, 35.0]])
    target = np.full((3, H, W), 0.2)
    target[:, _inside(truth, H, W)] = np.array([0.9, 0.5, 0.1])[:, None]
    image = np.full((3, H, W), 0.2)
    rng = np.random.default_rng(0)
    centers = np.stack([rng.uniform(0, W, 64), rng.uniform(0, H, 64)], -1)
    before = ((image - target) ** 2).sum()
    threads = get_num_threads()
    try:
        set_num_threads(1)
        v1, c1, a1 = place(image, target, centers, 12.0, 64, 300, 7)
        set_num_threads(2)
        v2, c2, a2 = place(image, target, centers, 12.0, 64, 300, 7)
    finally:
        set_num_threads(threads)
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_array_equal(c1, c2)
    assert v1.shape == (1, 3, 2) and c1.shape == (1, 3) and a1.shape == (1,)
    new = image.copy()
    mask = _inside(v1[0], H, W)
    new[:, mask] = (1 - a1[0]) * new[:, mask] + a1[0] * c1[0][:, None]
    assert ((new - target) ** 2).sum() < 0.3 * before
    assert a1[0] == 0.95


@pytest.mark.parametrize("search", [(8, 50), (0, 0)])
def test_relocation_placement_shapes_and_effect(search):
    H, W = 24, 30
    image, target = _images(H, W, seed=2)
    rng = np.random.default_rng(1)
    verts, colors, opacity = relocation_placement(image, target, 3, 20, rng, search=search)
    assert verts.shape == (3, 3, 2) and colors.shape == (3, 3) and opacity.shape == (3,)
    assert verts.dtype == colors.dtype == opacity.dtype == np.float32
    assert np.all((colors > 0) & (colors < 1)) and np.all((opacity > 0) & (opacity < 1))
    if search == (0, 0):
        assert np.all(opacity == 0.5)
    else:  # each placement lowers the hard-edged squared error
        work = image.copy()
        for v, c, a in zip(verts * np.array([W, H]), colors, opacity, strict=True):
            mask = _inside(v, H, W)
            old = ((work[:, mask] - target[:, mask]) ** 2).sum()
            work[:, mask] = (1 - a) * work[:, mask] + a * c[:, None]
            assert ((work[:, mask] - target[:, mask]) ** 2).sum() < old


def test_greedy_search_keeps_the_total_search_about_constant():
    from tritri.fitting.schedule import greedy_search

    assert greedy_search(10) == greedy_search(64) == (16, 200)
    assert greedy_search(256) == (8, 100)
    assert greedy_search(1024) == (4, 50)
    for n in (64, 100, 256, 700, 1024):
        c, m = greedy_search(n)
        assert 0.8 < c * m * n / (16 * 200 * 64) < 1.25


def _two_tone_target(H=32, W=48):
    """Two overlapping flat triangles on a flat ground: a greedy start of 16 must fit it well."""
    target = np.full((3, H, W), 0.15, np.float32)
    a = np.array([[4.0, 3.0], [40.0, 6.0], [12.0, 29.0]])
    b = np.array([[44.0, 30.0], [20.0, 12.0], [46.0, 2.0]])
    target[:, _inside(a, H, W)] = np.array([0.9, 0.6, 0.2], np.float32)[:, None]
    target[:, _inside(b, H, W)] = np.array([0.1, 0.4, 0.8], np.float32)[:, None]
    return target


def test_greedy_start_places_big_triangles_first_and_fits_the_target():
    from tritri.fitting.cpu_fit import render_cpu
    from tritri.fitting.numeric import psnr
    from tritri.fitting.starts import delaunay_start, greedy_start

    target = _two_tone_target()
    _, H, W = target.shape
    values = greedy_start(target, 24, seed=3)
    assert values["verts"].shape == (24, 3, 2) and values["colors"].shape == (24, 3)
    assert values["opacity"].shape == (24,) and values["background"].shape == (3,)
    assert all(v.dtype == np.float32 for v in values.values())
    np.testing.assert_allclose(values["background"], target.mean(axis=(1, 2)), rtol=1e-6)
    assert np.abs(values["opacity"][:, None] - ALPHAS[None]).min(axis=1).max() < 1e-6
    assert np.all((values["colors"] >= 0) & (values["colors"] <= 1))
    v = values["verts"] * np.array([W, H])
    d1, d2 = v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]
    area = 0.5 * np.abs(d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0])
    assert area[:8].mean() > 2 * area[16:].mean()  # batches of 8, 8, 8: later ones smaller
    greedy = psnr(render_cpu(values, H, W, 0.5), target)
    flat = psnr(np.broadcast_to(values["background"][:, None, None], target.shape), target)
    mosaic = psnr(render_cpu(delaunay_start(target, 24), H, W, 0.5), target)
    assert greedy > flat + 8 and greedy > mosaic + 2, (greedy, flat, mosaic)
    again = greedy_start(target, 24, seed=3)
    for key in values:
        np.testing.assert_array_equal(values[key], again[key])
    assert not np.array_equal(greedy_start(target, 24, seed=4)["verts"], values["verts"])


def test_greedy_start_without_numba_is_the_mosaic(monkeypatch):
    import tritri.cpu.numba_raster as numba_raster
    from tritri.fitting.starts import delaunay_start, greedy_start

    target = _two_tone_target()
    monkeypatch.setattr(numba_raster, "numba_available", lambda: False)
    values = greedy_start(target, 12, seed=1)
    mosaic = delaunay_start(target, 12, seed=1)
    for key in values:
        np.testing.assert_array_equal(values[key], mosaic[key])
    with pytest.raises(ValueError, match="n_triangles"):
        greedy_start(target, 0)
