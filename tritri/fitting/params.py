"""The parameters of an image fit and the three ways to start one (random, Delaunay, saved JSON).

A fit optimizes unconstrained tensors: vertex positions (normalized, like :func:`tritri.render`),
color and opacity *logits* (the rendered values are their sigmoids, so they stay in [0, 1] without
clamping) and a background color logit. :class:`TriangleParams` holds them; its ``forward()``
returns ``(verts, colors, opacity, background)`` ready for :func:`tritri.render`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "JSON_FORMAT",
    "TriangleParams",
    "init_delaunay",
    "init_random",
    "load_triangles_json",
    "save_triangles_json",
]

#: ``format`` field of a ``triangles.json``.
JSON_FORMAT = "tritri-triangles"
JSON_VERSION = 1

_EPS = 1e-3  # values are clamped to [_EPS, 1 - _EPS] before taking logits


def _logit(x: Tensor) -> Tensor:
    x = x.clamp(_EPS, 1.0 - _EPS)
    return torch.log(x) - torch.log1p(-x)


class TriangleParams(nn.Module):
    """``N`` triangles with flat colors and a background, parameterized for optimization.

    Args:
        verts: ``(N, 3, 2)`` normalized vertex positions (x right, y down, the image is [0, 1]²).
        colors: ``(N, 3)`` colors in [0, 1].
        opacity: ``(N,)`` opacities in [0, 1].
        background: ``(3,)`` background color in [0, 1].

    Parameters: ``verts`` (as given), ``color_logits``, ``opacity_logits``,
    ``background_logits``; colors, opacities and the background are the sigmoids of the logits.
    Index order is draw order: triangle ``N - 1`` is on top.
    """

    def __init__(self, verts: Tensor, colors: Tensor, opacity: Tensor, background: Tensor) -> None:
        super().__init__()
        verts = torch.as_tensor(verts, dtype=torch.float32)
        colors = torch.as_tensor(colors, dtype=torch.float32)
        opacity = torch.as_tensor(opacity, dtype=torch.float32)
        background = torch.as_tensor(background, dtype=torch.float32)
        n = verts.shape[0] if verts.dim() == 3 else -1
        if verts.dim() != 3 or tuple(verts.shape[1:]) != (3, 2):
            raise ValueError(f"verts must be (N, 3, 2), got {tuple(verts.shape)}")
        if tuple(colors.shape) != (n, 3):
            raise ValueError(f"colors must be ({n}, 3), got {tuple(colors.shape)}")
        if tuple(opacity.shape) != (n,):
            raise ValueError(f"opacity must be ({n},), got {tuple(opacity.shape)}")
        if tuple(background.shape) != (3,):
            raise ValueError(f"background must be (3,), got {tuple(background.shape)}")
        self.verts = nn.Parameter(verts.clone())
        self.color_logits = nn.Parameter(_logit(colors))
        self.opacity_logits = nn.Parameter(_logit(opacity))
        self.background_logits = nn.Parameter(_logit(background))

    @property
    def n_triangles(self) -> int:
        return int(self.verts.shape[0])

    def forward(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(verts (N, 3, 2), colors (N, 3), opacity (N,), background (3,))`` for rendering."""
        return (
            self.verts,
            torch.sigmoid(self.color_logits),
            torch.sigmoid(self.opacity_logits),
            torch.sigmoid(self.background_logits),
        )

    @torch.no_grad()
    def values(self) -> dict[str, np.ndarray]:
        """The current triangles as float64 numpy arrays: verts, colors, opacity, background."""
        verts, colors, opacity, background = self()
        return {
            "verts": verts.detach().double().cpu().numpy(),
            "colors": colors.detach().double().cpu().numpy(),
            "opacity": opacity.detach().double().cpu().numpy(),
            "background": background.detach().double().cpu().numpy(),
        }


def init_random(
    target: Tensor, n_triangles: int, *, seed: int = 0, size: float = 0.12
) -> TriangleParams:
    """Random triangles: centers uniform over the image, vertices within ``size`` (normalized) of
    them, colors read from the target at the centers, opacity 0.5, background the target's mean.

    ``target`` is ``(3, H, W)`` in [0, 1].
    """
    if n_triangles < 1:
        raise ValueError(f"n_triangles must be >= 1, got {n_triangles}")
    g = torch.Generator().manual_seed(seed)
    _, H, W = target.shape
    centers = torch.rand(n_triangles, 1, 2, generator=g)
    angles = torch.rand(n_triangles, 1, generator=g) * 2 * math.pi
    angles = angles + torch.tensor([0.0, 2.0, 4.0]) * math.pi / 3
    radius = size * (0.5 + torch.rand(n_triangles, 3, generator=g))
    offsets = torch.stack([angles.cos(), angles.sin()], dim=-1) * radius[..., None]
    verts = centers + offsets
    img = target.detach().float().cpu()
    cx = (centers[:, 0, 0] * W).long().clamp(0, W - 1)
    cy = (centers[:, 0, 1] * H).long().clamp(0, H - 1)
    colors = img[:, cy, cx].T
    opacity = torch.full((n_triangles,), 0.5)
    return TriangleParams(verts, colors, opacity, img.mean(dim=(1, 2)))


