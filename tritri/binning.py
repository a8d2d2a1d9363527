"""Sort-based binning of triangles into tiles (torch ops only; no host sync with a capacity).

Each triangle emits one candidate pair per tile of its (conservative) bounding box, triangle-major;
the exact triangle-vs-tile test (separating axes: the tile's x/y axes via the box, the triangle's
three edge normals via the edge planes) drops candidates that cannot be touched. A *stable* sort by
``image * n_tiles + tile`` then gives, for every (image, tile), its triangles in draw (index) order.

Capacity: with ``capacity=None`` the exact number of candidates is read back (one host sync; fine
on the CPU, and what the deterministic mode does). With an integer capacity nothing is read back;
an image whose candidates do not all fit is flagged in ``overflow`` and the rasterizer falls back to
scanning all of that image's triangles for every tile -- slower, never wrong. No triangle is ever
dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TileBins:
    """Per-(image, tile) triangle lists.

    tri: (capacity,) int32 -- triangle index (within its image), sorted by (image, tile), then by
        triangle index; entries past the used ones are padding.
    slot: (capacity,) int64 -- for each sorted entry, its position in emission order
        (triangle-major, so each triangle's entries are contiguous there:
        ``first[b, n] .. first[b, n] + count[b, n]``).
    start, end: (B * n_tiles,) int64 -- range of each (image, tile) in ``tri``.
    overflow: (B,) bool -- the image's lists are incomplete; scan instead.
    first, count: (B, N) int64 -- each triangle's range in emission order.
    """

    tri: Tensor
    slot: Tensor
    start: Tensor
    end: Tensor
    overflow: Tensor
    first: Tensor
    count: Tensor


def tile_grid(height: int, width: int, tile: int) -> tuple[int, int]:
    """Number of tiles along x and y."""
    return (width + tile - 1) // tile, (height + tile - 1) // tile


def tile_ranges(cull: Tensor, height: int, width: int, tile: int) -> tuple[Tensor, ...]:
    """Inclusive tile ranges tx0, tx1, ty0, ty1 (B, N) of each triangle's box and its tile count."""
    ntx, nty = tile_grid(height, width, tile)
    x0, y0, x1, y1 = cull.unbind(-1)[:4]
    # pixel j has center j + 0.5: the box covers centers with x0 <= j + 0.5 <= x1
    empty = (x1 < 0.5) | (y1 < 0.5) | (x0 > width - 0.5) | (y0 > height - 0.5) | (x0 > x1)

    def to_tile(val: Tensor, limit: int) -> Tensor:
        j = torch.floor(torch.clamp(val - 0.5, min=-1.0, max=float(limit * tile)) / tile)
        return j.clamp(0, limit - 1).to(torch.int64)

    tx0, tx1 = to_tile(x0, ntx), to_tile(x1, ntx)
    ty0, ty1 = to_tile(y0, nty), to_tile(y1, nty)
    count = (tx1 - tx0 + 1) * (ty1 - ty0 + 1)
    count = torch.where(empty, 0, count)
    return tx0, tx1, ty0, ty1, count


def tile_rect(tile_x: Tensor, tile_y: Tensor, height: int, width: int, tile: int):
    """Extent of the pixel centers of a tile (clipped to the image): xmin, xmax, ymin, ymax."""
    xmin = (tile_x * tile).to(torch.float32) + 0.5
    ymin = (tile_y * tile).to(torch.float32) + 0.5
    xmax = torch.clamp(tile_x * tile + tile, max=width).to(torch.float32) - 0.5
    ymax = torch.clamp(tile_y * tile + tile, max=height).to(torch.float32) - 0.5
    return xmin, xmax, ymin, ymax


def overlaps(edges: Tensor, cull: Tensor, xmin, xmax, ymin, ymax) -> Tensor:
    """Exact (conservative) test of triangle regions against tile rectangles.

    edges: (..., 9) planes in sigma units; cull: (..., 5); the rectangle bounds broadcast with them.
    True where some pixel center of the rectangle may get alpha >= 1/255.
    """
    box = (cull[..., 0] <= xmax) & (cull[..., 2] >= xmin)
    box = box & (cull[..., 1] <= ymax) & (cull[..., 3] >= ymin)
    margin = cull[..., 4]
    ok = box
    for k in range(3):
        a, b, c = edges[..., 3 * k], edges[..., 3 * k + 1], edges[..., 3 * k + 2]
        best = c + torch.where(a > 0, a * xmax, a * xmin) + torch.where(b > 0, b * ymax, b * ymin)
        scale = a.abs() * xmax + b.abs() * ymax + c.abs()
        ok = ok & (best >= -margin - 1e-5 * scale)
    return ok


def bin_triangles(
    edges: Tensor,
    cull: Tensor,
    height: int,
    width: int,
    tile: int,
    capacity: int | None = None,
) -> TileBins:
    """Bin triangles into tiles. edges (B, N, 9), cull (B, N, 5); see :class:`TileBins`."""
    B, N = edges.shape[:2]
    device = edges.device
    ntx, nty = tile_grid(height, width, tile)
    n_tiles = ntx * nty
    if B * N == 0:  # nothing to bin: every list empty
        none = torch.zeros(B * n_tiles, dtype=torch.int64, device=device)
        return TileBins(
            tri=torch.zeros(max(int(capacity or 0), 1), dtype=torch.int32, device=device),
            slot=torch.zeros(max(int(capacity or 0), 1), dtype=torch.int64, device=device),
            start=none, end=none.clone(), overflow=torch.zeros(B, dtype=torch.bool, device=device),
            first=torch.zeros(B, N, dtype=torch.int64, device=device),
            count=torch.zeros(B, N, dtype=torch.int64, device=device),
        )  # fmt: skip
    with torch.no_grad():
        tx0, tx1, ty0, ty1, count = tile_ranges(cull, height, width, tile)
        flat_count = count.reshape(-1)
        ends = torch.cumsum(flat_count, 0)
        starts = ends - flat_count
        if capacity is None:
            capacity = int(ends[-1]) if ends.numel() else 0
        capacity = max(int(capacity), 1)

        slots = torch.arange(capacity, device=device, dtype=torch.int64)
        owner = torch.searchsorted(ends, slots, right=True)  # flat triangle index, B*N if unused
        used = owner < B * N
        owner = owner.clamp(max=B * N - 1)
        j = slots - starts[owner]
        width_t = (tx1 - tx0 + 1).clamp(min=1).reshape(-1)[owner]
        tx = tx0.reshape(-1)[owner] + j % width_t
        ty = ty0.reshape(-1)[owner] + j // width_t
        xmin, xmax, ymin, ymax = tile_rect(tx, ty, height, width, tile)
        keep = used & overlaps(edges.detach().reshape(-1, 9)[owner], cull.reshape(-1, 5)[owner],
                               xmin, xmax, ymin, ymax)  # fmt: skip
        image = owner // N
        key = torch.where(keep, image * n_tiles + ty * ntx + tx, B * n_tiles)
        sorted_key, slot = torch.sort(key, stable=True)
        tri = (owner % N)[slot].to(torch.int32)
        queries = torch.arange(B * n_tiles, device=device, dtype=sorted_key.dtype)
        start = torch.searchsorted(sorted_key, queries)
        end = torch.searchsorted(sorted_key, queries, right=True)
        last_end = ends.reshape(B, N)[:, -1] if N > 0 else torch.zeros(B, device=device)
        overflow = last_end > capacity
    return TileBins(
        tri=tri,
        slot=slot,
        start=start,
        end=end,
        overflow=overflow,
        first=starts.reshape(B, N),
        count=count,
    )
