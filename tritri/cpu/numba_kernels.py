"""Numba kernels of the compiled CPU rasterizer (imported only by :mod:`tritri.cpu.numba_ops`).

Importing this module imports numba; the functions compile on their first call and are cached on
disk (later processes load the machine code; where: :mod:`tritri.cpu.numba_cache`). All arrays
are float32 / int64 numpy arrays laid out as in :mod:`tritri.geometry`:

- ``edges``, ``bary``: (B, N, 9) planes (A, B, C) x 3 in pixel units, edges scaled by 1 / sigma;
  ``bary`` is any float32 array of that rank when colors are flat (``per_vertex`` False);
- ``colors``: (B, N, V, C), V = 3 per-vertex or 1 flat; ``opacity``: (B, N); ``cull``: (B, N, 5).

Tiles are ``tile`` x ``tile`` pixels, numbered row-major per image; work item ``w`` is image
``w // n_tiles``, tile ``w % n_tiles``. A tile's list holds its triangles in draw (index) order;
the walk goes through it backwards (topmost first). For each listed triangle only the pixels of
each tile row between the triangle's conservative x-span (the grown triangle of the culling data,
where alpha can reach 1/255) are visited; every visited pixel then applies the exact rules of
``docs/SPEC.md`` section 2.1.

Flat RGB colors with 16-pixel tiles (the default, and every ``tritri fit`` step) take a
vectorized path: per listed triangle and tile row, all 16 pixels of the row are computed at once,
branch-free, those outside the triangle's span (or already stopped, or below 1/255) masked out,
so that the compiler turns the row into a few SIMD instructions (AVX2 / AVX-512 where the CPU has
them). The coverage is :func:`_sigmoid`, an exp without a libm call (which would keep the loop
scalar), used by all three vectorized kernels so that they agree pixel by pixel (the scalar
walks keep libm's exp, faster there). Against the per-pixel scalar walk, which
stays for per-vertex colors and other tile sizes (2-core AMD EPYC, 171x256, a fitted scene of
N = 256, one thread): forward 3.1 -> 1.7 ms, backward 5.1 -> 3.7 ms, removal costs with their
forward 8.0 -> 5.0 ms.
"""

from __future__ import annotations

import math

import numpy as np

from tritri.cpu.numba_cache import njit
from tritri.thresholds import ALPHA_MAX, ALPHA_MIN, T_MIN

# Compile-time float32 constants (the walk's math is float32 like the other backends).
_A_MIN = np.float32(ALPHA_MIN)
_A_MAX = np.float32(ALPHA_MAX)
_T_MIN = np.float32(T_MIN)
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)
_TINY = np.float32(1e-12)

_OPTS = {"nogil": True, "error_model": "numpy", "boundscheck": False}

#: Pixels per row of the vectorized flat-RGB path (its tiles are LANES x LANES).
LANES = 16

# _sigmoid: exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 in two parts (Cody-Waite),
# exp(r) by its degree-7 polynomial (Cephes' expf coefficients), 2^n as a product of exact
# powers of two chosen by the bits of n + 25 (no table, no bit casts: both keep a loop scalar).
# x = -z is clamped to [-17, 17]: beyond, float32's 1 / (1 + exp(-z)) is exactly 1 (z > 16.7),
# or alpha is far below 1/255 for any opacity (z < -17).
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_X_MAX = np.float32(17.0)
_HALF = np.float32(0.5)
_E0, _E1, _E2, _E3, _E4, _E5 = (
    np.float32(v)
    for v in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
              1.6666665459e-1, 5.0000001201e-1)
)  # fmt: skip
_BIAS = 25
_TWO_M_BIAS = np.float32(2.0**-_BIAS)
_Q0, _Q1, _Q2, _Q3, _Q4, _Q5 = (np.float32(2.0 ** (2**k)) for k in range(6))


@njit(**_OPTS)
def _sigmoid(z):
    """``1 / (1 + exp(-z))`` in float32 without a libm call, so that loops over pixels vectorize;
    within 1e-7 of the exact value for every float32 z (the libm form: 9e-8). A NaN z (never
    from a valid triangle) gives ~4e-8, no coverage, rather than an undefined int conversion."""
    x = min(max(-z, -_X_MAX), _X_MAX) if z == z else _X_MAX
    n = np.floor(x * _LOG2E + _HALF)
    r = x - n * _LN2_HI
    r = r - n * _LN2_LO
    y = (((((_E0 * r + _E1) * r + _E2) * r + _E3) * r + _E4) * r + _E5) * (r * r) + r + _ONE
    m = np.int32(n) + np.int32(_BIAS)  # in [0, 50]
    y = y * (_Q0 if m & 1 else _ONE)
    y = y * (_Q1 if m & 2 else _ONE)
    y = y * (_Q2 if m & 4 else _ONE)
    y = y * (_Q3 if m & 8 else _ONE)
    y = y * (_Q4 if m & 16 else _ONE)
    y = y * (_Q5 if m & 32 else _ONE)
    return _ONE / (_ONE + y * _TWO_M_BIAS)