def init_delaunay(
    target: Tensor,
    n_triangles: int,
    *,
    seed: int = 0,
    opacity: float = 0.95,
    grow_px: float = 0.5,
) -> TriangleParams:
    """Start from the Delaunay mosaic (:func:`tritri.mosaic.delaunay_mosaic`) of ``target``.

    Each triangle gets its mosaic color and ``opacity``; its edges are pushed outwards by
    ``grow_px`` pixels (at most half its inradius) so that neighbours overlap a little and the soft
    edges do not let the background show through the seams. Larger triangles are drawn first (at
    the bottom). If degenerate sampling gave fewer triangles than asked for, random ones fill up.
    """
    from tritri.mosaic import delaunay_mosaic

    img = target.detach().float().cpu()
    _, H, W = img.shape
    mosaic = delaunay_mosaic(img.permute(1, 2, 0).numpy(), n_triangles, seed=seed)
    v = torch.from_numpy(mosaic.verts)  # (M, 3, 2) pixels, float64
    colors = torch.from_numpy(mosaic.colors)
    # Grow each triangle about its incenter: moving every edge out by d scales by (r + d) / r.
    a = (v[:, 1] - v[:, 2]).norm(dim=-1)
    b = (v[:, 2] - v[:, 0]).norm(dim=-1)
    c = (v[:, 0] - v[:, 1]).norm(dim=-1)
    perim = (a + b + c).clamp(min=1e-9)
    incenter = (a[:, None] * v[:, 0] + b[:, None] * v[:, 1] + c[:, None] * v[:, 2]) / perim[:, None]
    d0, d1 = v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]
    area = 0.5 * (d0[:, 0] * d1[:, 1] - d0[:, 1] * d1[:, 0]).abs()
    inradius = (2 * area / perim).clamp(min=1e-9)
    grow = torch.minimum(torch.full_like(inradius, grow_px), 0.5 * inradius)
    v = incenter[:, None] + (v - incenter[:, None]) * ((inradius + grow) / inradius)[:, None, None]
    order = torch.argsort(area, descending=True, stable=True)
    v, colors = v[order], colors[order]
    verts = (v / torch.tensor([W, H], dtype=v.dtype)).float()
    n = verts.shape[0]
    params_op = torch.full((n,), float(opacity))
    if n < n_triangles:
        extra = init_random(img, n_triangles - n, seed=seed + 1, size=0.02)
        verts = torch.cat([verts, extra.verts.detach()])
        colors = torch.cat([colors.float(), torch.sigmoid(extra.color_logits.detach())])
        params_op = torch.cat([params_op, torch.full((n_triangles - n,), 0.05)])
    elif n > n_triangles:
        verts, colors, params_op = (
            verts[:n_triangles],
            colors[:n_triangles],
            params_op[:n_triangles],
        )
    return TriangleParams(verts, colors.float(), params_op, img.mean(dim=(1, 2)))


def save_triangles_json(
    params: TriangleParams, path: str | os.PathLike[str], *, width: int, height: int,
    sigma: float, extra: dict[str, Any] | None = None,
) -> Path:  # fmt: skip
    """Write the triangles to ``path`` (reloadable with :func:`load_triangles_json`).

    Layout: ``{"format": "tritri-triangles", "version": 1, "width", "height", "sigma",
    "background": [r, g, b], "verts": [[[x, y] x 3] x N], "colors": [[r, g, b] x N],
    "opacity": [N floats], ...extra}``; positions are normalized ([0, 1] spans the image; multiply
    by width / height for pixels), colors and opacities in [0, 1], index order = draw order.
    """
    vals = params.values()
    data: dict[str, Any] = {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "width": int(width),
        "height": int(height),
        "sigma": float(sigma),
        "n_triangles": params.n_triangles,
        "background": [round(float(x), 6) for x in vals["background"]],
        "verts": np.round(vals["verts"], 6).tolist(),
        "colors": np.round(vals["colors"], 6).tolist(),
        "opacity": np.round(vals["opacity"], 6).tolist(),
    }
    if extra:
        data.update(extra)
    path = Path(path)
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")
    return path


def load_triangles_json(path: str | os.PathLike[str]) -> tuple[TriangleParams, dict[str, Any]]:
    """Read a ``triangles.json`` written by :func:`save_triangles_json`.

    Returns the parameters and the file's other fields (width, height, sigma, ...). Raises
    ``ValueError`` with the reason when the file is not such a file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON ({err.msg}, line {err.lineno})") from err
    if not isinstance(data, dict) or data.get("format") != JSON_FORMAT:
        raise ValueError(f"{path} is not a tritri triangles.json (no 'format': '{JSON_FORMAT}')")
    if data.get("version") != JSON_VERSION:
        raise ValueError(f"{path}: unsupported version {data.get('version')!r}")
    try:
        verts = torch.tensor(data["verts"], dtype=torch.float32).reshape(-1, 3, 2)
        colors = torch.tensor(data["colors"], dtype=torch.float32).reshape(-1, 3)
        opacity = torch.tensor(data["opacity"], dtype=torch.float32).reshape(-1)
        background = torch.tensor(data["background"], dtype=torch.float32).reshape(3)
        params = TriangleParams(verts, colors, opacity, background)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path}: malformed triangles ({type(err).__name__}: {err})") from err
    if params.n_triangles == 0:
        raise ValueError(f"{path} holds no triangles")
    meta = {k: v for k, v in data.items() if k not in ("verts", "colors", "opacity", "background")}
    return params, meta
