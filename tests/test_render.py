"""The tiled backends against the dense reference: forward, every gradient, every binning mode,
every tuner candidate, the torch backend's grouped (checkpointed) path, deterministic sums.

Triton cases run where this session runs Triton kernels (tests/devices.py): CUDA tensors on a CUDA
host, CPU tensors under the interpreter; elsewhere they skip. Every scene has a fixed seed, named in
failure messages.
"""

from __future__ import annotations

import pytest
import torch
from devices import backend_device, triton_device
from render_helpers import check_against_reference, image_and_grads, random_scene

import tritri
from tritri.kernels import raster as triton_raster  # noqa: E402


def tritri_fn(height, width, sigma, backend, **kwargs):
    def fn(v, c, o, bg):
        return tritri.render(v, c, o, height=height, width=width, sigma=sigma, background=bg,
                             return_alpha=True, backend=backend, **kwargs)  # fmt: skip

    return fn


def compare(backend, scene, height, width, sigma=0.5, background=None, context="",
            gradients=True, **kwargs):  # fmt: skip
    fn = tritri_fn(height, width, sigma, backend, **kwargs)
    return check_against_reference(fn, scene, height, width, sigma, background, context=context,
                                   gradients=gradients)  # fmt: skip


SCENES = {
    # odd sizes: tiles stick out of the image on the right and bottom
    "flat_rgb_odd": dict(seed=101, B=2, N=9, C=3, size=(21, 37), background=0.25),
    "per_vertex_rgba": dict(
        seed=102, B=2, N=7, C=4, per_vertex=True, size=(19, 18), background="C"
    ),
    "gray_per_image_bg": dict(seed=103, B=2, N=8, C=1, size=(17, 20), background="BC"),
    # triangles far off-screen and much larger than the image
    "huge_and_offscreen": dict(seed=104, B=1, N=8, C=3, size=(16, 23), spread=(-3.0, 4.0)),
}


def _scene(spec, device="cpu", seed=None):
    """The scene of ``spec`` (its own seed unless ``seed`` is given) and its background."""
    B, N, C = spec["B"], spec["N"], spec["C"]
    seed = spec["seed"] if seed is None else seed
    scene = random_scene(B, N, C, spec.get("per_vertex", False), seed=seed,
                         spread=spec.get("spread", (-0.2, 1.2)), device=device)  # fmt: skip
    bg = spec.get("background")
    if bg == "C":
        bg = torch.linspace(0.1, 0.9, C, device=device)
    elif bg == "BC":
        bg = torch.rand(B, C, generator=torch.Generator().manual_seed(seed)).to(device)
    return scene, bg


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name", list(SCENES))
def test_matches_reference(backend, name):
    spec = SCENES[name]
    scene, bg = _scene(spec, backend_device(backend))
    compare(backend, scene, *spec["size"], sigma=0.6, background=bg,
            context=f"scene {name} seed {spec['seed']}")  # fmt: skip


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomics", "deterministic"])
@pytest.mark.parametrize("name", ["flat_rgb_odd", "per_vertex_rgba"])
@pytest.mark.triton
def test_backward_without_lane_shuffles_matches_reference(name, deterministic, monkeypatch):
    """The backward's row sums without warp shuffles (a tl.sum per column), which the launcher
    falls back to where the compiler does not lay the rows along the lanes (triton 3.6)."""
    import tritri.kernels.raster_backward as raster_backward

    calls = []

    def no_shuffles(grid, args, kwargs):
        calls.append(kwargs["K"])
        return False

    monkeypatch.setattr(raster_backward, "_lane_shuffles", no_shuffles)
    spec = SCENES[name]
    scene, bg = _scene(spec, triton_device())
    compare("triton", scene, *spec["size"], sigma=0.6, background=bg, deterministic=deterministic,
            context=f"scene {name} seed {spec['seed']}, no lane shuffles")  # fmt: skip
    assert calls  # the backward ran through the fallback


