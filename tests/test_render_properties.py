"""The renderer's contract as properties over random scenes (hypothesis), on every CPU backend.

Scenes: B in 0..2 and N in 0..5 (zero included), sizes 1..20 px, sigma 0.2..3, flat or
per-vertex colors with 1, 3 or 4 channels, and triangles that are ordinary, off-screen, of zero
area (a point, or three points on a line), with a NaN vertex, an infinite color, a NaN opacity or
opacity 0. For each scene, on numba, torch and triton (under the interpreter, or CUDA) alike
(docs/SPEC.md sections 2.1-2.4):

- the image and alpha are finite and within [0, 1] (the inputs that are finite are);
- image, alpha and every gradient equal the float64 ``tritri.reference.render_dense`` within the
  tolerance the other tests use (tests/render_helpers.py: float32 rounding, pixels on a threshold
  left out, slivers widened), so the backends equal each other;
- every gradient is finite, and exactly zero for the triangles that draw nothing.

Run time: the ``ci`` profile of tests/conftest.py (a dozen derandomized examples, a few seconds);
``pytest --hypothesis-profile thorough tests/test_render_properties.py`` searches longer.
"""

from __future__ import annotations

import math

import pytest
import torch
from devices import interpreter_on
from render_helpers import check_against_reference

import tritri
from tritri.thresholds import ALPHA_MIN

hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")
given = hypothesis.given

KINDS = ("ordinary", "offscreen", "point", "collinear", "nan_vertex", "inf_color", "nan_opacity",
         "zero_opacity")  # fmt: skip
#: Coordinates on a 1/100 grid (positions in [-0.5, 1.5]: partly off the image, some on it).
_coord = st.integers(-50, 150).map(lambda k: k / 100)
_unit = st.integers(0, 100).map(lambda k: k / 100)


def _backends() -> list[tuple[str, torch.device]]:
    out = [("torch", torch.device("cpu"))]
    try:
        import numba  # noqa: F401

        out.append(("numba", torch.device("cpu")))
    except ImportError:
        pass
    if torch.cuda.is_available():
        out.append(("triton", torch.device("cuda")))
    elif interpreter_on():
        out.append(("triton", torch.device("cpu")))
    return out


@st.composite
def scenes(draw):
    """(verts, colors, opacity, background, height, width, sigma, kinds)."""
    B = draw(st.integers(0, 2))
    N = draw(st.integers(0, 5))
    height, width = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    sigma = draw(st.sampled_from([0.2, 0.5, 1.0, 3.0]))
    C = draw(st.sampled_from([1, 3, 4]))
    per_vertex = draw(st.booleans())
    kinds = [[draw(st.sampled_from(KINDS)) for _ in range(N)] for _ in range(B)]
    verts = torch.zeros(B, N, 3, 2)
    colors = torch.zeros((B, N, 3, C) if per_vertex else (B, N, C))
    opacity = torch.zeros(B, N)
    for b in range(B):
        for n in range(N):
            kind = kinds[b][n]
            tri = torch.tensor([[draw(_coord), draw(_coord)] for _ in range(3)])
            if kind == "offscreen":
                tri += draw(st.sampled_from([-3.0, 3.0]))
            elif kind == "point":
                tri[:] = tri[0]
            elif kind == "collinear":  # three points on an axis-parallel line: A2 exactly 0
                axis = draw(st.integers(0, 1))
                tri[:, axis] = tri[0, axis]
            elif kind == "nan_vertex":
                tri[draw(st.integers(0, 2)), draw(st.integers(0, 1))] = math.nan
            verts[b, n] = tri
            colors[b, n] = torch.tensor([draw(_unit) for _ in range(colors[b, n].numel())]).reshape(
                colors[b, n].shape
            )
            if kind == "inf_color":
                colors[b, n].view(-1)[0] = math.inf
            opacity[b, n] = {"nan_opacity": math.nan, "zero_opacity": 0.0}.get(
                kind, draw(st.integers(20, 100)) / 100
            )
    background = draw(
        st.one_of(st.none(), _unit, st.lists(_unit, min_size=C, max_size=C).map(torch.tensor))
    )
    return verts, colors, opacity, background, height, width, sigma, kinds


