"""Render forward and forward+backward: tritri vs the dense reference (the naive composition).

Groups are ``render-<pass>-<case>``; ``extra_info["impl"]`` names the implementation, which
perf/report.py turns into the ratio table.
"""

from __future__ import annotations

import pytest
import torch
from perf_utils import fits_in_memory, synced, tritri_backend

import tritri
from tritri.reference import render_dense

# name: (batch, height, width, triangles, triangle size as a fraction of the image)
GPU_CASES = {
    "b64-256px-n1000": (64, 256, 256, 1000, 0.12),
    "b16-512px-n4000": (16, 512, 512, 4000, 0.06),
    "b1-1024px-n100k": (1, 1024, 1024, 100_000, 0.006),
}
CPU_CASES = {"b2-48px-n64": (2, 48, 48, 64, 0.2)}


def make_scene(batch, n, size, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    center = torch.rand(batch, n, 1, 2, generator=g)
    verts = center + (torch.rand(batch, n, 3, 2, generator=g) - 0.5) * size
    colors = torch.rand(batch, n, 3, generator=g)
    opacity = torch.rand(batch, n, generator=g) * 0.5 + 0.5
    return [t.to(device) for t in (verts, colors, opacity)]


def cases(device):
    return GPU_CASES if device.type == "cuda" else CPU_CASES


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        names = list(GPU_CASES if torch.cuda.is_available() else CPU_CASES)
        metafunc.parametrize("case", names)


IMPLS = ["tritri", "reference"]


def _render_fn(impl):
    if impl == "tritri":
        backend = tritri_backend()
        return lambda v, c, o, h, w: tritri.render(v, c, o, height=h, width=w, backend=backend)
    return lambda v, c, o, h, w: render_dense(v, c, o, height=h, width=w)


def _skip_if_too_big(impl, case, device, backward):
    B, H, W, N, _ = cases(device)[case]
    if impl == "reference":
        # the dense reference keeps ~6 fp32 N·B·H·W intermediates for backward, one B·H·W set
        # per triangle in forward (no grad)
        need = (6 * N if backward else 8) * B * H * W * 4
        if not fits_in_memory(need, device):
            pytest.skip(f"dense reference needs ~{need / 2**30:.0f} GiB here")
        if device.type == "cuda" and N > 20_000:
            pytest.skip("dense reference: one launch set per triangle, too slow at this N")


@pytest.mark.parametrize("impl", IMPLS)
def test_render_forward(benchmark, impl, case, device):
    _skip_if_too_big(impl, case, device, backward=False)
    B, H, W, N, size = cases(device)[case]
    verts, colors, opacity = make_scene(B, N, size, device)
    fn = _render_fn(impl)
    benchmark.group = f"render-forward-{case}"
    benchmark.extra_info["impl"] = impl

    @synced
    def run():
        with torch.no_grad():
            return fn(verts, colors, opacity, H, W)

    out = benchmark(run)
    assert out.shape == (B, 3, H, W) and torch.isfinite(out).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_render_forward_backward(benchmark, impl, case, device):
    _skip_if_too_big(impl, case, device, backward=True)
    B, H, W, N, size = cases(device)[case]
    leaves = [t.requires_grad_() for t in make_scene(B, N, size, device)]
    fn = _render_fn(impl)
    weight = torch.rand(B, 3, H, W, device=device)
    benchmark.group = f"render-forward_backward-{case}"
    benchmark.extra_info["impl"] = impl

    @synced
    def run():
        for t in leaves:
            t.grad = None
        (fn(*leaves, H, W) * weight).sum().backward()
        return leaves[0].grad

    grad = benchmark(run)
    assert torch.isfinite(grad).all()
