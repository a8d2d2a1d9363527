"""Heuristic default configs of the renderer's kernels (used when no tuned file entry fits).

Kernels ``raster_forward`` and ``raster_backward`` take the problem keys ``{batch, n_triangles,
height, width}`` (counts and pixels). Their config keys, read by the raster launcher:

- ``tile`` -- tile edge in pixels (a tile is ``tile x tile`` pixels);
- ``chunk`` -- triangles processed per inner step;
- ``num_warps`` / ``num_stages`` -- Triton launch options;
- ``binning`` -- ``"scan"`` (every tile scans every triangle; cheap for few triangles) or
  ``"sorted"`` (triangles binned to tiles and sorted; for many triangles);
- ``pairs_per_triangle`` -- expected (tile, triangle) pairs per triangle, sizing the binning buffer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tritri.tuning.lookup import register_default

RASTER_KERNELS = ("raster_forward", "raster_backward")
RASTER_PROBLEM_KEYS = ("batch", "n_triangles", "height", "width")
SCAN_MAX_TRIANGLES = 2048
BACKWARD_NUM_WARPS = 1
BACKWARD_CHUNK = 32
"""Up to this many triangles per image the default binning is ``"scan"``, above it ``"sorted"``."""


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