@njit(**_OPTS)
def _sigmoid_scalar(z):
    """``1 / (1 + exp(-z))`` in float32 with libm's exp: the scalar walks' form, faster than
    :func:`_sigmoid` where nothing vectorizes (the scalar flat-RGB backward of an N = 256 fit
    scene took 5.1 ms with it, 6.5 ms with :func:`_sigmoid`). A walk's forward, backward and
    removal pass all use the same form, so they agree pixel by pixel; the two forms differ by at
    most 1e-7."""
    return _ONE / (_ONE + np.float32(math.exp(-z)))


@njit(**_OPTS)
def _tile_index(lo: float, hi: float, limit: int, tile: int) -> tuple[int, int]:
    """Inclusive tile range along one axis of the pixel centers in [lo, hi] (as binning.py)."""
    a = np.floor(min(max(lo - 0.5, -1.0), float(limit * tile)) / tile)
    b = np.floor(min(max(hi - 0.5, -1.0), float(limit * tile)) / tile)
    a = min(max(a, 0.0), limit - 1.0)
    b = min(max(b, 0.0), limit - 1.0)
    return int(a), int(b)


@njit(**_OPTS)
def _overlaps(e, c, xmin: float, xmax: float, ymin: float, ymax: float) -> bool:
    """binning.overlaps for one triangle (edges e (9,), cull c (5,)) and one tile rectangle."""
    if not (c[0] <= xmax and c[2] >= xmin and c[1] <= ymax and c[3] >= ymin):
        return False
    margin = c[4]
    for k in range(3):
        a, b, cc = e[3 * k], e[3 * k + 1], e[3 * k + 2]
        best = cc + (a * xmax if a > 0 else a * xmin) + (b * ymax if b > 0 else b * ymin)
        scale = abs(a) * xmax + abs(b) * ymax + abs(cc)
        if not best >= -margin - 1e-5 * scale:
            return False
    return True


@njit(**_OPTS)
def _tri_tiles(c, H: int, W: int, tile: int, ntx: int, nty: int) -> tuple[int, int, int, int]:
    """Tile box (tx0, tx1, ty0, ty1) of a triangle's culling box; tx0 > tx1 when empty."""
    x0, y0, x1, y1 = c[0], c[1], c[2], c[3]
    if x1 < 0.5 or y1 < 0.5 or x0 > W - 0.5 or y0 > H - 0.5 or not x0 <= x1:
        return 1, 0, 1, 0
    tx0, tx1 = _tile_index(x0, x1, ntx, tile)
    ty0, ty1 = _tile_index(y0, y1, nty, tile)
    return tx0, tx1, ty0, ty1


@njit(**_OPTS)
def bin_count(
    edges, cull, H: int, W: int, tile: int, counts, r0: int, r1: int, step: int
) -> None:  # fmt: skip
    """Number of listed triangles per (image, tile) of the (image, tile row) items
    ``range(r0, r1, step)``: counts (B * n_tiles,) int64, filled here. No two rows write the same
    counter."""
    N = edges.shape[1]
    ntx = (W + tile - 1) // tile
    nty = (H + tile - 1) // tile
    for r in range(r0, r1, step):
        b = r // nty
        ty = r % nty
        ymin = ty * tile + 0.5
        ymax = min(ty * tile + tile, H) - 0.5
        for tx in range(ntx):
            counts[b * ntx * nty + ty * ntx + tx] = 0
        for n in range(N):
            c = cull[b, n]
            tx0, tx1, ty0, ty1 = _tri_tiles(c, H, W, tile, ntx, nty)
            if ty < ty0 or ty > ty1:
                continue
            for tx in range(tx0, tx1 + 1):
                xmin = tx * tile + 0.5
                xmax = min(tx * tile + tile, W) - 0.5
                if _overlaps(edges[b, n], c, xmin, xmax, ymin, ymax):
                    counts[b * ntx * nty + ty * ntx + tx] += 1


@njit(**_OPTS)
def bin_fill(
    edges, cull, H: int, W: int, tile: int, start, tri_list, r0: int, r1: int, step: int
) -> None:  # fmt: skip
    """Write each (image, tile)'s triangles, in index order, to ``tri_list[start[w]:...]``, for the
    (image, tile row) items ``range(r0, r1, step)``."""
    N = edges.shape[1]
    ntx = (W + tile - 1) // tile
    nty = (H + tile - 1) // tile
    for r in range(r0, r1, step):
        b = r // nty
        ty = r % nty
        ymin = ty * tile + 0.5
        ymax = min(ty * tile + tile, H) - 0.5
        fill = np.zeros(ntx, np.int64)
        for n in range(N):
            c = cull[b, n]
            tx0, tx1, ty0, ty1 = _tri_tiles(c, H, W, tile, ntx, nty)
            if ty < ty0 or ty > ty1:
                continue
            for tx in range(tx0, tx1 + 1):
                xmin = tx * tile + 0.5
                xmax = min(tx * tile + tile, W) - 0.5
                if _overlaps(edges[b, n], c, xmin, xmax, ymin, ymax):
                    w = b * ntx * nty + ty * ntx + tx
                    tri_list[start[w] + fill[tx]] = n
                    fill[tx] += 1


