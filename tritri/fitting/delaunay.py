"""Delaunay triangulation of points in the plane and pixel ownership, in numba.

What the Delaunay mosaic (:mod:`tritri.fitting.mosaic`, ``tritri fit``'s start) needs, without scipy
(whose import alone costs ~0.6 s of a 2-core machine's 2-5 s fit): Bowyer-Watson insertion --
locate the triangle holding the point by walking across edges, grow the cavity of triangles
whose circumcircle holds it, fan the cavity's boundary to the point -- inside a large enclosing
triangle that is dropped at the end. Orientation and in-circle tests are plain float64
determinants: the mosaic's points are jittered pixel positions and border points, far from the
degenerate cases that need exact predicates; ties (cocircular points, e.g. on the border) may
resolve either way, and either triangulation is Delaunay.
"""

from __future__ import annotations

import numpy as np

from tritri.cpu.numba_cache import njit

_OPTS = {"nogil": True, "error_model": "numpy", "boundscheck": False}


@njit(**_OPTS)
def _orient(ax, ay, bx, by, cx, cy):
    """Twice the signed area of (a, b, c): > 0 counter-clockwise."""
    return (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)


@njit(**_OPTS)
def _in_circle(ax, ay, bx, by, cx, cy, px, py):
    """> 0 when p is inside the circumcircle of the counter-clockwise triangle (a, b, c)."""
    adx, ady = ax - px, ay - py
    bdx, bdy = bx - px, by - py
    cdx, cdy = cx - px, cy - py
    ad = adx * adx + ady * ady
    bd = bdx * bdx + bdy * bdy
    cd = cdx * cdx + cdy * cdy
    return adx * (bdy * cd - bd * cdy) - ady * (bdx * cd - bd * cdx) + ad * (bdx * cdy - bdy * cdx)


@njit(**_OPTS)
def _contains(px, py, tv, t, x, y):
    """Index of the edge of triangle t that p lies strictly outside of, or -1 (p inside)."""
    for j in range(3):
        a = tv[t, (j + 1) % 3]
        b = tv[t, (j + 2) % 3]
        if _orient(px[a], py[a], px[b], py[b], x, y) < 0:
            return j
    return -1


