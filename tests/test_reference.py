"""The dense reference against hand-computed values and finite differences (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from tritri.reference import render_dense

# A triangle far larger than the image: every pixel is deep inside (coverage ~ 1).
BIG = torch.tensor([[-2.0, -2.0], [4.0, -2.0], [-2.0, 4.0]], dtype=torch.float64)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_single_pixel_by_hand():
    # One triangle, one pixel at center (0.5, 0.5); right triangle with legs along x=0 and y=0
    # shifted so distances are known: vertices (0,0), (1,0), (0,1) in a 1x1 image (pixel units).
    verts = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    colors = torch.tensor([[0.2, 0.4, 0.6]], dtype=torch.float64)
    opacity = torch.tensor([0.8], dtype=torch.float64)
    img, alpha = render_dense(verts, colors, opacity, height=1, width=1, sigma=0.5,
                              background=0.1, return_alpha=True)  # fmt: skip
    # distances from (0.5, 0.5): to y=0 edge 0.5, to hypotenuse x+y=1: 0, to x=0 edge 0.5
    a = 0.8 * _sigmoid(0.0 / 0.5)
    expected = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64) * a + (1 - a) * 0.1
    torch.testing.assert_close(img[:, 0, 0], expected)
    torch.testing.assert_close(alpha[0, 0, 0], torch.tensor(a, dtype=torch.float64))


def test_two_layers_over_and_draw_order():
    verts = torch.stack([BIG, BIG])
    colors = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    opacity = torch.tensor([0.5, 0.25], dtype=torch.float64)
    img = render_dense(verts, colors, opacity, height=2, width=2, sigma=0.01, background=0.0)
    # triangle 1 (on top, color 0) over triangle 0 (color 1): 0 * .25 + 1 * .5 * .75
    torch.testing.assert_close(img, torch.full((1, 2, 2), 0.375, dtype=torch.float64))


def test_alpha_clamp_and_early_stop():
    # Three covering layers (sigma tiny: coverage exactly 1). Top: alpha .98 -> T = .02; middle:
    # opacity 1.5 clamps to .99, T * (1 - a) = 2e-4 >= 1e-4 so it draws -> T = 2e-4; bottom: would
    # take T to 2e-6 < 1e-4, so the pixel stops before it and it is skipped.
    verts = torch.stack([BIG] * 3)
    colors = torch.tensor([[0.3], [0.6], [0.9]], dtype=torch.float64)
    opacity = torch.tensor([1.0, 1.5, 0.98], dtype=torch.float64)
    img, alpha = render_dense(verts, colors, opacity, height=1, width=1, sigma=0.01,
                              background=0.5, return_alpha=True)  # fmt: skip
    T = 0.02 * 0.01
    expected = 0.9 * 0.98 + 0.6 * 0.99 * 0.02 + T * 0.5
    torch.testing.assert_close(img[0, 0, 0], torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(alpha[0, 0, 0], torch.tensor(1 - T, dtype=torch.float64))


def test_alpha_below_threshold_is_skipped():
    verts = BIG[None]
    colors = torch.tensor([[1.0]], dtype=torch.float64)
    opacity = torch.tensor([0.5 / 255], dtype=torch.float64)
    img = render_dense(verts, colors, opacity, height=1, width=1)
    assert img.item() == 0.0


@pytest.mark.parametrize("winding", [1, -1])
def test_winding_does_not_matter(winding):
    verts = torch.tensor([[[0.1, 0.2], [0.8, 0.3], [0.4, 0.9]]], dtype=torch.float64)
    colors = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
    flipped = verts[:, [0, 2, 1]] if winding < 0 else verts
    torch.testing.assert_close(
        render_dense(verts, colors, height=6, width=5),
        render_dense(flipped, colors, height=6, width=5),
    )


def test_per_vertex_colors_at_vertices_and_fringe():
    # A large triangle: near vertex j the color is c_j; outside, the nearest edge's colors blend.
    verts = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64) * 1.0
    colors = torch.eye(3, dtype=torch.float64)[None]
    img, alpha = render_dense(verts, colors, height=40, width=40, sigma=0.3, return_alpha=True)
    premult = img / alpha.clamp(min=1e-9)
    torch.testing.assert_close(premult[:, 0, 0], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64),
                               atol=0.05, rtol=0)  # fmt: skip
    blue = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    assert (premult[:, 39, 0] - blue).abs().max() < 0.1


def test_per_vertex_colors_interpolate_barycentrically():
    """color(p) = Σ β_k c_k: at the centroid the mean of the three colors, at an edge midpoint the
    mean of its two ends, at p = (2/3, 1/6, 1/6) that blend, and outside an edge (β clamped at 0,
    renormalized) the mean of that edge's ends. The triangle (0.5, 0.5), (6.5, 0.5), (0.5, 6.5)
    px puts every one of these points on a pixel center of an 8x8 image."""
    H = W = 8
    verts = torch.tensor([[[0.5, 0.5], [6.5, 0.5], [0.5, 6.5]]], dtype=torch.float64) / 8
    g = torch.Generator().manual_seed(9)
    c = torch.rand(3, 3, generator=g, dtype=torch.float64)  # vertex k's color is c[k]
    img, alpha = render_dense(verts, c[None], height=H, width=W, sigma=0.3, return_alpha=True)
    color = img / alpha  # no background: the image is color * alpha
    expected = {  # (row, col) of the pixel center: expected color
        (2, 2): c.mean(0),  # centroid (2.5, 2.5)
        (0, 3): (c[0] + c[1]) / 2,  # midpoint of v0 v1, (3.5, 0.5)
        (3, 3): (c[1] + c[2]) / 2,  # midpoint of v1 v2, (3.5, 3.5)
        (3, 0): (c[2] + c[0]) / 2,  # midpoint of v2 v0, (0.5, 3.5)
        (1, 1): c[0] * 2 / 3 + (c[1] + c[2]) / 6,  # (1.5, 1.5)
        (4, 4): (c[1] + c[2]) / 2,  # (4.5, 4.5), outside v1 v2: β = (-1/3, 2/3, 2/3) -> (0, ½, ½)
    }
    assert alpha[0, 4, 4] > 1 / 255  # the fringe pixel is drawn
    for (i, j), want in expected.items():
        torch.testing.assert_close(color[:, i, j], want, rtol=0, atol=1e-12,
                                   msg=lambda m, p=(i, j): f"pixel {p}: {m}")  # fmt: skip


def test_gradients_against_finite_differences():
    g = torch.Generator().manual_seed(3)
    B, N, H, W = 1, 3, 5, 6
    verts = (torch.rand(B, N, 3, 2, generator=g, dtype=torch.float64) * 1.2 - 0.1).requires_grad_()
    colors = torch.rand(B, N, 3, 2, generator=g, dtype=torch.float64).requires_grad_()
    opacity = (torch.rand(B, N, generator=g, dtype=torch.float64) * 0.6 + 0.3).requires_grad_()
    background = torch.rand(B, 2, generator=g, dtype=torch.float64).requires_grad_()

    def fn(v, c, o, bg):
        img, alpha = render_dense(v, c, o, height=H, width=W, sigma=1.0, background=bg,
                                  return_alpha=True)  # fmt: skip
        return img, alpha

    assert torch.autograd.gradcheck(fn, (verts, colors, opacity, background), eps=1e-6, atol=1e-6)


def test_flat_color_gradients_against_finite_differences():
    g = torch.Generator().manual_seed(4)
    verts = (torch.rand(1, 4, 3, 2, generator=g, dtype=torch.float64)).requires_grad_()
    colors = torch.rand(1, 4, 1, generator=g, dtype=torch.float64).requires_grad_()
    opacity = (torch.rand(1, 4, generator=g, dtype=torch.float64) * 0.5 + 0.5).requires_grad_()

    def fn(v, c, o):
        return render_dense(v, c, o, height=4, width=7, sigma=0.8)

    assert torch.autograd.gradcheck(fn, (verts, colors, opacity), eps=1e-6, atol=1e-6)
