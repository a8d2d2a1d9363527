"""Public API behaviour: bad triangles, bad input, shapes, dtypes, the module, backends, compile."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from devices import backend_device, triton_device
from render_helpers import random_scene

import tritri
from tritri.reference import render_dense

BACKENDS = ["torch", "triton"]


@pytest.mark.parametrize("backend", ["triton", "numba", "torch"])
def test_opacity_at_the_skip_threshold_still_draws(backend):
    """alpha = opacity * coverage; a pair is skipped only *below* 1/255, so a triangle of opacity
    exactly 1/255 draws where its coverage is exactly 1 (deep inside; the per-triangle culling
    used to drop it, while the reference drew it)."""
    if backend == "numba":
        pytest.importorskip("numba")
    device = backend_device(backend)
    verts = torch.tensor([[[-10.0, -10.0], [30.0, -10.0], [-10.0, 30.0]]], device=device)
    colors = torch.tensor([[1.0, 0.0, 0.5]], device=device)
    opacity = torch.tensor([1 / 255], device=device)
    kw = {"height": 8, "width": 8, "sigma": 0.5, "background": 0.25}
    out = tritri.render(verts, colors, opacity, backend=backend, **kw)
    ref = render_dense(verts.cpu(), colors.cpu(), opacity.cpu(), **kw)
    a = torch.tensor(1 / 255)
    expected = (colors.cpu()[0] * a + 0.25 * (1 - a))[:, None, None].expand(3, 8, 8)
    torch.testing.assert_close(ref, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.cpu(), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("poison", ["nan_vertex", "inf_color", "nan_opacity", "zero_area"])
def test_bad_triangle_is_isolated(backend, poison):
    verts, colors, opacity = random_scene(2, 6, 3, seed=21, device=backend_device(backend))
    bad = 3
    if poison == "nan_vertex":
        verts[1, bad, 0, 0] = float("nan")
    elif poison == "inf_color":
        colors[1, bad, 2] = float("inf")
    elif poison == "nan_opacity":
        opacity[1, bad] = float("nan")
    else:  # all three vertices on one line
        verts[1, bad] = torch.tensor([[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]])
    leaves = [t.clone().requires_grad_() for t in (verts, colors, opacity)]
    img = tritri.render(*leaves, height=16, width=16, backend=backend)
    img.sum().backward()
    # the bad triangle draws nothing: same image as without it
    keep = [n for n in range(6) if n != bad]
    clean = render_dense(verts[1:, keep], colors[1:, keep], opacity[1:, keep], height=16, width=16)
    torch.testing.assert_close(img[1:], clean, atol=2e-6, rtol=0)
    for t in leaves:
        assert torch.isfinite(t.grad).all()
        assert (t.grad[1, bad] == 0).all()
    assert leaves[0].grad[0].abs().sum() > 0  # the other image still learns


@pytest.mark.parametrize("backend", BACKENDS)
def test_unbatched_equals_batched(backend):
    verts, colors, opacity = random_scene(2, 5, 3, per_vertex=True, seed=8,
                                          device=backend_device(backend))  # fmt: skip
    batched = tritri.render(verts, colors, opacity, height=12, width=9, backend=backend,
                            return_alpha=True)  # fmt: skip
    single = tritri.render(verts[0], colors[0], opacity[0], height=12, width=9, backend=backend,
                           return_alpha=True)  # fmt: skip
    assert single[0].shape == (3, 12, 9) and single[1].shape == (1, 12, 9)
    torch.testing.assert_close(single[0], batched[0][0])
    torch.testing.assert_close(single[1], batched[1][0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_triangles_renders_background(backend):
    bg = torch.tensor([0.2, 0.4, 0.6], requires_grad=True)
    img, alpha = tritri.render(torch.zeros(2, 0, 3, 2), torch.zeros(2, 0, 3), height=4, width=5,
                               background=bg, return_alpha=True, backend=backend)  # fmt: skip
    assert img.shape == (2, 3, 4, 5)
    torch.testing.assert_close(img, bg[None, :, None, None].expand(2, 3, 4, 5).detach())
    assert (alpha == 0).all()
    img.sum().backward()
    torch.testing.assert_close(bg.grad, torch.full((3,), 40.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_precision_in_float32_math(backend):
    """fp16 in: the math runs in float32 on the fp16 values, so the image is the float32 image of
    those values rounded to fp16, and each gradient is the float32 gradient (of the same fp16
    upstream gradient: the image is fp16) rounded to fp16."""
    device = backend_device(backend)
    scene = random_scene(1, 6, 3, seed=4, device=device)
    half = [t.half().requires_grad_() for t in scene]
    full = [t.detach().float().requires_grad_() for t in half]  # the same values, in float32
    out_half = tritri.render(*half, height=16, width=16, backend=backend)
    out_full = tritri.render(*full, height=16, width=16, backend=backend)
    assert out_half.dtype == torch.float16
    torch.testing.assert_close(out_half.float(), out_full.half().float(), atol=1e-3, rtol=0)
    weights = torch.randn(out_full.shape, generator=torch.Generator().manual_seed(5)).to(device)
    weights = weights.half().float()  # what reaches an fp16 image
    (out_half.float() * weights).sum().backward()
    (out_full * weights).sum().backward()
    for name, h, f in zip(("verts", "colors", "opacity"), half, full, strict=True):
        assert h.grad.dtype == torch.float16, name
        scale = f.grad.abs().max().item()
        assert scale > 0, name
        # one fp16 rounding of the float32 gradient (and atomics' order on a GPU)
        torch.testing.assert_close(h.grad.float(), f.grad, rtol=2e-3, atol=1e-4 * scale,
                                   msg=lambda m, name=name: f"d {name}: {m}")  # fmt: skip


def test_bfloat16_on_torch_backend():
    verts, colors, opacity = random_scene(1, 6, 3, seed=4)
    full = tritri.render(verts, colors, opacity, height=16, width=16, backend="torch")
    out = tritri.render(verts.bfloat16(), colors.bfloat16(), opacity.bfloat16(), height=16,
                        width=16, backend="torch")  # fmt: skip
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), full, atol=3e-2, rtol=0)


def test_triangle_renderer_module():
    verts, colors, opacity = random_scene(2, 5, 3, seed=12)
    bg = torch.nn.Parameter(torch.tensor([0.1, 0.2, 0.3]))
    module = tritri.TriangleRenderer(10, 14, sigma=0.7, background=bg, backend="torch")
    assert [p is bg for p in module.parameters()] == [True]
    out = module(verts, colors, opacity)
    expected = render_dense(verts, colors, opacity, height=10, width=14, sigma=0.7,
                            background=bg.detach())  # fmt: skip
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=0)
    out.sum().backward()
    assert bg.grad is not None and (bg.grad > 0).all()
    buffered = tritri.TriangleRenderer(4, 4, background=torch.ones(3))
    assert "background" in dict(buffered.named_buffers())


V, COL = torch.rand(2, 4, 3, 2), torch.rand(2, 4, 3)
BAD_INPUTS = [
    (dict(verts=torch.rand(2, 4, 3)), ValueError, "verts"),
    (dict(verts=torch.rand(2, 4, 4, 2)), ValueError, "verts"),
    (dict(verts=torch.randint(0, 2, (2, 4, 3, 2))), TypeError, "verts"),
    (dict(colors=torch.rand(3, 4, 3)), ValueError, "colors"),
    (dict(colors=torch.rand(2, 5, 3)), ValueError, "colors"),
    (dict(colors=torch.rand(2, 4, 2, 3)), ValueError, "colors"),
    (dict(colors=torch.randint(0, 2, (2, 4, 3))), TypeError, "colors"),
    (dict(opacity=torch.rand(2, 5)), ValueError, "opacity"),
    (dict(opacity=torch.ones(2, 4, dtype=torch.int64)), TypeError, "opacity"),
    (dict(background=torch.rand(4)), ValueError, "background"),
    (dict(background=torch.rand(3, 3)), ValueError, "background"),
    (dict(background="white"), TypeError, "background"),
    (dict(height=0), ValueError, "height"),
    (dict(width=2.5), ValueError, "width"),
    (dict(sigma=0.0), ValueError, "sigma"),
    (dict(sigma=-1.0), ValueError, "sigma"),
    (dict(backend="cuda"), ValueError, "backend"),
    (dict(opacity=torch.rand(2, 4, device="meta")), ValueError, "opacity"),
]


@pytest.mark.parametrize("override,error,name", BAD_INPUTS)
def test_bad_input_names_the_argument(override, error, name):
    kwargs = dict(verts=V, colors=COL, opacity=None, height=8, width=8, sigma=0.5)
    kwargs.update(override)
    with pytest.raises(error, match=name):
        tritri.render(**kwargs)


def test_triton_on_cpu_without_interpreter_is_a_clear_error():
    code = (
        "import torch, tritri\n"
        "try:\n"
        "    tritri.render(torch.rand(1, 2, 3, 2), torch.rand(1, 2, 3), height=4, width=4,"
        " backend='triton')\n"
        "except RuntimeError as err:\n"
        "    print('ERR', err)\n"
        "print('AUTO', tritri.render(torch.rand(1, 2, 3, 2), torch.rand(1, 2, 3), height=4,"
        " width=4).shape)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout  # fmt: skip
    assert "ERR" in out and "TRITON_INTERPRET=1" in out
    assert "AUTO torch.Size([1, 3, 4, 4])" in out  # auto renders on the CPU (numba, else torch)


@pytest.mark.triton
def test_torch_compile_fullgraph_matches_eager():
    verts, colors, opacity = random_scene(1, 5, 3, seed=30, device=triton_device())

    def step(v, c, o):
        img = tritri.render(v, c, o, height=12, width=12, backend="triton", background=0.5)
        return (img - 0.3).square().mean()

    def run(fn):
        leaves = [t.clone().requires_grad_() for t in (verts, colors, opacity)]
        loss = fn(*leaves)
        loss.backward()
        return [loss.detach()] + [t.grad for t in leaves]

    eager = run(step)
    compiled = run(torch.compile(step, backend="aot_eager", fullgraph=True))
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.triton
def test_custom_op_passes_opcheck():
    from tritri.geometry import prepare_triangles
    from tritri.kernels.ops import rasterize

    verts, colors, opacity = random_scene(1, 3, 2, seed=31, device=triton_device())
    prep = prepare_triangles(verts, colors, opacity, 8, 8, 0.5)
    args = (prep.edges.detach().requires_grad_(), prep.edges.new_empty(0),
            prep.colors.detach().requires_grad_(), prep.opacity.detach().requires_grad_(),
            prep.cull, 8, 8, 8, 4, 1, 4, 1, "scan", 16, False)  # fmt: skip
    torch.library.opcheck(rasterize, args, test_utils=("test_schema", "test_faketensor",
                                                       "test_autograd_registration"))  # fmt: skip


@pytest.mark.gpu
def test_gpu_large_scene_matches_reference():
    from render_helpers import assert_close_all, image_and_grads, reference_fn

    scene = random_scene(2, 300, 3, seed=40, device="cuda")

    def ours(v, c, o, bg):
        return tritri.render(v, c, o, height=128, width=160, return_alpha=True, backend="triton")

    assert_close_all(image_and_grads(ours, *scene), image_and_grads(reference_fn(128, 160, 0.5),
                                                                     *scene))  # fmt: skip


@pytest.mark.gpu
def test_gpu_bfloat16_and_inductor():
    verts, colors, opacity = random_scene(4, 200, 3, seed=41, device="cuda")
    full = tritri.render(verts, colors, opacity, height=64, width=64)
    bf = tritri.render(verts.bfloat16(), colors.bfloat16(), opacity.bfloat16(), height=64, width=64)
    assert bf.dtype == torch.bfloat16
    torch.testing.assert_close(bf.float(), full, atol=3e-2, rtol=0)

    def step(v, c, o):
        return tritri.render(v, c, o, height=64, width=64).mean()

    compiled = torch.compile(step, fullgraph=True)
    torch.testing.assert_close(compiled(verts, colors, opacity), step(verts, colors, opacity))


def _empty_scene(case: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A scene where nothing draws (verts, colors, opacity): every triangle off-screen, of zero
    area, NaN or of opacity 0, or no triangles (N = 0), or no images (B = 0)."""
    B, N = {"B=0": (0, 4), "N=0": (2, 0), "B=0,N=0": (0, 0)}.get(case, (2, 4))
    verts, colors, opacity = random_scene(max(B, 1), max(N, 1), 3, seed=31)
    verts, colors, opacity = (t[:B, :N].clone() for t in (verts, colors, opacity))
    if case == "offscreen":
        verts = verts + 5.0
    elif case == "zero_area":
        verts = torch.full_like(verts, 0.5)
    elif case == "nan":
        verts[..., 0, 0] = float("nan")
    elif case == "opacity_0":
        opacity = torch.zeros_like(opacity)
    return verts, colors, opacity


