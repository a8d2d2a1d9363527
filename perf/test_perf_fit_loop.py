"""``tritri fit``'s two loops on the CPU: the torch-free one and the torch loop, side by side.

10 steps of the default objective (l1 + mse, geometric mean; moves off so that both do the same
work) on the bundled photo at 171 x 256 px from its 256-triangle Delaunay mosaic:
:func:`tritri.fitting.cpu_fit.fit_triangles_cpu` (numpy + numba: the setup, rasterizer, pixel
passes and Adam) against :func:`tritri.fitting.fit_triangles` with ``backend="numba"`` (the same
rasterizer under torch autograd). Group ``fit-loop-10steps``; ``extra_info["impl"]`` is
``tritri`` (the CPU loop) or ``torch``, so perf/report.py prints the torch / tritri ratio. In the
test run (``--benchmark-disable``) each case runs once, untimed.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("numba")

H, W, N, STEPS = 171, 256, 256, 10


def _problem():
    from tritri.fitting import load_image
    from tritri.fitting.starts import delaunay_start

    target = F.interpolate(load_image(None, 256)[None], size=(H, W), mode="area")[0]
    return target, delaunay_start(target.numpy(), N)


@pytest.mark.parametrize("impl", ["tritri", "torch"])
def test_fit_loop(benchmark, impl):
    target, start = _problem()
    benchmark.group = "fit-loop-10steps"
    benchmark.extra_info["impl"] = impl
    if impl == "tritri":
        from tritri.fitting.cpu_fit import fit_triangles_cpu

        def run():
            return fit_triangles_cpu(start, target.numpy(), steps=STEPS, reseed_every=0).psnr

    else:
        from tritri.fitting import FitLosses, TriangleParams, fit_triangles
        from tritri.losses import GeometricMeanLoss

        criterion, balancer = FitLosses(("l1", "mse")), GeometricMeanLoss()
        values = [torch.from_numpy(start[k]) for k in ("verts", "colors", "opacity", "background")]

        def run():
            params = TriangleParams(*values)
            result = fit_triangles(params, target, steps=STEPS, criterion=criterion,
                                   balancer=balancer, backend="numba", reseed_every=0)  # fmt: skip
            return result.psnr

    run()  # compile / warm up outside the timing
    psnr = benchmark(run)
    assert psnr > 15
