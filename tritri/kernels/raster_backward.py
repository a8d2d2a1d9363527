"""Backward rasterization kernel and its launcher.

The program of an (image, tile) replays the forward walk front to back (same blocks, same culling,
same early exit) and, per pair, uses the saved final color: the color still to come after a pair is
``color_final - prefix``, so no transmittance is reconstructed by division. Each triangle's
gradients are summed over the tile's pixels -- in-thread adds, then one transposing butterfly of
warp shuffles for the whole row (K columns in about K shuffles, not 5 K), which leaves lane k of
each warp holding column k -- and written once per (triangle, tile, warp):

- default: one vector ``tl.atomic_add`` per warp into the (B, N, ...) gradient buffers, lane k
  adding column k of the row (order-dependent rounding);
- deterministic: the warps' total stored into a per-pair partial buffer at the pair's emission slot
  (triangle-major), then summed per triangle in a fixed order in torch (float64 prefix sums).

Gradients are with respect to the rasterizer's own inputs -- edge planes, barycentric planes,
colors, opacity; torch autograd maps them back to the vertices (tritri.geometry).

Per pixel, with g the incoming color gradient, gT the transmittance gradient, S the color after the
pair and t the transmittance before it:

    dL/dalpha = t * <g, color> - (<g, S> + gT * T_final) / (1 - alpha)
"""

from __future__ import annotations

import re

import torch
import triton
import triton.language as tl
from torch import Tensor

from tritri.kernels import FP_FUSION
from tritri.kernels.arch import target_arch
from tritri.kernels.raster_common import (
    ALPHA_MAX,
    INTERPRETED,
    REC_OPACITY,
    all_stopped,
    channel_dot,
    check_raster_config,
    clamped_barycentrics,
    composite_step,
    load_record,
    next_hit,
    pack_triangles,
    planes_at,
    reciprocal,
    record_width,
    scan_block_hits,
    start_state,
    tile_geometry,
    tile_pixels,
    tile_work,
    unpack_gradients,
    vertex_color,
    walk_launches,
)


@triton.jit
def _xor_lanes(x, OFFSET: tl.constexpr):
    """``x`` [1, WARPS, 32] as held by lane ``lane ^ OFFSET`` of the same warp: one butterfly
    shuffle (``shfl.sync.bfly`` with an immediate offset; ``tl.gather`` would keep a lane-index
    register per offset live through the walk). That is ``x`` at index ``k ^ OFFSET`` of axis 2
    only where index k of axis 2 is lane k and each thread holds one element: blocked layout
    sizePerThread [1, 1, 1], threadsPerWarp [1, 1, 32], warpsPerCTA [1, WARPS, 1]. Triton does
    not promise that layout (3.6 gives these operands threadsPerWarp [8, 1, 4]): the launcher
    checks it in the compiled kernel (:func:`lane_shuffles_hold`) before launching one with
    shuffles. The interpreter has no lanes: it gathers along axis 2."""
    if INTERPRETED:
        lane = tl.arange(0, 32)[None, None, :]
        out = tl.gather(x, tl.broadcast_to(lane ^ OFFSET, x.shape), axis=2)
    elif OFFSET == 16:
        out = _shfl_bfly(x, "shfl.sync.bfly.b32 $0, $1, 16, 0x1f, -1;")
    elif OFFSET == 8:
        out = _shfl_bfly(x, "shfl.sync.bfly.b32 $0, $1, 8, 0x1f, -1;")
    elif OFFSET == 4:
        out = _shfl_bfly(x, "shfl.sync.bfly.b32 $0, $1, 4, 0x1f, -1;")
    elif OFFSET == 2:
        out = _shfl_bfly(x, "shfl.sync.bfly.b32 $0, $1, 2, 0x1f, -1;")
    else:
        tl.static_assert(OFFSET == 1, "lane offsets are 1, 2, 4, 8 or 16")
        out = _shfl_bfly(x, "shfl.sync.bfly.b32 $0, $1, 1, 0x1f, -1;")
    return out