def _deep_scene(B=1, N=14, C=3, device="cpu"):
    """Many large, nearly opaque layers: pixels stop early (T < 1e-4) in every tile."""
    verts, colors, opacity = random_scene(B, N, C, seed=5, spread=(-1.0, 2.0), device=device)
    opacity = torch.full_like(opacity, 0.97)
    return verts, colors, opacity


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_early_termination_matches_reference(backend):
    scene = _deep_scene(device=backend_device(backend))
    compare(backend, scene, 12, 10, sigma=0.5, context="deep scene seed 5")


@pytest.mark.parametrize(
    "binning,capacity,deterministic",
    [("sorted", 16, False), ("sorted", 1, False), ("sorted", 16, True), ("scan", 16, True)],
    ids=["sorted", "sorted-overflow-scans", "deterministic", "deterministic-from-scan"],
)
@pytest.mark.triton
def test_triton_binning_modes(binning, capacity, deterministic, monkeypatch):
    import tritri.kernels.ops

    device = triton_device()
    seen = []

    def spy(*args, **kwargs):
        bins = bin_triangles(*args, **kwargs)
        seen.append(bins.overflow.any().item())
        return bins

    bin_triangles = tritri.kernels.ops.bin_triangles
    monkeypatch.setattr(tritri.kernels.ops, "bin_triangles", spy)
    override = {"binning": binning, "pairs_per_triangle": capacity, "tile": 8}
    monkeypatch.setattr(triton_raster, "RASTER_CONFIG_OVERRIDE", override)
    spec = SCENES["per_vertex_rgba"]
    scene, bg = _scene(spec, device)
    compare("triton", scene, 19, 18, background=bg, deterministic=deterministic,
            context=f"per_vertex_rgba seed {spec['seed']}")  # fmt: skip
    expect_bins = binning == "sorted" or deterministic
    assert len(seen) == (2 if expect_bins else 0)  # forward and backward
    assert all(seen) == (capacity == 1) if seen else True


def _distinct(configs):
    out = []
    for c in configs:
        if dict(c) not in out:
            out.append(dict(c))
    return out


@pytest.mark.triton
def test_tuner_candidates_match_reference(monkeypatch):
    """Every config `tritri tune` may pick gives the reference's image and gradients: the image of
    each forward candidate, and the gradients of each backward candidate, each run at another of
    the forward's (tile, binning) pairs, which the backward replays. Tiny problem (the interpreter
    is slow): 3 large triangles over 2 16-px or 6 8-px tiles."""
    from tritri.configs.defaults import raster_backward_default, raster_default
    from tritri.tuning.candidates import BACKWARD_CANDIDATES, FORWARD_CANDIDATES

    device = triton_device()
    H, W, seed = 12, 20, 7
    scene = random_scene(1, 3, 2, per_vertex=True, seed=seed, spread=(-0.3, 1.3), device=device)
    problem = {"batch": 1, "n_triangles": 3, "height": H, "width": W}
    forwards = [{**raster_default(problem), **c} for c in _distinct(FORWARD_CANDIDATES)]
    backwards = [{**raster_backward_default(problem), **c} for c in _distinct(BACKWARD_CANDIDATES)]
    walks = _distinct({"tile": c["tile"], "binning": c["binning"]} for c in forwards)
    assert len(forwards) > 1 and len(backwards) > 1 and len(walks) > 1
    runs = [(f, None) for f in forwards]  # forward only
    for j in range(max(len(walks), len(backwards))):
        walk = walks[j % len(walks)]
        fwd = next(f for f in forwards if walk.items() <= f.items())
        runs.append((fwd, backwards[j % len(backwards)]))
    for fwd, bwd in runs:
        launch = (fwd, {**fwd, **{k: (bwd or fwd)[k] for k in ("chunk", "num_warps")}})
        monkeypatch.setattr(triton_raster, "raster_config", lambda *args, cfg=launch: cfg)
        compare("triton", scene, H, W, sigma=0.7, background=0.3, gradients=bwd is not None,
                context=f"seed {seed}, forward {fwd}, backward {bwd}")  # fmt: skip


