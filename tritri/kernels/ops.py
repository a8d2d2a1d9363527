"""``torch.library`` registration of the Triton rasterizer (forward and backward as ops).

``tritri::rasterize`` maps prepared triangles (tritri.geometry) to the premultiplied color and
final transmittance; ``tritri::rasterize_backward`` is its registered gradient. Both are
``custom_op``s with fake (meta) implementations, so ``torch.compile`` keeps them in one graph
(``fullgraph=True`` works) and AOT autograd sees the backward as an op too. They are opaque to
Inductor: binning runs torch ops between the Triton launches, and ``triton_op`` tracing is not
available under the Triton interpreter that CPU CI uses (research notes, triton_libs 4.2).

Binning happens inside each op (the backward bins again -- deterministic and cheap next to the
raster), so no data-dependent tensor crosses the op boundary and no host sync is needed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tritri.binning import bin_triangles, tile_grid
from tritri.kernels.raster_backward import raster_backward
from tritri.kernels.raster_forward import raster_forward


def _bins(edges: Tensor, cull: Tensor, height: int, width: int, tile: int, binning: str,
          pairs_per_triangle: int, deterministic: bool):  # fmt: skip
    if deterministic:
        return bin_triangles(edges, cull, height, width, tile, capacity=None)
    if binning == "scan":
        return None
    if binning != "sorted":
        raise ValueError(f"binning must be 'scan' or 'sorted', got {binning!r}")
    B, N = edges.shape[:2]
    ntx, nty = tile_grid(height, width, tile)
    capacity = max(pairs_per_triangle * B * N, B * ntx * nty)
    return bin_triangles(edges, cull, height, width, tile, capacity=capacity)


def _optional(t: Tensor) -> Tensor | None:
    return None if t.numel() == 0 else t


@torch.library.custom_op("tritri::rasterize", mutates_args=())
def rasterize(
    edges: Tensor,
    bary: Tensor,
    colors: Tensor,
    opacity: Tensor,
    cull: Tensor,
    height: int,
    width: int,
    tile: int,
    chunk: int,
    num_warps: int,
    chunk_backward: int,
    num_warps_backward: int,
    binning: str,
    pairs_per_triangle: int,
    deterministic: bool,
) -> tuple[Tensor, Tensor]:
    """Premultiplied color (B, C, H, W) and transmittance (B, H, W), fp32.

    ``bary`` is an empty tensor for flat colors. ``binning``: "scan" (every tile scans all
    triangles) or "sorted" (per-tile lists, capacity ``pairs_per_triangle * B * N``; overflowing
    images fall back to scanning). ``deterministic`` bins exactly (one host sync) and sums
    gradients in a fixed order. ``chunk_backward`` / ``num_warps_backward`` are the backward
    launch's (it replays the forward's tiles and walk; how many walk items it takes between
    early-exit checks, and its warps, are its own).
    """
    bins = _bins(edges, cull, height, width, tile, binning, pairs_per_triangle, deterministic)
    return raster_forward(
        edges, _optional(bary), colors, opacity, cull, bins, height, width, tile, chunk, num_warps
    )


@rasterize.register_fake
def _(edges, bary, colors, opacity, cull, height, width, tile, chunk, num_warps, chunk_backward,
      num_warps_backward, binning, pairs_per_triangle, deterministic):  # fmt: skip
    B, C = edges.shape[0], colors.shape[-1]
    return (
        edges.new_empty(B, C, height, width),
        edges.new_empty(B, height, width),
    )


@torch.library.custom_op("tritri::rasterize_backward", mutates_args=())
def rasterize_backward(
    grad_color: Tensor,
    grad_T: Tensor,
    color: Tensor,
    T: Tensor,
    edges: Tensor,
    bary: Tensor,
    colors: Tensor,
    opacity: Tensor,
    cull: Tensor,
    height: int,
    width: int,
    tile: int,
    chunk: int,
    num_warps: int,
    binning: str,
    pairs_per_triangle: int,
    deterministic: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients for edges, bary (empty for flat colors), colors and opacity."""
    bins = _bins(edges, cull, height, width, tile, binning, pairs_per_triangle, deterministic)
    g_edges, g_bary, g_colors, g_opacity = raster_backward(
        grad_color.contiguous(), grad_T.contiguous(), color, T, edges, _optional(bary), colors,
        opacity, cull, bins, height, width, tile, chunk, deterministic, num_warps,
    )  # fmt: skip
    return g_edges, (bary.new_empty(0) if g_bary is None else g_bary), g_colors, g_opacity


@rasterize_backward.register_fake
def _(grad_color, grad_T, color, T, edges, bary, colors, opacity, cull, *args):
    return (
        torch.empty_like(edges),
        torch.empty_like(bary),
        torch.empty_like(colors),
        torch.empty_like(opacity),
    )


def _setup_context(ctx, inputs, output):
    edges, bary, colors, opacity, cull = inputs[:5]
    height, width, tile, _, _, chunk_backward, num_warps_backward, *rest = inputs[5:]
    ctx.config = (height, width, tile, chunk_backward, num_warps_backward, *rest)
    ctx.save_for_backward(edges, bary, colors, opacity, cull, *output)


def _backward(ctx, grad_color, grad_T):
    edges, bary, colors, opacity, cull, color, T = ctx.saved_tensors
    if grad_color is None:
        grad_color = torch.zeros_like(color)
    if grad_T is None:
        grad_T = torch.zeros_like(T)
    g_edges, g_bary, g_colors, g_opacity = rasterize_backward(
        grad_color, grad_T, color, T, edges, bary, colors, opacity, cull, *ctx.config
    )
    return g_edges, g_bary if bary.numel() else None, g_colors, g_opacity, *([None] * 11)


rasterize.register_autograd(_backward, setup_context=_setup_context)
