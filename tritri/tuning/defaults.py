"""Heuristic default configs of the renderer's kernels (used when no tuned file entry fits).

Kernels ``raster_forward`` and ``raster_backward`` take the problem keys ``{batch, n_triangles,
height, width}`` (counts and pixels). Their config keys, read by the raster launchers:

- ``tile`` -- tile edge in pixels (a tile is ``tile x tile`` pixels; the backward uses the
  forward's);
- ``chunk`` -- walk items between two checks of the tile-wide early exit;
- ``num_warps`` -- warps per tile: each thread owns ``tile² / (32 * num_warps)`` pixels;
  ``num_stages`` -- Triton launch option (no loop is pipelined);
- ``binning`` -- ``"scan"`` (every tile culls all triangles, 32 at a time) or ``"sorted"``
  (triangles binned to tiles and sorted; for many triangles); the backward uses the forward's;
- ``pairs_per_triangle`` -- expected (tile, triangle) pairs per triangle, sizing the binning buffer.

Why these defaults (no GPU has timed them; these are the static figures of ``tritri check``,
instructions per (triangle, pixel) pair in the hot loop, registers, resident warps per SM, the
same on sm_80 and sm_90 within a few percent, flat RGB colors)::

    forward   tile 16, 2 warps   ~30 instr/pair, 56-64 regs, 32 warps/SM   <- default
              tile 16, 4 warps   ~36,            48-56,      36-40
              tile  8, 1 warp    ~36,            48-53,      32
              tile 16, 1 warp    spills at the 64-register cap
    backward  tile 16, 1 warp    ~66 instr/pair, 128 regs,   16 warps/SM   <- default
              tile 16, 2 warps   ~79,            90-96,      20
              tile  8, 1 warp    ~103,           62-65,      28-32

More pixels per thread spread each triangle's loads, plane setup and (backward) row sums over
more pairs; the defaults are the leanest layouts that fit the register caps (64 forward,
128 backward) without spilling. ``chunk`` does not change the code of the hot loop; 32 checks the
early exit once per 32 triangles. Scan binning up to :data:`SCAN_MAX_TRIANGLES` triangles per
image: culling costs about one instruction per triangle per thread (32 at a time, one per lane),
less than the launches and sort of sorted binning for small scenes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tritri.tuning.lookup import register_default

RASTER_KERNELS = ("raster_forward", "raster_backward")
RASTER_PROBLEM_KEYS = ("batch", "n_triangles", "height", "width")
SCAN_MAX_TRIANGLES = 2048
"""Up to this many triangles per image the default binning is ``"scan"``, above it ``"sorted"``."""
BACKWARD_NUM_WARPS = 1
BACKWARD_CHUNK = 32


def raster_default(problem: Mapping[str, Any]) -> dict[str, Any]:
    """Default config of ``raster_forward`` for ``problem``."""
    n_triangles = problem.get("n_triangles", 0)
    return {
        "tile": 16,
        "chunk": 32,
        "num_warps": 2,
        "num_stages": 1,
        "binning": "scan" if n_triangles <= SCAN_MAX_TRIANGLES else "sorted",
        "pairs_per_triangle": 16,
    }


def raster_backward_default(problem: Mapping[str, Any]) -> dict[str, Any]:
    """Default config of ``raster_backward``: the forward's tile and binning (the backward
    replays the forward's walk), with a chunk and warps of its own."""
    return {**raster_default(problem), "chunk": BACKWARD_CHUNK, "num_warps": BACKWARD_NUM_WARPS}


register_default("raster_forward", raster_default)
register_default("raster_backward", raster_backward_default)