@njit(**_OPTS)
def _span(e, c, py: float, col0: int, col1: int) -> tuple[int, int]:
    """Columns [lo, hi) of the pixels in [col0, col1) whose centers on the row at ``py`` can lie in
    the grown triangle {z_k >= -margin for all k}, widened by one pixel each side (the exact
    per-pixel test follows)."""
    lo = max(float(col0), np.ceil(min(max(c[0] - 0.5, col0 - 2.0), col1 + 2.0)) - 1.0)
    hi = min(float(col1), np.floor(min(max(c[2] - 0.5, col0 - 2.0), col1 + 2.0)) + 2.0)
    m = float(c[4])
    for k in range(3):
        a = float(e[3 * k])
        bpy = float(e[3 * k + 1]) * py
        cc = float(e[3 * k + 2])
        t = -m - bpy - cc  # pixel centers x with a * x >= t
        if a > 0.0:
            x = min(max(t / a - 0.5, col0 - 2.0), col1 + 2.0)
            lo = max(lo, np.ceil(x) - 1.0)
        elif a < 0.0:
            x = min(max(t / a - 0.5, col0 - 2.0), col1 + 2.0)
            hi = min(hi, np.floor(x) + 2.0)
        elif t > 1e-5 * (abs(m) + abs(bpy) + abs(cc)):
            return col0, col0
    if not hi > lo:
        return col0, col0
    return int(lo), int(hi)


@njit(**_OPTS)
def _rows(c, row0: int, rows: int) -> tuple[int, int]:
    """Tile rows [lo, hi) (relative to row0) whose centers can lie in the culling box (+1 row)."""
    lo = np.ceil(min(max(c[1] - 0.5, row0 - 2.0), row0 + rows + 2.0)) - 1.0
    hi = np.floor(min(max(c[3] - 0.5, row0 - 2.0), row0 + rows + 2.0)) + 2.0
    return max(0, int(lo) - row0), min(rows, int(hi) - row0)


@njit(**_OPTS)
def _edge_z(e, px, py):
    z0 = e[0] * px + e[1] * py + e[2]
    z1 = e[3] * px + e[4] * py + e[5]
    z2 = e[6] * px + e[7] * py + e[8]
    return z0, z1, z2


@njit(**_OPTS, inline="always")
def _lane_row(e, c, row0, r, col0, cols):
    """Row ``r`` of a tile for the vectorized paths: its pixel-center height ``py`` and the lanes
    [j_lo, j_hi) of the triangle's conservative span (empty when j_hi <= j_lo)."""
    lo, hi = _span(e, c, row0 + r + 0.5, col0, col0 + cols)
    return np.float32(row0 + r + 0.5), lo - col0, hi - col0


@njit(**_OPTS, inline="always")
def _lane(e0, e2, e3, e5, e6, e8, y0, y1, y2, o, px, inside, live_pixel, t):
    """The per-pixel rules of ``docs/SPEC.md`` section 2.1 in masked form, for the vectorized
    paths: the edge values, the coverage ``wv``, ``ow = opacity * wv``, alpha, the transmittance
    after the pair (``t`` before it) and the masks ``stop`` (the pixel stops here) and ``use``
    (the pair composites here). A pixel outside the span (``inside`` False), already stopped
    (``live_pixel`` False) or below 1/255 has both masks False. Scalars only and inlined by numba
    (``inline="always"``): a call left in the loop, or arrays passed to it, kept the loop scalar
    (4-5x slower)."""
    z0 = e0 * px + y0 + e2
    z1 = e3 * px + y1 + e5
    z2 = e6 * px + y2 + e8
    wv = _sigmoid(min(z0, z1, z2))
    ow = o * wv
    a = min(ow, _A_MAX)
    t_new = t * (_ONE - a)
    live = inside & live_pixel & (a >= _A_MIN)
    return z0, z1, z2, wv, ow, a, t_new, live & (t_new < _T_MIN), live & (t_new >= _T_MIN)


@njit(**_OPTS)
def _forward_flat3(e, c, o, c0, c1, c2, row0, col0, rows, cols, T, done, acc0, acc1, acc2):
    """One (tile, triangle) pair of :func:`raster_forward` for a flat RGB color (c0, c1, c2) and
    LANES-pixel tiles, vectorized (module docstring): each row of the triangle's rows takes all
    LANES pixels, the same float32 operations as the scalar walk, with the pixels outside the
    span, stopped or below 1/255 masked instead of skipped. Returns the pixels that stopped."""
    e0, e1, e2, e3, e4, e5, e6, e7, e8 = e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7], e[8]
    stopped = 0
    r_lo, r_hi = _rows(c, row0, rows)
    for r in range(r_lo, r_hi):
        py, j_lo, j_hi = _lane_row(e, c, row0, r, col0, cols)
        if not j_hi > j_lo:
            continue
        y0, y1, y2 = e1 * py, e4 * py, e7 * py
        base = r * LANES
        for j in range(LANES):
            p = np.uint64(base + j)  # unsigned: no negative-index wraparound, so it vectorizes
            px = np.float32(col0 + j + 0.5)
            inside = (j >= j_lo) & (j < j_hi)
            t = T[p]
            _, _, _, _, _, a, t_new, stop, use = _lane(
                e0, e2, e3, e5, e6, e8, y0, y1, y2, o, px, inside, done[p] == 0, t
            )
            done[p] = done[p] | np.uint8(stop)
            stopped += np.int64(stop)
            vis = a * t if use else _ZERO
            acc0[p] += vis * c0
            acc1[p] += vis * c1
            acc2[p] += vis * c2
            T[p] = t_new if use else t
    return stopped


