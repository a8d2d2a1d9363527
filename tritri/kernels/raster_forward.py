"""Forward rasterization kernel and its launcher.

One program per (image, tile) composites the tile's triangles front to back (index N-1 first) and
writes the premultiplied color (no background) and the final transmittance per pixel. That fp32
color and T are all the backward needs: it replays the same walk front to back and gets each pair's
suffix color as ``color_final - prefix`` -- no division by (1 - alpha) to reconstruct T, and the
same early exit as the forward (research notes, section 7.1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from tritri.kernels.raster_common import (
    barycentrics,
    chunk_triangles,
    composite_chunk,
    load_colors,
    tile_pixels,
    tile_work,
)


@triton.jit
def raster_forward_kernel(
    edges_ptr, bary_ptr, colors_ptr, opacity_ptr, cull_ptr,
    tri_list_ptr, tile_start_ptr, tile_end_ptr, scan_ptr,
    out_color_ptr, out_T_ptr,
    N, H, W, n_tiles_x, n_tiles,
    C: tl.constexpr, CB: tl.constexpr, PER_VERTEX: tl.constexpr,
    TILE: tl.constexpr, G: tl.constexpr, ALWAYS_SCAN: tl.constexpr,
):  # fmt: skip
    """edges/bary (B, N, 9), colors (B, N, V, C), opacity (B, N), cull (B, N, 5) fp32;
    out_color (B, C, H, W) and out_T (B, H, W) fp32."""
    P: tl.constexpr = TILE * TILE
    V: tl.constexpr = 3 if PER_VERTEX else 1
    pid = tl.program_id(0).to(tl.int64)
    b = pid // n_tiles
    tile = pid % n_tiles
    row, col, pmask, px, py, xmin, xmax, ymin, ymax = tile_pixels(tile, n_tiles_x, H, W, TILE)

    scan, list_end, n_items = tile_work(
        pid, b, N, scan_ptr, tile_start_ptr, tile_end_ptr, ALWAYS_SCAN
    )

    T = tl.full((P,), 1.0, tl.float32)
    done = (pmask == 0).to(tl.int32)
    acc = tl.zeros((CB, P), tl.float32)
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
            if PER_VERTEX:
                b0, b1, b2, total = barycentrics(bary_ptr, tri, live, px, py)
                c0 = load_colors(colors_ptr, tri, 0, live, V, C, CB)
                c1 = load_colors(colors_ptr, tri, 1, live, V, C, CB)
                c2 = load_colors(colors_ptr, tri, 2, live, V, C, CB)
                color = (
                    c0[:, :, None] * (b0 / total)[None, :, :]
                    + c1[:, :, None] * (b1 / total)[None, :, :]
                    + c2[:, :, None] * (b2 / total)[None, :, :]
                )  # [CB, G, P]
                acc += tl.sum(color * vis[None, :, :], axis=1)
            else:
                c0 = load_colors(colors_ptr, tri, 0, live, V, C, CB)
                acc += tl.sum(c0[:, :, None] * vis[None, :, :], axis=1)
        it += G
        go = (it < n_items) & (tl.sum(done, axis=0) < P)

    cc = tl.arange(0, CB)
    pix = row * W + col
    offs = (b * C + cc[:, None]) * H * W + pix[None, :]
    tl.store(out_color_ptr + offs, acc, mask=(cc[:, None] < C) & pmask[None, :])
    tl.store(out_T_ptr + b * H * W + pix, T, mask=pmask)


def raster_forward(
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
    num_warps: int = 4,
) -> tuple[Tensor, Tensor]:
    """Launch the forward kernel.

    edges (B, N, 9), bary (B, N, 9) or None, colors (B, N, V, C), opacity (B, N), cull (B, N, 5),
    all fp32 contiguous on one device; ``bins`` a :class:`tritri.binning.TileBins` or None (scan
    every tile). Returns color (B, C, H, W) without background and transmittance T (B, H, W), fp32.
    """
    from tritri.binning import tile_grid

    B, N = edges.shape[:2]
    C = colors.shape[-1]
    ntx, nty = tile_grid(height, width, tile)
    out_color = torch.empty(B, C, height, width, dtype=torch.float32, device=edges.device)
    out_T = torch.empty(B, height, width, dtype=torch.float32, device=edges.device)
    dummy = edges.new_zeros(1, dtype=torch.int64)
    raster_forward_kernel[(B * ntx * nty,)](
        edges, edges if bary is None else bary, colors, opacity, cull,
        dummy if bins is None else bins.tri,
        dummy if bins is None else bins.start,
        dummy if bins is None else bins.end,
        dummy if bins is None else bins.overflow.to(torch.int32),
        out_color, out_T,
        N, height, width, ntx, ntx * nty,
        C=C, CB=triton.next_power_of_2(C), PER_VERTEX=bary is not None,
        TILE=tile, G=chunk, ALWAYS_SCAN=bins is None,
        num_warps=num_warps,
    )  # fmt: skip
    return out_color, out_T
