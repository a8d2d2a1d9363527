"""The rasterizer's CPU backends: compiled numba (the default on CPU tensors) and tiled PyTorch.

- :mod:`tritri.cpu.numba_ops` -- ``backend="numba"``: :func:`rasterize_numba`, a
  ``torch.autograd.Function`` over the numpy level, and :func:`triangle_stats` (what each triangle
  is worth to a fit);
- :mod:`tritri.cpu.numba_raster` -- its numpy level, torch-free: tile lists, the thread pool
  (:func:`set_num_threads`), forward, backward, removal costs (the CPU fit calls it directly);
- :mod:`tritri.cpu.numba_kernels` -- its ``@njit`` kernels;
- :mod:`tritri.cpu.torch_tiles` -- ``backend="torch"``: :func:`rasterize_torch`, the same tiles in
  plain PyTorch (runs on any device; the fallback where numba or triton is missing).

Both take the per-triangle setup of :func:`tritri.geometry.prepare_triangles` and follow
``docs/SPEC.md`` section 2.1 exactly. Names are imported on first use: ``import tritri.cpu``
imports neither torch nor numba.
"""

from __future__ import annotations

from tritri._lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_TILE": "tritri.cpu.numba_raster",
    "get_num_threads": "tritri.cpu.numba_raster",
    "numba_available": "tritri.cpu.numba_raster",
    "set_num_threads": "tritri.cpu.numba_raster",
    "rasterize_numba": "tritri.cpu.numba_ops",
    "triangle_stats": "tritri.cpu.numba_ops",
    "rasterize_torch": "tritri.cpu.torch_tiles",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