@pytest.mark.parametrize("backend", ["numba", "torch", "triton"])
@pytest.mark.parametrize(
    "case", ["offscreen", "zero_area", "nan", "opacity_0", "N=0", "B=0", "B=0,N=0"]
)
def test_a_scene_that_draws_nothing_is_the_background_with_zero_gradients(backend, case):
    """Every backend alike (docs/SPEC.md sections 2.1, 2.4): the background, alpha 0, and an image
    that requires grad, with a zero gradient for every input (not None, not an error)."""
    if backend == "numba":
        pytest.importorskip("numba")
    device = backend_device(backend)
    scene = [t.to(device).requires_grad_() for t in _empty_scene(case)]
    B = scene[0].shape[0]
    image, alpha = tritri.render(*scene, height=9, width=7, background=0.25, return_alpha=True,
                                 backend=backend)  # fmt: skip
    assert image.shape == (B, 3, 9, 7) and alpha.shape == (B, 1, 9, 7)
    assert (image == 0.25).all() and (alpha == 0).all()
    assert image.requires_grad and alpha.requires_grad
    (image.sum() + alpha.sum()).backward()
    for t in scene:
        assert t.grad is not None and t.grad.shape == t.shape
        assert (t.grad == 0).all()


@pytest.mark.parametrize("B,N", [(0, 4), (2, 0), (0, 0)])
def test_binning_and_the_torch_rasterizer_take_empty_batches(B, N):
    """The torch backend's own entry (below render's shortcut) with B = 0 or N = 0: empty lists,
    the background's transmittance (it raised IndexError in the binning at B = 0)."""
    from tritri.binning import bin_triangles
    from tritri.cpu import rasterize_torch
    from tritri.geometry import prepare_triangles

    verts, colors, opacity = (t[:B, :N] for t in random_scene(2, 4, 3, seed=5))
    prep = prepare_triangles(verts, colors, opacity, 9, 7, 0.5)
    bins = bin_triangles(prep.edges, prep.cull, 9, 7, 8)
    assert bins.start.shape == (B * 2,) and (bins.end == bins.start).all()
    color, T = rasterize_torch(prep, 9, 7)
    assert color.shape == (B, 3, 9, 7) and T.shape == (B, 9, 7)
    assert (color == 0).all() and (T == 1).all()


@pytest.mark.parametrize(
    "backend,deterministic", [("numba", None), ("torch", None), ("triton", False), ("triton", True)]
)
@pytest.mark.parametrize("per_vertex", [False, True])
def test_a_single_triangle_has_gradients(backend, deterministic, per_vertex):
    """B = N = 1 (found by tests/test_render_properties.py): the Triton backward returned views of
    one buffer, which its custom op may not (torch raised on every single-triangle backward)."""
    from render_helpers import check_against_reference

    if backend == "numba":
        pytest.importorskip("numba")
    scene = random_scene(1, 1, 3, per_vertex=per_vertex, seed=7, spread=(0.0, 1.0),
                         device=backend_device(backend))  # fmt: skip

    def fn(v, c, o, bg):
        return tritri.render(v, c, o, height=10, width=9, background=bg, return_alpha=True,
                             backend=backend, deterministic=deterministic)  # fmt: skip

    _, _, d_verts, d_colors, d_opacity = check_against_reference(fn, scene, 10, 9, 0.5)
    assert d_verts.abs().sum() > 0 and d_colors.abs().sum() > 0