def test_torch_backend_groups_match_reference(monkeypatch):
    """The torch backend's grouped path (tiles in several checkpointed groups, by list length):
    with a group budget of one element every group holds a single tile; values and gradients match
    the reference, and match the one-group run."""
    import tritri.cpu.torch_tiles as torch_backend
    from tritri.geometry import prepare_triangles

    H, W, sigma, seed = 20, 27, 0.6, 13
    scene = random_scene(2, 6, 3, per_vertex=True, seed=seed, spread=(-0.3, 1.3))
    bg = torch.tensor([0.2, 0.5, 0.8])
    groups = []
    real = torch_backend.checkpoint

    def counting(*args, **kwargs):
        groups.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch_backend, "checkpoint", counting)

    def grouped(budget):
        def fn(v, c, o, background):
            prep = prepare_triangles(v, c, o, H, W, sigma)
            color, T = torch_backend.rasterize_torch(prep, H, W, tile=8, max_elements=budget)
            return color + T[:, None] * background[:, None, None], (1 - T)[:, None]

        return fn

    check_against_reference(grouped(1), scene, H, W, sigma, bg, context=f"seed {seed}")
    n_groups = len(groups)
    assert n_groups > 8, n_groups  # one tile per group (2 images x 12 tiles, less empty ones)
    ours = image_and_grads(grouped(1), *scene, background=bg)
    groups.clear()
    one = image_and_grads(grouped(1 << 30), *scene, background=bg)
    assert len(groups) == 1
    for a, b in zip(ours, one, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.triton
def test_deterministic_sums_are_independent_of_tile_order():
    """deterministic=True: each triangle's gradient is the sum of its per-tile contributions in a
    fixed order, whatever order the tiles run in. Checked on a 2x2-tile scene whose triangles all
    cover every tile: the gradient equals the correctly rounded sum of the per-tile gradients
    (each computed with the incoming gradient restricted to one tile) -- an accumulation across
    tiles in float32 (atomics, in whatever order the tiles finish) rounds differently. On a GPU
    two runs of a larger scene are also compared bit for bit."""
    from tritri.binning import bin_triangles, tile_grid
    from tritri.geometry import prepare_triangles
    from tritri.kernels.ops import rasterize, rasterize_backward

    device = triton_device()

    def run(H, W, tile, N, seed, per_tile):
        warps = 1 if tile == 8 else 2  # the forward candidates' layouts at these tiles
        verts, colors, opacity = random_scene(1, N, 3, per_vertex=True, seed=seed,
                                              spread=(-0.6, 1.6), device=device)  # fmt: skip
        prep = prepare_triangles(verts, colors, opacity, H, W, 0.5)
        bins = bin_triangles(prep.edges, prep.cull, H, W, tile)
        ntx, nty = tile_grid(H, W, tile)
        args = (prep.edges, prep.bary, prep.colors, prep.opacity, prep.cull, H, W, tile)
        color, T = rasterize(*args, 32, warps, 32, warps, "scan", 16, True)
        g = torch.Generator().manual_seed(seed + 1)
        g_color = torch.randn(color.shape, generator=g).to(device)
        g_T = torch.randn(T.shape, generator=g).to(device)

        def backward(mask):
            return rasterize_backward(g_color * mask[:, None], g_T * mask, color, T, *args, 32,
                                      warps, "scan", 16, True)  # fmt: skip

        full = backward(torch.ones_like(T))
        if not per_tile:
            return bins, full, backward(torch.ones_like(T))
        total = [torch.zeros_like(t, dtype=torch.float64) for t in full]
        for ty in range(nty):
            for tx in range(ntx):
                mask = torch.zeros_like(T)
                mask[:, ty * tile : (ty + 1) * tile, tx * tile : (tx + 1) * tile] = 1
                total = [s + p.double() for s, p in zip(total, backward(mask), strict=True)]
        return bins, full, [s.float() for s in total]

    names = ["d edges", "d bary", "d colors", "d opacity"]
    bins, full, summed = run(16, 16, 8, 3, seed=11, per_tile=True)
    assert (bins.count == 4).all()  # every triangle in every tile: there is an order to get wrong
    for name, a, b in zip(names, full, summed, strict=True):
        differ = int((a != b).sum())
        assert differ == 0, (
            f"seed 11: {name} is not the correctly rounded sum over tiles in {differ} of "
            f"{a.numel()} entries (max diff {(a - b).abs().max().item():.3e})"
        )
    if device.type == "cuda":
        bins, first, second = run(96, 128, 16, 200, seed=12, per_tile=False)
        assert (bins.count > 1).float().mean() > 0.5
        for name, a, b in zip(names, first, second, strict=True):
            differ = int((a != b).sum())
            assert differ == 0, f"seed 12: {name} differs between two runs in {differ} entries"


@pytest.mark.triton
def test_deterministic_none_follows_torch_setting(monkeypatch):
    """deterministic=None takes torch.are_deterministic_algorithms_enabled()."""
    import tritri.kernels.ops

    device = triton_device()
    seen = []
    real = tritri.kernels.ops.rasterize

    def spy(*args):
        seen.append(args[-1])
        return real(*args)

    monkeypatch.setattr(tritri.kernels.ops, "rasterize", spy)
    scene = random_scene(1, 2, 1, seed=3, device=device)
    was, warn_only = (torch.are_deterministic_algorithms_enabled(),
                      torch.is_deterministic_algorithms_warn_only_enabled())  # fmt: skip
    try:
        for flag in (True, False):
            torch.use_deterministic_algorithms(flag, warn_only=True)
            tritri.render(*scene, height=8, width=8, backend="triton")
            tritri.render(*scene, height=8, width=8, backend="triton", deterministic=not flag)
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)
    assert seen == [True, False, False, True]


