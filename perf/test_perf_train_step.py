"""A full training step: render -> L1 + perceptual + LPIPS -> geometric mean -> backward -> Adam.

tritri: ``tritri.render`` (Triton on a GPU, tiled torch on the CPU), ``ImageLosses`` on a cached
target with fused reductions, ``GeometricMeanLoss``. naive: the dense reference renderer and the
seeds' loss composition (torchvision perceptual + lpips.LPIPS + L1 + a Python log-sum). Both fit
the same random target with the same random-trunk objective. Group ``train-step-<case>``.
"""

from __future__ import annotations

import functools

import pytest
import torch
from bench_losses import build_stacks
from perf_utils import fits_in_memory, synced, tritri_backend

import tritri
from tritri.reference import render_dense

_stacks = functools.lru_cache(maxsize=2)(build_stacks)

# name: (batch, size, triangles)
GPU_CASES = {"b16-256px-n1000": (16, 256, 1000)}
CPU_CASES = {"b2-32px-n32": (2, 32, 32)}


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", list(GPU_CASES if torch.cuda.is_available() else CPU_CASES))


@pytest.mark.parametrize("impl", ["tritri", "naive"])
def test_train_step(benchmark, impl, case, device):
    batch, size, n = (GPU_CASES if device.type == "cuda" else CPU_CASES)[case]
    if impl == "naive" and not fits_in_memory(6 * n * batch * size * size * 4, device):
        pytest.skip("the dense reference renderer does not fit")
    *_, naive_objective, fused_objective = _stacks(batch, size, device)
    g = torch.Generator().manual_seed(2)
    verts = (torch.rand(batch, n, 3, 2, generator=g) * 1.2 - 0.1).to(device).requires_grad_()
    colors = torch.rand(batch, n, 3, generator=g).to(device).requires_grad_()
    opacity = torch.full((batch, n), 0.7).to(device).requires_grad_()
    optimizer = torch.optim.Adam([verts, colors, opacity], lr=1e-3)
    backend = tritri_backend()

    if impl == "tritri":

        def objective():
            image = tritri.render(verts, colors, opacity, height=size, width=size, backend=backend)
            return fused_objective(image)
    else:

        def objective():
            return naive_objective(render_dense(verts, colors, opacity, height=size, width=size))

    start = [t.detach().clone() for t in (verts, colors, opacity)]

    @synced
    def step():
        # every round times the same step: same parameters, fresh optimizer state
        with torch.no_grad():
            for t, t0 in zip((verts, colors, opacity), start, strict=True):
                t.copy_(t0)
        optimizer.state.clear()
        optimizer.zero_grad(set_to_none=True)
        total = objective()
        total.backward()
        optimizer.step()
        return total.detach()

    benchmark.group = f"train-step-{case}"
    benchmark.extra_info["impl"] = impl
    assert torch.isfinite(benchmark(step))
