"""Compiled CPU rasterizer (``backend="numba"``): the Triton kernels' tiles, lists and walk.

Same semantics as SPEC 2.1 and the other backends: the per-triangle setup (edge and barycentric
planes, culling data) comes from :func:`tritri.geometry.prepare_triangles`, so vertex gradients
flow through torch autograd exactly as for the Triton and torch backends; this module rasterizes
those planes, forward and backward, as one :class:`torch.autograd.Function`.

- Binning: every (image, tile) gets the list of triangles that may touch it, in draw order (the
  conservative box + separating-axis test of :func:`tritri.binning.overlaps`), built in numba in
  two passes (count, fill), parallel over tile rows.
- Forward: parallel over (image, tile); a tile walks its list topmost first and, per triangle,
  only the pixels of each row inside the triangle's conservative span, applying SPEC 2.1's exact
  per-pixel rules (1/255 skip, 0.99 clamp, stop before T would fall below 1e-4).
- Backward: replays the same walk front to back with the saved final color (the color still to
  come after a pair is ``final - prefix``; no division to reconstruct T) and writes each
  (tile, triangle) pair's gradient once to its own row; the rows are summed per triangle in list
  order, so gradients are deterministic and race-free.

Parallelism: the kernels are plain (serial, ``nogil``) numba functions over a range of work items;
each call is cut into a few chunks per thread, which the calling thread and a small thread pool
take from a shared counter. Compared with numba's ``parallel=True`` this compiles about twice as
fast, and a thread that the OS puts to sleep (a busy machine) delays one chunk, not the call.
Threads: :func:`set_num_threads`, by default ``torch.get_num_threads()`` (so ``OMP_NUM_THREADS``
and ``torch.set_num_threads`` apply).

numba is imported, and the kernels compiled (or loaded from numba's on-disk cache), on the first
call only: ``import tritri`` does neither.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tritri.geometry import PreparedTriangles

__all__ = [
    "DEFAULT_TILE",
    "get_num_threads",
    "numba_available",
    "rasterize_numba",
    "set_num_threads",
]

#: Tile side in pixels. The walk visits only each triangle's span per row, so tiles cost little;
#: measured on a 2-core CPU at 171x256 with 256-1024 triangles (perf/test_perf_numba.py).
DEFAULT_TILE = 16


@lru_cache(maxsize=1)
def numba_available() -> bool:
    """Whether numba can be imported here (checked once, without compiling anything)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _kernels() -> Any:
    from tritri import numba_kernels

    return numba_kernels


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


#: Chunks per thread of one kernel call (dynamic scheduling over uneven tiles).
CHUNKS_PER_THREAD = 4

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_num_threads: int | None = None


def set_num_threads(threads: int | None) -> None:
    """Threads of the numba backend (None: follow ``torch.get_num_threads()``, the default).

    ``tritri fit`` runs torch's own small ops on one thread (on a busy machine torch's OpenMP
    barriers stall on descheduled threads) and keeps this backend on all of them.
    """
    global _num_threads
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    _num_threads = threads


def get_num_threads() -> int:
    """Threads the numba backend uses now."""
    return _num_threads if _num_threads is not None else max(1, torch.get_num_threads())


