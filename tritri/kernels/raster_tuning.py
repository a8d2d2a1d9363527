"""What ``tritri tune`` measures for the rasterizer: candidate configs, problem grid, runners.

``raster_forward`` tunes tile size, chunk size, warps and binning (the backward replays the
forward's tiles and chunks, so those are chosen here); ``raster_backward`` tunes its launch's warps
given the forward's default config. Problems are random scenes of small triangles like a fit
produces. Imported by ``tritri tune`` only (it needs a GPU to run).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

import torch

from tritri.tuning import register_tunable
from tritri.tuning.defaults import raster_default

PROBLEMS = [
    {"batch": 8, "n_triangles": 256, "height": 256, "width": 256},
    {"batch": 64, "n_triangles": 1000, "height": 256, "width": 256},
    {"batch": 16, "n_triangles": 4000, "height": 512, "width": 512},
    {"batch": 1, "n_triangles": 100_000, "height": 1024, "width": 1024},
]
QUICK_PROBLEMS = [PROBLEMS[1]]

FORWARD_CANDIDATES = [
    {"tile": tile, "chunk": chunk, "num_warps": warps, "binning": binning}
    for tile, chunk, warps, binning in itertools.product(
        (8, 16), (4, 8, 16), (4, 8), ("scan", "sorted")
    )
] + [{"tile": 32, "chunk": 4, "num_warps": 8, "binning": b} for b in ("scan", "sorted")]
BACKWARD_CANDIDATES = [{"num_warps": w} for w in (2, 4, 8)]


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


def _launch_args(prep, problem, forward: Mapping[str, Any], backward_warps: int):
    return (
        prep.edges, prep.edges.new_empty(0), prep.colors, prep.opacity, prep.cull,
        problem["height"], problem["width"], int(forward["tile"]), int(forward["chunk"]),
        int(forward["num_warps"]), backward_warps, str(forward["binning"]),
        int(forward["pairs_per_triangle"]), False,
    )  # fmt: skip


def forward_runner(problem: Mapping[str, Any], config: Mapping[str, Any]) -> Callable[[], Any]:
    from tritri.ops import rasterize

    prep = _scene(problem)
    forward = {**raster_default(problem), **config}
    args = _launch_args(prep, problem, forward, int(forward["num_warps"]))
    return lambda: rasterize(*args)


def backward_runner(problem: Mapping[str, Any], config: Mapping[str, Any]) -> Callable[[], Any]:
    from tritri.ops import rasterize, rasterize_backward

    prep = _scene(problem)
    forward = raster_default(problem)
    warps = int(config["num_warps"])
    args = _launch_args(prep, problem, forward, warps)
    color, T = rasterize(*args)
    g = torch.Generator().manual_seed(1)
    grad_color = torch.rand(color.shape, generator=g).to(color.device)
    grad_T = torch.rand(T.shape, generator=g).to(T.device)
    return lambda: rasterize_backward(grad_color, grad_T, color, T, *args[:5], *args[5:9], warps,
                                      *args[11:])  # fmt: skip


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