@triton.jit
def _shfl_bfly(x, ASM: tl.constexpr):
    return tl.inline_asm_elementwise(ASM, "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _pair(lo, hi_col, OFF: tl.constexpr):
    """One lane pair's step of the transposing butterfly (:func:`_lane_sums`): lanes whose bit
    OFF is set keep ``hi_col`` and send ``lo``, the others the reverse; each adds what it gets."""
    hi = (tl.arange(0, 32)[None, None, :] & OFF) != 0
    return tl.where(hi, hi_col, lo) + _xor_lanes(tl.where(hi, lo, hi_col), OFF)


@triton.jit
def _lane_sums(cols, LOG2: tl.constexpr, SHUFFLES: tl.constexpr):
    """Per-warp sums of the columns ``cols`` (a tuple of at most 2**LOG2 <= 32 in-thread partial
    sums, each [1, WARPS, 32]) as one [1, WARPS, 32] row: index k of axis 2 holds the warp's sum
    of column k.

    ``SHUFFLES``: a transposing butterfly of warp shuffles (:func:`_xor_lanes`): at each level
    every lane keeps half of its columns, sends the other half to its partner and adds what it
    receives, so the sums of K columns cost 2**LOG2 - 1 + (5 - LOG2) shuffles instead of 5 K (one
    warp reduction per column). Right only where the compiler lays the rows along the lanes
    (:func:`lane_shuffles_hold`). Not ``SHUFFLES``: one ``tl.sum`` along axis 2 per column, right
    whatever the layout (the fallback; it takes 7-53 more instructions per pair with triton 3.9,
    and unlike a butterfly of ``tl.gather`` it does not spill at the default configs).
    """
    tl.static_assert((LOG2 >= 1) and (LOG2 <= 5), "a row holds 2 to 32 columns, one per lane")
    if SHUFFLES:
        OFF: tl.constexpr = 1 << (LOG2 - 1)
        vals = ()
        for i in tl.static_range(OFF):
            if i + OFF < len(cols):
                vals = vals + (_pair(cols[i], cols[i + OFF], OFF),)
            else:  # column i + OFF is past the last: zero
                vals = vals + (_pair(cols[i], 0.0, OFF),)
        for level in tl.static_range(1, LOG2):
            vals = _butterfly_level(vals, OFF >> level)
        row = vals[0]
        for level in tl.static_range(5 - LOG2):  # lanes past 2**LOG2 hold partial sums of the
            row += _xor_lanes(row, (1 << LOG2) << level)  # same columns: add them in
    else:
        lane = tl.arange(0, 32)[None, None, :]
        row = tl.zeros_like(cols[0])
        for k in tl.static_range(len(cols)):
            row = tl.where(lane == k, tl.sum(cols[k], axis=2)[:, :, None], row)
    return row


@triton.jit
def _butterfly_level(vals, OFF: tl.constexpr):
    """A later level of :func:`_lane_sums`: the 2 * OFF columns ``vals`` become OFF."""
    halved = ()
    for i in tl.static_range(OFF):
        halved = halved + (_pair(vals[i], vals[i + OFF], OFF),)
    return halved


@triton.jit
def _plane_cols(d, px0, py, dx):
    """In-thread partial sums of a plane (A, B, C)'s gradient given dL/dplane-value ``d`` per
    pixel: the sums of d*x, d*y and d. A thread's pixels share y and are ``dx`` right of its first
    one, so the per-pixel work is one add and one FMA."""
    s0 = tl.sum(d, axis=0)[None]  # [1, WARPS, 32]
    sx = tl.sum(d * dx, axis=0)[None]
    return tl.fma(s0, px0, sx), s0 * py, s0


@triton.jit
def _color_cols(g_color, weight):
    """In-thread partial sums of one vertex's color gradient: g_color[c] * weight, per channel."""
    out = ()
    for c in tl.static_range(len(g_color)):
        out = out + (tl.sum(g_color[c] * weight, axis=0)[None],)
    return out


@triton.jit
def _backward_item(
    rec, grad_row, px0, py, dx, g_color, T, thr, rem,
    C: tl.constexpr, PER_VERTEX: tl.constexpr, WARPS: tl.constexpr, REC: tl.constexpr,
    K: tl.constexpr, K_LOG2: tl.constexpr, DETERMINISTIC: tl.constexpr, SHUFFLES: tl.constexpr,
):  # fmt: skip
    """Replay the triangle of record ``rec`` against the pixels' state (T, thresholds, ``rem``)
    and write its gradients for this tile to ``grad_row``.

    The tile's sums are gathered into one row per warp (:func:`_lane_sums`) with the record's
    columns (edges 0..8, opacity 9, bary 10..18 for per-vertex colors, then the V * C colors),
    and added to the
    triangle's gradient row with one vector atomic per warp, lane k adding column k; the
    deterministic mode stores the warps' total in the pair's partial row instead.
    """
    v = load_record(rec, REC)
    z0, z1, z2 = planes_at(v, 0, px0, py, dx, True)
    o = v[REC_OPACITY]
    T_before = T
    edge, w, ow, a, one_minus, take, T, thr = composite_step(z0, z1, z2, o, T, thr)
    vis = tl.where(take, a * T_before, 0.0)

    gc0 = channel_dot(vertex_color(v, 0, C, PER_VERTEX), g_color)  # <g, c_0>
    if PER_VERTEX:
        gc1 = channel_dot(vertex_color(v, 1, C, PER_VERTEX), g_color)
        gc2 = channel_dot(vertex_color(v, 2, C, PER_VERTEX), g_color)
        r0, r1, r2, inv_total = clamped_barycentrics(v, px0, py, dx, True)
        g_col = (r0 * gc0 + r1 * gc1 + r2 * gc2) * inv_total
    else:
        g_col = gc0

    rem -= vis * g_col  # now <g, color after this pair> + g_T * T_final
    d_alpha = tl.where(take, T_before * g_col - rem * reciprocal(one_minus), 0.0)
    d_ow = tl.where(ow < ALPHA_MAX, d_alpha, 0.0)
    d_z = (d_ow * o) * tl.fma(-w, w, w)  # d sigmoid(z) / dz = w (1 - w)

    # min over the three edges: the gradient goes to the first minimal one
    # the columns of the triangle's gradient row, in record order
    # min over the three edges: the gradient goes to the first minimal one
    cols = _plane_cols(tl.where(edge == 0, d_z, 0.0), px0, py, dx)
    cols = cols + _plane_cols(tl.where(edge == 1, d_z, 0.0), px0, py, dx)
    cols = cols + _plane_cols(tl.where(edge == 2, d_z, 0.0), px0, py, dx)
    cols = cols + (tl.sum(d_ow * w, axis=0)[None],)  # opacity
    if PER_VERTEX:
        # color = sum_j r_j c_j / R with r_j = max(beta_j, 0), R = sum_j r_j
        scale = vis * inv_total
        cols = cols + _plane_cols(tl.where(r0 > 0.0, scale * (gc0 - g_col), 0.0), px0, py, dx)
        cols = cols + _plane_cols(tl.where(r1 > 0.0, scale * (gc1 - g_col), 0.0), px0, py, dx)
        cols = cols + _plane_cols(tl.where(r2 > 0.0, scale * (gc2 - g_col), 0.0), px0, py, dx)
        cols = cols + _color_cols(g_color, scale * r0)
        cols = cols + _color_cols(g_color, scale * r1)
        cols = cols + _color_cols(g_color, scale * r2)
    else:
        cols = cols + _color_cols(g_color, vis)
    row = _lane_sums(cols, K_LOG2, SHUFFLES)  # [1, WARPS, 32]: lane k holds column k

    lane = tl.arange(0, 32)[None, None, :]
    if DETERMINISTIC:
        tl.store(grad_row + lane, tl.sum(row, axis=1)[:, None, :], mask=lane < K)
    else:
        warp0 = tl.zeros((1, WARPS, 1), tl.int64)
        tl.atomic_add(grad_row + lane + warp0, row, mask=lane < K, sem="relaxed")
    return T, thr, rem


@triton.jit
def raster_backward_kernel(
    rec_ptr, cull_ptr, tri_list_ptr, tile_start_ptr, tile_end_ptr, scan_ptr, slot_ptr,
    color_ptr, T_ptr, grad_color_ptr, grad_T_ptr, grad_ptr,
    N, H, W, n_tiles_x, n_tiles,
    C: tl.constexpr, PER_VERTEX: tl.constexpr, REC: tl.constexpr, STRIDE: tl.constexpr,
    K: tl.constexpr, K_LOG2: tl.constexpr, TILE: tl.constexpr, CHUNK: tl.constexpr,
    WARPS: tl.constexpr, LIST: tl.constexpr, DETERMINISTIC: tl.constexpr,
    SHUFFLES: tl.constexpr,
):  # fmt: skip
    """rec, cull, lists and scan flags as the forward; color/T its outputs and grad_color/grad_T
    their gradients. STRIDE is the records' row stride: 2 * REC with atomics, each record followed
    by its triangle's gradient row (one pointer serves both); REC when deterministic, with
    ``grad`` the (pairs, K) per-pair partial rows indexed by slot. K_LOG2 = ceil(log2(K)) (the K
    <= 32 columns of a row sit one per lane). SHUFFLES: the row sums are a butterfly of warp
    shuffles, valid only where the compiler lays the rows out along the lanes (:func:`_lane_sums`;
    the launcher decides). Launch with num_warps=WARPS."""
    PPT: tl.constexpr = TILE * TILE // (32 * WARPS)
    pid = tl.program_id(0).to(tl.int64)
    b = pid // n_tiles
    tile = pid % n_tiles
    px0, py, dx, xmin, xmax, ymin, ymax = tile_geometry(tile, n_tiles_x, H, W, TILE, PPT, WARPS)
    pix, pmask = tile_pixels(tile, n_tiles_x, H, W, TILE, PPT, WARPS)
    list_end, n_items, active = tile_work(pid, b, N, scan_ptr, tile_start_ptr, tile_end_ptr,
                                          LIST)  # fmt: skip

    g_T = tl.load(grad_T_ptr + b * H * W + pix, mask=pmask, other=0.0)
    T_final = tl.load(T_ptr + b * H * W + pix, mask=pmask, other=1.0)
    # rem = <g, color still to come after the pairs walked so far> + g_T * T_final
    rem = g_T * T_final
    g_color = ()
    for c in tl.static_range(C):
        offs = (b * C + c) * H * W + pix
        g_c = tl.load(grad_color_ptr + offs, mask=pmask, other=0.0)
        rem = tl.fma(g_c, tl.load(color_ptr + offs, mask=pmask, other=0.0), rem)
        g_color = g_color + (g_c,)

    T, thr = start_state(pmask)
    # per-image bases: the walk's indices stay 32-bit, the offsets from them are int64
    rec_img = rec_ptr + b * N * STRIDE
    it = n_items * 0
    go = n_items > 0
    while go:
        if not LIST:
            hits = scan_block_hits(N, it, rec_img, cull_ptr + b * N * 5, STRIDE, xmin, xmax, ymin,
                                   ymax)  # fmt: skip
            while hits != 0:
                bit, hits = next_hit(hits)
                n = (N - 1 - (it + bit)).to(tl.int64)
                T, thr, rem = _backward_item(
                    rec_img + n * STRIDE, rec_img + n * STRIDE + REC, px0, py, dx, g_color, T,
                    thr, rem,
                    C, PER_VERTEX, WARPS, REC, K, K_LOG2, DETERMINISTIC, SHUFFLES,
                )  # fmt: skip
            it += 32
        else:
            pos = list_end - 1 - it  # the list is walked backwards
            stop_pos = pos - tl.minimum(n_items - it, CHUNK)
            while pos > stop_pos:
                n = tl.load(tri_list_ptr + pos).to(tl.int64)
                if DETERMINISTIC:
                    grad_row = grad_ptr + tl.load(slot_ptr + pos) * K
                else:
                    grad_row = rec_img + n * STRIDE + REC
                T, thr, rem = _backward_item(
                    rec_img + n * STRIDE, grad_row, px0, py, dx, g_color, T, thr, rem,
                    C, PER_VERTEX, WARPS, REC, K, K_LOG2, DETERMINISTIC, SHUFFLES,
                )  # fmt: skip
                pos -= 1
            it += CHUNK
        go = (it < n_items) & (all_stopped(thr) == 0)


# A shuffle in the compiled TTGIR: its operand type [1, WARPS, 32] and layout alias.
_SHUFFLE_OPERAND = re.compile(
    r'"shfl\.sync\.bfly\.b32 [^"]*"[^\n]*?:\s*tensor<1x(\d+)x32xf32,\s*(#[\w.]+)>\s*->'
)
_LAYOUT_ALIAS = re.compile(r"^(#[\w.]+) = (#\w+\.blocked<\{.*\}>)\s*$", re.M)


def lane_shuffles_hold(ttgir: str, num_warps: int) -> bool:
    """Whether every butterfly shuffle of a backward kernel compiled with ``SHUFFLES`` reads its
    partner where the kernel assumes (:func:`_xor_lanes`): its [1, num_warps, 32] operand in a
    blocked layout with sizePerThread [1, 1, 1], threadsPerWarp [1, 1, 32] and warpsPerCTA
    [1, num_warps, 1] (one CTA). Anything else, or TTGIR this cannot read, is False."""
    count = ttgir.count('"shfl.sync.bfly.b32 ')
    operands = _SHUFFLE_OPERAND.findall(ttgir)
    if count == 0 or len(operands) != count:
        return False
    layouts = dict(_LAYOUT_ALIAS.findall(ttgir))
    want = {"sizePerThread": "1, 1, 1", "threadsPerWarp": "1, 1, 32",
            "warpsPerCTA": f"1, {num_warps}, 1"}  # fmt: skip
    for warps, alias in operands:
        fields = dict(re.findall(r"(\w+) = \[([\d, ]*)\]", layouts.get(alias, "")))
        if int(warps) != num_warps or any(fields.get(k) != v for k, v in want.items()):
            return False
        if any(fields.get(k, "1, 1, 1") != "1, 1, 1" for k in ("CTAsPerCGA", "CTASplitNum")):
            return False
    return True


def _lane_shuffles(grid: tuple[int], args: tuple, kwargs: dict) -> bool:
    """Whether to launch the backward with ``SHUFFLES`` (:func:`_lane_sums`).

    Compiled: the kernel is compiled with ``SHUFFLES`` first (``warmup``: Triton's cache lookup,
    or the compile, without a launch) and its TTGIR checked (:func:`lane_shuffles_hold`, once per
    compiled kernel), so a kernel whose shuffles would read the wrong lanes is never launched:
    the launch runs without them instead (slower, right whatever the layout). Interpreted: yes
    (the interpreter runs the butterfly with exact lane exchanges, :func:`_xor_lanes`).
    """
    if INTERPRETED.value:
        return True
    compiled = raster_backward_kernel.warmup(*args, grid=grid, SHUFFLES=True, **kwargs)
    if hasattr(compiled, "result"):  # compiled under triton's AsyncCompileMode: a future
        compiled = compiled.result()
    if compiled is None:  # no kernel to inspect (capture_launches without a target, a cache hook)
        return False
    shuffles = getattr(compiled, "_tritri_lane_shuffles", None)
    if shuffles is None:
        shuffles = lane_shuffles_hold(compiled.asm["ttgir"], kwargs["num_warps"])
        compiled._tritri_lane_shuffles = shuffles
    return shuffles


def _launch(grid: tuple[int], args: tuple, kwargs: dict) -> None:
    """Launch the backward kernel, with warp shuffles where :func:`_lane_shuffles` allows."""
    shuffles = _lane_shuffles(grid, args, kwargs)
    raster_backward_kernel[grid](*args, SHUFFLES=shuffles, **kwargs)


MAX_REGISTERS = {False: 128, True: 192}
"""Register cap per thread, flat / per-vertex colors (ptxas trades some instruction-level
parallelism for it; at the default config flat colors keep 16 warps per SM resident without
spilling, see ``tritri check``)."""


def state_registers(arch: int | None) -> int:
    """Registers per thread the backward's per-pixel state may take (T, the stop threshold, the
    remaining color and the C incoming gradient channels, for each of a thread's pixels): 48, and
    40 on sm_100 up to sm_119, whose ptxas spills flat C = 3 (48-64 B) at 8 pixels per thread
    (``tritri check --arch 100``); sm_120 fits them at 124-126 registers and takes ~67 instead
    of ~79 instructions per pair there."""
    return 40 if arch is not None and 100 <= arch < 120 else 48


def backward_warps(tile: int, num_warps: int, channels: int, arch: int | None = None) -> int:
    """The warps the backward launches with: ``num_warps``, doubled while a thread's pixels'
    state would exceed :func:`state_registers` (wide colors: C >= 4 at the default tile 16 and
    one warp), so that the kernel fits its register cap without spilling (``tritri check``)."""
    limit = state_registers(arch)
    while (tile * tile) // (32 * num_warps) * (3 + channels) > limit and (
        64 * num_warps <= tile * tile
    ):
        num_warps *= 2
    return num_warps


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
    num_warps: int = 1,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """Launch the backward kernel; returns gradients for edges, bary (or None), colors, opacity.

    grad_color / color: (B, C, H, W) fp32; grad_T / T: (B, H, W) fp32; the rest as in
    :func:`tritri.kernels.raster_forward.raster_forward`. ``deterministic`` needs ``bins`` built
    with an exact capacity (no overflow). ``chunk``: walk items between the early-exit checks
    (the walk order is the forward's whatever the chunk).
    """
    from tritri.binning import tile_grid

    check_raster_config(tile, chunk, num_warps)
    B, N = edges.shape[:2]
    C = colors.shape[-1]
    num_warps = backward_warps(tile, num_warps, C, target_arch(edges.device))
    per_vertex = bary is not None
    ntx, nty = tile_grid(height, width, tile)
    K, REC = record_width(per_vertex, C)
    rec = pack_triangles(edges, bary, colors, opacity)
    if deterministic:
        if bins is None:
            raise ValueError("deterministic backward needs sorted bins")
        grad = torch.zeros(bins.tri.numel(), K, dtype=torch.float32, device=edges.device)
    else:
        rec = torch.cat([rec, torch.zeros_like(rec)], dim=-1)  # record | gradient row
        grad = rec
    for list_walk, lists in walk_launches(bins, B, edges.device):
        if deterministic and not list_walk:
            continue  # exact bins never overflow: the list walk covers every image
        _launch(
            (B * ntx * nty,),
            (rec, cull, *lists, color, T, grad_color, grad_T, grad,
             N, height, width, ntx, ntx * nty),
            dict(C=C, PER_VERTEX=per_vertex, REC=REC, STRIDE=rec.shape[-1], K=K,
                 K_LOG2=(K - 1).bit_length(),
                 TILE=tile, CHUNK=chunk, WARPS=num_warps, LIST=list_walk,
                 DETERMINISTIC=deterministic,
                 num_warps=num_warps, num_stages=1, maxnreg=MAX_REGISTERS[per_vertex],
                 enable_fp_fusion=FP_FUSION),
        )  # fmt: skip
    if deterministic:
        # sum each triangle's contiguous run of partial rows in a fixed order
        prefix = torch.cat([grad.new_zeros(1, K, dtype=torch.float64), grad.double().cumsum(0)])
        first = bins.first.reshape(-1)
        grad = (prefix[first + bins.count.reshape(-1)] - prefix[first]).float().reshape(B, N, K)
    else:
        grad = rec[..., REC:]
    return unpack_gradients(grad, per_vertex, colors.shape)
