"""Greedy triangle placement in numba: the hill-climbing search of geometrize / primitive, made
cheap by running sums, for the relocation move of the CPU fit (:mod:`tritri.fitting.cpu_fit`).

A triangle drawn on top of an image ``I`` with opacity ``a`` and color ``c`` turns each pixel it
covers into ``(1 - a) I + a c``. Over the covered pixels, with ``e = I - target``, the squared
error changes by ``Σ (e - a I + a c)² - Σ e² = -2 a Σ e I + a² Σ I² + 2 a c Σ (e - a I) + a² c² n``
per channel, whose best ``c`` (and the change) follow in closed form from five sums over the
covered pixels: the count n and the sums of ``I``, ``I²``, ``e``, ``e I`` (``Σ e²`` cancels).
Those are running sums along each row (:func:`row_sums`), so scoring a
triangle costs a few lookups per covered row, not per pixel. Coverage is hard-edged (pixel
centers inside the triangle): the soft render differs only along the edges, and the fit's
gradient steps take over from there.
"""

from __future__ import annotations

import math

import numpy as np

from tritri.cpu.numba_cache import njit

_OPTS = {"nogil": True, "error_model": "numpy", "boundscheck": False}

#: Opacities a placed triangle may take (the best is chosen per candidate).
ALPHAS = np.array([0.25, 0.5, 0.75, 0.95])
_SUMS = 4  # I, I², e, e I


@njit(**_OPTS)
def row_sums(image, target, sums, r0, r1):
    """Fill rows [r0, r1) of ``sums`` (H, W + 1, 4 * C) float64 with the running sums along each
    row of I, I², e, e I per channel (``sums[y, x, 4 * c + k]``: over the pixels left of
    column x), the 4 C values of one pixel side by side so a span costs two cache lines."""
    C, H, W = image.shape
    for y in range(r0, r1):
        for c in range(C):
            a0 = a1 = a2 = a3 = 0.0
            base = _SUMS * c
            for k in range(_SUMS):
                sums[y, 0, base + k] = 0.0
            for x in range(W):
                v = float(image[c, y, x])
                e = v - float(target[c, y, x])
                a0 += v
                a1 += v * v
                a2 += e
                a3 += e * v
                sums[y, x + 1, base] = a0
                sums[y, x + 1, base + 1] = a1
                sums[y, x + 1, base + 2] = a2
                sums[y, x + 1, base + 3] = a3


@njit(**_OPTS)
def _scan(v):
    """Scanline setup of triangle v (3, 2) px: vertices by height (top a, middle b, bottom c)
    and the slopes dx/dy of the long edge a-c and the short edges a-b, b-c."""
    i0, i1, i2 = 0, 1, 2
    if v[i1, 1] < v[i0, 1]:
        i0, i1 = i1, i0
    if v[i2, 1] < v[i1, 1]:
        i1, i2 = i2, i1
        if v[i1, 1] < v[i0, 1]:
            i0, i1 = i1, i0
    ax, ay = v[i0, 0], v[i0, 1]
    bx, by = v[i1, 0], v[i1, 1]
    cx, cy = v[i2, 0], v[i2, 1]
    long_slope = (cx - ax) / (cy - ay) if cy > ay else 0.0
    top_slope = (bx - ax) / (by - ay) if by > ay else 0.0
    bottom_slope = (cx - bx) / (cy - by) if cy > by else 0.0
    return ax, ay, bx, by, cx, cy, long_slope, top_slope, bottom_slope


@njit(**_OPTS)
def _row(ax, ay, bx, by, long_slope, top_slope, bottom_slope, y, W):
    """Columns [lo, hi] of the pixel centers inside the triangle on the row at height y (between
    the top and bottom vertex); hi < lo when none."""
    x_long = ax + (y - ay) * long_slope
    x_short = ax + (y - ay) * top_slope if y < by else bx + (y - by) * bottom_slope
    lo = max(0, int(math.ceil(min(x_long, x_short) - 0.5)))
    hi = min(W - 1, int(math.floor(max(x_long, x_short) - 0.5)))
    return lo, hi


