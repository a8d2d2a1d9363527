"""Backward rasterization kernel and its launcher.

The program of an (image, tile) replays the forward walk front to back (same chunks, same culling,
same early exit) and, per pair, uses the saved final color: the color still to come after a pair is
``color_final - prefix``, so no transmittance is reconstructed by division. Each chunk's gradients
are summed over the tile's pixels and written once per (triangle, tile):

- default: ``tl.atomic_add`` into the (B, N, ...) gradient buffers (order-dependent rounding);
- deterministic: stored into a per-pair partial buffer at the pair's emission slot (triangle-major),
  then summed per triangle in a fixed order in torch (float64 prefix sums).

Gradients are with respect to the rasterizer's own inputs -- edge planes, barycentric planes,
colors, opacity; torch autograd maps them back to the vertices (tritri.geometry).

Per pixel, with g the incoming color gradient, gT the transmittance gradient, S the color after the
pair and t the transmittance before it:

    dL/dalpha = t * <g, color> - (<g, S> + gT * T_final) / (1 - alpha)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from tritri.kernels.raster_common import (
    ALPHA_MAX,
    barycentrics,
    chunk_triangles,
    composite_chunk,
    load_colors,
    tile_pixels,
    tile_work,
)


@triton.jit
def _emit(grad_ptr, grad_off, part_ptr, part_off, val, mask, DETERMINISTIC: tl.constexpr):
    if DETERMINISTIC:
        tl.store(part_ptr + part_off, val, mask=mask)
    else:
        tl.atomic_add(grad_ptr + grad_off, val, mask=mask)


@triton.jit
def _emit_plane(grad_ptr, tri, q: tl.constexpr, part_ptr, row, k_off: tl.constexpr, d, px, py,
                wm, DETERMINISTIC: tl.constexpr):  # fmt: skip
    """Write the gradient of plane q (A, B, C) given dL/dplane-value d [G, P]."""
    _emit(grad_ptr, tri * 9 + 3 * q, part_ptr, row + k_off + 3 * q,
          tl.sum(d * px[None, :], axis=1), wm, DETERMINISTIC)  # fmt: skip
    _emit(grad_ptr, tri * 9 + 3 * q + 1, part_ptr, row + k_off + 3 * q + 1,
          tl.sum(d * py[None, :], axis=1), wm, DETERMINISTIC)  # fmt: skip
    _emit(grad_ptr, tri * 9 + 3 * q + 2, part_ptr, row + k_off + 3 * q + 2,
          tl.sum(d, axis=1), wm, DETERMINISTIC)  # fmt: skip


@triton.jit
def _emit_colors(grad_ptr, tri, j: tl.constexpr, part_ptr, row, k_off: tl.constexpr, val, wm,
                 V: tl.constexpr, C: tl.constexpr, CB: tl.constexpr,
                 DETERMINISTIC: tl.constexpr):  # fmt: skip
    """Write a [CB, G] color gradient of vertex j."""
    cc = tl.arange(0, CB)
    mask = (cc[:, None] < C) & wm[None, :]
    grad_off = tri[None, :] * (V * C) + j * C + cc[:, None]
    part_off = row[None, :] + k_off + j * C + cc[:, None]
    _emit(grad_ptr, grad_off, part_ptr, part_off, val, mask, DETERMINISTIC)


@triton.jit
def raster_backward_kernel(
    edges_ptr, bary_ptr, colors_ptr, opacity_ptr, cull_ptr,
    tri_list_ptr, tile_start_ptr, tile_end_ptr, scan_ptr, slot_ptr,
    color_ptr, T_ptr, grad_color_ptr, grad_T_ptr,
    g_edges_ptr, g_bary_ptr, g_colors_ptr, g_opacity_ptr, part_ptr,
    N, H, W, n_tiles_x, n_tiles,
    C: tl.constexpr, CB: tl.constexpr, PER_VERTEX: tl.constexpr,
    TILE: tl.constexpr, G: tl.constexpr, ALWAYS_SCAN: tl.constexpr,
    DETERMINISTIC: tl.constexpr, K: tl.constexpr,
):  # fmt: skip
    """Inputs as the forward plus color/T (forward outputs) and their gradients; gradient buffers
    shaped like the inputs (atomics) or part (capacity, K) (deterministic)."""
    P: tl.constexpr = TILE * TILE
    V: tl.constexpr = 3 if PER_VERTEX else 1
    # partial-row layout: edges 0..8 | opacity 9 | bary 10..18 (per-vertex) | colors (V * C)
    K_OPACITY: tl.constexpr = 9
    K_BARY: tl.constexpr = 10
    K_COLORS: tl.constexpr = 19 if PER_VERTEX else 10

    pid = tl.program_id(0).to(tl.int64)
    b = pid // n_tiles
    tile = pid % n_tiles
    row, col, pmask, px, py, xmin, xmax, ymin, ymax = tile_pixels(tile, n_tiles_x, H, W, TILE)

    scan, list_end, n_items = tile_work(
        pid, b, N, scan_ptr, tile_start_ptr, tile_end_ptr, ALWAYS_SCAN
    )

    cc = tl.arange(0, CB)
    pix = row * W + col
    coffs = (b * C + cc[:, None]) * H * W + pix[None, :]
    cmask = (cc[:, None] < C) & pmask[None, :]
    g_color = tl.load(grad_color_ptr + coffs, mask=cmask, other=0.0)  # [CB, P]
    final = tl.load(color_ptr + coffs, mask=cmask, other=0.0)
    g_T = tl.load(grad_T_ptr + b * H * W + pix, mask=pmask, other=0.0)
    T_final = tl.load(T_ptr + b * H * W + pix, mask=pmask, other=1.0)
    g_final = tl.sum(g_color * final, axis=0)  # <g, color_final> [P]
    g_behind = g_T * T_final  # the transmittance gradient's share

    T = tl.full((P,), 1.0, tl.float32)
    done = (pmask == 0).to(tl.int32)
    g_prefix = tl.zeros((P,), tl.float32)  # <g, color composited so far>
    it = pid * 0
    go = n_items > 0
    while go:
        tri, pos, live = chunk_triangles(
            b, N, it, n_items, scan, list_end, tri_list_ptr, cull_ptr, edges_ptr,
            xmin, xmax, ymin, ymax, G,
        )  # fmt: skip
        if tl.max(live.to(tl.int32), axis=0) > 0:
            z0, z1, z2, w, o, ow, a, keep, t_excl, T, done = composite_chunk(
                edges_ptr, opacity_ptr, tri, live, px, py, pmask, T, done
            )
            vis = tl.where(keep, a * t_excl, 0.0)  # [G, P]
            wm = live & (tl.max(keep.to(tl.int32), axis=1) > 0)
            if DETERMINISTIC:
                row_k = tl.load(slot_ptr + pos, mask=live, other=0) * K
            else:
                row_k = pos * 0

            c0 = load_colors(colors_ptr, tri, 0, live, V, C, CB)
            gc0 = tl.sum(c0[:, :, None] * g_color[:, None, :], axis=0)  # <g, c_0> [G, P]
            if PER_VERTEX:
                c1 = load_colors(colors_ptr, tri, 1, live, V, C, CB)
                c2 = load_colors(colors_ptr, tri, 2, live, V, C, CB)
                gc1 = tl.sum(c1[:, :, None] * g_color[:, None, :], axis=0)
                gc2 = tl.sum(c2[:, :, None] * g_color[:, None, :], axis=0)
                b0, b1, b2, total = barycentrics(bary_ptr, tri, live, px, py)
                g_col = (b0 * gc0 + b1 * gc1 + b2 * gc2) / total
            else:
                g_col = gc0

            contrib = vis * g_col
            g_prefix_incl = g_prefix[None, :] + tl.cumsum(contrib, axis=0)
            g_prefix += tl.sum(contrib, axis=0)
            g_after = g_final[None, :] - g_prefix_incl  # <g, color still to come>
            d_alpha = tl.where(
                keep, t_excl * g_col - (g_after + g_behind[None, :]) / (1.0 - a), 0.0
            )
            d_ow = tl.where(ow < ALPHA_MAX, d_alpha, 0.0)
            _emit(g_opacity_ptr, tri, part_ptr, row_k + K_OPACITY, tl.sum(d_ow * w, axis=1), wm,
                  DETERMINISTIC)  # fmt: skip
            d_z = d_ow * o[:, None] * w * (1.0 - w)
            # min over the three edges: the gradient goes to the first minimal one
            m0 = (z0 <= z1) & (z0 <= z2)
            m1 = (z1 < z0) & (z1 <= z2)
            m2 = (z2 < z0) & (z2 < z1)
            _emit_plane(g_edges_ptr, tri, 0, part_ptr, row_k, 0, tl.where(m0, d_z, 0.0), px, py,
                        wm, DETERMINISTIC)  # fmt: skip
            _emit_plane(g_edges_ptr, tri, 1, part_ptr, row_k, 0, tl.where(m1, d_z, 0.0), px, py,
                        wm, DETERMINISTIC)  # fmt: skip
            _emit_plane(g_edges_ptr, tri, 2, part_ptr, row_k, 0, tl.where(m2, d_z, 0.0), px, py,
                        wm, DETERMINISTIC)  # fmt: skip

            if PER_VERTEX:
                # color = sum_j r_j c_j / R with r_j = max(beta_j, 0), R = sum_j r_j
                scale = vis / total
                for j in tl.static_range(3):
                    if j == 0:
                        bj = b0
                        gcj = gc0
                    elif j == 1:
                        bj = b1
                        gcj = gc1
                    else:
                        bj = b2
                        gcj = gc2
                    d_beta = tl.where(bj > 0.0, scale * (gcj - g_col), 0.0)
                    _emit_plane(g_bary_ptr, tri, j, part_ptr, row_k, K_BARY, d_beta, px, py, wm,
                                DETERMINISTIC)  # fmt: skip
                    g_cj = tl.sum(g_color[:, None, :] * (scale * bj)[None, :, :], axis=2)
                    _emit_colors(g_colors_ptr, tri, j, part_ptr, row_k, K_COLORS, g_cj, wm, V, C,
                                 CB, DETERMINISTIC)  # fmt: skip
            else:
                g_c0 = tl.sum(g_color[:, None, :] * vis[None, :, :], axis=2)  # [CB, G]
                _emit_colors(g_colors_ptr, tri, 0, part_ptr, row_k, K_COLORS, g_c0, wm, V, C, CB,
                             DETERMINISTIC)  # fmt: skip
        it += G
        go = (it < n_items) & (tl.sum(done, axis=0) < P)


def partial_width(per_vertex: bool, channels: int) -> int:
    """Columns of a per-pair partial row: edges 9, opacity 1, bary 9 (per-vertex), colors V*C."""
    return 10 + (9 + 3 * channels if per_vertex else channels)


def raster_backward(
    grad_color: Tensor,
    grad_T: Tensor,
    color: Tensor,
    T: Tensor,
    edges: Tensor,
    bary: Tensor | None,
    colors: Tensor,
    opacity: Tensor,
    cull: Tensor,
    bins,
    height: int,
    width: int,
    tile: int,
    chunk: int,
    deterministic: bool,
    num_warps: int = 4,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """Launch the backward kernel; returns gradients for edges, bary (or None), colors, opacity.

    grad_color / color: (B, C, H, W) fp32; grad_T / T: (B, H, W) fp32; the rest as in
    :func:`tritri.kernels.raster_forward.raster_forward`. ``deterministic`` needs ``bins`` built
    with an exact capacity (no overflow).
    """
    from tritri.binning import tile_grid

    B, N = edges.shape[:2]
    V, C = colors.shape[-2:]
    per_vertex = bary is not None
    ntx, nty = tile_grid(height, width, tile)
    K = partial_width(per_vertex, C)
    device = edges.device
    dummy = edges.new_zeros(1, dtype=torch.int64)
    if deterministic:
        if bins is None:
            raise ValueError("deterministic backward needs sorted bins")
        part = torch.zeros(bins.tri.numel(), K, dtype=torch.float32, device=device)
        g_edges = g_bary = g_colors = g_opacity = part
    else:
        part = edges.new_zeros(1)
        g_edges = torch.zeros_like(edges)
        g_bary = torch.zeros_like(bary) if per_vertex else g_edges
        g_colors = torch.zeros_like(colors)
        g_opacity = torch.zeros_like(opacity)
    raster_backward_kernel[(B * ntx * nty,)](
        edges, edges if bary is None else bary, colors, opacity, cull,
        dummy if bins is None else bins.tri,
        dummy if bins is None else bins.start,
        dummy if bins is None else bins.end,
        dummy if bins is None else bins.overflow.to(torch.int32),
        dummy if bins is None else bins.slot,
        color, T, grad_color, grad_T,
        g_edges, g_bary, g_colors, g_opacity, part,
        N, height, width, ntx, ntx * nty,
        C=C, CB=triton.next_power_of_2(C), PER_VERTEX=per_vertex,
        TILE=tile, G=chunk, ALWAYS_SCAN=bins is None,
        DETERMINISTIC=deterministic, K=K,
        num_warps=num_warps,
    )  # fmt: skip
    if not deterministic:
        return g_edges, (g_bary if per_vertex else None), g_colors, g_opacity

    # Sum each triangle's contiguous run of partial rows in a fixed order.
    prefix = torch.cat([part.new_zeros(1, K, dtype=torch.float64), part.double().cumsum(0)])
    first = bins.first.reshape(-1)
    sums = (prefix[first + bins.count.reshape(-1)] - prefix[first]).float().reshape(B, N, K)
    g_edges = sums[..., :9].contiguous()
    g_opacity = sums[..., 9].contiguous()
    g_bary = sums[..., 10:19].contiguous() if per_vertex else None
    g_colors = sums[..., (19 if per_vertex else 10) :].reshape(B, N, V, C).contiguous()
    return g_edges, g_bary, g_colors, g_opacity
