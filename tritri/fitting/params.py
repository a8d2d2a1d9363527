"""The parameters of an image fit and the three ways to start one (random, Delaunay, saved JSON).

A fit optimizes unconstrained tensors: vertex positions (normalized, like :func:`tritri.render`),
color and opacity *logits* (the rendered values are their sigmoids, so they stay in [0, 1] without
clamping) and a background color logit. :class:`TriangleParams` holds them; its ``forward()``
returns ``(verts, colors, opacity, background)`` ready for :func:`tritri.render`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tritri.fitting.numeric import LOGIT_EPS
from tritri.fitting.starts import (
    JSON_FORMAT,
    JSON_VERSION,  # noqa: F401 - re-exported (it lived here)
    VALUE_KEYS,
    check_triangle_shapes,
    delaunay_start,
    greedy_start,
    random_start,
    read_triangles_json,
    write_triangles_json,
)

__all__ = [
    "JSON_FORMAT",
    "TriangleParams",
    "init_delaunay",
    "init_greedy",
    "init_random",
    "load_triangles_json",
    "save_triangles_json",
]


def _logit(x: Tensor) -> Tensor:
    x = x.clamp(LOGIT_EPS, 1.0 - LOGIT_EPS)
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
        check_triangle_shapes(verts.shape, colors.shape, opacity.shape, background.shape)
        self.verts = nn.Parameter(verts.clone())
        self.color_logits = nn.Parameter(_logit(colors))
        self.opacity_logits = nn.Parameter(_logit(opacity))
        self.background_logits = nn.Parameter(_logit(background))

    @classmethod
    def from_values(cls, values: dict[str, np.ndarray]) -> TriangleParams:
        """From a values dict (``verts``, ``colors``, ``opacity``, ``background`` arrays) as
        :mod:`tritri.fitting.starts` and :meth:`values` give them."""
        return cls(*(torch.from_numpy(np.asarray(values[k])) for k in VALUE_KEYS))

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
    them, colors read from the target at the centers, opacity 0.5, background the target's mean
    (:func:`tritri.fitting.starts.random_start`).

    ``target`` is ``(3, H, W)`` in [0, 1].
    """
    return TriangleParams.from_values(random_start(target, n_triangles, seed=seed, size=size))


def init_greedy(
    target: Tensor, n_triangles: int, *, seed: int = 0, sigma: float = 0.5
) -> TriangleParams:
    """Triangles placed one after the other where each cuts the squared error most (geometrize's
    hill climbing, big ones first), on the target's mean color: ``tritri fit``'s default start
    (:func:`tritri.fitting.starts.greedy_start`; numba, on the CPU whatever the target's device).

    ``target`` is ``(3, H, W)`` in [0, 1]; ``sigma`` the edge softness the fit will render with.
    """
    return TriangleParams.from_values(greedy_start(target, n_triangles, seed=seed, sigma=sigma))


def init_delaunay(
    target: Tensor,
    n_triangles: int,
    *,
    seed: int = 0,
    opacity: float = 0.95,
    grow_px: float = 0.5,
) -> TriangleParams:
    """Start from the Delaunay mosaic (:func:`tritri.fitting.mosaic.delaunay_mosaic`) of ``target``
    (:func:`tritri.fitting.starts.delaunay_start`).

    Each triangle gets its mosaic color and ``opacity``; its edges are pushed outwards by
    ``grow_px`` pixels (at most half its inradius) so that neighbours overlap a little and the soft
    edges do not let the background show through the seams. Larger triangles are drawn first (at
    the bottom). If degenerate sampling gave fewer triangles than asked for, random ones fill up.
    """
    values = delaunay_start(target, n_triangles, seed=seed, opacity=opacity, grow_px=grow_px)
    return TriangleParams.from_values(values)


def save_triangles_json(
    params: TriangleParams, path: str | os.PathLike[str], *, width: int, height: int,
    sigma: float, extra: dict[str, Any] | None = None,
) -> Path:  # fmt: skip
    """Write the triangles to ``path`` (reloadable with :func:`load_triangles_json`).

    Layout: ``{"format": "tritri-triangles", "version": 1, "width", "height", "sigma",
    "background": [r, g, b], "verts": [[[x, y] x 3] x N], "colors": [[r, g, b] x N],
    "opacity": [N floats], ...extra}``; positions are normalized ([0, 1] spans the image; multiply
    by width / height for pixels), colors and opacities in [0, 1], index order = draw order
    (:func:`tritri.fitting.starts.write_triangles_json`).
    """
    return write_triangles_json(
        params.values(), path, width=width, height=height, sigma=sigma, extra=extra
    )


def load_triangles_json(path: str | os.PathLike[str]) -> tuple[TriangleParams, dict[str, Any]]:
    """Read a ``triangles.json`` written by :func:`save_triangles_json`.

    Returns the parameters and the file's other fields (width, height, sigma, ...). Raises
    ``ValueError`` with the reason when the file is not such a file
    (:func:`tritri.fitting.starts.read_triangles_json`).
    """
    values, meta = read_triangles_json(path)
    return TriangleParams.from_values(values), meta