@njit(**_OPTS)
def _gather(v, sums, H, W, acc):
    """acc (1 + 4 C,): the count, then per channel the four sums, over the pixels inside
    triangle v (3, 2) px (centers inside, edges included); returns the count."""
    n_sums = acc.shape[0] - 1
    acc[:] = 0.0
    ax, ay, bx, by, cx, cy, long_slope, top_slope, bottom_slope = _scan(v)
    if not cy > ay:
        return 0.0
    count = 0.0
    for r in range(max(0, int(math.ceil(ay - 0.5))), min(H - 1, int(math.floor(cy - 0.5))) + 1):
        lo, hi = _row(ax, ay, bx, by, long_slope, top_slope, bottom_slope, r + 0.5, W)
        if hi < lo:
            continue
        count += hi - lo + 1
        for j in range(n_sums):
            acc[1 + j] += sums[r, hi + 1, j] - sums[r, lo, j]
    acc[0] = count
    return count


@njit(**_OPTS)
def _best(acc, alphas, color):
    """The error change of the best (opacity, color) for the gathered sums (written to color);
    returns (change, opacity)."""
    C = color.shape[0]
    n = acc[0]
    best, best_a = np.inf, 0.0
    for i in range(alphas.shape[0]):
        a = alphas[i]
        total = 0.0
        for c in range(C):
            q = 1 + _SUMS * c
            s_i, s_ii, s_e, s_ei = acc[q], acc[q + 1], acc[q + 2], acc[q + 3]
            su = s_e - a * s_i
            col = min(max(-su / (a * n), 0.001), 0.999)
            total += a * (a * s_ii - 2.0 * s_ei) + 2.0 * a * col * su + a * a * col * col * n
        if total < best:
            best, best_a = total, a
    for c in range(C):
        q = 1 + _SUMS * c
        color[c] = min(max(-(acc[q + 2] - best_a * acc[q]) / (best_a * n), 0.001), 0.999)
    return best, best_a


@njit(**_OPTS)
def _score(v, sums, H, W, acc, alphas, color):
    if _gather(v, sums, H, W, acc) < 3.0:
        return np.inf, 0.0
    return _best(acc, alphas, color)


@njit(**_OPTS)
def _score_rgb(v, sums, H, W, alphas):
    """:func:`_score` for RGB (``sums`` with 12 values per pixel) with the sums in local variables
    (the climb's hot path: the generic form keeps them in an array in memory); returns only
    (change, opacity)."""
    ax, ay, bx, by, cx, cy, long_slope, top_slope, bottom_slope = _scan(v)
    if not cy > ay:
        return np.inf, 0.0
    n = 0.0
    i0 = i1 = i2 = i3 = i4 = i5 = i6 = i7 = i8 = i9 = i10 = i11 = 0.0
    for r in range(max(0, int(math.ceil(ay - 0.5))), min(H - 1, int(math.floor(cy - 0.5))) + 1):
        lo, hi = _row(ax, ay, bx, by, long_slope, top_slope, bottom_slope, r + 0.5, W)
        if hi < lo:
            continue
        n += hi - lo + 1
        a = sums[r, hi + 1]
        b = sums[r, lo]
        i0 += a[0] - b[0]
        i1 += a[1] - b[1]
        i2 += a[2] - b[2]
        i3 += a[3] - b[3]
        i4 += a[4] - b[4]
        i5 += a[5] - b[5]
        i6 += a[6] - b[6]
        i7 += a[7] - b[7]
        i8 += a[8] - b[8]
        i9 += a[9] - b[9]
        i10 += a[10] - b[10]
        i11 += a[11] - b[11]
    if n < 3.0:
        return np.inf, 0.0
    best, best_a = np.inf, 0.0
    for k in range(alphas.shape[0]):
        al = alphas[k]
        total = 0.0
        for s_i, s_ii, s_e, s_ei in ((i0, i1, i2, i3), (i4, i5, i6, i7), (i8, i9, i10, i11)):
            su = s_e - al * s_i
            col = min(max(-su / (al * n), 0.001), 0.999)
            total += al * (al * s_ii - 2.0 * s_ei) + 2.0 * al * col * su + al * al * col * col * n
        if total < best:
            best, best_a = total, al
    return best, best_a


