"""Pure-PyTorch ground truth.

:func:`render_dense` implements ``docs/SPEC.md`` section 2.1 literally: every triangle is
evaluated at every pixel (an N·H·W computation), composited front to back in a Python loop. It is
slow and memory hungry on purpose -- it shares no code with the tiled backends, so the tests can
hold them to it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tritri.thresholds import ALPHA_MAX, ALPHA_MIN, AREA2_MIN, T_MIN

__all__ = ["ALPHA_MAX", "ALPHA_MIN", "AREA2_MIN", "T_MIN", "render_dense"]


def _cross(ax: Tensor, ay: Tensor, bx: Tensor, by: Tensor) -> Tensor:
    return ax * by - ay * bx


def render_dense(
    verts: Tensor,
    colors: Tensor,
    opacity: Tensor | None = None,
    *,
    height: int,
    width: int,
    sigma: float = 0.5,
    background: Tensor | float | None = None,
    return_alpha: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Render triangles exactly as ``docs/SPEC.md`` section 2.1 states, with no tiling or culling.

    Shapes follow :func:`tritri.render`: ``verts`` (B, N, 3, 2) or (N, 3, 2) in normalized
    coordinates, ``colors`` (B, N, C) flat or (B, N, 3, C) per-vertex, ``opacity`` (B, N) or None,
    ``background`` None / float / (C,) / (B, C). Returns (B, C, H, W) (and (B, 1, H, W) alpha).

    Math runs in float64 when any input is float64 (for finite-difference tests), else float32;
    the output has the dtype of ``colors``. Inputs are not validated beyond what the math needs:
    this is a test oracle, not a public entry point.
    """
    unbatched = verts.dim() == 3
    if unbatched:
        verts = verts.unsqueeze(0)
        colors = colors.unsqueeze(0)
        opacity = None if opacity is None else opacity.unsqueeze(0)
        if isinstance(background, Tensor) and background.dim() == 2:
            raise ValueError("background (B, C) needs batched input")
    B, N = verts.shape[:2]
    per_vertex = colors.dim() == 4
    C = colors.shape[-1]
    out_dtype = colors.dtype
    dtype = torch.float64 if torch.float64 in (verts.dtype, colors.dtype) else torch.float32
    device = verts.device

    verts = verts.to(dtype)
    colors = colors.to(dtype)
    opacity = torch.ones(B, N, dtype=dtype, device=device) if opacity is None else opacity.to(dtype)

    scale = torch.tensor([width, height], dtype=dtype, device=device)
    v = verts * scale  # pixel units
    v0, v1, v2 = v[..., 0, :], v[..., 1, :], v[..., 2, :]
    area2 = _cross(v1[..., 0] - v0[..., 0], v1[..., 1] - v0[..., 1],
                   v2[..., 0] - v0[..., 0], v2[..., 1] - v0[..., 1])  # fmt: skip
    valid = (
        torch.isfinite(verts).flatten(2).all(-1)
        & torch.isfinite(colors).flatten(2).all(-1)
        & torch.isfinite(opacity)
        & torch.isfinite(area2)
        & (area2.abs() >= AREA2_MIN)
    )
    # Replace bad triangles by a harmless one *before* any math, so no NaN reaches a gradient.
    safe_tri = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=dtype, device=device)
    v = torch.where(valid[..., None, None], v, safe_tri)
    colors = torch.where(valid.view(B, N, *([1] * (colors.dim() - 2))), colors, 0.0)
    opacity = torch.where(valid, opacity, 0.0)
    v0, v1, v2 = v[..., 0, :], v[..., 1, :], v[..., 2, :]
    area2 = _cross(v1[..., 0] - v0[..., 0], v1[..., 1] - v0[..., 1],
                   v2[..., 0] - v0[..., 0], v2[..., 1] - v0[..., 1])  # fmt: skip
    sign = torch.where(area2 >= 0, 1.0, -1.0).to(dtype)

    py, px = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device) + 0.5,
        torch.arange(width, dtype=dtype, device=device) + 0.5,
        indexing="ij",
    )  # (H, W)

    # zero, but through every input (an empty slice of each): with no triangle to draw (N = 0 or
    # B = 0) the inputs still get their zero gradients, as the contract says
    zero = sum(t.reshape(-1)[:0].sum() for t in (v, colors, opacity))
    T = torch.ones(B, height, width, dtype=dtype, device=device) + zero
    image = torch.zeros(B, C, height, width, dtype=dtype, device=device)
    done = torch.zeros(B, height, width, dtype=torch.bool, device=device)

    for n in range(N - 1, -1, -1):
        corners = [v[:, n, k, :] for k in range(3)]  # each (B, 2)
        raw = []  # cross(b - a, p - a) per edge k, (B, H, W)
        dist = []
        for k in range(3):
            a, b = corners[k], corners[(k + 1) % 3]
            ex = (b[:, 0] - a[:, 0])[:, None, None]
            ey = (b[:, 1] - a[:, 1])[:, None, None]
            cr = _cross(ex, ey, px - a[:, 0, None, None], py - a[:, 1, None, None])
            raw.append(cr)
            dist.append(sign[:, n, None, None] * cr / torch.sqrt(ex * ex + ey * ey))
        d = torch.minimum(torch.minimum(dist[0], dist[1]), dist[2])
        w = torch.sigmoid(d / sigma)
        alpha = torch.clamp(opacity[:, n, None, None] * w, max=ALPHA_MAX)
        alpha = torch.where(alpha >= ALPHA_MIN, alpha, 0.0)
        done = done | ((alpha > 0) & (T * (1 - alpha) < T_MIN))
        alpha = torch.where(done, 0.0, alpha)

        if per_vertex:
            # barycentric of vertex (k + 2) % 3 is cross(v_{k+1} - v_k, p - v_k) / area2
            area = area2[:, n, None, None]
            bary = [raw[1] / area, raw[2] / area, raw[0] / area]
            bary = [b.clamp(min=0) for b in bary]
            total = bary[0] + bary[1] + bary[2]
            color = sum(
                (bary[j] / total)[:, None] * colors[:, n, j, :, None, None] for j in range(3)
            )  # (B, C, H, W)
        else:
            color = colors[:, n, :, None, None]
        image = image + color * (alpha * T)[:, None]
        T = T * (1 - alpha)

    if background is not None:
        bg = torch.as_tensor(background, dtype=dtype, device=device)
        if bg.dim() == 0:
            bg = bg.expand(C)
        bg = bg.expand(B, C) if bg.dim() == 1 else bg
        image = image + T[:, None] * bg[:, :, None, None]
    image = image.to(out_dtype)
    alpha_out = (1 - T)[:, None].to(out_dtype)
    if unbatched:
        image, alpha_out = image[0], alpha_out[0]
    return (image, alpha_out) if return_alpha else image