@njit(**_OPTS)
def raster_forward(
    edges, bary, colors, opacity, cull, start, end, tri_list, H, W, tile, per_vertex, out_color,
    out_T, w0, w1, step,
) -> None:  # fmt: skip
    """Composite the (image, tile) items ``range(w0, w1, step)`` front to back.

    out_color (B, C, H, W): premultiplied color without background; out_T (B, H, W): final
    transmittance. Both fp32, written here.
    """
    C = colors.shape[3]
    flat3 = not per_vertex and C == 3 and tile == LANES
    ntx = (W + tile - 1) // tile
    nty = (H + tile - 1) // tile
    n_tiles = ntx * nty
    P = tile * tile
    for w in range(w0, w1, step):
        b = w // n_tiles
        t = w % n_tiles
        row0 = (t // ntx) * tile
        col0 = (t % ntx) * tile
        rows = min(tile, H - row0)
        cols = min(tile, W - col0)
        T = np.ones(P, np.float32)
        done = np.zeros(P, np.uint8)
        acc = np.zeros((C, P), np.float32)
        n_live = rows * cols
        for pos in range(end[w] - 1, start[w] - 1, -1):
            if n_live == 0:
                break
            n = tri_list[pos]
            e = edges[b, n]
            c = cull[b, n]
            o = opacity[b, n]
            if flat3:
                n_live -= _forward_flat3(
                    e, c, o, colors[b, n, 0, 0], colors[b, n, 0, 1], colors[b, n, 0, 2], row0,
                    col0, rows, cols, T, done, acc[0], acc[1], acc[2],
                )  # fmt: skip
                continue
            r_lo, r_hi = _rows(c, row0, rows)
            for r in range(r_lo, r_hi):
                py = np.float32(row0 + r + 0.5)
                lo, hi = _span(e, c, row0 + r + 0.5, col0, col0 + cols)
                for col in range(lo, hi):
                    p = r * tile + (col - col0)
                    if done[p]:
                        continue
                    px = np.float32(col + 0.5)
                    z0, z1, z2 = _edge_z(e, px, py)
                    z = min(z0, z1, z2)
                    wv = _sigmoid_scalar(z)
                    a = min(o * wv, _A_MAX)
                    if not a >= _A_MIN:
                        continue
                    t_new = T[p] * (_ONE - a)
                    if t_new < _T_MIN:
                        done[p] = 1
                        n_live -= 1
                        continue
                    vis = a * T[p]
                    if per_vertex:
                        bv = bary[b, n]
                        b0 = max(bv[0] * px + bv[1] * py + bv[2], _ZERO)
                        b1 = max(bv[3] * px + bv[4] * py + bv[5], _ZERO)
                        b2 = max(bv[6] * px + bv[7] * py + bv[8], _ZERO)
                        total = max(b0 + b1 + b2, _TINY)
                        s = vis / total
                        for ch in range(C):
                            acc[ch, p] += s * (
                                b0 * colors[b, n, 0, ch]
                                + b1 * colors[b, n, 1, ch]
                                + b2 * colors[b, n, 2, ch]
                            )
                    else:
                        for ch in range(C):
                            acc[ch, p] += vis * colors[b, n, 0, ch]
                    T[p] = t_new
        for r in range(rows):
            for col in range(cols):
                p = r * tile + col
                out_T[b, row0 + r, col0 + col] = T[p]
                for ch in range(C):
                    out_color[b, ch, row0 + r, col0 + col] = acc[ch, p]


@njit(**_OPTS)
def _backward_flat3(
    e, c, o, c0, c1, c2, row0, col0, rows, cols, T, done, g_prefix, g_final, g_behind,
    gc0, gc1, gc2, lanes, acc,
):  # fmt: skip
    e0, e1, e2, e3, e4, e5, e6, e7, e8 = e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7], e[8]
    lanes[:] = 0.0
    stopped = 0
    r_lo, r_hi = _rows(c, row0, rows)
    for r in range(r_lo, r_hi):
        py, j_lo, j_hi = _lane_row(e, c, row0, r, col0, cols)
        if not j_hi > j_lo:
            continue
        y0, y1, y2 = e1 * py, e4 * py, e7 * py
        base = r * LANES
        for j in range(LANES):
            p = np.uint64(base + j)
            q = np.uint64(j)
            px = np.float32(col0 + j + 0.5)
            inside = (j >= j_lo) & (j < j_hi)
            t_before = T[p]
            z0, z1, z2, wv, ow, a, t_new, stop, use = _lane(
                e0, e2, e3, e5, e6, e8, y0, y1, y2, o, px, inside, done[p] == 0, t_before
            )
            done[p] = done[p] | np.uint8(stop)
            stopped += np.int64(stop)
            vis = a * t_before
            g0, g1, g2 = gc0[p], gc1[p], gc2[p]
            g_col = _ZERO
            g_col += c0 * g0
            g_col += c1 * g1
            g_col += c2 * g2
            prefix = g_prefix[p]
            prefix = prefix + vis * g_col if use else prefix
            g_prefix[p] = prefix
            g_after = g_final[p] - prefix
            d_alpha = t_before * g_col - (g_after + g_behind[p]) / (_ONE - a)
            unsat = use & (ow < _A_MAX)
            d_z = d_alpha * o * wv * (_ONE - wv)
            on0 = unsat & (z0 <= z1) & (z0 <= z2)
            on1 = unsat & (z1 < z0) & (z1 <= z2)
            on2 = unsat & (z2 < z0) & (z2 < z1)
            lanes[q] += np.float64(d_z * px) if on0 else 0.0
            lanes[q + np.uint64(16)] += np.float64(d_z * py) if on0 else 0.0
            lanes[q + np.uint64(32)] += np.float64(d_z) if on0 else 0.0
            lanes[q + np.uint64(48)] += np.float64(d_z * px) if on1 else 0.0
            lanes[q + np.uint64(64)] += np.float64(d_z * py) if on1 else 0.0
            lanes[q + np.uint64(80)] += np.float64(d_z) if on1 else 0.0
            lanes[q + np.uint64(96)] += np.float64(d_z * px) if on2 else 0.0
            lanes[q + np.uint64(112)] += np.float64(d_z * py) if on2 else 0.0
            lanes[q + np.uint64(128)] += np.float64(d_z) if on2 else 0.0
            lanes[q + np.uint64(144)] += np.float64(d_alpha * wv) if unsat else 0.0
            lanes[q + np.uint64(160)] += np.float64(g0 * vis) if use else 0.0
            lanes[q + np.uint64(176)] += np.float64(g1 * vis) if use else 0.0
            lanes[q + np.uint64(192)] += np.float64(g2 * vis) if use else 0.0
            T[p] = t_new if use else t_before
    for k in range(acc.shape[0]):
        acc[k] = 0.0
    for k in range(13):
        total = 0.0
        for j in range(LANES):
            total += lanes[k * LANES + j]
        acc[k if k < 10 else k + 9] = total
    return stopped


