"""``triangles.svg`` reproduces the render's soft edges: rasterized, it is within 1 dB of final.png.

Rasterized with resvg (``resvg-py``, a self-contained wheel in the ``test`` extra). A manual check
in a browser: ``chromium --headless --screenshot=svg.png --window-size=W,H triangles.svg``.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

import tritri
from tritri.fitting import fit_triangles, init_delaunay, load_image
from tritri.fitting.export import save_svg, to_uint8

resvg_py = pytest.importorskip("resvg_py")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10.0 * math.log10(255.0**2 / mse)


def _raster(path) -> np.ndarray:
    png = bytes(resvg_py.svg_to_bytes(svg_path=str(path)))
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.fixture(scope="module")
def fitted():
    target = load_image(None, 64)
    params = init_delaunay(target, 160)
    result = fit_triangles(params, target, steps=60, keep=80, backend="numba", log_every=0)
    return target, params, result


def test_soft_svg_is_within_1_db_of_the_render(fitted, tmp_path):
    target, params, result = fitted
    _, H, W = target.shape
    vals = params.values()
    goal = to_uint8(target)
    final = to_uint8(result.image)
    soft = save_svg(vals["verts"], vals["colors"], vals["opacity"], vals["background"],
                    tmp_path / "soft.svg", width=W, height=H, sigma=0.5)  # fmt: skip
    hard = save_svg(vals["verts"], vals["colors"], vals["opacity"], vals["background"],
                    tmp_path / "hard.svg", width=W, height=H)  # fmt: skip
    p_final = _psnr(final, goal)
    p_soft = _psnr(_raster(soft), goal)
    p_hard = _psnr(_raster(hard), goal)
    assert p_soft > p_final - 1.0, (p_soft, p_final)
    assert p_soft > p_hard  # the soft edges are what brings it there


def test_soft_svg_of_thin_and_tiny_triangles():
    """A sliver and a tiny triangle render as soft blobs far larger than their polygons."""
    verts = torch.tensor([[[0.1, 0.5], [0.9, 0.52], [0.5, 0.515]],
                          [[0.3, 0.2], [0.32, 0.2], [0.31, 0.22]],
                          [[0.1, 0.1], [0.8, 0.3], [0.3, 0.9]]])  # fmt: skip
    colors = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.2, 0.9]])
    opacity = torch.tensor([0.9, 0.8, 0.5])
    bg = torch.tensor([0.3, 0.3, 0.3])
    image = tritri.render(verts, colors, opacity, height=48, width=48, background=bg,
                          backend="numba")  # fmt: skip
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = save_svg(verts, colors, opacity, bg, Path(tmp) / "t.svg", width=48, height=48,
                        sigma=0.5)  # fmt: skip
        svg = _raster(path)
    assert _psnr(svg, to_uint8(image)) > 38