@njit(**_OPTS)
def climb(sums, centers, size, mutations, alphas, seed, out_score, out_v, c0, c1, step):
    """Hill-climb the candidates ``range(c0, c1, step)``: each starts as a random triangle of
    radius about ``size`` px around its center (``centers`` (n, 2) pixels) and takes
    ``mutations`` random vertex moves, kept when they lower the error change. Writes each one's
    error change ``out_score`` (n,) and vertices ``out_v`` (n, 3, 2). Candidate ``i`` draws from
    its own seeded stream, so the result does not depend on how the range is split between
    threads."""
    H, W, C = sums.shape[0], sums.shape[1] - 1, sums.shape[2] // _SUMS
    acc = np.empty(1 + _SUMS * C)
    color = np.empty(C)
    v = np.empty((3, 2))
    trial = np.empty((3, 2))
    for i in range(c0, c1, step):
        np.random.seed(seed + i)
        cx, cy = centers[i, 0], centers[i, 1]
        angle = np.random.random() * 2.0 * math.pi
        for j in range(3):
            r = size * (0.5 + np.random.random())
            t = angle + j * 2.0 * math.pi / 3.0 + (np.random.random() - 0.5)
            v[j, 0] = cx + r * math.cos(t)
            v[j, 1] = cy + r * math.sin(t)
        rgb = C == 3
        if rgb:
            score, _ = _score_rgb(v, sums, H, W, alphas)
        else:
            score, _ = _score(v, sums, H, W, acc, alphas, color)
        for m in range(mutations):
            # vertex moves shrink geometrically from 0.7 to 0.05 of the size
            step = size * 0.7 * (0.05 / 0.7) ** (m / max(1, mutations - 1))
            trial[:] = v
            j = np.random.randint(3)
            trial[j, 0] += np.random.normal() * step
            trial[j, 1] += np.random.normal() * step
            if rgb:
                s, _ = _score_rgb(trial, sums, H, W, alphas)
            else:
                s, _ = _score(trial, sums, H, W, acc, alphas, color)
            if s < score:
                score = s
                v[:] = trial
        out_score[i] = score
        out_v[i] = v


@njit(**_OPTS)
def draw(image, target, sums, v, alphas, color):
    """Composite triangle ``v`` (3, 2) px, hard-edged, with its best opacity and color (written to
    ``color``; the opacity is returned) into ``image`` and refresh the row sums under it."""
    C, H, W = image.shape
    acc = np.empty(1 + _SUMS * C)
    score, a = _score(v, sums, H, W, acc, alphas, color)
    if not score < np.inf:
        color[:] = 0.5
        return 0.5
    ax, ay, bx, by, cx, cy, long_slope, top_slope, bottom_slope = _scan(v)
    r0 = max(0, int(math.ceil(ay - 0.5)))
    r1 = min(H - 1, int(math.floor(cy - 0.5)))
    for r in range(r0, r1 + 1):
        lo, hi = _row(ax, ay, bx, by, long_slope, top_slope, bottom_slope, r + 0.5, W)
        for x in range(lo, hi + 1):
            for c in range(C):
                image[c, r, x] = (1.0 - a) * image[c, r, x] + a * color[c]
    if r1 >= r0:
        row_sums(image, target, sums, r0, r1 + 1)
    return a


def place(
    image: np.ndarray, target: np.ndarray, centers: np.ndarray, size: float, candidates: int,
    mutations: int, seed: int, alphas: np.ndarray = ALPHAS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Place ``k = len(centers) // candidates`` triangles on ``image`` (3, H, W) one after the
    other, each the best of its ``candidates`` hill-climbed random triangles (around its block of
    ``centers``, pixels) by the error change against ``target``, each drawn into a copy of
    ``image`` before the next; its opacity the best of ``alphas`` (default :data:`ALPHAS`; one
    value fixes it).
    Returns vertices (k, 3, 2) pixels, colors (k, 3) and opacities (k,). The candidates of one
    placement are climbed in parallel (:func:`tritri.cpu.numba_raster.run_parallel`)."""
    from tritri.cpu.numba_raster import run_parallel

    image = np.array(image, dtype=np.float64)  # a working copy: the caller's stays as it is
    target = np.ascontiguousarray(target, dtype=np.float64)
    C, H, W = image.shape
    sums = np.empty((H, W + 1, _SUMS * C))
    row_sums(image, target, sums, 0, H)
    k = len(centers) // candidates
    verts = np.empty((k, 3, 2))
    colors = np.empty((k, C))
    opacity = np.empty(k)
    score = np.empty(candidates)
    cand_v = np.empty((candidates, 3, 2))
    alphas = np.ascontiguousarray(alphas, dtype=np.float64)
    for i in range(k):
        block = np.ascontiguousarray(centers[i * candidates : (i + 1) * candidates])
        run_parallel(
            climb, candidates, sums, block, float(size), int(mutations), alphas,
            int(seed) + i * candidates, score, cand_v,
        )  # fmt: skip
        verts[i] = cand_v[int(np.argmin(score))]
        opacity[i] = draw(image, target, sums, verts[i], alphas, colors[i])
    return verts, colors, opacity
