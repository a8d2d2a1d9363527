"""Per-triangle setup shared by the tiled backends (differentiable, O(B·N)).

Every triangle is turned into affine functions of the pixel center p = (x, y) in pixel units:

- three edge functions in units of sigma, ``z_k(p) = A_k x + B_k y + C_k = e_k(p) / sigma``
  (``docs/SPEC.md`` section 2.1: e_k is the signed distance to edge k, positive inside for either
  winding), so that coverage is ``sigmoid(min_k z_k)``;
- for per-vertex colors, three barycentric functions ``beta_j(p) = A_j x + B_j y + C_j``.

The rasterizers only evaluate these planes; the gradient with respect to the vertices flows back
through this module by torch autograd. Bad triangles (non-finite values, doubled area below 1e-6
px²) are replaced by a harmless triangle with opacity 0 *before* any math, so they contribute
nothing and receive exactly zero gradient.

The module also computes conservative culling data (no gradient): the bounding box of the region
where a triangle's alpha can reach 1/255 and that region's margin in sigma units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from tritri.thresholds import ALPHA_MIN, AREA2_MIN, CULL_SLACK


@dataclass
class PreparedTriangles:
    """Rasterizer inputs for a batch of triangles (all float32, contiguous).

    edges: (B, N, 9) -- (A_k, B_k, C_k) for k = 0, 1, 2; z_k = e_k / sigma.
    bary: (B, N, 9) barycentric planes (A_j, B_j, C_j) for vertex j, or None for flat colors.
    colors: (B, N, V, C) with V = 1 (flat) or 3 (per-vertex); zero for bad triangles.
    opacity: (B, N); zero for bad triangles.
    cull: (B, N, 5) -- bounding box x0, y0, x1, y1 (pixel units) of the region a triangle can touch
        and its margin in sigma units (z >= -margin there); detached. Empty box for triangles that
        can never reach alpha 1/255.
    """

    edges: Tensor
    bary: Tensor | None
    colors: Tensor
    opacity: Tensor
    cull: Tensor


def _cross(ax: Tensor, ay: Tensor, bx: Tensor, by: Tensor) -> Tensor:
    return ax * by - ay * bx


def prepare_triangles(
    verts: Tensor,
    colors: Tensor,
    opacity: Tensor,
    height: int,
    width: int,
    sigma: float,
) -> PreparedTriangles:
    """Compute edge / barycentric planes and culling data.

    verts: (B, N, 3, 2) normalized; colors: (B, N, C) or (B, N, 3, C); opacity: (B, N).
    All float32 (callers cast); gradients flow to all three.
    """
    B, N = verts.shape[:2]
    per_vertex = colors.dim() == 4
    scale = torch.tensor([float(width), float(height)], dtype=verts.dtype, device=verts.device)
    v = verts * scale

    with torch.no_grad():
        d0 = v[..., 1, :] - v[..., 0, :]
        d1 = v[..., 2, :] - v[..., 0, :]
        area2_raw = _cross(d0[..., 0], d0[..., 1], d1[..., 0], d1[..., 1])
        valid = (
            torch.isfinite(v).flatten(2).all(-1)
            & torch.isfinite(colors).flatten(2).all(-1)
            & torch.isfinite(opacity)
            & torch.isfinite(area2_raw)
            & (area2_raw.abs() >= AREA2_MIN)
        )
    safe_tri = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=v.dtype, device=v.device)
    v = torch.where(valid[..., None, None], v, safe_tri)
    colors = torch.where(valid.view(B, N, *([1] * (colors.dim() - 2))), colors, 0.0)
    opacity = torch.where(valid, opacity, 0.0)

    a = v  # (B, N, 3, 2): a_k = v_k
    b = torch.roll(v, shifts=-1, dims=2)  # b_k = v_{k+1}
    ex = b[..., 0] - a[..., 0]  # (B, N, 3)
    ey = b[..., 1] - a[..., 1]
    # cross(b - a, p - a) = -ey * x + ex * y + (ey * ax - ex * ay)
    ra, rb, rc = -ey, ex, ey * a[..., 0] - ex * a[..., 1]
    area2 = _cross(ex[..., 0], ey[..., 0], -ex[..., 2], -ey[..., 2])  # cross(v1-v0, v2-v0)
    sign = torch.where(area2 >= 0, 1.0, -1.0).to(v.dtype)
    length = torch.sqrt(ex * ex + ey * ey)
    k = sign[..., None] / (length * sigma)
    edges = torch.stack([ra * k, rb * k, rc * k], dim=-1).reshape(B, N, 9)

    bary = None
    if per_vertex:
        # raw edge function k (unnormalized) / area2 is the barycentric of vertex (k + 2) % 3
        inv = 1.0 / area2[..., None]
        planes = torch.stack([ra * inv, rb * inv, rc * inv], dim=-1)  # (B, N, 3 edges, 3)
        bary = planes[:, :, [1, 2, 0], :].reshape(B, N, 9)
    else:
        colors = colors.unsqueeze(2)

    with torch.no_grad():
        cull = _cull_data(v, length, area2, opacity, sigma, valid)

    return PreparedTriangles(
        edges=edges.contiguous(),
        bary=None if bary is None else bary.contiguous(),
        colors=colors.contiguous(),
        opacity=opacity.contiguous(),
        cull=cull.contiguous(),
    )


def _cull_data(
    v: Tensor, length: Tensor, area2: Tensor, opacity: Tensor, sigma: float, valid: Tensor
) -> Tensor:
    """Bounding box of {p : min_k z_k(p) >= -margin} and the margin (sigma units).

    alpha = opacity * sigmoid(z) reaches 1/255 only where z >= -ln(255 * opacity - 1), so the
    margin is that (at least 0), plus slack. The region {all e_k >= -m} is the triangle offset
    outward by m = margin * sigma px: homothetic to it about the incenter with ratio (r + m) / r,
    r the inradius.
    """
    margin = torch.log(torch.clamp(opacity / ALPHA_MIN - 1.0, min=1.0)) + CULL_SLACK
    perimeter = length.sum(-1)  # (B, N)
    r = area2.abs() / perimeter
    # side opposite vertex j is edge (j + 1) % 3
    opp = length[..., [1, 2, 0]]
    incenter = (opp[..., None] * v).sum(-2) / perimeter[..., None]  # (B, N, 2)
    ratio = torch.clamp((r + margin * sigma) / r, max=1e12)
    grown = incenter[..., None, :] + (v - incenter[..., None, :]) * ratio[..., None, None]
    grown = torch.nan_to_num(grown, nan=0.0, posinf=1e30, neginf=-1e30)
    lo = grown.amin(-2) - 0.01 - 1e-6 * grown.abs().amax(-2)
    hi = grown.amax(-2) + 0.01 + 1e-6 * grown.abs().amax(-2)
    # a pair is skipped below ALPHA_MIN, so opacity == ALPHA_MIN still draws where coverage is 1
    can_draw = valid & (opacity >= ALPHA_MIN)
    inf = torch.full_like(lo, math.inf)
    lo = torch.where(can_draw[..., None], lo, inf)
    hi = torch.where(can_draw[..., None], hi, -inf)
    return torch.cat([lo, hi, margin[..., None]], dim=-1)


def zero_grad_link(
    outputs: tuple[Tensor, ...], inputs: tuple[Tensor | None, ...]
) -> tuple[Tensor, ...]:
    """``outputs`` made to depend on every ``inputs`` tensor that requires grad, with a zero
    gradient: each gets an exact zero (never NaN, whatever its values) instead of no gradient at
    all. For the paths where nothing draws and no rasterizer connects the inputs (an empty scene;
    the torch backend when no tile holds a triangle). A no-op without autograd."""
    live = [t for t in inputs if t is not None and t.requires_grad]
    if not live or not torch.is_grad_enabled():
        return outputs
    # the sum of an empty slice: zero, and its gradient (zeros) ignores the values
    zero = sum(t.reshape(-1)[:0].sum(dtype=torch.float32) for t in live)
    return tuple(o + zero for o in outputs)