def _get_pool(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tritri-numba")
        return _pool


def _parallel(kernel: Callable[..., None], n_items: int, *args: Any) -> None:
    """Run ``kernel(*args, start, stop)`` over [0, n_items) in chunks (this thread + the pool)."""
    threads = get_num_threads()
    n_chunks = min(n_items, CHUNKS_PER_THREAD * threads) if threads > 1 else 1
    if n_chunks <= 1:
        if n_items > 0:
            kernel(*args, 0, n_items)
        return
    bounds = np.linspace(0, n_items, n_chunks + 1).astype(np.int64).tolist()
    counter = itertools.count()  # next() is atomic under the GIL

    def work() -> None:
        while (i := next(counter)) < n_chunks:
            kernel(*args, bounds[i], bounds[i + 1])

    helpers = [_get_pool(threads - 1).submit(work) for _ in range(min(threads, n_chunks) - 1)]
    work()
    for future in helpers:
        future.result()


class _Lists:
    """Per-(image, tile) triangle lists: start, end (B * n_tiles,) and tri (n_pairs,), int64."""

    def __init__(self, edges: np.ndarray, cull: np.ndarray, height: int, width: int, tile: int):
        k = _kernels()
        B = edges.shape[0]
        rows = B * ((height + tile - 1) // tile)
        n_tiles = ((width + tile - 1) // tile) * ((height + tile - 1) // tile)
        counts = np.empty(B * n_tiles, np.int64)
        _parallel(k.bin_count, rows, edges, cull, height, width, tile, counts)
        self.end = np.cumsum(counts)
        self.start = self.end - counts
        self.tri = np.empty(int(self.end[-1]) if counts.size else 0, np.int64)
        _parallel(k.bin_fill, rows, edges, cull, height, width, tile, self.start, self.tri)
        self.n_tiles = n_tiles


class _NumbaRaster(torch.autograd.Function):
    @staticmethod
    def forward(ctx, edges, bary, colors, opacity, cull, height, width, tile):  # noqa: D102
        k = _kernels()
        B = edges.shape[0]
        C = colors.shape[-1]
        per_vertex = bary.numel() > 0
        e, c = _np(edges), _np(cull)
        bv = _np(bary) if per_vertex else e
        lists = _Lists(e, c, height, width, tile)
        color = np.empty((B, C, height, width), np.float32)
        T = np.empty((B, height, width), np.float32)
        _parallel(
            k.raster_forward, B * lists.n_tiles,
            e, bv, _np(colors), _np(opacity), c, lists.start, lists.end, lists.tri,
            height, width, tile, per_vertex, color, T,
        )  # fmt: skip
        color_t, T_t = torch.from_numpy(color), torch.from_numpy(T)
        ctx.save_for_backward(edges, bary, colors, opacity, cull, color_t, T_t)
        ctx.lists = lists
        ctx.meta = (height, width, tile, per_vertex)
        return color_t, T_t

    @staticmethod
    def backward(ctx, grad_color, grad_T):  # noqa: D102
        k = _kernels()
        edges, bary, colors, opacity, cull, color, T = ctx.saved_tensors
        height, width, tile, per_vertex = ctx.meta
        lists = ctx.lists
        B, N = edges.shape[:2]
        V, C = colors.shape[-2:]
        K = 19 + V * C
        e = _np(edges)
        part = np.empty((lists.tri.size, K), np.float32)
        _parallel(
            k.raster_backward, B * lists.n_tiles,
            e, _np(bary) if per_vertex else e, _np(colors), _np(opacity), _np(cull),
            lists.start, lists.end, lists.tri, height, width, tile, per_vertex,
            _np(color), _np(T), _np(grad_color.float()), _np(grad_T.float()), part,
        )  # fmt: skip
        sums = torch.from_numpy(
            k.reduce_pairs(part, lists.tri, lists.start, lists.end, lists.n_tiles, B, N, K)
        )
        g_edges = sums[..., :9]
        g_opacity = sums[..., 9]
        g_bary = sums[..., 10:19] if per_vertex else None
        g_colors = sums[..., 19:].reshape(B, N, V, C)
        return g_edges, g_bary, g_colors, g_opacity, None, None, None, None


def rasterize_numba(
    prep: PreparedTriangles, height: int, width: int, tile: int = DEFAULT_TILE
) -> tuple[Tensor, Tensor]:
    """Color (B, C, H, W) without background and transmittance (B, H, W), fp32, on the CPU.

    ``prep`` holds CPU float32 tensors from :func:`tritri.geometry.prepare_triangles`; gradients
    flow to its edges, bary, colors and opacity.
    """
    if prep.edges.device.type != "cpu":
        raise RuntimeError(
            f"backend='numba' runs on the CPU; the tensors are on {prep.edges.device}"
        )
    if not numba_available():
        raise RuntimeError("backend='numba' needs the numba package (pip install numba)")
    bary = prep.bary if prep.bary is not None else prep.edges.new_empty(0)
    return _NumbaRaster.apply(
        prep.edges, bary, prep.colors, prep.opacity, prep.cull, int(height), int(width), int(tile)
    )


@torch.no_grad()
def triangle_stats(
    prep: PreparedTriangles,
    height: int,
    width: int,
    background: Tensor,
    target: Tensor,
    tile: int = DEFAULT_TILE,
) -> tuple[Tensor, Tensor]:
    """What each triangle is worth to an image fit (flat colors, CPU): ``(cost, weight)``, (B, N).

    ``cost``: how much the sum over pixels and channels of the squared error against ``target``
    (B, C, H, W) would grow if the triangle were removed (negative: the fit is better without it);
    ``weight``: its visible weight, the sum over pixels of alpha times the transmittance in front
    of it (0 for a triangle that is transparent, off-screen or hidden). ``background`` is (B, C).
    """
    if prep.bary is not None:
        raise ValueError("triangle_stats supports flat colors only")
    k = _kernels()
    B, N = prep.edges.shape[:2]
    e, c = _np(prep.edges), _np(prep.cull)
    lists = _Lists(e, c, height, width, tile)
    C = prep.colors.shape[-1]
    color = np.empty((B, C, height, width), np.float32)
    T = np.empty((B, height, width), np.float32)
    colors, opacity = _np(prep.colors), _np(prep.opacity)
    n_work = B * lists.n_tiles
    _parallel(k.raster_forward, n_work, e, e, colors, opacity, c, lists.start, lists.end,
              lists.tri, height, width, tile, False, color, T)  # fmt: skip
    part = np.empty((lists.tri.size, 2), np.float32)
    _parallel(k.removal_cost, n_work, e, colors, opacity, c, lists.start, lists.end, lists.tri,
              height, width, tile, color, T, _np(background.float().expand(B, C)),
              _np(target.float()), part)  # fmt: skip
    sums = torch.from_numpy(
        k.reduce_pairs(part, lists.tri, lists.start, lists.end, lists.n_tiles, B, N, 2)
    )
    return sums[..., 0], sums[..., 1]