@njit(**_OPTS)
def delaunay(points):
    """Delaunay triangles ``(T, 3)`` int64 (counter-clockwise in x-right / y-up terms) of
    ``points`` ``(P, 2)`` float64 (distinct, not all collinear)."""
    n = points.shape[0]
    px = np.empty(n + 3)
    py = np.empty(n + 3)
    px[:n] = points[:, 0]
    py[:n] = points[:, 1]
    lo_x, hi_x = px[:n].min(), px[:n].max()
    lo_y, hi_y = py[:n].min(), py[:n].max()
    cx, cy = 0.5 * (lo_x + hi_x), 0.5 * (lo_y + hi_y)
    span = max(hi_x - lo_x, hi_y - lo_y, 1.0) * 1e3
    px[n], py[n] = cx - 2.0 * span, cy - span
    px[n + 1], py[n + 1] = cx + 2.0 * span, cy - span
    px[n + 2], py[n + 2] = cx, cy + 2.0 * span
    cap = 2 * n + 16
    tv = np.empty((cap, 3), np.int64)  # vertices, counter-clockwise
    tn = np.full((cap, 3), -1, np.int64)  # neighbor across the edge opposite vertex j
    alive = np.zeros(cap, np.bool_)
    free = np.empty(cap, np.int64)  # stack of reusable slots
    n_free = 0
    used = 1
    tv[0, 0], tv[0, 1], tv[0, 2] = n, n + 1, n + 2
    alive[0] = True
    in_cavity = np.zeros(cap, np.bool_)
    cavity = np.empty(cap, np.int64)
    stack = np.empty(cap, np.int64)
    fan_a = np.full(n + 3, -1, np.int64)  # new triangle (a, b, p) by its vertex a
    fan_b = np.full(n + 3, -1, np.int64)  # ... and by b
    created = np.empty(cap, np.int64)
    edge_a = np.empty(cap, np.int64)
    edge_b = np.empty(cap, np.int64)
    edge_m = np.empty(cap, np.int64)
    last = 0
    for i in range(n):
        x, y = px[i], py[i]
        # locate: walk across the edge p lies outside of (bounded; a full scan if it runs long)
        t = last
        steps = 0
        while True:
            j = _contains(px, py, tv, t, x, y)
            if j < 0:
                break
            t = tn[t, j]
            steps += 1
            if t < 0 or steps > 4 * n + 16:
                t = -1
                for s in range(used):
                    if alive[s] and _contains(px, py, tv, s, x, y) < 0:
                        t = s
                        break
                break
        if t < 0:
            continue  # a duplicate or otherwise unplaceable point: skipped
        # cavity: the connected triangles whose circumcircle holds p
        n_cav = 0
        top = 0
        stack[top] = t
        top += 1
        in_cavity[t] = True
        while top > 0:
            top -= 1
            c = stack[top]
            cavity[n_cav] = c
            n_cav += 1
            for j in range(3):
                m = tn[c, j]
                if m < 0 or in_cavity[m]:
                    continue
                a, b, d = tv[m, 0], tv[m, 1], tv[m, 2]
                if _in_circle(px[a], py[a], px[b], py[b], px[d], py[d], x, y) > 0:
                    in_cavity[m] = True
                    stack[top] = m
                    top += 1
        # the cavity's boundary edges (a, b) with the triangle m beyond them, then its slots free
        n_new = 0
        for k in range(n_cav):
            c = cavity[k]
            for j in range(3):
                m = tn[c, j]
                if m >= 0 and in_cavity[m]:
                    continue
                edge_a[n_new] = tv[c, (j + 1) % 3]
                edge_b[n_new] = tv[c, (j + 2) % 3]
                edge_m[n_new] = m
                n_new += 1
        for k in range(n_cav):
            c = cavity[k]
            in_cavity[c] = False
            alive[c] = False
            free[n_free] = c
            n_free += 1
        # fan them to p: one new triangle (a, b, p) per edge
        for k in range(n_new):
            if n_free > 0:
                n_free -= 1
                s = free[n_free]
            else:
                s = used
                used += 1
            created[k] = s
            a, b, m = edge_a[k], edge_b[k], edge_m[k]
            tv[s, 0], tv[s, 1], tv[s, 2] = a, b, i
            tn[s, 2] = m
            fan_a[a] = s
            fan_b[b] = s
            if m >= 0:  # m's edge (b, a) now borders s (found by its vertices: slots are reused)
                for q in range(3):
                    if tv[m, (q + 1) % 3] == b and tv[m, (q + 2) % 3] == a:
                        tn[m, q] = s
        for k in range(n_new):
            s = created[k]
            alive[s] = True
            a, b = tv[s, 0], tv[s, 1]
            tn[s, 0] = fan_a[b]  # across (b, p): the new triangle starting at b
            tn[s, 1] = fan_b[a]  # across (p, a): the new triangle ending at a
        for k in range(n_new):
            s = created[k]
            fan_a[tv[s, 0]] = -1
            fan_b[tv[s, 1]] = -1
        last = created[0]
    count = 0
    for s in range(used):
        if alive[s] and tv[s, 0] < n and tv[s, 1] < n and tv[s, 2] < n:
            count += 1
    out = np.empty((count, 3), np.int64)
    count = 0
    for s in range(used):
        if alive[s] and tv[s, 0] < n and tv[s, 1] < n and tv[s, 2] < n:
            out[count, 0], out[count, 1], out[count, 2] = tv[s, 0], tv[s, 1], tv[s, 2]
            count += 1
    return out


@njit(**_OPTS)
def pixel_owner(verts, height, width):
    """For each pixel center (row-major, ``(H * W,)`` int64), a triangle of ``verts`` ``(T, 3, 2)``
    (pixels) holding it, edges included (the last one listed wins), or -1."""
    owner = np.full(height * width, -1, np.int64)
    for t in range(verts.shape[0]):
        x0, y0 = verts[t, 0, 0], verts[t, 0, 1]
        x1, y1 = verts[t, 1, 0], verts[t, 1, 1]
        x2, y2 = verts[t, 2, 0], verts[t, 2, 1]
        area = _orient(x0, y0, x1, y1, x2, y2)
        if area == 0:
            continue
        sign = 1.0 if area > 0 else -1.0
        c0 = max(0, int(np.floor(min(x0, x1, x2) - 0.5)))
        c1 = min(width - 1, int(np.ceil(max(x0, x1, x2) - 0.5)))
        r0 = max(0, int(np.floor(min(y0, y1, y2) - 0.5)))
        r1 = min(height - 1, int(np.ceil(max(y0, y1, y2) - 0.5)))
        for r in range(r0, r1 + 1):
            y = r + 0.5
            for c in range(c0, c1 + 1):
                x = c + 0.5
                if (
                    sign * _orient(x0, y0, x1, y1, x, y) >= 0
                    and sign * _orient(x1, y1, x2, y2, x, y) >= 0
                    and sign * _orient(x2, y2, x0, y0, x, y) >= 0
                ):
                    owner[r * width + c] = t
    return owner
