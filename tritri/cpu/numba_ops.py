"""Compiled CPU rasterizer (``backend="numba"``): the Triton kernels' tiles, lists and walk.

Same semantics as ``docs/SPEC.md`` section 2.1 and the other backends: the per-triangle setup
(edge and barycentric planes, culling data) comes from :func:`tritri.geometry.prepare_triangles`,
so vertex gradients flow through torch autograd exactly as for the Triton and torch backends; this
module rasterizes those planes, forward and backward, as one :class:`torch.autograd.Function` over
the numpy-level rasterizer of :mod:`tritri.cpu.numba_raster` (binning, walk, threads: read its
docstring).

numba is imported, and the kernels compiled (or loaded from numba's on-disk cache), on the first
call only: ``import tritri`` does neither.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from tritri.cpu.numba_raster import (
    DEFAULT_TILE,
    numba_available,
    raster_backward,
    raster_forward,
    removal_stats,
)
from tritri.geometry import PreparedTriangles

__all__ = ["rasterize_numba", "triangle_stats"]


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


class _NumbaRaster(torch.autograd.Function):
    @staticmethod
    def forward(ctx, edges, bary, colors, opacity, cull, height, width, tile):  # noqa: D102
        per_vertex = bary.numel() > 0
        color, T, lists = raster_forward(
            _np(edges), _np(bary) if per_vertex else None, _np(colors), _np(opacity), _np(cull),
            height, width, tile,
        )  # fmt: skip
        color_t, T_t = torch.from_numpy(color), torch.from_numpy(T)
        ctx.save_for_backward(edges, bary, colors, opacity, cull, color_t, T_t)
        ctx.lists = lists
        ctx.per_vertex = per_vertex
        return color_t, T_t

    @staticmethod
    def backward(ctx, grad_color, grad_T):  # noqa: D102
        edges, bary, colors, opacity, cull, color, T = ctx.saved_tensors
        per_vertex = ctx.per_vertex
        B, N = edges.shape[:2]
        V, C = colors.shape[-2:]
        sums = torch.from_numpy(
            raster_backward(
                _np(edges), _np(bary) if per_vertex else None, _np(colors), _np(opacity),
                _np(cull), ctx.lists, _np(color), _np(T), _np(grad_color.float()),
                _np(grad_T.float()),
            )
        )  # fmt: skip
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
    """What each triangle is worth to an image fit (flat colors, CPU): ``(cost, weight)``, (B, N),
    as :func:`tritri.cpu.numba_raster.removal_stats` defines them; ``background`` is (B, C),
    ``target`` (B, C, H, W)."""
    if prep.bary is not None:
        raise ValueError("triangle_stats supports flat colors only")
    B, C = prep.edges.shape[0], prep.colors.shape[-1]
    cost, weight = removal_stats(
        _np(prep.edges), _np(prep.colors), _np(prep.opacity), _np(prep.cull), height, width,
        _np(background.float().expand(B, C)), _np(target.float()), tile,
    )  # fmt: skip
    return torch.from_numpy(cost), torch.from_numpy(weight)
