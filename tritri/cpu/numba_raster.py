"""The compiled CPU rasterizer on numpy arrays: tile lists, threads, forward, backward (no torch).

:mod:`tritri.cpu.numba_ops` wraps these for torch autograd (``backend="numba"``); the torch-free
CPU fit (:mod:`tritri.fitting.cpu_fit`) calls them directly. The kernels are in
:mod:`tritri.cpu.numba_kernels` (read its docstring for the array layouts); the per-triangle setup
is :func:`tritri.geometry.prepare_triangles` (torch) or :mod:`tritri.fitting.cpu_geometry`.

- Binning: every (image, tile) gets the list of triangles that may touch it, in draw order (the
  conservative box + separating-axis test of :func:`tritri.binning.overlaps`), built in two
  passes (count, fill), parallel over tile rows.
- Forward: parallel over (image, tile); a tile walks its list topmost first and, per triangle,
  only the pixels of each row inside the triangle's conservative span, applying the exact
  per-pixel rules of ``docs/SPEC.md`` section 2.1 (1/255 skip, 0.99 clamp, stop before T would fall
  below 1e-4).
- Backward: replays the same walk front to back with the saved final color (the color still to
  come after a pair is ``final - prefix``; no division to reconstruct T) and writes each
  (tile, triangle) pair's gradient once to its own row; the rows are summed per triangle in list
  order, so gradients are deterministic and race-free.

Parallelism: the kernels are plain (serial, ``nogil``) numba functions over a strided range of
work items; each call is cut into two interleaved chunks per thread (chunk ``i`` takes items
``i, i + chunks, ...``, so neighbouring tiles of similar cost are spread evenly), which the calling
thread and a small thread pool take from a shared counter. Compared with numba's
``parallel=True`` this compiles about twice as fast, and a thread that the OS puts to sleep (a
busy machine) delays one chunk, not the call. Interleaved chunks, two per thread, made the
forward and backward 1.3-1.5x faster than four contiguous chunks per thread (each chunk costs a
hand-over of the GIL): 171x256, N = 256 on 2 cores, 2.1-2.5 -> 1.6 ms forward, 3.0-3.3 -> 2.2 ms
backward.

numba is imported, and the kernels compiled (or loaded from numba's on-disk cache), on the first
call only.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_TILE",
    "TileLists",
    "color_normal_equations",
    "get_num_threads",
    "numba_available",
    "raster_backward",
    "raster_forward",
    "removal_stats",
    "run_parallel",
    "set_num_threads",
]

#: Tile side in pixels. The walk visits only each triangle's span per row, so tiles cost little;
#: measured on a 2-core CPU at 171x256 with 256-1024 triangles (perf/test_perf_numba.py).
DEFAULT_TILE = 16

#: Chunks per thread of one kernel call (dynamic scheduling over uneven tiles; every chunk costs
#: a hand-over of the GIL, so few).
CHUNKS_PER_THREAD = 2

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_num_threads: int | None = None


@lru_cache(maxsize=1)
def numba_available() -> bool:
    """Whether numba can be imported here (checked once, without compiling anything)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _kernels() -> Any:
    from tritri.cpu import numba_kernels

    return numba_kernels


def set_num_threads(threads: int | None) -> None:
    """Threads of the CPU rasterizer (None: the default of :func:`get_num_threads`).

    ``tritri fit`` runs torch's own small ops on one thread (on a busy machine torch's OpenMP
    barriers stall on descheduled threads) and keeps this backend on all of them.
    """
    global _num_threads
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    _num_threads = threads