def test_sorted_binning_with_dropped_capacity_flags_overflow():
    from tritri.binning import bin_triangles
    from tritri.geometry import prepare_triangles

    verts, colors, opacity = random_scene(2, 10, 3, seed=2)
    prep = prepare_triangles(verts, colors, opacity, 32, 32, 0.5)
    exact = bin_triangles(prep.edges, prep.cull, 32, 32, 8)
    assert not exact.overflow.any()
    short = bin_triangles(prep.edges, prep.cull, 32, 32, 8, capacity=int(exact.first[0, -1]) + 1)
    assert short.overflow.tolist() == [False, True] or short.overflow.tolist() == [True, True]
    # every (tile, triangle) list from the exact bins is in draw order and only holds overlaps
    for t in range(exact.start.numel()):
        ids = exact.tri[exact.start[t] : exact.end[t]].tolist()
        assert ids == sorted(ids)


def test_binning_keeps_every_pair_the_reference_draws():
    """A triangle that changes a pixel of a tile must be in that tile's list."""
    from tritri.binning import bin_triangles, tile_grid
    from tritri.geometry import prepare_triangles
    from tritri.reference import render_dense

    H, W, tile = 24, 40, 8
    verts, colors, opacity = random_scene(1, 12, 1, seed=7, spread=(-1.0, 2.0))
    prep = prepare_triangles(verts, colors, opacity, H, W, 0.5)
    bins = bin_triangles(prep.edges, prep.cull, H, W, tile)
    ntx, _ = tile_grid(H, W, tile)
    for n in range(12):
        alone = render_dense(verts[:, n : n + 1], torch.ones(1, 1, 1), opacity[:, n : n + 1],
                             height=H, width=W, return_alpha=True)[1][0, 0]  # fmt: skip
        rows, cols = torch.nonzero(alone > 0, as_tuple=True)
        for t in set((rows // tile * ntx + cols // tile).tolist()):
            assert n in bins.tri[bins.start[t] : bins.end[t]].tolist(), (n, t)