@njit(**_OPTS)
def raster_backward(
    edges, bary, colors, opacity, cull, start, end, tri_list, H, W, tile, per_vertex,
    color, T_final, grad_color, grad_T, part, w0, w1, step,
) -> None:  # fmt: skip
    """For the (image, tile) items ``range(w0, w1, step)``: replay each tile's walk and write
    every listed pair's gradient to its row of ``part``.

    part (n_pairs, K) fp32, K = 9 (edges) + 1 (opacity) + 9 (bary) + V * C (colors); row ``pos`` is
    the pair at ``tri_list[pos]``. Per pixel, with g the color gradient, S the color composited
    after the pair (final - prefix) and t the transmittance before it:
    dL/dalpha = t <g, color> - (<g, S> + gT T_final) / (1 - alpha).
    """
    C = colors.shape[3]
    ntx = (W + tile - 1) // tile
    nty = (H + tile - 1) // tile
    n_tiles = ntx * nty
    P = tile * tile
    flat3 = not per_vertex and C == 3 and tile == LANES
    K = part.shape[1]  # 19 + V * C
    for w in range(w0, w1, step):
        b = w // n_tiles
        t = w % n_tiles
        row0 = (t // ntx) * tile
        col0 = (t % ntx) * tile
        rows = min(tile, H - row0)
        cols = min(tile, W - col0)
        T = np.ones(P, np.float32)
        done = np.zeros(P, np.uint8)
        g_prefix = np.zeros(P, np.float32)
        g_final = np.zeros(P, np.float32)
        g_behind = np.zeros(P, np.float32)
        gc = np.zeros((C, P), np.float32)
        acc = np.zeros(K, np.float64)
        gcj = np.zeros(3, np.float32)
        bj = np.zeros(3, np.float32)
        lanes = np.zeros(13 * LANES, np.float64)
        for r in range(rows):
            for col in range(cols):
                p = r * tile + col
                y, x = row0 + r, col0 + col
                s = np.float32(0.0)
                for ch in range(C):
                    g = grad_color[b, ch, y, x]
                    gc[ch, p] = g
                    s += g * color[b, ch, y, x]
                g_final[p] = s
                g_behind[p] = grad_T[b, y, x] * T_final[b, y, x]
        n_live = rows * cols
        for pos in range(end[w] - 1, start[w] - 1, -1):
            for k in range(K):
                acc[k] = 0.0
            if n_live == 0:  # every pixel stopped: the pairs below get zero gradients
                for k in range(K):
                    part[pos, k] = 0.0
                continue
            n = tri_list[pos]
            e = edges[b, n]
            c = cull[b, n]
            o = opacity[b, n]
            if flat3:
                n_live -= _backward_flat3(
                    e, c, o, colors[b, n, 0, 0], colors[b, n, 0, 1], colors[b, n, 0, 2], row0,
                    col0, rows, cols, T, done, g_prefix, g_final, g_behind, gc[0], gc[1],
                    gc[2], lanes, acc,
                )  # fmt: skip
                for k in range(K):
                    part[pos, k] = acc[k]
                continue
            r_lo, r_hi = _rows(c, row0, rows)
            for r in range(r_lo, r_hi):
                py = np.float32(row0 + r + 0.5)
                lo, hi = _span(e, c, row0 + r + 0.5, col0, col0 + cols)
                for col in range(lo, hi):
                    p = r * tile + (col - col0)
                    if done[p]:
                        continue
                    px = np.float32(col + 0.5)
                    z0, z1, z2 = _edge_z(e, px, py)
                    z = min(z0, z1, z2)
                    wv = _sigmoid_scalar(z)
                    ow = o * wv
                    a = min(ow, _A_MAX)
                    if not a >= _A_MIN:
                        continue
                    t_before = T[p]
                    t_new = t_before * (_ONE - a)
                    if t_new < _T_MIN:
                        done[p] = 1
                        n_live -= 1
                        continue
                    vis = a * t_before
                    if per_vertex:
                        bv = bary[b, n]
                        bj[0] = max(bv[0] * px + bv[1] * py + bv[2], _ZERO)
                        bj[1] = max(bv[3] * px + bv[4] * py + bv[5], _ZERO)
                        bj[2] = max(bv[6] * px + bv[7] * py + bv[8], _ZERO)
                        total = max(bj[0] + bj[1] + bj[2], _TINY)
                        g_col = _ZERO
                        for j in range(3):
                            s = _ZERO
                            for ch in range(C):
                                s += colors[b, n, j, ch] * gc[ch, p]
                            gcj[j] = s
                            g_col += bj[j] * s
                        g_col /= total
                    else:
                        total = _ONE
                        g_col = _ZERO
                        for ch in range(C):
                            g_col += colors[b, n, 0, ch] * gc[ch, p]
                    g_prefix[p] += vis * g_col
                    g_after = g_final[p] - g_prefix[p]
                    d_alpha = t_before * g_col - (g_after + g_behind[p]) / (_ONE - a)
                    if ow < _A_MAX:
                        acc[9] += d_alpha * wv
                        d_z = d_alpha * o * wv * (_ONE - wv)
                        if z0 <= z1 and z0 <= z2:
                            k0 = 0
                        elif z1 < z0 and z1 <= z2:
                            k0 = 3
                        else:
                            k0 = 6
                        acc[k0] += d_z * px
                        acc[k0 + 1] += d_z * py
                        acc[k0 + 2] += d_z
                    if per_vertex:
                        sc = vis / total
                        for j in range(3):
                            if bj[j] > _ZERO:
                                d_beta = sc * (gcj[j] - g_col)
                                acc[10 + 3 * j] += d_beta * px
                                acc[11 + 3 * j] += d_beta * py
                                acc[12 + 3 * j] += d_beta
                            f = sc * bj[j]
                            for ch in range(C):
                                acc[19 + j * C + ch] += gc[ch, p] * f
                    else:
                        for ch in range(C):
                            acc[19 + ch] += gc[ch, p] * vis
                    T[p] = t_new
            for k in range(K):
                part[pos, k] = acc[k]


@njit(**_OPTS)
def reduce_pairs(part, tri_list, start, end, n_tiles, B, N, K):
    """Sum the pair rows per triangle, in list order (deterministic): (B, N, K) float32."""
    out = np.zeros((B, N, K), np.float64)
    for w in range(B * n_tiles):
        b = w // n_tiles
        for pos in range(start[w], end[w]):
            n = tri_list[pos]
            for k in range(K):
                out[b, n, k] += part[pos, k]
    return out.astype(np.float32)


@njit(**_OPTS)
def _removal_flat3(
    e, c, o, c0, c1, c2, row0, col0, rows, cols, T, done, prefix, full, err2, lanes
):  # fmt: skip
    """One (tile, triangle) pair of :func:`removal_cost` for a flat RGB color and LANES-pixel
    tiles, vectorized like :func:`_forward_flat3` (same float32 / float64 operations per pixel as
    the scalar walk, masked instead of skipped; per-column float64 sums in ``lanes`` (2 * LANES),
    added in column order). ``prefix`` (3 * P): the color composited so far; ``full`` (3 * P) the
    final image with background; ``err2`` (3 * P) float64 ``2 (full - target)``; channel k of
    pixel p at ``k * P + p``. Returns (cost, weight, pixels that stopped)."""
    e0, e1, e2, e3, e4, e5, e6, e7, e8 = e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7], e[8]
    P = LANES * LANES
    lanes[:] = 0.0
    stopped = 0
    r_lo, r_hi = _rows(c, row0, rows)
    for r in range(r_lo, r_hi):
        py, j_lo, j_hi = _lane_row(e, c, row0, r, col0, cols)
        if not j_hi > j_lo:
            continue
        y0, y1, y2 = e1 * py, e4 * py, e7 * py
        base = r * LANES
        for j in range(LANES):
            p = np.uint64(base + j)
            q = np.uint64(j)
            px = np.float32(col0 + j + 0.5)
            inside = (j >= j_lo) & (j < j_hi)
            t_before = T[p]
            _, _, _, _, _, a, t_new, stop, use = _lane(
                e0, e2, e3, e5, e6, e8, y0, y1, y2, o, px, inside, done[p] == 0, t_before
            )
            done[p] = done[p] | np.uint8(stop)
            stopped += np.int64(stop)
            vis = a * t_before
            cost = 0.0
            for k, cn in ((0, c0), (1, c1), (2, c2)):
                i = p + np.uint64(k * P)
                pre = prefix[i]
                under = full[i] - pre - vis * cn
                delta = a * (under / (_ONE - a) - t_before * cn)
                cost += delta * (err2[i] + delta)
                prefix[i] = pre + vis * cn if use else pre
            lanes[q] += cost if use else 0.0
            lanes[q + np.uint64(LANES)] += np.float64(vis) if use else 0.0
            T[p] = t_new if use else t_before
    cost = 0.0
    weight = 0.0
    for j in range(LANES):
        cost += lanes[j]
        weight += lanes[LANES + j]
    return cost, weight, stopped


