"""Shared helpers for the renderer tests: random scenes, and the comparison with the reference.

The comparison holds a float32 renderer to the float64 reference (the truth up to float64
rounding), so its tolerance has to cover float32 rounding and nothing else. Two things make a
float32 result legitimately differ by more than a fixed tolerance, and both are measured on the
scene in float64 (:func:`float32_allowance`), never guessed from the result:

- a pixel whose value sits (within float32 rounding) on one of the thresholds or kinks of
  ``docs/SPEC.md`` section 2.1 -- alpha at 1/255 or 0.99, the stop rule T·(1 − a) at 1e-4, two
  edges tied for the minimum, a clamped barycentric at 0 -- may fall on the other side in
  float32: the image jumps there (1/255, stop rule) or the gradient picks the other one-sided
  derivative (clamps, min). Such pixels are left out: their image values are not compared and
  they carry no weight in the backward pass.
- a sliver (doubled area below :data:`SLIVER_AREA2` px²) has barycentric and edge planes whose
  float32 rounding is amplified by about 1 / area: its vertex gradients and the pixels it
  covers get a tolerance scaled by ``SLIVER_AREA2 / area2``.

Every other pixel and gradient is held to the fixed tolerance. Swept over 1000 seeds of the
per-vertex scene of tests/test_render.py (the torch backend), this passes every seed; the plain
comparison failed 9 of them (the investigation of issue 12).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tritri.reference import render_dense
from tritri.thresholds import ALPHA_MAX, ALPHA_MIN, T_MIN

#: Doubled area (px²) under which a triangle counts as a sliver for the float32 tolerance.
SLIVER_AREA2 = 2.0
#: Relative closeness to the multiplicative thresholds (1/255, 0.99, 1e-4) that counts as "on" one.
NEAR_REL = 1e-4
#: Closeness (sigma units for edge ties, barycentric units for the clamp) that counts as a kink.
NEAR_PLANE = 1e-4


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


def image_and_grads(fn, verts, colors, opacity, background=None, seed=1, skip=None):
    """Run ``fn(verts, colors, opacity, background) -> (image, alpha)`` and backprop random weights.

    ``skip`` (B, H, W) bool: pixels that get weight 0 (left out of every gradient).
    Returns image, alpha and the gradients of verts, colors, opacity (and background if a tensor).
    """
    leaves = [t.detach().clone().requires_grad_() for t in (verts, colors, opacity)]
    bg = background
    if isinstance(background, torch.Tensor):
        bg = background.detach().clone().requires_grad_()
        leaves.append(bg)
    image, alpha = fn(*leaves[:3], bg)
    g = torch.Generator().manual_seed(seed)
    w_img = torch.randn(image.shape, generator=g, dtype=torch.float64)
    w_alpha = torch.randn(alpha.shape, generator=g, dtype=torch.float64)
    if skip is not None:
        keep = (~skip.cpu())[:, None]
        w_img, w_alpha = w_img * keep, w_alpha * keep
    w_img, w_alpha = (w.to(image.device, image.dtype) for w in (w_img, w_alpha))
    ((image * w_img).sum() + (alpha * w_alpha).sum()).backward()
    return [image.detach(), alpha.detach()] + [t.grad for t in leaves]


def reference_fn(height, width, sigma):
    def fn(v, c, o, bg):
        return render_dense(v, c, o, height=height, width=width, sigma=sigma, background=bg,
                            return_alpha=True)  # fmt: skip

    return fn


def float32_allowance(verts, colors, opacity, height, width, sigma):
    """What float32 rounding may legitimately change on this scene (module docstring).

    Returns ``(near, pixel_factor, triangle_factor)``: ``near`` (B, H, W) bool, pixels on a
    threshold or kink (within NEAR_REL / NEAR_PLANE); ``pixel_factor`` (B, H, W) and
    ``triangle_factor`` (B, N), at least 1: tolerance multipliers for pixels a sliver draws on and
    for a sliver's vertex gradients. Computed in float64 on the CPU, compositing as
    ``docs/SPEC.md`` section 2.1.
    """
    f64 = torch.float64
    v = verts.detach().cpu().to(f64) * torch.tensor([width, height], dtype=f64)
    opacity = opacity.detach().cpu().to(f64)
    per_vertex = colors.dim() == 4
    B, N = v.shape[:2]
    d0, d1 = v[:, :, 1] - v[:, :, 0], v[:, :, 2] - v[:, :, 0]
    area2 = d0[..., 0] * d1[..., 1] - d0[..., 1] * d1[..., 0]  # (B, N)
    triangle_factor = (SLIVER_AREA2 / area2.abs().clamp(min=1e-300)).clamp(min=1.0)
    # a non-finite triangle draws nothing (its gradient is held to exactly the reference's zero)
    triangle_factor = torch.nan_to_num(triangle_factor, nan=1.0)
    py, px = torch.meshgrid(torch.arange(height, dtype=f64) + 0.5,
                            torch.arange(width, dtype=f64) + 0.5, indexing="ij")  # fmt: skip
    T = torch.ones(B, height, width, dtype=f64)
    done = torch.zeros(B, height, width, dtype=torch.bool)
    near = torch.zeros(B, height, width, dtype=torch.bool)
    pixel_factor = torch.ones(B, height, width, dtype=f64)
    for n in range(N - 1, -1, -1):
        q = v[:, n, :, :, None, None]  # (B, 3, 2, 1, 1)
        raw, dist = [], []
        for k in range(3):
            a, b = q[:, k], q[:, (k + 1) % 3]
            e = b - a
            raw.append(e[:, 0] * (py - a[:, 1]) - e[:, 1] * (px - a[:, 0]))
            dist.append(raw[-1] / torch.sqrt(e[:, 0] ** 2 + e[:, 1] ** 2))
        sign = torch.where(area2[:, n] >= 0, 1.0, -1.0).to(f64)[:, None, None]
        z = (torch.stack(dist) * sign / sigma).sort(dim=0).values  # z[0] = d / sigma
        a_raw = opacity[:, n, None, None] * torch.sigmoid(z[0])
        alpha = torch.where(a_raw >= ALPHA_MIN, a_raw.clamp(max=ALPHA_MAX), 0.0)
        stop = ~done & (alpha > 0) & (T * (1 - alpha) < T_MIN)
        drawn = ~done & (alpha > 0) & ~stop
        flag = (a_raw - ALPHA_MIN).abs() <= NEAR_REL * ALPHA_MIN
        flag |= ~done & (alpha > 0) & ((T * (1 - alpha) - T_MIN).abs() <= NEAR_REL * T_MIN)
        flag |= drawn & ((a_raw - ALPHA_MAX).abs() <= NEAR_REL * ALPHA_MAX)
        flag |= drawn & (z[1] - z[0] <= NEAR_PLANE)
        if per_vertex:
            beta = torch.stack(raw) / area2[:, n, None, None]
            flag |= drawn & (beta.abs() <= NEAR_PLANE).any(0)
        near |= ~done & flag
        pixel_factor = torch.where(
            drawn, torch.maximum(pixel_factor, triangle_factor[:, n, None, None]), pixel_factor
        )
        done |= stop
        T = torch.where(drawn, T * (1 - alpha), T)
    return near, pixel_factor, triangle_factor


def assert_close_all(ours, ref, rtol=1e-4, atol=1e-5, names=None, factors=None, context=""):
    """Compare lists of tensors; each is held to ``atol + rtol * max|ref|`` per element.

    ``factors``: optional per-output multipliers of that tolerance (broadcastable to the output;
    ``inf`` leaves an element out). ``context`` (e.g. the scene's seed) opens every failure
    message.
    """
    names = names or [f"output {i}" for i in range(len(ref))]
    factors = factors or [None] * len(ref)
    prefix = f"{context}: " if context else ""
    for name, a, b, f in zip(names, ours, ref, factors, strict=True):
        assert a is not None and b is not None, f"{prefix}{name} is missing"
        assert a.shape == b.shape, (prefix + name, a.shape, b.shape)
        assert torch.isfinite(a).all(), f"{prefix}{name} has non-finite values"
        a, b = a.detach().cpu().double(), b.detach().cpu().double()
        scale = b.abs().max().item() if b.numel() else 0.0
        err = (a - b).abs()
        tol = atol + rtol * scale
        excess = err / (tol if f is None else tol * f.cpu().double())
        if excess.numel() and not (excess <= 1).all():  # (a NaN excess fails too)
            worst = torch.nan_to_num(excess, nan=torch.inf)
            i = tuple(torch.nonzero(worst == worst.max())[0].tolist())
            raise AssertionError(
                f"{prefix}{name}: abs err {err[i].item():.3e} at {list(i)} exceeds its tolerance "
                f"by {excess[i].item():.2f}x (max abs err {err.max().item():.3e}, scale "
                f"{scale:.3e}, ours {a[i].item():.6e}, reference {b[i].item():.6e})"
            )


def check_against_reference(
    fn, scene, height, width, sigma, background=None, context="", rtol=1e-4, atol=1e-5,
    gradients=True,
):  # fmt: skip
    """Image, alpha and (``gradients``) every gradient of ``fn`` against the float64 reference,
    within float32 rounding (:func:`float32_allowance`). Returns ``fn``'s outputs (and
    gradients)."""
    names = ["image", "alpha", "d verts", "d colors", "d opacity", "d background"]
    near, pixel_factor, triangle_factor = float32_allowance(*scene, height, width, sigma)
    bg64 = background.double() if isinstance(background, Tensor) else background
    scene64 = [t.double() for t in scene]
    if gradients:
        ref = image_and_grads(reference_fn(height, width, sigma), *scene64, background=bg64,
                              skip=near)  # fmt: skip
        ours = image_and_grads(fn, *scene, background=background, skip=near)
    else:
        with torch.no_grad():
            ref = list(reference_fn(height, width, sigma)(*scene64, bg64))
            ours = list(fn(*scene, background))
    on_pixels = torch.where(near, torch.inf, pixel_factor)[:, None]  # (B, 1, H, W)
    factors = [on_pixels, on_pixels, triangle_factor[:, :, None, None]] + [None] * 3
    assert_close_all(ours, ref, rtol=rtol, atol=atol, names=names[: len(ref)],
                     factors=factors[: len(ref)], context=context)  # fmt: skip
    return ours