def get_num_threads() -> int:
    """Threads the CPU rasterizer uses now: as set, else ``torch.get_num_threads()`` when torch
    is loaded (so ``OMP_NUM_THREADS`` and ``torch.set_num_threads`` apply), else
    ``OMP_NUM_THREADS`` or the CPUs this process may run on."""
    if _num_threads is not None:
        return _num_threads
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        return max(1, torch.get_num_threads())
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _get_pool(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tritri-numba")
        return _pool


def _serial(kernel: Callable[..., None], n_items: int, *args: Any) -> None:
    """Run ``kernel(*args, 0, n_items, 1)`` on this thread (:func:`run_parallel`'s signature)."""
    if n_items > 0:
        kernel(*args, 0, n_items, 1)


def run_parallel(kernel: Callable[..., None], n_items: int, *args: Any) -> None:
    """Run ``kernel(*args, first, n_items, step)`` over the items [0, n_items) in ``step``
    interleaved chunks (chunk ``i`` = items i, i + step, ...), which this thread and the pool take
    from a shared counter."""
    threads = get_num_threads()
    n_chunks = min(n_items, CHUNKS_PER_THREAD * threads) if threads > 1 else 1
    if n_chunks <= 1:
        _serial(kernel, n_items, *args)
        return
    counter = itertools.count()  # next() is atomic under the GIL

    def work() -> None:
        while (i := next(counter)) < n_chunks:
            kernel(*args, i, n_items, n_chunks)

    helpers = [_get_pool(threads - 1).submit(work) for _ in range(min(threads, n_chunks) - 1)]
    work()
    for future in helpers:
        future.result()


#: Binning goes to the thread pool from this many (tile row, triangle) tests on.
PARALLEL_BINNING_WORK = 32768


class TileLists:
    """Per-(image, tile) triangle lists: ``start``, ``end`` (B * n_tiles,) and ``tri``
    (n_pairs,), int64, from ``edges`` (B, N, 9) and ``cull`` (B, N, 5)."""

    def __init__(self, edges: np.ndarray, cull: np.ndarray, height: int, width: int, tile: int):
        k = _kernels()
        B = edges.shape[0]
        rows = B * ((height + tile - 1) // tile)
        n_tiles = ((width + tile - 1) // tile) * ((height + tile - 1) // tile)
        counts = np.empty(B * n_tiles, np.int64)
        # Each tile row tests every triangle: small scenes bin faster on this thread than with a
        # hand-over to the pool (171x256, N = 256-512: 3-4 % of a CPU fit's loop).
        run = run_parallel if rows * edges.shape[1] >= PARALLEL_BINNING_WORK else _serial
        run(k.bin_count, rows, edges, cull, height, width, tile, counts)
        self.end = np.cumsum(counts)
        self.start = self.end - counts
        self.tri = np.empty(int(self.end[-1]) if counts.size else 0, np.int64)
        run(k.bin_fill, rows, edges, cull, height, width, tile, self.start, self.tri)
        self.n_tiles = n_tiles
        self.height, self.width, self.tile = height, width, tile


def raster_forward(
    edges: np.ndarray, bary: np.ndarray | None, colors: np.ndarray, opacity: np.ndarray,
    cull: np.ndarray, height: int, width: int, tile: int = DEFAULT_TILE,
) -> tuple[np.ndarray, np.ndarray, TileLists]:  # fmt: skip
    """Color (B, C, H, W) without background, transmittance (B, H, W) (float32) and the lists.

    ``edges``, ``bary`` (None: flat colors) (B, N, 9), ``colors`` (B, N, V, C), ``opacity``
    (B, N), ``cull`` (B, N, 5): contiguous float32, as :mod:`tritri.cpu.numba_kernels` documents.
    """
    k = _kernels()
    B = edges.shape[0]
    C = colors.shape[-1]
    lists = TileLists(edges, cull, height, width, tile)
    color = np.empty((B, C, height, width), np.float32)
    T = np.empty((B, height, width), np.float32)
    run_parallel(
        k.raster_forward, B * lists.n_tiles,
        edges, bary if bary is not None else edges, colors, opacity, cull, lists.start, lists.end,
        lists.tri, height, width, tile, bary is not None, color, T,
    )  # fmt: skip
    return color, T, lists


def raster_backward(
    edges: np.ndarray, bary: np.ndarray | None, colors: np.ndarray, opacity: np.ndarray,
    cull: np.ndarray, lists: TileLists, color: np.ndarray, T: np.ndarray,
    grad_color: np.ndarray, grad_T: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """Gradient sums (B, N, K) float32 of :func:`raster_forward`'s outputs, K = 19 + V * C:
    ``[..., :9]`` edges, ``[..., 9]`` opacity, ``[..., 10:19]`` bary, ``[..., 19:]`` colors."""
    k = _kernels()
    B, N = edges.shape[:2]
    V, C = colors.shape[-2:]
    K = 19 + V * C
    part = np.empty((lists.tri.size, K), np.float32)
    run_parallel(
        k.raster_backward, B * lists.n_tiles,
        edges, bary if bary is not None else edges, colors, opacity, cull, lists.start, lists.end,
        lists.tri, lists.height, lists.width, lists.tile, bary is not None, color, T,
        grad_color, grad_T, part,
    )  # fmt: skip
    return k.reduce_pairs(part, lists.tri, lists.start, lists.end, lists.n_tiles, B, N, K)


def removal_stats(
    edges: np.ndarray, colors: np.ndarray, opacity: np.ndarray, cull: np.ndarray,
    height: int, width: int, background: np.ndarray, target: np.ndarray,
    tile: int = DEFAULT_TILE, forward: tuple[np.ndarray, np.ndarray, TileLists] | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """What each flat-colored triangle is worth to an image fit: ``(cost, weight)``, (B, N).

    ``cost``: how much the sum over pixels and channels of the squared error against ``target``
    (B, C, H, W) would grow if the triangle were removed (negative: the fit is better without it);
    ``weight``: its visible weight, the sum over pixels of alpha times the transmittance in front
    of it (0 for a triangle that is transparent, off-screen or hidden). ``background`` is (B, C).
    ``forward``: :func:`raster_forward`'s result for these triangles, if the caller has it.
    """
    k = _kernels()
    B, N = edges.shape[:2]
    if forward is None:
        forward = raster_forward(edges, None, colors, opacity, cull, height, width, tile)
    color, T, lists = forward
    part = np.empty((lists.tri.size, 2), np.float32)
    run_parallel(
        k.removal_cost, B * lists.n_tiles,
        edges, colors, opacity, cull, lists.start, lists.end, lists.tri, height, width, tile,
        color, T, background, target, part,
    )  # fmt: skip
    sums = k.reduce_pairs(part, lists.tri, lists.start, lists.end, lists.n_tiles, B, N, 2)
    return sums[..., 0], sums[..., 1]


def color_normal_equations(
    edges: np.ndarray, opacity: np.ndarray, cull: np.ndarray, height: int, width: int,
    target: np.ndarray, tile: int = DEFAULT_TILE, lists: TileLists | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The normal equations of a flat-colored scene's colors: ``(gram, rhs)``, (B, N + 1, N + 1)
    and (B, N + 1, C) float64.

    Given the geometry and opacities the render is linear in the colors and the background:
    ``image[c, p] = Σ_n colors[n, c] w_n(p) + T(p) background[c]`` (``w_n`` the visible weight,
    alpha times the transmittance in front, ``T`` the final transmittance). With
    ``φ(p) = (w_0(p), ..., w_{N-1}(p), T(p))``: ``gram = Σ_p φ φᵀ`` and ``rhs = Σ_p φ target(p)``,
    so the colors (rows 0..N-1) and background (row N) ``x`` minimizing the squared error against
    ``target`` (B, C, H, W) solve ``gram x = rhs``. ``edges``, ``opacity``, ``cull`` as for
    :func:`raster_forward`; ``lists``: its tile lists for them, if the caller has them. Runs on
    the calling thread (one walk of the tiles, like a forward, plus the pixels' products)."""
    k = _kernels()
    B, N = edges.shape[:2]
    C = target.shape[1]
    if lists is None:
        lists = TileLists(edges, cull, height, width, tile)
    gram = np.zeros((B, N + 1, N + 1), np.float64)
    rhs = np.zeros((B, N + 1, C), np.float64)
    lane_math = C == 3 and tile == k.LANES  # the forward's vectorized path draws such scenes
    k.color_normal_equations(
        edges, opacity, cull, lists.start, lists.end, lists.tri, height, width, tile, lane_math,
        np.ascontiguousarray(target, np.float32), gram, rhs, 0, B * lists.n_tiles, 1,
    )  # fmt: skip
    return gram, rhs