@njit(**_OPTS)
def removal_cost(
    edges, colors, opacity, cull, start, end, tri_list, H, W, tile, color, T_final, background,
    target, part, w0, w1, step,
) -> None:  # fmt: skip
    """Per listed pair of the (image, tile) items ``range(w0, w1, step)``, flat colors only:
    ``part[pos, 0]`` the change of the squared error sum over the tile's pixels if the triangle
    were removed, and ``part[pos, 1]`` its visible weight (sum over pixels of alpha * T).

    Removing triangle n at a pixel scales what lies under it by 1 / (1 - alpha) (ignoring that the
    pixel might then not stop early): delta = a (R / (1 - a) - t c_n), with R the color composited
    under n, background included. color (B, C, H, W) without background, T_final (B, H, W),
    background (B, C), target (B, C, H, W).
    """
    C = colors.shape[3]
    flat3 = C == 3 and tile == LANES
    ntx = (W + tile - 1) // tile
    nty = (H + tile - 1) // tile
    n_tiles = ntx * nty
    P = tile * tile
    for w in range(w0, w1, step):
        b = w // n_tiles
        t = w % n_tiles
        row0 = (t // ntx) * tile
        col0 = (t % ntx) * tile
        rows = min(tile, H - row0)
        cols = min(tile, W - col0)
        T = np.ones(P, np.float32)
        done = np.zeros(P, np.uint8)
        prefix = np.zeros((C, P), np.float32)
        if flat3:
            full = np.zeros((C, P), np.float32)
            err2 = np.zeros((C, P), np.float64)
            for ch in range(C):
                for r in range(rows):
                    for col in range(cols):
                        y, x = row0 + r, col0 + col
                        v = color[b, ch, y, x] + T_final[b, y, x] * background[b, ch]
                        full[ch, r * tile + col] = v
                        err2[ch, r * tile + col] = 2.0 * (v - target[b, ch, y, x])
            lanes = np.zeros(2 * LANES, np.float64)
            prefix_flat = prefix.reshape(C * P)
            full_flat = full.reshape(C * P)
            err2_flat = err2.reshape(C * P)
        n_live = rows * cols
        for pos in range(end[w] - 1, start[w] - 1, -1):
            part[pos, 0] = 0.0
            part[pos, 1] = 0.0
            if n_live == 0:
                continue
            n = tri_list[pos]
            e = edges[b, n]
            c = cull[b, n]
            o = opacity[b, n]
            if flat3:
                cost, weight, stopped = _removal_flat3(
                    e, c, o, colors[b, n, 0, 0], colors[b, n, 0, 1], colors[b, n, 0, 2], row0,
                    col0, rows, cols, T, done, prefix_flat, full_flat, err2_flat, lanes,
                )  # fmt: skip
                n_live -= stopped
                part[pos, 0] = cost
                part[pos, 1] = weight
                continue
            cost = 0.0
            weight = 0.0
            r_lo, r_hi = _rows(c, row0, rows)
            for r in range(r_lo, r_hi):
                py = np.float32(row0 + r + 0.5)
                lo, hi = _span(e, c, row0 + r + 0.5, col0, col0 + cols)
                for col in range(lo, hi):
                    p = r * tile + (col - col0)
                    if done[p]:
                        continue
                    px = np.float32(col + 0.5)
                    z0, z1, z2 = _edge_z(e, px, py)
                    z = min(z0, z1, z2)
                    wv = _sigmoid_scalar(z)
                    a = min(o * wv, _A_MAX)
                    if not a >= _A_MIN:
                        continue
                    t_before = T[p]
                    t_new = t_before * (_ONE - a)
                    if t_new < _T_MIN:
                        done[p] = 1
                        n_live -= 1
                        continue
                    y, x = row0 + r, col
                    vis = a * t_before
                    for ch in range(C):
                        cn = colors[b, n, 0, ch]
                        full = color[b, ch, y, x] + T_final[b, y, x] * background[b, ch]
                        under = full - prefix[ch, p] - vis * cn
                        delta = a * (under / (_ONE - a) - t_before * cn)
                        cost += delta * (2.0 * (full - target[b, ch, y, x]) + delta)
                        prefix[ch, p] += vis * cn
                    weight += vis
                    T[p] = t_new
            part[pos, 0] = cost
            part[pos, 1] = weight


@njit(**_OPTS)
def color_normal_equations(
    edges, opacity, cull, start, end, tri_list, H, W, tile, lane_math, target, gram, rhs,
    w0, w1, step,
) -> None:  # fmt: skip
    """Add the (image, tile) items ``range(w0, w1, step)`` to the normal equations of the colors.

    With flat colors the render is linear in them: ``image[c, p] = Σ_n col[n, c] w_n(p) +
    T(p) bg[c]``, ``w_n(p)`` = alpha times the transmittance in front of triangle n at pixel p
    (the walk of :func:`raster_forward`: geometry and opacity decide it, colors do not) and T the
    final transmittance. With ``φ = (w_0, ..., w_{N-1}, T)``, this adds ``Σ_p φ φᵀ`` to ``gram``
    (B, N + 1, N + 1) and ``Σ_p φ target[:, p]`` to ``rhs`` (B, N + 1, C), float64. Each pixel's
    contributors are gathered first (per-tile lists), then their products added, so the cost is
    one walk plus k² per pixel for k contributors. ``lane_math``: the per-pixel math of the
    vectorized flat-RGB forward (:func:`_lane`, its exp) instead of the scalar walk's, so that
    the weights are those of the forward that renders the same scene. Not thread-safe across
    calls that share ``gram`` (run it on one thread).
    """
    N = edges.shape[1]
    C = target.shape[1]
    ntx = (W + tile - 1) // tile
    nty = (H + tile - 1) // tile
    n_tiles = ntx * nty
    P = tile * tile
    for w in range(w0, w1, step):
        b = w // n_tiles
        t = w % n_tiles
        row0 = (t // ntx) * tile
        col0 = (t % ntx) * tile
        rows = min(tile, H - row0)
        cols = min(tile, W - col0)
        L = max(1, end[w] - start[w])
        T = np.ones(P, np.float32)
        done = np.zeros(P, np.uint8)
        count = np.zeros(P, np.int64)
        ids = np.empty((P, L), np.int64)
        wts = np.empty((P, L), np.float64)
        n_live = rows * cols
        for pos in range(end[w] - 1, start[w] - 1, -1):
            if n_live == 0:
                break
            n = tri_list[pos]
            e = edges[b, n]
            c = cull[b, n]
            o = opacity[b, n]
            e0, e2, e3, e5, e6, e8 = e[0], e[2], e[3], e[5], e[6], e[8]
            r_lo, r_hi = _rows(c, row0, rows)
            for r in range(r_lo, r_hi):
                py = np.float32(row0 + r + 0.5)
                lo, hi = _span(e, c, row0 + r + 0.5, col0, col0 + cols)
                y0, y1, y2 = e[1] * py, e[4] * py, e[7] * py
                for col in range(lo, hi):
                    p = r * tile + (col - col0)
                    if done[p]:
                        continue
                    px = np.float32(col + 0.5)
                    t_before = T[p]
                    if lane_math:
                        _, _, _, _, _, a, t_new, stop, use = _lane(
                            e0, e2, e3, e5, e6, e8, y0, y1, y2, o, px, True, True, t_before
                        )
                    else:
                        z0, z1, z2 = _edge_z(e, px, py)
                        a = min(o * _sigmoid_scalar(min(z0, z1, z2)), _A_MAX)
                        t_new = t_before * (_ONE - a)
                        stop = a >= _A_MIN and t_new < _T_MIN
                        use = a >= _A_MIN and t_new >= _T_MIN
                    if stop:
                        done[p] = 1
                        n_live -= 1
                    elif use:
                        k = count[p]
                        ids[p, k] = n
                        wts[p, k] = np.float64(a * t_before)
                        count[p] = k + 1
                        T[p] = t_new
        for r in range(rows):
            for col in range(cols):
                p = r * tile + col
                y, x = row0 + r, col0 + col
                tf = np.float64(T[p])
                for i in range(count[p]):
                    ni = ids[p, i]
                    wi = wts[p, i]
                    gram[b, ni, ni] += wi * wi
                    for j in range(i):
                        nj = ids[p, j]
                        g = wi * wts[p, j]
                        gram[b, ni, nj] += g
                        gram[b, nj, ni] += g
                    gram[b, ni, N] += wi * tf
                    gram[b, N, ni] += wi * tf
                    for ch in range(C):
                        rhs[b, ni, ch] += wi * target[b, ch, y, x]
                gram[b, N, N] += tf * tf
                for ch in range(C):
                    rhs[b, N, ch] += tf * target[b, ch, y, x]
