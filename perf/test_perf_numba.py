"""The compiled CPU backend (``backend="numba"``) against the torch backend and the dense reference.

B = 1, 171 x 256 px, N = 256 triangles -- the size of a ``tritri fit`` step on a 256-px photo --
forward and forward + backward. Two scenes: random triangles about 30 px across, and the Delaunay
mosaic ``tritri fit`` starts from (the bundled photo). Groups are ``numba-<pass>-<scene>``;
``extra_info["impl"]`` is ``tritri`` (numba), ``torch`` or ``reference``, so perf/report.py prints
reference / numba and torch / numba ratios. In the test run (``--benchmark-disable``) every case
runs once, untimed.

Threads: each implementation runs as it runs best with all the cores. The torch backend and the
reference are torch ops on torch's threads. The numba case runs as ``tritri fit`` does (and as
the README recommends for CPU work): torch's own small ops on one thread, the rasterizer on all
of them (:func:`tritri.cpu.set_num_threads`). With torch's default threads, its OpenMP
workers spin-wait after every op (the setup, the loss) and take a core from the rasterizer's
threads: forward + backward 9.5 ms median instead of 6.3 ms on a 2-core EPYC.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

import tritri
import tritri.cpu
from tritri.reference import render_dense

B, H, W, N = 1, 171, 256, 256
IMPLS = {"tritri": "numba", "torch": "torch", "reference": None}


def _scene(name: str):
    g = torch.Generator().manual_seed(0)
    if name == "random":
        center = torch.rand(B, N, 1, 2, generator=g)
        verts = center + (torch.rand(B, N, 3, 2, generator=g) - 0.5) * 0.12
        colors = torch.rand(B, N, 3, generator=g)
        opacity = torch.rand(B, N, generator=g) * 0.5 + 0.5
        return verts, colors, opacity
    from tritri.fitting import init_delaunay, load_image

    target = F.interpolate(load_image(None, 256)[None], size=(H, W), mode="area")[0]
    verts, colors, opacity, _ = init_delaunay(target, N)()
    return verts[None].detach(), colors[None].detach(), opacity[None].detach()


@contextlib.contextmanager
def _threads(impl: str):
    """The numba case: torch on one thread, the rasterizer on torch's thread count (module
    docstring); the others as they are. Restored afterwards."""
    if impl != "tritri":
        yield
        return
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tritri.cpu.set_num_threads(torch_threads)
    try:
        yield
    finally:
        tritri.cpu.set_num_threads(None)
        torch.set_num_threads(torch_threads)


def _fn(impl: str):
    backend = IMPLS[impl]
    if backend is None:
        return lambda v, c, o: render_dense(v, c, o, height=H, width=W)
    return lambda v, c, o: tritri.render(v, c, o, height=H, width=W, backend=backend)


@pytest.mark.parametrize("scene", ["random", "mosaic"])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_numba_forward(benchmark, impl, scene):
    verts, colors, opacity = _scene(scene)
    fn = _fn(impl)
    benchmark.group = f"numba-forward-{scene}"
    benchmark.extra_info["impl"] = impl
    fn(verts, colors, opacity)  # compile / warm up outside the timing

    def run():
        with torch.no_grad():
            return fn(verts, colors, opacity)

    with _threads(impl):
        out = benchmark(run)
    assert out.shape == (B, 3, H, W) and torch.isfinite(out).all()


@pytest.mark.parametrize("scene", ["random", "mosaic"])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_numba_forward_backward(benchmark, impl, scene):
    if impl == "reference" and scene == "mosaic":
        pytest.skip("one dense reference case is enough (it takes ~1.5 s a call)")
    leaves = [t.clone().requires_grad_() for t in _scene(scene)]
    fn = _fn(impl)
    weight = torch.rand(B, 3, H, W, generator=torch.Generator().manual_seed(1))
    benchmark.group = f"numba-forward_backward-{scene}"
    benchmark.extra_info["impl"] = impl

    def run():
        for t in leaves:
            t.grad = None
        (fn(*leaves) * weight).sum().backward()
        return leaves[0].grad

    run()  # compile / warm up outside the timing
    with _threads(impl):
        grad = benchmark(run)
    assert torch.isfinite(grad).all()
