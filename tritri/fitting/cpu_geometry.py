"""Per-triangle setup of flat-colored triangles in numba, forward and backward (no torch).

The same planes and culling data as :func:`tritri.geometry.prepare_triangles` (read its docstring
for the definitions), for the torch-free CPU fit (:mod:`tritri.fitting.cpu_fit`), which needs the
vertex gradient without autograd: :func:`prepare_backward` is the hand-derived chain rule from
the edge planes back to the vertices. The math runs in float64 and is stored as float32, so the
planes agree with the torch setup to float32 rounding (tests/test_fit_cpu.py checks both passes
against it).

Arrays: ``verts`` (B, N, 3, 2) normalized; ``colors`` (B, N, C); ``opacity`` (B, N), float32.
Outputs: ``edges`` (B, N, 9), ``colors`` (B, N, 1, C) and ``opacity`` (B, N) with bad triangles
zeroed, ``cull`` (B, N, 5), ``valid`` (B, N) uint8.
"""

from __future__ import annotations

import math

import numpy as np

from tritri.cpu.numba_cache import njit
from tritri.thresholds import ALPHA_MIN, AREA2_MIN, CULL_SLACK

_OPTS = {"nogil": True, "error_model": "numpy", "boundscheck": False}


@njit(**_OPTS)
def _finite(x: float) -> bool:
    return not (math.isnan(x) or math.isinf(x))


@njit(**_OPTS)
def prepare_flat(verts, colors, opacity, H, W, sigma, edges, colors_out, opacity_out, cull, valid):
    """Fill ``edges``, ``colors_out``, ``opacity_out``, ``cull`` and ``valid`` (see module doc)."""
    B, N = verts.shape[0], verts.shape[1]
    C = colors.shape[2]
    v = np.empty((3, 2), np.float64)
    length = np.empty(3, np.float64)
    for b in range(B):
        for n in range(N):
            ok = _finite(opacity[b, n])
            for ch in range(C):
                ok = ok and _finite(colors[b, n, ch])
            for j in range(3):
                v[j, 0] = float(verts[b, n, j, 0]) * W
                v[j, 1] = float(verts[b, n, j, 1]) * H
                ok = ok and _finite(v[j, 0]) and _finite(v[j, 1])
            if ok:
                raw = (v[1, 0] - v[0, 0]) * (v[2, 1] - v[0, 1]) - (v[1, 1] - v[0, 1]) * (
                    v[2, 0] - v[0, 0]
                )
                ok = _finite(raw) and abs(raw) >= AREA2_MIN
            o = float(opacity[b, n]) if ok else 0.0
            if not ok:  # the harmless stand-in of geometry.prepare_triangles
                v[0, 0], v[0, 1], v[1, 0], v[1, 1], v[2, 0], v[2, 1] = 0, 0, 1, 0, 0, 1
            valid[b, n] = 1 if ok else 0
            opacity_out[b, n] = o
            for ch in range(C):
                colors_out[b, n, 0, ch] = colors[b, n, ch] if ok else 0.0
            area2 = (v[1, 0] - v[0, 0]) * (v[2, 1] - v[0, 1]) - (v[1, 1] - v[0, 1]) * (
                v[2, 0] - v[0, 0]
            )
            sign = 1.0 if area2 >= 0 else -1.0
            for k in range(3):
                ax, ay = v[k, 0], v[k, 1]
                ex, ey = v[(k + 1) % 3, 0] - ax, v[(k + 1) % 3, 1] - ay
                length[k] = math.sqrt(ex * ex + ey * ey)
                s = sign / (length[k] * sigma)
                edges[b, n, 3 * k] = -ey * s
                edges[b, n, 3 * k + 1] = ex * s
                edges[b, n, 3 * k + 2] = (ey * ax - ex * ay) * s
            # culling data: the triangle grown about its incenter to where alpha reaches 1/255
            margin = math.log(max(o / ALPHA_MIN - 1.0, 1.0)) + CULL_SLACK
            perimeter = length[0] + length[1] + length[2]
            r = abs(area2) / perimeter
            ratio = min((r + margin * sigma) / r, 1e12)
            for axis in range(2):
                inc = (
                    length[1] * v[0, axis] + length[2] * v[1, axis] + length[0] * v[2, axis]
                ) / perimeter
                lo, hi, big = np.inf, -np.inf, 0.0
                for j in range(3):
                    g = inc + (v[j, axis] - inc) * ratio
                    if math.isnan(g):
                        g = 0.0
                    g = min(max(g, -1e30), 1e30)
                    lo, hi, big = min(lo, g), max(hi, g), max(big, abs(g))
                if ok and o >= ALPHA_MIN:
                    cull[b, n, axis] = lo - 0.01 - 1e-6 * big
                    cull[b, n, 2 + axis] = hi + 0.01 + 1e-6 * big
                else:
                    cull[b, n, axis] = np.inf
                    cull[b, n, 2 + axis] = -np.inf
            cull[b, n, 4] = margin


