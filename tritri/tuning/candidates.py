"""What ``tritri tune`` measures: each tunable kernel's candidate configs, problem grid and runners
(today the rasterizer's; the one module :data:`tritri.tuning.tune.TUNABLE_MODULES` names).

``raster_forward`` tunes tile size, chunk size, warps and binning (the backward replays the
forward's tiles and chunks, so those are chosen here); ``raster_backward`` tunes its launch's warps
given the forward's default config. Problems are random scenes of small triangles like a fit
produces. Imported by ``tritri tune`` (it needs a GPU to run) and by ``tritri check``, which
compiles every candidate (``--all-configs``): a candidate that spills on sm_90 does not belong
here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

import torch

from tritri.configs.defaults import raster_backward_default, raster_default
from tritri.tuning.tuner import register_tunable

PROBLEMS = [
    {"batch": 8, "n_triangles": 256, "height": 256, "width": 256},
    {"batch": 64, "n_triangles": 1000, "height": 256, "width": 256},
    {"batch": 16, "n_triangles": 4000, "height": 512, "width": 512},
    {"batch": 1, "n_triangles": 100_000, "height": 1024, "width": 1024},
]
QUICK_PROBLEMS = [PROBLEMS[1]]

# The raster kernels put 32 * num_warps threads on a tile x tile block, tile <= 32 * num_warps <=
# tile² (tritri.kernels.raster_common). `tritri check --all-configs` compiles every candidate for
# sm_90; none spills. Left out: tile 16 on one warp (8 pixels per thread: the forward spills at its
# 64-register cap) and tile 8 on two warps (1 pixel per thread: 165 instructions per pair in the
# list walk, every triangle's loads and setup paid per pixel).
FORWARD_CANDIDATES = [
    {"tile": tile, "chunk": chunk, "num_warps": warps, "binning": binning}
    for tile, warps in ((8, 1), (16, 2), (16, 4))
    for chunk, binning in itertools.product((8, 32), ("scan", "sorted"))
]
# The backward runs at the forward's tile (8 or 16): 1 or 2 warps fit both.
BACKWARD_CANDIDATES = [
    {"chunk": chunk, "num_warps": warps} for chunk, warps in itertools.product((8, 32), (1, 2))
]


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"  # cpu: tests, under the interpreter


def _scene(problem: Mapping[str, Any]):
    """Random triangles about 3x the mean spacing across, prepared for the kernels."""
    from tritri.geometry import prepare_triangles

    B, N = problem["batch"], problem["n_triangles"]
    H, W = problem["height"], problem["width"]
    g = torch.Generator().manual_seed(0)
    size = min(0.5, 3.0 / N**0.5)
    center = torch.rand(B, N, 1, 2, generator=g)
    verts = center + (torch.rand(B, N, 3, 2, generator=g) - 0.5) * size
    colors = torch.rand(B, N, 3, generator=g)
    opacity = torch.rand(B, N, generator=g) * 0.5 + 0.5
    args = [t.to(_device()) for t in (verts, colors, opacity)]
    return prepare_triangles(*args, H, W, 0.5)


def _launch_args(prep, problem, forward: Mapping[str, Any], backward: Mapping[str, Any]):
    """Arguments of tritri.kernels.ops.rasterize (its backward takes the same, less the forward's
    chunk and warps: see backward_runner)."""
    return (
        prep.edges, prep.edges.new_empty(0), prep.colors, prep.opacity, prep.cull,
        problem["height"], problem["width"], int(forward["tile"]), int(forward["chunk"]),
        int(forward["num_warps"]), int(backward["chunk"]), int(backward["num_warps"]),
        str(forward["binning"]), int(forward["pairs_per_triangle"]), False,
    )  # fmt: skip


def forward_runner(problem: Mapping[str, Any], config: Mapping[str, Any]) -> Callable[[], Any]:
    from tritri.kernels.ops import rasterize

    prep = _scene(problem)
    forward = {**raster_default(problem), **config}
    args = _launch_args(prep, problem, forward, raster_backward_default(problem))
    return lambda: rasterize(*args)


def backward_runner(problem: Mapping[str, Any], config: Mapping[str, Any]) -> Callable[[], Any]:
    from tritri.kernels.ops import rasterize, rasterize_backward

    prep = _scene(problem)
    backward = {**raster_backward_default(problem), **config}
    args = _launch_args(prep, problem, raster_default(problem), backward)
    color, T = rasterize(*args)
    g = torch.Generator().manual_seed(1)
    grad_color = torch.rand(color.shape, generator=g).to(color.device)
    grad_T = torch.rand(T.shape, generator=g).to(T.device)
    # rasterize_backward(grad_color, grad_T, color, T, 5 tensors, height, width, tile, chunk,
    # num_warps, binning, pairs_per_triangle, deterministic)
    return lambda: rasterize_backward(grad_color, grad_T, color, T, *args[:8], *args[10:])


def _outputs_close(actual, expected) -> bool:
    """Atomics reorder float sums: compare with a tolerance relative to each tensor's scale."""
    pairs = zip(actual, expected, strict=True)
    return all(
        a.shape == b.shape
        and (a.numel() == 0 or ((a - b).abs().max() <= 1e-3 * b.abs().max() + 1e-5).item())
        for a, b in pairs
    )


register_tunable("raster_forward", FORWARD_CANDIDATES, PROBLEMS, forward_runner,
                 quick_problems=QUICK_PROBLEMS, check=_outputs_close)  # fmt: skip
register_tunable("raster_backward", BACKWARD_CANDIDATES, PROBLEMS, backward_runner,
                 quick_problems=QUICK_PROBLEMS, check=_outputs_close)  # fmt: skip
