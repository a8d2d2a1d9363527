"""Shared helpers for the renderer tests: random scenes and gradient comparison."""

from __future__ import annotations

import torch

from tritri.reference import render_dense


def random_scene(
    B=2, N=8, C=3, per_vertex=False, seed=0, spread=(-0.2, 1.2), dtype=torch.float32, device="cpu"
):
    """Random triangles: verts (B, N, 3, 2), colors, opacity in [0.2, 1]."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = spread
    verts = torch.rand(B, N, 3, 2, generator=g) * (hi - lo) + lo
    shape = (B, N, 3, C) if per_vertex else (B, N, C)
    colors = torch.rand(shape, generator=g)
    opacity = torch.rand(B, N, generator=g) * 0.8 + 0.2
    return tuple(t.to(device=device, dtype=dtype) for t in (verts, colors, opacity))


def image_and_grads(fn, verts, colors, opacity, background=None, seed=1):
    """Run ``fn(verts, colors, opacity, background) -> (image, alpha)`` and backprop random weights.

    Returns image, alpha and the gradients of verts, colors, opacity (and background if a tensor).
    """
    leaves = [t.detach().clone().requires_grad_() for t in (verts, colors, opacity)]
    bg = background
    if isinstance(background, torch.Tensor):
        bg = background.detach().clone().requires_grad_()
        leaves.append(bg)
    image, alpha = fn(*leaves[:3], bg)
    g = torch.Generator().manual_seed(seed)
    w_img = torch.randn(image.shape, generator=g).to(image.device)
    w_alpha = torch.randn(alpha.shape, generator=g).to(alpha.device)
    ((image.float() * w_img).sum() + (alpha.float() * w_alpha).sum()).backward()
    return [image.detach(), alpha.detach()] + [t.grad for t in leaves]


def reference_fn(height, width, sigma):
    def fn(v, c, o, bg):
        return render_dense(v, c, o, height=height, width=width, sigma=sigma, background=bg,
                            return_alpha=True)  # fmt: skip

    return fn


def assert_close_all(ours, ref, rtol=1e-4, atol=1e-5, names=None):
    """Compare lists of tensors; gradients are held to a tolerance relative to their max."""
    names = names or [f"output {i}" for i in range(len(ref))]
    for name, a, b in zip(names, ours, ref, strict=True):
        assert a is not None and b is not None, name
        assert a.shape == b.shape, (name, a.shape, b.shape)
        assert torch.isfinite(a).all(), f"{name} has non-finite values"
        scale = b.abs().max().item()
        err = (a.double() - b.double()).abs().max().item()
        assert err <= atol + rtol * scale, f"{name}: max abs err {err:.3e} (scale {scale:.3e})"
