"""Pieces shared by the forward and backward raster kernels (``@triton.jit`` helpers only).

A program owns one (image, tile). Its pixels are a flat block of TILE*TILE lanes; triangles come in
chunks of G, topmost first, as a [G, P] block. The chunk's transmittance is an inclusive running
product (``tl.cumprod``) along the triangle axis, so the SPEC's sequential front-to-back rules hold
exactly: a pair with alpha < 1/255 is skipped, alpha is clamped to 0.99, and a pixel stops before
the first triangle that would take T below 1e-4.
"""

from __future__ import annotations

import triton
import triton.language as tl

ALPHA_MIN: tl.constexpr = 1.0 / 255.0
ALPHA_MAX: tl.constexpr = 0.99
T_MIN: tl.constexpr = 1e-4


@triton.jit
def tile_pixels(tile, n_tiles_x, H, W, TILE: tl.constexpr):
    """Pixel rows/cols/centers of a tile, its in-image mask and its pixel-center rectangle."""
    ty = tile // n_tiles_x
    tx = tile % n_tiles_x
    k = tl.arange(0, TILE * TILE)
    row = ty * TILE + k // TILE
    col = tx * TILE + k % TILE
    pmask = (row < H) & (col < W)
    px = col.to(tl.float32) + 0.5
    py = row.to(tl.float32) + 0.5
    xmin = (tx * TILE).to(tl.float32) + 0.5
    ymin = (ty * TILE).to(tl.float32) + 0.5
    xmax = tl.minimum(tx * TILE + TILE, W).to(tl.float32) - 0.5
    ymax = tl.minimum(ty * TILE + TILE, H).to(tl.float32) - 0.5
    return row, col, pmask, px, py, xmin, xmax, ymin, ymax


@triton.jit
def tile_work(pid, b, N, scan_ptr, tile_start_ptr, tile_end_ptr, ALWAYS_SCAN: tl.constexpr):
    """How the (image, tile) program ``pid`` walks its triangles: scan flag, list end, item count.

    Scan mode (always, or when the image's lists overflowed) visits all N triangles; list mode the
    tile's sorted list ``[start, end)``.
    """
    if ALWAYS_SCAN:
        scan = 1
        list_end = pid * 0
        n_items = pid * 0 + N
    else:
        scan = tl.load(scan_ptr + b).to(tl.int32)
        list_start = tl.load(tile_start_ptr + pid)
        list_end = tl.load(tile_end_ptr + pid)
        n_items = tl.where(scan != 0, N, list_end - list_start)
    return scan, list_end, n_items


@triton.jit
def chunk_triangles(
    b, N, it, n_items, scan, list_end, tri_list_ptr, cull_ptr, edges_ptr,
    xmin, xmax, ymin, ymax, G: tl.constexpr,
):  # fmt: skip
    """The next G triangles of this tile, topmost first.

    Scan mode walks indices N-1, N-2, ... and culls in place (the exact test of binning.overlaps);
    list mode walks the tile's sorted list backwards. Returns the flat triangle index b*N + n, the
    list position (list mode) and the mask of live items.
    """
    j = it + tl.arange(0, G).to(tl.int64)
    live = j < n_items
    pos = list_end - 1 - j
    listed = tl.load(tri_list_ptr + pos, mask=live & (scan == 0), other=0).to(tl.int64)
    idx = tl.where(scan != 0, N - 1 - j, listed)
    tri = b * N + idx
    if scan != 0:
        c5 = tri * 5
        x0 = tl.load(cull_ptr + c5 + 0, mask=live, other=1.0)
        y0 = tl.load(cull_ptr + c5 + 1, mask=live, other=1.0)
        x1 = tl.load(cull_ptr + c5 + 2, mask=live, other=0.0)
        y1 = tl.load(cull_ptr + c5 + 3, mask=live, other=0.0)
        margin = tl.load(cull_ptr + c5 + 4, mask=live, other=0.0)
        hit = (x0 <= xmax) & (x1 >= xmin) & (y0 <= ymax) & (y1 >= ymin)
        for k in tl.static_range(3):
            ea = tl.load(edges_ptr + tri * 9 + 3 * k, mask=live, other=0.0)
            eb = tl.load(edges_ptr + tri * 9 + 3 * k + 1, mask=live, other=0.0)
            ec = tl.load(edges_ptr + tri * 9 + 3 * k + 2, mask=live, other=0.0)
            best = (
                ec + tl.where(ea > 0, ea * xmax, ea * xmin) + tl.where(eb > 0, eb * ymax, eb * ymin)
            )
            scale = tl.abs(ea) * xmax + tl.abs(eb) * ymax + tl.abs(ec)
            hit = hit & (best >= -margin - 1e-5 * scale)
        live = live & hit
    return tri, pos, live


