"""The compiled CPU backend (``backend="numba"``) against the dense reference.

Values and every gradient (verts, colors, opacity, background) on scenes with odd sizes and partial
tiles, several tiles, per-vertex colors, C = 1 / 3 / 4, off-screen and huge triangles, early
termination, bad triangles, N = 0 and unbatched input; plus backend selection and laziness. All
scenes use the same dtypes, so the kernels compile once per session (and load from numba's cache
on later runs).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from render_helpers import image_and_grads

import tritri
from tritri import rendering  # noqa: E402
from tritri.reference import render_dense

NAMES = ["image", "alpha", "d verts", "d colors", "d opacity", "d background"]


def _scene(B, N, C, per_vertex=False, seed=0, spread=(-0.2, 1.2), op_range=(0.2, 1.0)):
    g = torch.Generator().manual_seed(seed)
    lo, hi = spread
    verts = torch.rand(B, N, 3, 2, generator=g) * (hi - lo) + lo
    colors = torch.rand((B, N, 3, C) if per_vertex else (B, N, C), generator=g)
    opacity = torch.rand(B, N, generator=g) * (op_range[1] - op_range[0]) + op_range[0]
    return verts, colors, opacity


def _small_scene(B, N, C, seed=0):
    """Triangles about a fifth of the image across, spread over it (several tiles, some lists)."""
    g = torch.Generator().manual_seed(seed)
    center = torch.rand(B, N, 1, 2, generator=g) * 1.2 - 0.1
    verts = center + (torch.rand(B, N, 3, 2, generator=g) - 0.5) * 0.4
    colors = torch.rand(B, N, C, generator=g)
    opacity = torch.rand(B, N, generator=g) * 0.8 + 0.2
    return verts, colors, opacity


def _compare(scene, height, width, sigma=0.5, background=None, rtol=1e-4, atol=1e-5):
    def ours(v, c, o, bg):
        return tritri.render(v, c, o, height=height, width=width, sigma=sigma, background=bg,
                             return_alpha=True, backend="numba")  # fmt: skip

    def ref(v, c, o, bg):
        return render_dense(v, c, o, height=height, width=width, sigma=sigma, background=bg,
                            return_alpha=True)  # fmt: skip

    got = image_and_grads(ours, *scene, background)
    want = image_and_grads(ref, *scene, background)
    for name, a, b in zip(NAMES, got, want, strict=False):
        assert a is not None and b is not None, name
        assert a.shape == b.shape, (name, a.shape, b.shape)
        assert torch.isfinite(a).all(), f"{name} has non-finite values"
        scale = b.abs().max().item()
        err = (a.double() - b.double()).abs().max().item()
        assert err <= atol + rtol * scale, f"{name}: max abs err {err:.3e} (scale {scale:.3e})"
    return got


SCENES = {
    # odd sizes: the last tile column and row stick out of the image
    "flat_rgb_odd": dict(B=2, N=9, C=3, size=(21, 37), background=0.25),
    "per_vertex_rgba": dict(B=2, N=7, C=4, per_vertex=True, size=(19, 18), background="C"),
    "gray_per_image_bg": dict(B=2, N=8, C=1, size=(17, 20), background="BC"),
    # triangles far off-screen and much larger than the image
    "huge_and_offscreen": dict(B=1, N=8, C=3, size=(16, 23), spread=(-3.0, 4.0)),
}


@pytest.mark.parametrize("name", list(SCENES))
def test_matches_reference(name):
    spec = SCENES[name]
    B, C = spec["B"], spec["C"]
    scene = _scene(B, spec["N"], C, spec.get("per_vertex", False), seed=len(name),
                   spread=spec.get("spread", (-0.2, 1.2)))  # fmt: skip
    bg = spec.get("background")
    if bg == "C":
        bg = torch.linspace(0.1, 0.9, C)
    elif bg == "BC":
        bg = torch.rand(B, C, generator=torch.Generator().manual_seed(3))
    _compare(scene, *spec["size"], sigma=0.6, background=bg)


def test_many_tiles_and_partial_tiles():
    """53 x 70 px: 4 x 5 tiles of 16 px with partial ones; 40 triangles, lists of varied length."""
    _compare(_small_scene(2, 40, 3, seed=4), 53, 70, sigma=0.5, background=torch.rand(3))


def test_sharp_and_soft_edges():
    scene = _small_scene(1, 12, 3, seed=6)
    _compare(scene, 33, 29, sigma=0.2)
    _compare(scene, 33, 29, sigma=3.0, background=0.5)


def test_early_termination_matches_reference():
    """Layers covering the whole image at opacity 0.97: T = 0.03^2 after two, so every pixel stops
    before the third; the triangles under it get no gradient."""
    g = torch.Generator().manual_seed(5)
    big = torch.tensor([[-1.0, -1.0], [4.0, -1.0], [-1.0, 4.0]])
    verts = (big + 0.05 * torch.rand(1, 6, 3, 2, generator=g)).contiguous()
    colors = torch.rand(1, 6, 3, generator=g)
    opacity = torch.full((1, 6), 0.97)
    got = _compare((verts, colors, opacity), 12, 10, sigma=0.5)
    assert torch.allclose(got[1], torch.full_like(got[1], 1 - 0.03**2), atol=1e-5)
    assert (got[2][0, :4] == 0).all() and (got[4][0, :4] == 0).all()


def test_bad_triangles_give_no_nan_and_zero_gradients():
    verts, colors, opacity = _scene(1, 8, 3, seed=7)
    verts[0, 1, 0, 0] = float("nan")
    verts[0, 2, 1, 1] = float("inf")
    verts[0, 3] = torch.tensor([[0.3, 0.3], [0.3, 0.3], [0.6, 0.6]])  # zero area
    colors[0, 4, 1] = float("nan")
    opacity[0, 5] = float("inf")
    got = _compare((verts, colors, opacity), 20, 24, background=0.1)
    d_verts, d_colors, d_opacity = got[2:5]
    for n in (1, 2, 3, 4, 5):
        assert (d_verts[0, n] == 0).all() and (d_colors[0, n] == 0).all()
        assert d_opacity[0, n] == 0
    assert d_verts[0, 0].abs().sum() > 0  # the good ones still learn


def test_no_triangles_and_unbatched():
    colors = torch.rand(0, 3)
    img = tritri.render(torch.rand(0, 3, 2), colors, height=5, width=7, background=0.4,
                        backend="numba")  # fmt: skip
    assert img.shape == (3, 5, 7) and torch.allclose(img, torch.full_like(img, 0.4))
    verts, colors, opacity = _small_scene(1, 6, 3, seed=8)
    img = tritri.render(verts[0], colors[0], opacity[0], height=19, width=22, backend="numba")
    ref = render_dense(verts[0], colors[0], opacity[0], height=19, width=22)
    assert img.shape == (3, 19, 22)
    torch.testing.assert_close(img, ref, rtol=1e-4, atol=1e-5)


def test_half_precision_in_and_out():
    verts, colors, opacity = _small_scene(1, 6, 3, seed=9)
    img = tritri.render(verts, colors.half(), opacity, height=18, width=20, backend="numba")
    assert img.dtype == torch.float16
    ref = render_dense(verts, colors.half().float(), opacity, height=18, width=20)
    torch.testing.assert_close(img.float(), ref, rtol=1e-3, atol=1e-3)


def test_gradients_are_deterministic():
    scene = _small_scene(1, 30, 3, seed=10)

    def fn(v, c, o, bg):
        return tritri.render(v, c, o, height=40, width=41, background=bg, return_alpha=True,
                             backend="numba")  # fmt: skip

    a = image_and_grads(fn, *scene, None)
    b = image_and_grads(fn, *scene, None)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("tile", [8, 32])
def test_tile_size_does_not_change_the_result(tile):
    from tritri.cpu import DEFAULT_TILE, rasterize_numba
    from tritri.geometry import prepare_triangles

    verts, colors, opacity = _small_scene(1, 20, 3, seed=11)
    prep = prepare_triangles(verts, colors, opacity, 37, 45, 0.5)
    color_a, T_a = rasterize_numba(prep, 37, 45, tile=DEFAULT_TILE)
    color_b, T_b = rasterize_numba(prep, 37, 45, tile=tile)
    torch.testing.assert_close(color_a, color_b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(T_a, T_b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tile", [8, 32])
def test_vectorized_flat_path_matches_the_scalar_walk(tile):
    """Flat RGB with 16-px tiles takes the vectorized path (all 16 pixels of a row at once,
    masked); other tiles the scalar per-pixel walk. Both give the same values and gradients,
    with early termination (opaque stacks) in the scene."""
    from tritri.cpu import DEFAULT_TILE, rasterize_numba
    from tritri.geometry import prepare_triangles

    assert DEFAULT_TILE == 16
    verts, colors, opacity = _small_scene(1, 60, 3, seed=5)
    opacity[0, :30] = 1.0  # deep opaque stacks: pixels stop before the last triangles
    weight = torch.rand(1, 3, 37, 45, generator=torch.Generator().manual_seed(2))
    results = []
    for t in (DEFAULT_TILE, tile):
        leaves = [x.clone().requires_grad_() for x in (verts, colors, opacity)]
        prep = prepare_triangles(*leaves, 37, 45, 0.5)
        color, T = rasterize_numba(prep, 37, 45, tile=t)
        ((color * weight).sum() + (T * weight[:, 0]).sum()).backward()
        results.append([color, T] + [x.grad for x in leaves])
    assert (results[0][1] < 0.011).any()  # under opaque stacks (alpha 0.99): pixels stop there
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_sigmoid_without_libm_is_accurate():
    import numpy as np
    from numba import njit

    from tritri.cpu.numba_kernels import _sigmoid

    @njit
    def many(z, out):
        for i in range(z.size):
            out[i] = _sigmoid(z[i])

    rng = np.random.default_rng(0)
    z = np.concatenate([np.linspace(-120, 120, 400_001), rng.standard_normal(100_000) * 10])
    z = np.concatenate([z, [0.0, -0.0, 16.6, 17.0, 17.5, -17.0, -17.5, 1e30, -1e30]])
    z = z.astype(np.float32)
    out = np.empty_like(z)
    many(z, out)
    exact = 1.0 / (1.0 + np.exp(-np.clip(z.astype(np.float64), -700, 700)))
    assert out.dtype == np.float32
    assert np.abs(out - exact).max() <= 1.2e-7
    assert np.all(out[z > 17] == 1.0) and np.all(out >= 0) and np.all(out <= 1)
    assert np.all(np.diff(out[:400_001]) >= 0)  # monotone over the sorted part


def test_auto_picks_numba_on_the_cpu(monkeypatch):
    from tritri.cpu import numba_raster

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cpu = torch.device("cpu")
    assert rendering._resolve_backend("auto", cpu) == "numba"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert rendering._resolve_backend("auto", cpu) == "triton"
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setattr(numba_raster, "numba_available", lambda: False)
    assert rendering._resolve_backend("auto", cpu) == "torch"
    with pytest.raises(RuntimeError, match="numba"):
        rendering._resolve_backend("numba", cpu)


def test_numba_rejects_cuda_tensors():
    with pytest.raises(RuntimeError, match="CPU"):
        rendering._resolve_backend("numba", torch.device("cuda"))


def test_import_does_not_load_numba():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import sys, tritri; assert 'numba' not in sys.modules, 'numba imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


@pytest.mark.parametrize("tile", [16, 8])  # 16: the vectorized flat-RGB path; 8: the scalar walk
def test_triangle_stats_match_removing_each_triangle(tile):
    """cost = growth of the squared error when a triangle is removed; weight = sum of alpha * T."""
    from tritri.cpu import triangle_stats
    from tritri.geometry import prepare_triangles

    H, W = 23, 30
    verts, colors, opacity = _small_scene(1, 10, 3, seed=12)
    opacity = opacity.clamp(max=0.8)  # no pixel stops early: the removal formula is then exact
    background = torch.tensor([[0.2, 0.5, 0.7]])
    target = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(13))
    prep = prepare_triangles(verts, colors, opacity, H, W, 0.5)
    cost, weight = triangle_stats(prep, H, W, background, target, tile=tile)

    def sq_err(o):
        img = render_dense(verts, colors, o, height=H, width=W, background=background[0])
        return (img - target).square().sum()

    base = sq_err(opacity)
    alpha = render_dense(verts, torch.ones(1, 10, 1), opacity, height=H, width=W)
    for n in range(10):
        o = opacity.clone()
        o[0, n] = 0
        assert abs(float(cost[0, n]) - float(sq_err(o) - base)) < 1e-3 * (1 + float(base))
        alone = render_dense(verts[:, n : n + 1], torch.ones(1, 1, 1), opacity[:, n : n + 1],
                             height=H, width=W)  # fmt: skip
        assert float(weight[0, n]) <= float(alone.sum()) + 1e-3
    assert abs(float(weight.sum()) - float(alpha.sum())) < 1e-3 * float(alpha.sum())


def test_binning_on_the_pool_and_on_this_thread_agree(monkeypatch):
    """Small scenes bin on the calling thread, large ones on the pool: the same lists."""
    import numpy as np

    import tritri.cpu.numba_raster as numba_raster
    from tritri.geometry import prepare_triangles

    verts, colors, opacity = _small_scene(2, 40, 3, seed=12)
    prep = prepare_triangles(verts, colors, opacity, 53, 70, 0.5)
    edges = prep.edges.contiguous().numpy()
    cull = prep.cull.contiguous().numpy()
    lists = {}
    for threshold in (0, 1 << 40):  # everything on the pool / everything serial
        monkeypatch.setattr(numba_raster, "PARALLEL_BINNING_WORK", threshold)
        lists[threshold] = numba_raster.TileLists(edges, cull, 53, 70, 16)
    a, b = lists.values()
    assert a.tri.size > 0
    for key in ("start", "end", "tri"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
