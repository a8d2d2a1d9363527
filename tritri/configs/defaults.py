"""Every kernel's heuristic default config (used when no tuned file entry fits), registered here
and nowhere else: the rasterizer's (``raster_forward``, ``raster_backward``) and the losses'
(``loss_level_forward``, ``loss_level_backward``, ``log_sum``). Importing :mod:`tritri.configs`
registers them all, so :func:`tritri.tuning.get_config` knows every kernel without importing a
kernel module (or triton).

Raster kernels
--------------

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

from tritri.configs.lookup import register_default

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


def _next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


# ---------------------------------------------------------------------------------------------
# loss kernels (tritri.kernels.loss_levels, tritri.kernels.log_sum)

LEVEL_KERNELS = ("loss_level_forward", "loss_level_backward")
LEVEL_PROBLEM_KEYS = ("batch", "channels", "pixels")
#: Largest channel count handled as one register tile (every VGG16 level has C <= 512).
LEVEL_MAX_SINGLE_TILE_C = 512
#: Target elements per (C, BLOCK_P) tile of one operand, and per thread (see level_default).
LEVEL_TILE_ELEMS = 4096
LEVEL_THREAD_ELEMS = 16


def level_default(problem: Mapping[str, Any]) -> dict[str, Any]:
    """Default config of ``loss_level_forward`` / ``loss_level_backward``.

    Problem keys: ``batch``, ``channels`` (C), ``pixels`` (H*W). Config keys: ``BLOCK_C`` (channels
    per tile; ``>= C`` means one register tile, each element loaded once), ``BLOCK_P`` (pixels per
    program), ``num_warps``. About 4096 elements per operand tile, at least 16 pixels (64-byte rows
    in NCHW), at most 256, and 2 to 8 warps, 16 elements of each operand per thread where that
    fits (C = 512 has 32: its 16-pixel floor makes an 8192-element tile, and 16 warps would cap
    ptxas at 128 registers).

    Why 16 per thread (``tritri check``, triton 3.7-3.9, sm_80 / sm_90): the backward holds F, T
    and the gradient tile at once; at 32 elements per thread (the former 8192-element tiles) it
    took 128-222 registers and ptxas squeezed perceptual + LPIPS at C = 64 to 128 to keep two
    blocks resident, spilling 8 B with triton 3.8 on sm_90; at 16 it takes 60-80 (C = 64 to 1024)
    and the forward 64 instead of ~100, twice the resident warps.
    """
    c = int(problem["channels"])
    p = int(problem["pixels"])
    block_c = _next_pow2(c) if c <= LEVEL_MAX_SINGLE_TILE_C else 64
    block_p = max(16, min(256, LEVEL_TILE_ELEMS // block_c))
    block_p = max(16, min(block_p, _next_pow2(p)))
    tile = block_c * block_p
    num_warps = max(2, min(8, tile // (32 * LEVEL_THREAD_ELEMS)))
    return {"BLOCK_C": block_c, "BLOCK_P": block_p, "num_warps": num_warps}


LOG_SUM_KERNEL = "log_sum"
LOG_SUM_PROBLEM_KEYS = ("batch", "n_losses")


def log_sum_default(problem: Mapping[str, Any]) -> dict[str, Any]:
    """Default config of ``log_sum``; problem keys ``batch`` (B), ``n_losses`` (K). Config keys:
    ``BLOCK_B`` (rows per program), ``num_warps``.

    At most 2048 elements per program, 16 per thread with 4 warps: 4096 (32 per thread) took 255
    registers and spilled on sm_100 / sm_120 (``tritri check``).
    """
    b = int(problem["batch"])
    k = int(problem["n_losses"])
    block_k = _next_pow2(max(k, 1))
    block_b = max(1, min(_next_pow2(max(b, 1)), max(1, 2048 // block_k)))
    return {"BLOCK_B": block_b, "num_warps": 4 if block_b * block_k >= 1024 else 1}


register_default("raster_forward", raster_default)
register_default("raster_backward", raster_backward_default)
for _kernel in LEVEL_KERNELS:
    register_default(_kernel, level_default)
register_default(LOG_SUM_KERNEL, log_sum_default)