@njit(**_OPTS)
def prepare_backward(verts, valid, H, W, sigma, grad_edges, grad_verts):
    """``grad_verts`` (B, N, 3, 2), normalized units, from ``grad_edges`` (B, N, 9); zero for bad
    triangles.

    Edge k runs from a = v_k to v_{k+1}, e = v_{k+1} - a, L = |e|, s = sign(area2) / (L sigma):
    planes (A, B, C) = (-e_y s, e_x s, (e_y a_x - e_x a_y) s). With R = <g, (-e_y, e_x,
    e_y a_x - e_x a_y)> and ds/de = -s e / L^2 (the sign is piecewise constant):
    dL/de_x = s (g_B - g_C a_y) - R s e_x / L^2, dL/de_y = s (g_C a_x - g_A) - R s e_y / L^2,
    and directly dL/da = s g_C (e_y, -e_x).
    """
    B, N = verts.shape[0], verts.shape[1]
    v = np.empty((3, 2), np.float64)
    g = np.empty((3, 2), np.float64)
    for b in range(B):
        for n in range(N):
            if valid[b, n] == 0:
                for j in range(3):
                    grad_verts[b, n, j, 0] = 0.0
                    grad_verts[b, n, j, 1] = 0.0
                continue
            for j in range(3):
                v[j, 0] = float(verts[b, n, j, 0]) * W
                v[j, 1] = float(verts[b, n, j, 1]) * H
                g[j, 0] = 0.0
                g[j, 1] = 0.0
            area2 = (v[1, 0] - v[0, 0]) * (v[2, 1] - v[0, 1]) - (v[1, 1] - v[0, 1]) * (
                v[2, 0] - v[0, 0]
            )
            sign = 1.0 if area2 >= 0 else -1.0
            for k in range(3):
                k1 = (k + 1) % 3
                ax, ay = v[k, 0], v[k, 1]
                ex, ey = v[k1, 0] - ax, v[k1, 1] - ay
                l2 = ex * ex + ey * ey
                s = sign / (math.sqrt(l2) * sigma)
                ga = float(grad_edges[b, n, 3 * k])
                gb = float(grad_edges[b, n, 3 * k + 1])
                gc = float(grad_edges[b, n, 3 * k + 2])
                R = -ga * ey + gb * ex + gc * (ey * ax - ex * ay)
                d_ex = s * (gb - gc * ay) - R * s * ex / l2
                d_ey = s * (gc * ax - ga) - R * s * ey / l2
                g[k1, 0] += d_ex
                g[k1, 1] += d_ey
                g[k, 0] += s * gc * ey - d_ex
                g[k, 1] += -s * gc * ex - d_ey
            for j in range(3):
                grad_verts[b, n, j, 0] = g[j, 0] * W
                grad_verts[b, n, j, 1] = g[j, 1] * H
