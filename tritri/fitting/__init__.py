"""Image fitting with triangles: what ``tritri fit`` runs, usable from Python.

- :mod:`tritri.fitting.params`: :class:`TriangleParams` and the starts (:func:`init_delaunay`,
  :func:`init_random`, :func:`load_triangles_json`), :func:`save_triangles_json`;
- :mod:`tritri.fitting.loop`: :func:`fit_triangles`, :func:`psnr`;
- :mod:`tritri.fitting.objective`: :class:`FitLosses` (l1, mse, perceptual, lpips);
- :mod:`tritri.fitting.export`: :func:`load_image`, PNG / comparison / SVG writers.
"""

from __future__ import annotations

from tritri.fitting.export import (
    load_image,
    sample_image_path,
    save_comparison,
    save_png,
    save_svg,
)
from tritri.fitting.loop import FitResult, fit_triangles, psnr
from tritri.fitting.objective import FitLosses
from tritri.fitting.params import (
    TriangleParams,
    init_delaunay,
    init_random,
    load_triangles_json,
    save_triangles_json,
)

__all__ = [
    "FitLosses",
    "FitResult",
    "TriangleParams",
    "fit_triangles",
    "init_delaunay",
    "init_random",
    "load_image",
    "load_triangles_json",
    "psnr",
    "sample_image_path",
    "save_comparison",
    "save_png",
    "save_svg",
    "save_triangles_json",
]
