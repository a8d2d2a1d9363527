"""Pieces shared by the forward and backward raster kernels (``@triton.jit`` helpers only).

A program owns one (image, tile) and walks the tile's triangles one at a time, topmost first,
reading each triangle's packed record (:func:`pack_triangles`) with uniform 128-bit loads and
applying the sequential front-to-back rules of ``docs/SPEC.md`` section 2.1 exactly, per pixel:
a pair with alpha < 1/255 is skipped, alpha is clamped to 0.99, and a pixel stops before the first
triangle that would take T below 1e-4. ``CHUNK`` walk items (a block) are visited per trip of the
outer walk loop, one per trip of the inner (hot) loop; between blocks the program leaves as soon
as every pixel has stopped.

Pixel layout: a tile's ``TILE²`` pixels form a ``[PPT, WARPS, 32]`` block (pixels per thread x
warps x lanes; Triton lays the last axis over lanes and the middle one over warps). Thread
``t = 32 * warp + lane`` owns pixels ``k = i * 32 * WARPS + t``, ``i < PPT``: one row, columns
``COL_STEP = 32 * WARPS / TILE`` apart. So a plane ``A x + B y + C`` is evaluated once per thread
at its first pixel and stepped by ``A * COL_STEP`` to the others (one FMA per pixel), and a
backward sum over a thread's pixels weighted by y is its plain sum times y.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from tritri import thresholds

# Globals a kernel reads must be tl.constexpr *instances*: an annotated module global
# (``X: tl.constexpr = 1``) runs under the interpreter but the compiler rejects it.
ALPHA_MIN = tl.constexpr(thresholds.ALPHA_MIN)
ALPHA_MAX = tl.constexpr(thresholds.ALPHA_MAX)
T_MIN = tl.constexpr(thresholds.T_MIN)
# Whether the kernels run under the Triton interpreter (set at import, like the kernels themselves).
INTERPRETED = tl.constexpr(bool(triton.knobs.runtime.interpret))
# A pixel's skip threshold once it has stopped: no alpha (<= 0.99) reaches it.
STOPPED = tl.constexpr(2.0)
# Triangle record layout (floats): edge planes 0..8, opacity 9, barycentric planes 10..18
# (per-vertex colors only), then the V * C colors; padded to a multiple of 4 so every record starts
# 16-byte aligned and is read with 128-bit loads (load4). The backward's per-warp gradient rows use
# the same columns.
REC_OPACITY = tl.constexpr(9)
REC_BARY = tl.constexpr(10)


@triton.jit
def tile_pixels(tile, n_tiles_x, H, W, TILE: tl.constexpr, PPT: tl.constexpr,
                WARPS: tl.constexpr):  # fmt: skip
    """The tile's pixels as a [PPT, WARPS, 32] block (module docstring): each pixel's index
    row * W + col within its image (int32: an image has fewer than 2**31 pixels; offsets across
    images are int64) and whether it is in the image."""
    COL_STEP: tl.constexpr = 32 * WARPS // TILE
    tile = tile.to(tl.int32)
    i = tl.arange(0, PPT)[:, None, None]
    t = tl.arange(0, WARPS)[None, :, None] * 32 + tl.arange(0, 32)[None, None, :]
    row = (tile // n_tiles_x) * TILE + t % TILE
    col = (tile % n_tiles_x) * TILE + t // TILE + i * COL_STEP
    return row * W + col, (row < H) & (col < W)


@triton.jit
def tile_geometry(tile, n_tiles_x, H, W, TILE: tl.constexpr, PPT: tl.constexpr,
                  WARPS: tl.constexpr):  # fmt: skip
    """Where the tile's pixels are: each thread's first pixel center px0, py ([1, WARPS, 32]),
    the column offset of each of a thread's pixels dx ([PPT, 1, 1], pixels), and the tile's
    pixel-center rectangle xmin, xmax, ymin, ymax (clipped to the image)."""
    COL_STEP: tl.constexpr = 32 * WARPS // TILE
    tile = tile.to(tl.int32)
    tx = tile % n_tiles_x
    ty = tile // n_tiles_x
    t = tl.arange(0, WARPS)[None, :, None] * 32 + tl.arange(0, 32)[None, None, :]
    px0 = (tx * TILE + t // TILE).to(tl.float32) + 0.5
    py = (ty * TILE + t % TILE).to(tl.float32) + 0.5
    dx = (tl.arange(0, PPT)[:, None, None] * COL_STEP).to(tl.float32)
    xmin = (tx * TILE).to(tl.float32) + 0.5
    ymin = (ty * TILE).to(tl.float32) + 0.5
    xmax = tl.minimum(tx * TILE + TILE, W).to(tl.float32) - 0.5
    ymax = tl.minimum(ty * TILE + TILE, H).to(tl.float32) - 0.5
    return px0, py, dx, xmin, xmax, ymin, ymax


@triton.jit
def tile_work(pid, b, N, scan_ptr, tile_start_ptr, tile_end_ptr, LIST: tl.constexpr):
    """What the (image, tile) program ``pid`` walks: list end (int64), item count (int32) and
    whether it owns the image (writes its outputs).

    ``scan_ptr`` flags, per image, that its triangles are scanned (all N, culled 32 at a time)
    rather than walked from sorted lists. A ``LIST`` launch walks the tile's sorted list
    ``[start, end)`` of every image not flagged; a scan launch scans the flagged images: every
    image with ``binning="scan"``, and with sorted binning those whose lists overflowed their
    capacity. One compiled scan kernel serves both.
    """
    flagged = tl.load(scan_ptr + b) != 0
    # ``active`` is selected between int1 constants rather than being the comparison itself: the
    # interpreter types a comparison's result like its operands (int32 or int8 data once it is
    # broadcast into a block), and from triton 3.9 on it accepts only bool store masks. Compiled,
    # the select folds away.
    if LIST:
        list_end = tl.load(tile_end_ptr + pid)
        n_items = (list_end - tl.load(tile_start_ptr + pid)).to(tl.int32)
        active = tl.where(flagged, False, True)
    else:
        list_end = pid * 0
        n_items = N
        active = tl.where(flagged, True, False)
    return list_end, tl.where(active, n_items, 0), active


@triton.jit
def scan_block_hits(N, start, rec_img, cull_img, REC: tl.constexpr, xmin, xmax, ymin, ymax):
    """Which of triangles N-1-start, N-2-start, ... (32 of them) may touch the tile: bit i of the
    returned int32 mask is set for triangle N-1-start-i.

    The same exact test as binning.overlaps (the box of the region where alpha can reach 1/255,
    then each edge plane's best value over the tile's pixel-center rectangle), one triangle per
    lane; the bits are gathered with a warp reduction into a value uniform over the program.
    ``rec_img`` and ``cull_img`` point at the image's first record (rows of REC floats) and
    culling row.
    """
    lane = tl.arange(0, 32)
    j = start + lane
    ok = j < N
    n = N - 1 - j
    c5 = cull_img + n * 5
    ok = (
        ok
        & (tl.load(c5, mask=ok, other=1.0) <= xmax)
        & (tl.load(c5 + 1, mask=ok, other=1.0) <= ymax)
    )
    ok = (
        ok
        & (tl.load(c5 + 2, mask=ok, other=0.0) >= xmin)
        & (tl.load(c5 + 3, mask=ok, other=0.0) >= ymin)
    )
    margin = tl.load(c5 + 4, mask=ok, other=0.0)
    e9 = rec_img + n * REC
    for k in tl.static_range(3):
        ea = tl.load(e9 + 3 * k, mask=ok, other=0.0)
        eb = tl.load(e9 + 3 * k + 1, mask=ok, other=0.0)
        ec = tl.load(e9 + 3 * k + 2, mask=ok, other=0.0)
        best = ec + tl.where(ea > 0, ea * xmax, ea * xmin) + tl.where(eb > 0, eb * ymax, eb * ymin)
        scale = tl.abs(ea) * xmax + tl.abs(eb) * ymax + tl.abs(ec)
        ok = ok & (best >= -margin - 1e-5 * scale)
    return tl.sum(tl.where(ok, tl.full((32,), 1, tl.int32) << lane, 0), axis=0)


@triton.jit
def next_hit(mask):
    """Lowest set bit of a nonzero int32 ``mask``: its index and the mask without it."""
    low = mask & -mask
    # a power of two (bit 31: -2**31) converts to float32 exactly; its exponent is the bit index
    bit = ((low.to(tl.float32).to(tl.int32, bitcast=True) >> 23) & 255) - 127
    return bit, mask ^ low


@triton.jit
def load4(ptr):
    """Four consecutive floats at a 16-byte aligned ``ptr``, as one 128-bit read-only load.

    Triton emits a scalar load per scalar, so a record read field by field costs one load
    instruction per float; this inline PTX reads four at once. The interpreter cannot run PTX and
    reads them one by one.
    """
    if INTERPRETED:
        out = tl.load(ptr), tl.load(ptr + 1), tl.load(ptr + 2), tl.load(ptr + 3)
    else:
        out = tl.inline_asm_elementwise(
            "ld.global.nc.v4.f32 {$0, $1, $2, $3}, [$4];", "=r,=r,=r,=r,l", [ptr],
            dtype=(tl.float32, tl.float32, tl.float32, tl.float32), is_pure=True, pack=1,
        )  # fmt: skip
    return out


@triton.jit
def load_record(rec, REC: tl.constexpr):
    """The REC floats of a triangle record (a multiple of 4, 16-byte aligned) as a tuple."""
    vals = ()
    for q in tl.static_range(REC // 4):
        a, b, c, d = load4(rec + 4 * q)
        vals = vals + (a, b, c, d)
    return vals


@triton.jit
def plane(A, B, C, px, py, dx, STEPPED: tl.constexpr):
    """Plane ``A x + B y + C`` at every pixel, [PPT, WARPS, 32].

    ``py`` is per thread ([1, WARPS, 32]). Not ``STEPPED``: ``px`` holds every pixel's x (one FMA
    per pixel, PPT more registers; ``dx`` unused). ``STEPPED``: ``px`` is each thread's first x
    and ``dx`` the pixels' compile-time offsets (two FMAs per pixel, offsets as immediates).
    """
    zy = tl.fma(B, py, C)  # once per thread
    if STEPPED:
        z = tl.fma(A, dx, tl.fma(A, px, zy))
    else:
        z = tl.fma(A, px, zy)
    return z


@triton.jit
def planes_at(v, k: tl.constexpr, px, py, dx, STEPPED: tl.constexpr):
    """The three planes whose 9 coefficients start at column ``k`` of record values ``v``, at
    the pixels (:func:`plane`)."""
    z0 = plane(v[k], v[k + 1], v[k + 2], px, py, dx, STEPPED)
    z1 = plane(v[k + 3], v[k + 4], v[k + 5], px, py, dx, STEPPED)
    z2 = plane(v[k + 6], v[k + 7], v[k + 8], px, py, dx, STEPPED)
    return z0, z1, z2


@triton.jit
def reciprocal(x):
    """1 / x for finite x > 0 as rsqrt(x)² (two instructions instead of a guarded division;
    relative error ~3e-7)."""
    r = tl.math.rsqrt(x)
    return r * r


@triton.jit
def sigmoid(z):
    """1 / (1 + e^-z) from exp2 and :func:`reciprocal` (no denormal or range guards; exact 0 and 1
    in the tails, since 1 + e^-z >= 1)."""
    return reciprocal(1.0 + tl.math.exp2(z * -1.4426950408889634))


@triton.jit
def composite_step(z0, z1, z2, o, T, thr):
    """One triangle against the pixels' running state (``docs/SPEC.md`` section 2.1, per pixel).

    ``thr`` is each pixel's skip threshold: 1/255 while it runs, :data:`STOPPED` once it has
    stopped, so one comparison applies both rules. Returns the edge that sets the coverage (the
    first minimal z_q: 0, 1 or 2), coverage w, o*w, alpha a, 1 - a, ``take`` (the pair
    contributes), the transmittance after the pair (T where it does not contribute) and the
    updated thresholds.
    """
    zmin = tl.minimum(tl.minimum(z0, z1), z2)
    edge = tl.where(z0 == zmin, 0, tl.where(z1 == zmin, 1, 2))
    w = sigmoid(zmin)
    ow = o * w
    a = tl.minimum(ow, ALPHA_MAX)
    one_minus = 1.0 - a
    t_next = T * one_minus
    take = a >= thr
    stop = take & (t_next < T_MIN)
    take = take & (t_next >= T_MIN)
    thr = tl.where(stop, STOPPED, thr)
    return edge, w, ow, a, one_minus, take, tl.where(take, t_next, T), thr


@triton.jit
def start_state(pmask):
    """T = 1 and the skip thresholds of a fresh walk (pixels outside the image start stopped)."""
    T = tl.where(pmask, 1.0, 1.0)
    thr = tl.where(pmask, ALPHA_MIN, STOPPED)
    return T, thr


@triton.jit
def all_stopped(thr):
    """Whether every pixel of the tile has stopped (a tile-wide reduction: call it sparingly)."""
    return tl.min(tl.min(tl.min(thr, axis=2), axis=1), axis=0) == STOPPED


@triton.jit
def clamped_barycentrics(v, px, py, dx, STEPPED: tl.constexpr):
    """Barycentrics clamped at 0, r_j = max(beta_j, 0), and 1 / their sum
    (``docs/SPEC.md`` section 2.1), from the record values ``v``."""
    b0, b1, b2 = planes_at(v, REC_BARY, px, py, dx, STEPPED)
    r0 = tl.maximum(b0, 0.0)
    r1 = tl.maximum(b1, 0.0)
    r2 = tl.maximum(b2, 0.0)
    inv_total = reciprocal(tl.maximum(r0 + r1 + r2, 1e-12))
    return r0, r1, r2, inv_total


@triton.jit
def vertex_color(v, j: tl.constexpr, C: tl.constexpr, PER_VERTEX: tl.constexpr):
    """Color of vertex j (0 for flat colors) from record values ``v``, as a tuple of C scalars.
    Channels are tuples, not a padded [next_pow2(C)] block, so C = 3 costs three of everything,
    not four."""
    K_COLORS: tl.constexpr = 19 if PER_VERTEX else 10
    out = ()
    for c in tl.static_range(C):
        out = out + (v[K_COLORS + j * C + c],)
    return out


@triton.jit
def channel_dot(color, g):
    """Sum over channels of color[c] * g[c] (a tuple of scalars and a tuple of blocks)."""
    acc = color[0] * g[0]
    for c in tl.static_range(1, len(g)):
        acc = tl.fma(color[c], g[c], acc)
    return acc


def check_raster_config(tile: int, chunk: int, num_warps: int) -> None:
    """Raise ValueError unless a raster launch config fits the pixel layout (module docstring):
    ``tile`` and ``num_warps`` powers of two with ``tile <= 32 * num_warps <= tile²``, chunk >= 1.
    """

    def pow2(v: int) -> bool:
        return v >= 1 and v & (v - 1) == 0

    threads = 32 * num_warps
    if not (pow2(tile) and pow2(num_warps) and tile <= threads <= tile * tile and chunk >= 1):
        raise ValueError(
            f"raster config tile={tile}, chunk={chunk}, num_warps={num_warps} does not fit: need "
            "tile and num_warps powers of two with tile <= 32 * num_warps <= tile², chunk >= 1"
        )


def pairs_per_trip(tile: int, num_warps: int) -> int:
    """(triangle, pixel) pairs one thread handles per trip through a raster kernel's hot loop
    (the inner walk loop visits one triangle per trip): its pixels."""
    return tile * tile // (32 * num_warps)


def record_width(per_vertex: bool, channels: int) -> tuple[int, int]:
    """(K, REC): the columns a triangle record uses (edges 9, opacity 1, bary 9 for per-vertex
    colors, then V * C colors) and its width, K rounded up to a multiple of 4."""
    k = 10 + (9 + 3 * channels if per_vertex else channels)
    return k, (k + 3) // 4 * 4


def pack_triangles(edges: Tensor, bary: Tensor | None, colors: Tensor, opacity: Tensor) -> Tensor:
    """The kernels' per-triangle records (B, N, REC) fp32 from the prepared planes (B, N, 9),
    colors (B, N, V, C) and opacity (B, N): one 16-byte aligned row per triangle."""
    B, N = edges.shape[:2]
    k, rec = record_width(bary is not None, colors.shape[-1])
    parts = [edges, opacity[..., None]] + ([] if bary is None else [bary])
    parts += [colors.reshape(B, N, -1), edges.new_zeros(B, N, rec - k)]
    return torch.cat(parts, dim=-1)


def unpack_gradients(g: Tensor, per_vertex: bool, colors_shape: torch.Size):
    """Split gradient rows (B, N, >= K) laid out like the records into (edges (B, N, 9), bary
    (B, N, 9) or None, colors ``colors_shape``, opacity (B, N)), each a contiguous copy.

    Copies, never views: with B = N = 1 every slice of ``g`` counts as contiguous, so
    ``.contiguous()`` would return views of one buffer, and the ``tritri::rasterize_backward``
    custom op may not return outputs that alias each other (torch raises)."""
    first_color = 19 if per_vertex else 10
    n_colors = colors_shape[-2] * colors_shape[-1]

    def copy(t: Tensor) -> Tensor:
        return t.clone(memory_format=torch.contiguous_format)

    return (
        copy(g[..., :9]),
        copy(g[..., 10:19]) if per_vertex else None,
        copy(g[..., first_color : first_color + n_colors].reshape(colors_shape)),
        copy(g[..., 9]),
    )


def walk_launches(bins, batch: int, device) -> list[tuple[bool, tuple[Tensor, ...]]]:
    """The launches of a raster pass: (list walk?, (tri, start, end, scan flags, slot)).

    Without bins one scan launch with every image flagged. With sorted bins a list launch, then a
    scan launch of the images whose lists overflowed (``bins.overflow``). The scan launch gets
    placeholder lists in both cases, so it is one compiled kernel.
    """
    dummy = torch.zeros(1, dtype=torch.int64, device=device)
    if bins is None:
        return [(False, (dummy, dummy, dummy, torch.ones(batch, dtype=torch.bool, device=device),
                         dummy))]  # fmt: skip
    return [
        (True, (bins.tri, bins.start, bins.end, bins.overflow, bins.slot)),
        (False, (dummy, dummy, dummy, bins.overflow, dummy)),
    ]
