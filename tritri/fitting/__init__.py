"""Image fitting with triangles: what ``tritri fit`` runs, usable from Python.

- :mod:`tritri.fitting.params`: :class:`TriangleParams` and the starts (:func:`init_greedy`,
  :func:`init_delaunay`, :func:`init_random`, :func:`load_triangles_json`),
  :func:`save_triangles_json`;
- :mod:`tritri.fitting.loop`: :func:`fit_triangles`; :mod:`tritri.fitting.numeric`: :func:`psnr`;
- :mod:`tritri.fitting.objective`: :class:`FitLosses` (l1, mse, perceptual, lpips);
- :mod:`tritri.fitting.images`: :func:`read_image` / :func:`load_image`, the target as a viewer
  shows it; :mod:`tritri.fitting.export`: PNG / comparison / SVG writers;
  :mod:`tritri.fitting.outputs`: what ``tritri fit`` writes, atomically and independently;
- :mod:`tritri.fitting.starts`: the numpy cores of the starts and of the ``triangles.json`` I/O;
- :mod:`tritri.fitting.cpu_fit`: :func:`fit_triangles_cpu`, the same fit on numpy and numba
  without torch (the default objective on a CPU; what ``tritri fit`` runs there).

Names are imported on first use, so that the torch-free modules (``tritri.fitting.export``,
``tritri.fitting.starts``) can be imported without importing torch.
"""

from __future__ import annotations

from tritri._lazy import lazy_exports

_EXPORTS = {
    "FitLosses": "tritri.fitting.objective",
    "CpuFitResult": "tritri.fitting.cpu_fit",
    "FitResult": "tritri.fitting.loop",
    "TriangleParams": "tritri.fitting.params",
    "delaunay_start": "tritri.fitting.starts",
    "fit_triangles": "tritri.fitting.loop",
    "fit_triangles_cpu": "tritri.fitting.cpu_fit",
    "init_delaunay": "tritri.fitting.params",
    "init_greedy": "tritri.fitting.params",
    "greedy_start": "tritri.fitting.starts",
    "init_random": "tritri.fitting.params",
    "load_image": "tritri.fitting.images",
    "load_triangles_json": "tritri.fitting.params",
    "psnr": "tritri.fitting.numeric",
    "random_start": "tritri.fitting.starts",
    "read_image": "tritri.fitting.images",
    "sample_image_path": "tritri.fitting.images",
    "save_comparison": "tritri.fitting.export",
    "save_png": "tritri.fitting.export",
    "save_svg": "tritri.fitting.export",
    "save_triangles_json": "tritri.fitting.params",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
