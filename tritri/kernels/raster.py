"""The Triton rasterizer as :func:`tritri.render` uses it (``backend="triton"``).

:func:`rasterize_triton` takes the per-triangle setup of :func:`tritri.geometry.prepare_triangles`,
picks the launch configs (:func:`raster_config`) and calls the ``tritri::rasterize`` op
(:mod:`tritri.kernels.ops`), whose registered backward runs the backward kernel. Importing this
module imports neither triton nor the kernels: they load on the first call.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tritri.configs.lookup import launch_config
from tritri.geometry import PreparedTriangles

__all__ = ["RASTER_CONFIG_OVERRIDE", "interpreter_active", "raster_config", "rasterize_triton"]

#: Tests and experiments: keys laid over every raster config (None: no override).
RASTER_CONFIG_OVERRIDE: dict[str, Any] | None = None


def interpreter_active() -> bool:
    """Whether the raster kernels were imported under the Triton interpreter (``TRITON_INTERPRET=1``
    at import), so that they run on CPU tensors."""
    from triton.runtime.interpreter import InterpretedFunction

    from tritri.kernels.raster_forward import raster_forward_kernel

    return isinstance(raster_forward_kernel, InterpretedFunction)


def raster_config(
    batch: int, n_triangles: int, height: int, width: int, device: torch.device
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Forward and backward launch configs for a problem.

    From :func:`tritri.tuning.launch_config`: on CUDA the tuned file for this GPU (else the
    heuristic default); on the CPU and inside ``torch.compile`` traces the heuristic default.
    Tile size and binning come from the forward config for both passes (the backward replays the
    forward's walk); the backward config contributes its ``chunk`` and ``num_warps``.
    """
    problem = {"batch": batch, "n_triangles": n_triangles, "height": height, "width": width}
    forward = launch_config("raster_forward", problem, device)
    backward = launch_config("raster_backward", problem, device)
    if RASTER_CONFIG_OVERRIDE:
        forward = {**forward, **RASTER_CONFIG_OVERRIDE}
        backward = {**backward, **RASTER_CONFIG_OVERRIDE}
    return forward, {**forward, "chunk": backward["chunk"], "num_warps": backward["num_warps"]}


def rasterize_triton(
    prep: PreparedTriangles, height: int, width: int, deterministic: bool
) -> tuple[Tensor, Tensor]:
    """Color (B, C, H, W) without background and transmittance (B, H, W), fp32, differentiable
    in ``prep``'s edges, bary, colors and opacity. ``deterministic``: sum gradients in a fixed
    order (exact binning, one host sync) instead of with atomics."""
    from tritri.kernels.ops import rasterize

    B, N = prep.edges.shape[:2]
    fwd, bwd = raster_config(B, N, height, width, prep.edges.device)
    return rasterize(
        prep.edges, prep.edges.new_empty(0) if prep.bary is None else prep.bary,
        prep.colors, prep.opacity, prep.cull, height, width, int(fwd["tile"]),
        int(fwd["chunk"]), int(fwd["num_warps"]), int(bwd["chunk"]), int(bwd["num_warps"]),
        str(fwd["binning"]), int(fwd["pairs_per_triangle"]), bool(deterministic),
    )  # fmt: skip