def draws_nothing(verts, opacity, kinds, height, width, sigma) -> torch.Tensor:
    """(B, N) bool: the triangles that draw nothing anywhere, by construction (non-finite values,
    exactly zero area, opacity 0) or because their largest alpha over the pixel centers is clearly
    below 1/255 (computed in float64, half the threshold: no float32 doubt)."""
    B, N = opacity.shape
    out = torch.zeros(B, N, dtype=torch.bool)
    if B * N == 0:
        return out
    v = verts.double() * torch.tensor([width, height], dtype=torch.float64)
    f64 = torch.float64
    py, px = torch.meshgrid(torch.arange(height, dtype=f64) + 0.5,
                            torch.arange(width, dtype=f64) + 0.5, indexing="ij")  # fmt: skip
    for b in range(B):
        for n in range(N):
            if kinds[b][n] not in ("ordinary", "offscreen"):
                out[b, n] = True
                continue
            q = v[b, n]
            area2 = ((q[1, 0] - q[0, 0]) * (q[2, 1] - q[0, 1])
                     - (q[1, 1] - q[0, 1]) * (q[2, 0] - q[0, 0]))  # fmt: skip
            if area2.abs() < 1e-3:  # a near-sliver: leave it to the reference comparison
                continue
            sign = 1.0 if area2 >= 0 else -1.0
            d = []
            for k in range(3):
                a, e = q[k], q[(k + 1) % 3] - q[k]
                d.append(sign * (e[0] * (py - a[1]) - e[1] * (px - a[0])) / e.norm())
            alpha = opacity[b, n].double() * torch.sigmoid(torch.stack(d).amin(0) / sigma)
            out[b, n] = bool(alpha.max() < ALPHA_MIN / 2)
    return out


def _fixed(B: int, N: int, kind: str = "ordinary"):
    """A hand-made scene for the edge cases every run must cover (hypothesis' own examples may
    miss them): one triangle (B = N = 1), no images, no triangles."""
    verts = torch.tensor([[0.1, 0.2], [0.9, 0.3], [0.4, 0.8]]).expand(B, N, 3, 2).clone()
    colors = torch.full((B, N, 3), 0.7)
    opacity = torch.full((B, N), 0.6 if kind == "ordinary" else 0.0)
    return verts, colors, opacity, 0.25, 7, 6, 0.5, [[kind] * N for _ in range(B)]


@given(scene=scenes())
@hypothesis.example(scene=_fixed(1, 1))
@hypothesis.example(scene=_fixed(1, 1, "zero_opacity"))
@hypothesis.example(scene=_fixed(0, 3))
@hypothesis.example(scene=_fixed(2, 0))
def test_every_cpu_backend_keeps_the_contract(scene):
    verts, colors, opacity, background, height, width, sigma, kinds = scene
    nothing = draws_nothing(verts, opacity, kinds, height, width, sigma)
    for backend, device in _backends():

        def fn(v, c, o, bg, backend=backend):
            return tritri.render(v, c, o, height=height, width=width, sigma=sigma,
                                 background=bg, return_alpha=True, backend=backend)  # fmt: skip

        moved = [t.to(device) for t in (verts, colors, opacity)]
        bg = background.to(device) if isinstance(background, torch.Tensor) else background
        context = f"backend {backend}, kinds {kinds}, {height}x{width}, sigma {sigma}"
        image, alpha, *grads = check_against_reference(
            fn, moved, height, width, sigma, background=bg, context=context
        )
        for name, t in (("image", image), ("alpha", alpha)):
            assert torch.isfinite(t).all(), f"{context}: {name} not finite"
            inside = (t >= -1e-6) & (t <= 1 + 1e-6)
            assert inside.all(), f"{context}: {name} outside [0, 1]"
        for name, g in zip(("verts", "colors", "opacity", "background"), grads, strict=False):
            assert g is not None and torch.isfinite(g).all(), f"{context}: d {name} not finite"
        for name, g in zip(("verts", "colors", "opacity"), grads, strict=False):
            dead = g.cpu()[nothing]
            assert (dead == 0).all(), f"{context}: d {name} of a triangle that draws nothing"