@triton.jit
def edge_plane(edges_ptr, tri, k: tl.constexpr, live, px, py):
    """z_k = A x + B y + C over the [G, P] block."""
    ea = tl.load(edges_ptr + tri * 9 + 3 * k, mask=live, other=0.0)
    eb = tl.load(edges_ptr + tri * 9 + 3 * k + 1, mask=live, other=0.0)
    ec = tl.load(edges_ptr + tri * 9 + 3 * k + 2, mask=live, other=0.0)
    return ea[:, None] * px[None, :] + eb[:, None] * py[None, :] + ec[:, None]


@triton.jit
def composite_chunk(edges_ptr, opacity_ptr, tri, live, px, py, pmask, T, done):
    """Alpha and transmittance of a chunk against the pixels' running state.

    Returns the edge values z0..z2, coverage w, opacity o [G], o*w, alpha a (0 where skipped),
    keep (pair contributes), T before each pair, and the pixels' T / done after the chunk.
    """
    z0 = edge_plane(edges_ptr, tri, 0, live, px, py)
    z1 = edge_plane(edges_ptr, tri, 1, live, px, py)
    z2 = edge_plane(edges_ptr, tri, 2, live, px, py)
    z = tl.minimum(tl.minimum(z0, z1), z2)
    w = tl.sigmoid(z)
    o = tl.load(opacity_ptr + tri, mask=live, other=0.0)
    ow = o[:, None] * w
    a = tl.minimum(ow, ALPHA_MAX)
    a = tl.where((a >= ALPHA_MIN) & live[:, None] & pmask[None, :] & (done[None, :] == 0), a, 0.0)
    one_minus = 1.0 - a
    t_incl = T[None, :] * tl.cumprod(one_minus, axis=0)
    # t_incl is non-increasing along the chunk, so "not stopped yet" is a prefix of it
    keep = (a > 0.0) & (t_incl >= T_MIN)
    t_excl = t_incl / one_minus
    stopped = tl.max(((a > 0.0) & (t_incl < T_MIN)).to(tl.int32), axis=0)
    T_after = tl.min(tl.where(keep, t_incl, T[None, :]), axis=0)
    done = done | stopped
    return z0, z1, z2, w, o, ow, a, keep, t_excl, T_after, done


@triton.jit
def barycentrics(bary_ptr, tri, live, px, py):
    """Clamped barycentric planes of a chunk: raw beta_j, their clamped sum."""
    b0 = tl.maximum(edge_plane(bary_ptr, tri, 0, live, px, py), 0.0)
    b1 = tl.maximum(edge_plane(bary_ptr, tri, 1, live, px, py), 0.0)
    b2 = tl.maximum(edge_plane(bary_ptr, tri, 2, live, px, py), 0.0)
    total = tl.maximum(b0 + b1 + b2, 1e-12)
    return b0, b1, b2, total


@triton.jit
def load_colors(colors_ptr, tri, j: tl.constexpr, live, V: tl.constexpr, C: tl.constexpr,
                CB: tl.constexpr):  # fmt: skip
    """Colors of vertex j (0 for flat colors) of a chunk, [CB, G]; colors are (B, N, V, C)."""
    cc = tl.arange(0, CB)
    offs = tri[None, :] * (V * C) + j * C + cc[:, None]
    return tl.load(colors_ptr + offs, mask=(cc[:, None] < C) & live[None, :], other=0.0)
