"""Forward rasterization kernel and its launcher.

One program per (image, tile) composites the tile's triangles front to back (index N-1 first) and
writes the premultiplied color (no background) and the final transmittance per pixel. That fp32
color and T are all the backward needs: it replays the same walk front to back and gets each pair's
suffix color as ``color_final - prefix`` -- no division by (1 - alpha) to reconstruct T, and the
same early exit as the forward (research notes, section 7.1). Layout and walk:
:mod:`tritri.kernels.raster_common`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from tritri.kernels import FP_FUSION
from tritri.kernels.arch import target_arch
from tritri.kernels.raster_common import (
    REC_OPACITY,
    all_stopped,
    check_raster_config,
    clamped_barycentrics,
    composite_step,
    load_record,
    next_hit,
    pack_triangles,
    planes_at,
    scan_block_hits,
    start_state,
    tile_geometry,
    tile_pixels,
    tile_work,
    vertex_color,
    walk_launches,
)


@triton.jit
def _forward_item(rec, px0, py, dx, T, thr, acc, C: tl.constexpr, PER_VERTEX: tl.constexpr,
                  REC: tl.constexpr):  # fmt: skip
    """Composite the triangle of record ``rec`` into the pixels' T, thresholds and color (C
    blocks). The planes are evaluated exactly as the backward does (stepped), so its replay makes
    the same skip and stop decisions bit for bit."""
    v = load_record(rec, REC)
    z0, z1, z2 = planes_at(v, 0, px0, py, dx, True)
    o = v[REC_OPACITY]
    T_before = T
    _, w, ow, a, one_minus, take, T, thr = composite_step(z0, z1, z2, o, T, thr)
    vis = tl.where(take, a * T_before, 0.0)
    out = ()
    if PER_VERTEX:
        r0, r1, r2, inv_total = clamped_barycentrics(v, px0, py, dx, True)
        scale = vis * inv_total
        w0, w1, w2 = r0 * scale, r1 * scale, r2 * scale
        c0 = vertex_color(v, 0, C, PER_VERTEX)
        c1 = vertex_color(v, 1, C, PER_VERTEX)
        c2 = vertex_color(v, 2, C, PER_VERTEX)
        for c in tl.static_range(C):
            out = out + (tl.fma(c0[c], w0, tl.fma(c1[c], w1, tl.fma(c2[c], w2, acc[c]))),)
    else:
        c0 = vertex_color(v, 0, C, PER_VERTEX)
        for c in tl.static_range(C):
            out = out + (tl.fma(c0[c], vis, acc[c]),)
    return T, thr, out


@triton.jit
def _forward_walk(
    rec_ptr, cull_ptr, tri_list_ptr, b, N, n_items, list_end, px0, py, dx,
    xmin, xmax, ymin, ymax, T, thr, acc,
    C: tl.constexpr, PER_VERTEX: tl.constexpr, REC: tl.constexpr, CHUNK: tl.constexpr,
    SCAN: tl.constexpr,
):  # fmt: skip
    """Walk the tile's triangles front to back, in blocks (scan: 32 of all N, culled at once;
    list: CHUNK entries of the tile's sorted list), leaving after a block once every pixel has
    stopped."""
    # per-image bases: the walk's indices stay 32-bit, the offsets from them are int64
    rec_img = rec_ptr + b * N * REC
    it = n_items * 0
    go = n_items > 0
    while go:
        if SCAN:
            hits = scan_block_hits(N, it, rec_img, cull_ptr + b * N * 5, REC, xmin, xmax, ymin,
                                   ymax)  # fmt: skip
            while hits != 0:
                bit, hits = next_hit(hits)
                rec = rec_img + (N - 1 - (it + bit)).to(tl.int64) * REC
                T, thr, acc = _forward_item(rec, px0, py, dx, T, thr, acc, C, PER_VERTEX, REC)
            it += 32
        else:
            entry = tri_list_ptr + (list_end - 1 - it)  # walked backwards
            for k in tl.range(tl.minimum(n_items - it, CHUNK), loop_unroll_factor=1):
                rec = rec_img + tl.load(entry - k).to(tl.int64) * REC
                T, thr, acc = _forward_item(rec, px0, py, dx, T, thr, acc, C, PER_VERTEX, REC)
            it += CHUNK
        go = (it < n_items) & (all_stopped(thr) == 0)
    return T, thr, acc


@triton.jit
def raster_forward_kernel(
    rec_ptr, cull_ptr, tri_list_ptr, tile_start_ptr, tile_end_ptr, scan_ptr,
    out_color_ptr, out_T_ptr,
    N, H, W, n_tiles_x, n_tiles,
    C: tl.constexpr, PER_VERTEX: tl.constexpr, REC: tl.constexpr,
    TILE: tl.constexpr, CHUNK: tl.constexpr, WARPS: tl.constexpr, LIST: tl.constexpr,
):  # fmt: skip
    """rec (B, N, REC) triangle records (raster_common), cull (B, N, 5) fp32; lists and the
    per-image scan flags (B,) bool as in raster_common.tile_work; out_color (B, C, H, W) and
    out_T (B, H, W) fp32. Launch with num_warps=WARPS."""
    PPT: tl.constexpr = TILE * TILE // (32 * WARPS)
    pid = tl.program_id(0).to(tl.int64)
    b = pid // n_tiles
    tile = pid % n_tiles
    px0, py, dx, xmin, xmax, ymin, ymax = tile_geometry(tile, n_tiles_x, H, W, TILE, PPT, WARPS)
    list_end, n_items, active = tile_work(pid, b, N, scan_ptr, tile_start_ptr, tile_end_ptr,
                                          LIST)  # fmt: skip
    T, thr = start_state(tile_pixels(tile, n_tiles_x, H, W, TILE, PPT, WARPS)[1])
    acc = ()
    for _ in tl.static_range(C):
        acc = acc + (tl.zeros((PPT, WARPS, 32), tl.float32),)
    T, thr, acc = _forward_walk(
        rec_ptr, cull_ptr, tri_list_ptr, b, N, n_items, list_end, px0, py, dx,
        xmin, xmax, ymin, ymax, T, thr, acc, C, PER_VERTEX, REC, CHUNK, not LIST,
    )  # fmt: skip

    # the pixel indices are recomputed here rather than kept live through the walk
    pix, pmask = tile_pixels(tile, n_tiles_x, H, W, TILE, PPT, WARPS)
    out = pmask & active
    for c in tl.static_range(C):
        tl.store(out_color_ptr + (b * C + c) * H * W + pix, acc[c], mask=out)
    tl.store(out_T_ptr + b * H * W + pix, T, mask=out)


def max_registers(per_vertex: bool, channels: int, arch: int | None, list_walk: bool) -> int:
    """Register cap per thread: 64 for flat colors (32 warps per SM resident), 96 per-vertex.

    Flat C >= 4 is at the edge of 64 at the default config (4 pixels per thread, 16 accumulators)
    and ptxas's allocation is not monotone in the cap, so its list walk gets 72: there ptxas
    allocates 64 registers without spilling on sm_80 and sm_90 with triton 3.7, 3.8 and 3.9 alike
    (ptxas 12.8 / 12.9 / 13.4), while at a cap of 64 triton 3.9 spills 8 B, and at 68 ptxas takes
    67-68 (28 resident warps instead of 32). Its scan walk keeps 64 (56-64 registers there without
    spilling on all three; 72 would let sm_90 take 64 instead of 56, 32 resident warps instead of
    36). sm_86 / sm_89 give both walks 72. (``tritri check`` figures, default config.)"""
    if per_vertex:
        return 96
    return 72 if channels >= 4 and (list_walk or arch in (86, 87, 89)) else 64


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

    check_raster_config(tile, chunk, num_warps)
    B, N = edges.shape[:2]
    C = colors.shape[-1]
    ntx, nty = tile_grid(height, width, tile)
    out_color = torch.empty(B, C, height, width, dtype=torch.float32, device=edges.device)
    out_T = torch.empty(B, height, width, dtype=torch.float32, device=edges.device)
    rec = pack_triangles(edges, bary, colors, opacity)
    arch = target_arch(edges.device)
    for list_walk, lists in walk_launches(bins, B, edges.device):
        cap = max_registers(bary is not None, C, arch, list_walk)
        raster_forward_kernel[(B * ntx * nty,)](
            rec, cull, *lists[:4], out_color, out_T,
            N, height, width, ntx, ntx * nty,
            C=C, PER_VERTEX=bary is not None, REC=rec.shape[-1],
            TILE=tile, CHUNK=chunk, WARPS=num_warps, LIST=list_walk,
            num_warps=num_warps, num_stages=1, maxnreg=cap, enable_fp_fusion=FP_FUSION,
        )  # fmt: skip
    return out_color, out_T
