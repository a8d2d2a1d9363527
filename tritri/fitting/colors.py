"""The best flat colors for given triangles: a box-constrained least-squares solve (numba).

Given the vertices and opacities, a render of flat-colored triangles over "over" compositing is
linear in the colors and the background: ``image[c, p] = Σ_n col[n, c] w_n(p) + T(p) bg[c]``,
``w_n`` the visible weight of triangle n (alpha times the transmittance in front of it) and
``T`` the final transmittance (:func:`tritri.cpu.numba_raster.color_normal_equations`, which
gathers the normal equations ``gram x = rhs`` of that problem in one walk of the tiles). The
colors that minimize the squared error against a target, within the range the fit's logits can
hold (``[LOGIT_EPS, 1 - LOGIT_EPS]``), are the solution of a small convex quadratic program,
solved here per channel by projected coordinate descent (Gauss-Seidel with clamping) on the sparse
``gram`` (a triangle overlaps few others), warm-started from the current colors: each coordinate
step is exact, so the error never grows, and it converges to the box-constrained optimum.

The fit's objective mixes L1 with the MSE (``l1,mse``), and Adam does not bring every color to
its optimum (small, hidden or fresh triangles lag); this solve gives the colors that are best for
the PSNR, for the geometry the fit ends with (:func:`tritri.fitting.cpu_fit.fit_triangles_cpu`,
:func:`tritri.fitting.loop.fit_triangles`).
"""

from __future__ import annotations

import numpy as np

from tritri.cpu.numba_cache import njit
from tritri.fitting.numeric import LOGIT_EPS

__all__ = ["MAX_SWEEPS", "best_colors", "solve_box_lsq"]

_OPTS = {"nogil": True, "error_model": "numpy", "boundscheck": False}

#: Sweeps of the coordinate descent at most (it stops earlier once no color moves by TOL).
MAX_SWEEPS = 200
#: A sweep that moves no color by more than this ends the descent.
TOL = 1e-6


@njit(**_OPTS)
def _descend(gram, rhs, x, lo, hi, tol, max_sweeps):
    """Projected coordinate descent on ``min ½ xᵀ G x - rhsᵀ x`` over ``lo <= x <= hi`` for each
    column of ``rhs`` (M, C), from ``x`` (M, C), in place; ``gram`` (M, M) symmetric positive
    semi-definite, stored dense and read through its nonzeros. Coordinates with a zero diagonal
    (a triangle that draws nothing) keep their value. Returns the sweeps taken."""
    M, C = rhs.shape
    # the nonzeros, column by column (symmetric: column n = row n)
    nnz = 0
    for n in range(M):
        for m in range(M):
            if gram[m, n] != 0.0:
                nnz += 1
    indptr = np.zeros(M + 1, np.int64)
    indices = np.empty(nnz, np.int64)
    values = np.empty(nnz, np.float64)
    q = 0
    for n in range(M):
        for m in range(M):
            v = gram[m, n]
            if v != 0.0:
                indices[q] = m
                values[q] = v
                q += 1
        indptr[n + 1] = q
    for n in range(M):
        for c in range(C):
            x[n, c] = min(max(x[n, c], lo), hi)
    grad = -rhs.copy()  # G x - rhs
    for n in range(M):
        for q in range(indptr[n], indptr[n + 1]):
            m = indices[q]
            for c in range(C):
                grad[m, c] += values[q] * x[n, c]
    sweeps = 0
    for _ in range(max_sweeps):
        sweeps += 1
        biggest = 0.0
        for n in range(M):
            d = gram[n, n]
            if not d > 0.0:
                continue
            for c in range(C):
                new = min(max(x[n, c] - grad[n, c] / d, lo), hi)
                delta = new - x[n, c]
                if delta != 0.0:
                    x[n, c] = new
                    for q in range(indptr[n], indptr[n + 1]):
                        grad[indices[q], c] += values[q] * delta
                    biggest = max(biggest, abs(delta))
        if biggest < tol:
            break
    return sweeps


def solve_box_lsq(
    gram: np.ndarray, rhs: np.ndarray, x0: np.ndarray, lo: float = LOGIT_EPS,
    hi: float = 1.0 - LOGIT_EPS, *, tol: float = TOL, max_sweeps: int = MAX_SWEEPS,
) -> np.ndarray:  # fmt: skip
    """``argmin ½ xᵀ gram x - rhsᵀ x`` over ``lo <= x <= hi``, per column of ``rhs`` (M, C), by
    projected coordinate descent from ``x0`` (M, C) (module docstring); float64 (M, C). Every
    sweep lowers the objective or leaves it, so the result is never worse than ``x0`` clamped."""
    x = np.array(x0, np.float64).reshape(rhs.shape)
    _descend(
        np.ascontiguousarray(gram, np.float64), np.ascontiguousarray(rhs, np.float64), x,
        float(lo), float(hi), float(tol), int(max_sweeps),
    )  # fmt: skip
    return x


def best_colors(
    edges: np.ndarray, opacity: np.ndarray, cull: np.ndarray, height: int, width: int,
    target: np.ndarray, colors: np.ndarray, background: np.ndarray, fix_background: bool = False,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The colors ``(N, C)`` and background ``(C,)`` (float32) that minimize the squared error of
    the render against ``target`` (C, H, W) for the prepared triangles ``edges`` (1, N, 9),
    ``opacity`` (1, N), ``cull`` (1, N, 5) (:func:`tritri.fitting.cpu_geometry.prepare_flat` or
    :func:`tritri.geometry.prepare_triangles`, as the renderer takes them), each in
    ``[LOGIT_EPS, 1 - LOGIT_EPS]``; from the current ``colors`` and ``background``, which they
    never do worse than. Triangles that draw nothing keep their colors. ``fix_background``: the
    background stays as given (``tritri fit --background``) and only the colors are solved."""
    from tritri.cpu.numba_raster import color_normal_equations

    N = edges.shape[1]
    gram, rhs = color_normal_equations(
        edges, opacity, cull, height, width, np.asarray(target, np.float32)[None]
    )
    x0 = np.concatenate([np.asarray(colors, np.float64).reshape(N, -1),
                         np.asarray(background, np.float64).reshape(1, -1)])  # fmt: skip
    if fix_background:  # move the background's fixed share to the right-hand side
        g, bg = gram[0], x0[N]
        x = solve_box_lsq(g[:N, :N], rhs[0][:N] - np.outer(g[:N, N], bg), x0[:N])
        return x.astype(np.float32), np.asarray(background, np.float32).reshape(-1)
    x = solve_box_lsq(gram[0], rhs[0], x0)
    return x[:N].astype(np.float32), x[N].astype(np.float32)
