"""The exact color solve of the fits (:mod:`tritri.fitting.colors`).

- the normal equations (:func:`tritri.cpu.numba_raster.color_normal_equations`) against the
  dense reference renderer: one render per triangle with a one-hot color gives the columns of the
  linear map from colors to image, ``gram = AᵀA``, ``rhs = Aᵀ target``;
- the box-constrained solve against scipy's bounded least squares and numpy's lstsq on those
  columns, its optimality conditions, and that no single color step lowers the rendered error;
- both fit loops end with solved colors (same vertices and opacities as without the solve, a
  PSNR at least as high), and the torch loop leaves the colors to a perceptual objective.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from fit_helpers import smooth_target

from tritri.cpu.numba_raster import color_normal_equations  # noqa: E402
from tritri.fitting.colors import best_colors, solve_box_lsq  # noqa: E402
from tritri.fitting.cpu_fit import fit_triangles_cpu, render_cpu  # noqa: E402
from tritri.fitting.cpu_geometry import prepare_flat  # noqa: E402
from tritri.fitting.numeric import LOGIT_EPS, psnr  # noqa: E402
from tritri.reference import render_dense  # noqa: E402

LO, HI = LOGIT_EPS, 1.0 - LOGIT_EPS


def _scene(M=30, seed=0, H=37, W=53, bad=True):
    rng = np.random.default_rng(seed)
    center = rng.random((M, 1, 2)) * 1.2 - 0.1
    verts = (center + (rng.random((M, 3, 2)) - 0.5) * 0.5).astype(np.float32)
    colors = rng.random((M, 3)).astype(np.float32)
    opacity = (rng.random(M) * 0.9 + 0.05).astype(np.float32)
    opacity[::4] = 0.995  # some pixels stop early (transmittance below 1e-4)
    if bad:
        verts[3] = verts[3, 0]  # degenerate
        verts[5, 1, 0] = np.nan  # non-finite vertex
        opacity[9] = 0.002  # never reaches alpha 1/255: culled
    return verts, colors, opacity


def _prepared(verts, colors, opacity, H, W, sigma=0.5):
    M = verts.shape[0]
    edges = np.empty((1, M, 9), np.float32)
    colors_out = np.empty((1, M, 1, 3), np.float32)
    opacity_out = np.empty((1, M), np.float32)
    cull = np.empty((1, M, 5), np.float32)
    valid = np.empty((1, M), np.uint8)
    prepare_flat(verts[None], colors[None], opacity[None], H, W, sigma, edges, colors_out,
                 opacity_out, cull, valid)  # fmt: skip
    return edges, opacity_out, cull


def _dense_columns(verts, opacity, H, W, sigma=0.5):
    """(H W, M + 1) float64: each triangle's visible weight per pixel, then the final
    transmittance, from the dense reference (one render per column)."""
    M = verts.shape[0]
    v = torch.from_numpy(np.nan_to_num(verts, nan=0.0))
    o = torch.from_numpy(opacity)
    bad = ~np.isfinite(verts).all(axis=(1, 2))
    o[torch.from_numpy(bad)] = 0.0
    cols = []
    for n in range(M):
        c = torch.zeros(M, 3)
        c[n] = 1.0
        img = render_dense(v, c, o, height=H, width=W, sigma=sigma, background=0.0)
        cols.append(img.reshape(3, H, W)[0].double().flatten())
    img = render_dense(v, torch.zeros(M, 3), o, height=H, width=W, sigma=sigma, background=1.0)
    cols.append(img.reshape(3, H, W)[0].double().flatten())
    return torch.stack(cols, 1).numpy()


@pytest.mark.parametrize("tile", [16, 8])  # the vectorized forward's math, the scalar walk's
def test_normal_equations_match_the_dense_reference(tile):
    H, W = 37, 53
    verts, colors, opacity = _scene(seed=1)
    target = np.random.default_rng(2).random((3, H, W)).astype(np.float32)
    edges, opacity_in, cull = _prepared(verts, colors, opacity, H, W)
    gram, rhs = color_normal_equations(edges, opacity_in, cull, H, W, target[None], tile=tile)
    A = _dense_columns(verts, opacity, H, W)
    assert gram.shape == (1, 31, 31) and rhs.shape == (1, 31, 3)
    np.testing.assert_allclose(gram[0], A.T @ A, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(rhs[0], A.T @ target.reshape(3, -1).T, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(gram[0], gram[0].T)
    assert not gram[0, 3].any() and not gram[0, 5].any() and not gram[0, 9].any()  # bad ones


def test_best_colors_match_bounded_least_squares():
    from scipy.optimize import lsq_linear

    H, W = 37, 53
    verts, colors, opacity = _scene(seed=3)
    target = np.random.default_rng(4).random((3, H, W)).astype(np.float32)
    background = np.array([0.3, 0.6, 0.2], np.float32)
    edges, opacity_in, cull = _prepared(verts, colors, opacity, H, W)
    new_colors, new_bg = best_colors(edges, opacity_in, cull, H, W, target, colors, background)
    A = _dense_columns(verts, opacity, H, W)
    b = target.reshape(3, -1).T.astype(np.float64)
    ref = np.stack(
        [lsq_linear(A, b[:, c], bounds=(LO, HI), method="bvls").x for c in range(3)], axis=1
    )
    ours = np.concatenate([new_colors, new_bg[None]]).astype(np.float64)

    def error(x):
        return float(np.sum((A @ x - b) ** 2))

    assert error(ours) <= error(ref) * (1 + 1e-6)
    seen = A.sum(axis=0) > 1.0  # triangles (and the background) that weigh a pixel or more
    np.testing.assert_allclose(ours[seen], ref[seen], atol=2e-3)
    assert ours.min() >= np.float32(LO) and ours.max() <= np.float32(HI)
    for n in (3, 5, 9):  # draw nothing: keep their colors
        np.testing.assert_array_equal(new_colors[n], colors[n])


def test_best_colors_recover_the_colors_of_a_render():
    """A target rendered from known colors inside the box: the solve finds them (= numpy's
    unconstrained lstsq), from any start, and the render matches the target."""
    H, W = 40, 48
    verts, _, opacity = _scene(M=12, seed=5, H=H, W=W, bad=False)
    rng = np.random.default_rng(6)
    truth = (0.2 + 0.6 * rng.random((12, 3))).astype(np.float32)
    bg = np.array([0.4, 0.5, 0.6], np.float32)
    values = {"verts": verts, "colors": truth, "opacity": opacity, "background": bg}
    target = render_cpu(values, H, W, 0.5)
    edges, opacity_in, cull = _prepared(verts, truth, opacity, H, W)
    start = np.full((12, 3), 0.5, np.float32)
    new_colors, new_bg = best_colors(edges, opacity_in, cull, H, W, target, start, bg * 0 + 0.5)
    A = _dense_columns(verts, opacity, H, W)
    seen = A.sum(axis=0) > 5.0
    lstsq = np.linalg.lstsq(A, target.reshape(3, -1).T.astype(np.float64), rcond=None)[0]
    ours = np.concatenate([new_colors, new_bg[None]])
    np.testing.assert_allclose(ours[seen], lstsq[seen], atol=1e-3)
    np.testing.assert_allclose(new_colors[seen[:12]], truth[seen[:12]], atol=1e-3)
    solved = dict(values, colors=new_colors, background=new_bg)
    assert psnr(render_cpu(solved, H, W, 0.5), target) > 50


def test_a_fixed_background_stays_and_the_colors_solve_around_it():
    """``fix_background`` (tritri fit --background): the background is returned as given and the
    colors are the bounded least-squares ones with it fixed (scipy on target - T * background)."""
    from scipy.optimize import lsq_linear

    H, W = 37, 53
    verts, colors, opacity = _scene(seed=3)
    target = np.random.default_rng(4).random((3, H, W)).astype(np.float32)
    fixed = np.array([0.9, 0.1, 0.3], np.float32)
    edges, opacity_in, cull = _prepared(verts, colors, opacity, H, W)
    new_colors, new_bg = best_colors(edges, opacity_in, cull, H, W, target, colors, fixed,
                                     fix_background=True)  # fmt: skip
    np.testing.assert_array_equal(new_bg, fixed)
    A = _dense_columns(verts, opacity, H, W)  # the last column is the final transmittance
    b = target.reshape(3, -1).T.astype(np.float64) - A[:, -1:] * fixed[None].astype(np.float64)
    ref = np.stack(
        [lsq_linear(A[:, :-1], b[:, c], bounds=(LO, HI), method="bvls").x for c in range(3)],
        axis=1,
    )
    ours = new_colors.astype(np.float64)

    def error(x):
        return float(np.sum((A[:, :-1] @ x - b) ** 2))

    assert error(ours) <= error(ref) * (1 + 1e-6)
    seen = A[:, :-1].sum(axis=0) > 1.0
    np.testing.assert_allclose(ours[seen], ref[seen], atol=2e-3)


def test_no_color_step_lowers_the_rendered_error():
    H, W = 37, 53
    verts, colors, opacity = _scene(M=16, seed=7, bad=False)
    target = np.random.default_rng(8).random((3, H, W)).astype(np.float32)
    bg = np.array([0.5, 0.5, 0.5], np.float32)
    edges, opacity_in, cull = _prepared(verts, colors, opacity, H, W)
    new_colors, new_bg = best_colors(edges, opacity_in, cull, H, W, target, colors, bg)
    values = {"verts": verts, "colors": new_colors, "opacity": opacity, "background": new_bg}

    def error(v):
        return float(np.sum((render_cpu(v, H, W, 0.5).astype(np.float64) - target) ** 2))

    best = error(values)
    assert best < error({**values, "colors": colors, "background": bg})
    for n in range(16):
        for c in range(3):
            for step in (-0.01, 0.01):
                moved = new_colors.copy()
                moved[n, c] = np.clip(moved[n, c] + step, LO, HI)
                assert error({**values, "colors": moved}) >= best * (1 - 1e-6), (n, c, step)
    for c in range(3):
        for step in (-0.01, 0.01):
            moved = new_bg.copy()
            moved[c] = np.clip(moved[c] + step, LO, HI)
            assert error({**values, "background": moved}) >= best * (1 - 1e-6)


def test_solve_box_lsq_optimality_and_descent():
    """KKT conditions on a random problem with a rank-deficient gram (a zero row and two equal
    columns); any number of sweeps never ends above the start."""
    rng = np.random.default_rng(9)
    A = rng.random((60, 8))
    A[:, 2] = 0.0  # draws nothing
    A[:, 5] = A[:, 4]  # two identical triangles
    gram = A.T @ A
    rhs = A.T @ (rng.random((60, 3)) * 1.5 - 0.25)  # the box binds somewhere
    x0 = rng.random((8, 3))

    def objective(x):
        return float(np.sum(0.5 * np.einsum("mc,mn,nc->c", x, gram, x) - np.sum(rhs * x, 0)))

    x = solve_box_lsq(gram, rhs, x0, max_sweeps=10000, tol=1e-12)
    g = gram @ x - rhs
    at_lo, at_hi = x <= LO + 1e-12, x >= HI - 1e-12
    free = ~at_lo & ~at_hi
    assert np.all(np.abs(g[free & (np.diag(gram) > 0)[:, None]]) < 1e-7)
    assert np.all(g[at_lo] > -1e-7) and np.all(g[at_hi] < 1e-7)
    assert at_lo.any() or at_hi.any()
    np.testing.assert_array_equal(x[2], x0[2])  # zero diagonal: kept
    for sweeps in (1, 2, 5):
        assert objective(solve_box_lsq(gram, rhs, x0, max_sweeps=sweeps)) <= objective(
            np.clip(x0, LO, HI)
        )


def test_cpu_fit_ends_with_solved_colors():
    from tritri.fitting.starts import greedy_start

    target = smooth_target()
    start = greedy_start(target, 12, seed=0)
    plain = fit_triangles_cpu(start, target, steps=20, solve_colors=False)
    solved = fit_triangles_cpu(start, target, steps=20)
    for key in ("verts", "opacity"):  # the same moves; only the colors differ
        np.testing.assert_array_equal(solved.values[key], plain.values[key])
    assert solved.psnr >= plain.psnr
    assert solved.best_step == plain.best_step
    H, W = target.shape[1:]
    again = psnr(render_cpu(solved.values, H, W, 0.5), target)
    assert again == pytest.approx(solved.psnr, abs=1e-4)
    edges, opacity_in, cull = _prepared(
        solved.values["verts"], solved.values["colors"], solved.values["opacity"], H, W
    )
    again, bg = best_colors(edges, opacity_in, cull, H, W, target, solved.values["colors"],
                            solved.values["background"])  # fmt: skip
    np.testing.assert_allclose(again, solved.values["colors"], atol=1e-4)  # a fixed point


class _Named(torch.nn.Module):
    """Mean absolute error, under any loss names (what decides the torch loop's color solve)."""

    def __init__(self, names):
        super().__init__()
        self.names = tuple(names)

    def forward(self, pred, target):
        return {self.names[0]: (pred - target).abs().mean()}


def test_torch_loop_ends_with_solved_colors_for_pixel_losses():
    from tritri.fitting import TriangleParams, fit_triangles
    from tritri.fitting.starts import greedy_start

    target_np = smooth_target(seed=1)
    target = torch.from_numpy(target_np)
    start = greedy_start(target_np, 10, seed=0)

    def run(criterion, solve_colors=None):
        params = TriangleParams.from_values(start)
        result = fit_triangles(params, target, steps=15, criterion=criterion, backend="torch",
                               solve_colors=solve_colors)  # fmt: skip
        return params.values(), result

    plain, r_plain = run(_Named(["l1"]), solve_colors=False)
    solved, r_solved = run(_Named(["l1"]))
    perceptual, r_perceptual = run(_Named(["perceptual"]))
    np.testing.assert_array_equal(solved["verts"], plain["verts"])
    assert r_solved.psnr >= r_plain.psnr
    assert not np.allclose(solved["colors"], plain["colors"], atol=1e-4)
    np.testing.assert_array_equal(perceptual["colors"], plain["colors"])  # left to the objective
    assert r_perceptual.psnr == r_plain.psnr
