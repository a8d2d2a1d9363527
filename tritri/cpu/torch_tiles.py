"""Tiled pure-PyTorch rasterizer (``backend="torch"``), for CPU users.

Same tiling and binning as the Triton path (tritri.binning): every (image, tile) gets its list of
triangles in draw order, and tiles are processed in groups whose padded [tiles, list length, pixels]
blocks stay under ``max_elements``. Each group runs under activation checkpointing when gradients
are needed, so memory grows with the (tile, triangle) pairs of one group plus the pair lists --
never with N·H·W. Autograd goes through torch.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from tritri.binning import bin_triangles, tile_grid
from tritri.geometry import PreparedTriangles, zero_grad_link
from tritri.thresholds import ALPHA_MAX, ALPHA_MIN, T_MIN

#: Upper bound on tiles x list length x pixels of one group (~4 MB per fp32 intermediate).
MAX_GROUP_ELEMENTS = 1 << 20


def _planes(planes: Tensor, px: Tensor, py: Tensor) -> Tensor:
    """Evaluate three planes (..., 9) at pixels px, py (Tg, P): returns (Tg, L, 3, P)."""
    p = planes.unflatten(-1, (3, 3))  # (Tg, L, 3, 3)
    return (
        p[..., 0, None] * px[:, None, None, :]
        + p[..., 1, None] * py[:, None, None, :]
        + p[..., 2, None]
    )


def _composite_group(
    edges: Tensor,
    bary: Tensor | None,
    colors: Tensor,
    opacity: Tensor,
    idx: Tensor,
    live: Tensor,
    px: Tensor,
    py: Tensor,
    pmask: Tensor,
) -> tuple[Tensor, Tensor]:
    """Composite tiles front to back. idx/live (Tg, L) topmost first; px/py/pmask (Tg, P).

    Returns color (Tg, C, P) without background and transmittance (Tg, P).
    """
    z = _planes(edges[idx], px, py).amin(dim=2)  # (Tg, L, P)
    w = torch.sigmoid(z)
    o = torch.where(live, opacity[idx], 0.0)
    alpha = torch.clamp(o[..., None] * w, max=ALPHA_MAX)
    alpha = torch.where((alpha >= ALPHA_MIN) & pmask[:, None, :], alpha, 0.0)
    with torch.no_grad():
        # a pixel stops before the first pair that takes T below T_MIN: a prefix survives
        keep = torch.cumprod(1.0 - alpha, dim=1) >= T_MIN
    alpha = torch.where(keep, alpha, 0.0)
    t_after = torch.cumprod(1.0 - alpha, dim=1)
    t_before = torch.cat([torch.ones_like(t_after[:, :1]), t_after[:, :-1]], dim=1)
    vis = alpha * t_before
    tri_colors = colors[idx]  # (Tg, L, V, C)
    if bary is None:
        color = torch.einsum("tlp,tlc->tcp", vis, tri_colors[:, :, 0])
    else:
        beta = _planes(bary[idx], px, py).clamp(min=0)  # (Tg, L, 3, P)
        beta = beta / beta.sum(dim=2, keepdim=True).clamp(min=1e-12)
        color = torch.einsum("tljp,tljc->tcp", vis[:, :, None] * beta, tri_colors)
    return color, t_after[:, -1]


def rasterize_torch(
    prep: PreparedTriangles,
    height: int,
    width: int,
    tile: int = 8,
    max_elements: int = MAX_GROUP_ELEMENTS,
) -> tuple[Tensor, Tensor]:
    """Color (B, C, H, W) without background and transmittance (B, H, W), fp32.

    8x8 tiles by default: on the CPU shorter, more even per-tile lists beat fewer, larger tiles
    (measured ~3-5x faster forward+backward than 16x16 at 192-256 px with 256-1024 triangles).
    """
    edges, opacity = prep.edges, prep.opacity
    B, N = edges.shape[:2]
    V, C = prep.colors.shape[-2:]
    device = edges.device
    inputs = (edges, prep.bary, prep.colors, opacity)
    if B == 0:
        color = torch.zeros(0, C, height, width, device=device)
        T = torch.ones(0, height, width, device=device)
        return zero_grad_link((color, T), inputs)
    ntx, nty = tile_grid(height, width, tile)
    n_tiles = ntx * nty
    P = tile * tile
    bins = bin_triangles(edges, prep.cull, height, width, tile, capacity=None)

    flat_edges = edges.reshape(B * N, 9)
    flat_bary = None if prep.bary is None else prep.bary.reshape(B * N, 9)
    flat_colors = prep.colors.reshape(B * N, V, C)
    flat_opacity = opacity.reshape(B * N)

    lengths = (bins.end - bins.start).cpu()
    order = torch.argsort(lengths, descending=True, stable=True)
    sorted_lengths = lengths[order].tolist()
    k = torch.arange(P, device=device)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)

    colors_out, T_out = [], []
    g0 = 0
    while g0 < len(sorted_lengths):
        L = sorted_lengths[g0]
        size = max(1, max_elements // max(1, L * P))
        group = order[g0 : g0 + size].to(device)
        g0 += group.numel()
        if L == 0:
            colors_out.append(torch.zeros(group.numel(), C, P, device=device))
            T_out.append(torch.ones(group.numel(), P, device=device))
            continue
        image, tile_id = group // n_tiles, group % n_tiles
        ty, tx = tile_id // ntx, tile_id % ntx
        row = ty[:, None] * tile + k // tile
        col = tx[:, None] * tile + k % tile
        pmask = (row < height) & (col < width)
        px, py = col.float() + 0.5, row.float() + 0.5
        steps = torch.arange(L, device=device)
        start, end = bins.start[group], bins.end[group]
        live = steps[None, :] < (end - start)[:, None]
        pos = (end[:, None] - 1 - steps[None, :]).clamp(min=0)
        idx = image[:, None] * N + bins.tri[pos].long()
        args = (flat_edges, flat_bary, flat_colors, flat_opacity, idx, live, px, py, pmask)
        if needs_grad:
            color, T = checkpoint(_composite_group, *args, use_reentrant=False)
        else:
            color, T = _composite_group(*args)
        colors_out.append(color)
        T_out.append(T)

    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    inverse = inverse.to(device)
    color = torch.cat(colors_out)[inverse]  # (B * n_tiles, C, P)
    T = torch.cat(T_out)[inverse]
    color = color.reshape(B, nty, ntx, C, tile, tile).permute(0, 3, 1, 4, 2, 5)
    color = color.reshape(B, C, nty * tile, ntx * tile)[:, :, :height, :width]
    T = T.reshape(B, nty, ntx, tile, tile).permute(0, 1, 3, 2, 4)
    T = T.reshape(B, nty * tile, ntx * tile)[:, :height, :width]
    if needs_grad and not color.requires_grad:  # no tile holds a triangle: zero gradients
        color, T = zero_grad_link((color, T), inputs)
    return color, T
