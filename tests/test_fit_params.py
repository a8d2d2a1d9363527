"""Building blocks of ``tritri fit``: parameters, starts, JSON, SVG, image loading, reseeding."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

import tritri
from tritri.fitting import (
    FitLosses,
    TriangleParams,
    fit_triangles,
    init_delaunay,
    init_greedy,
    init_random,
    load_image,
    load_triangles_json,
    psnr,
    sample_image_path,
    save_svg,
    save_triangles_json,
)
from tritri.fitting.loop import _reseed
from tritri.fitting.objective import parse_losses


def test_sample_image_is_bundled_and_small():
    path = sample_image_path()
    assert path.is_file() and path.stat().st_size < 150_000
    assert (path.parent / "SOURCE.md").is_file()
    assert "public domain" in (path.parent / "SOURCE.md").read_text().lower()
    img = load_image(None)
    assert img.shape == (3, 256, 256) and img.dtype == torch.float32
    assert 0 <= img.min() and img.max() <= 1 and img.std() > 0.1


def test_load_image_resizes_the_longest_side(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("L", (100, 40), 200).save(path)  # grey, no alpha
    img = load_image(path, 50)
    assert img.shape == (3, 20, 50)
    assert torch.allclose(img, torch.full_like(img, 200 / 255), atol=1e-6)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read"):
        load_image(tmp_path / "text.png")


def test_params_round_trip_through_json(tmp_path):
    g = torch.Generator().manual_seed(0)
    verts = torch.rand(7, 3, 2, generator=g)
    colors = torch.rand(7, 3, generator=g) * 0.9 + 0.05
    opacity = torch.rand(7, generator=g) * 0.9 + 0.05
    params = TriangleParams(verts, colors, opacity, torch.tensor([0.2, 0.4, 0.6]))
    v, c, o, bg = params()
    assert torch.allclose(v, verts) and torch.allclose(c, colors, atol=1e-6)
    assert torch.allclose(o, opacity, atol=1e-6) and torch.allclose(
        bg, torch.tensor([0.2, 0.4, 0.6])
    )
    path = save_triangles_json(params, tmp_path / "t.json", width=30, height=20, sigma=0.5)
    data = json.loads(path.read_text())
    assert data["format"] == "tritri-triangles" and data["n_triangles"] == 7
    loaded, meta = load_triangles_json(path)
    assert (meta["width"], meta["height"], meta["sigma"]) == (30, 20, 0.5)
    for a, b in zip(params(), loaded(), strict=True):
        assert torch.allclose(a, b, atol=2e-6)
    with pytest.raises(ValueError, match="verts"):
        TriangleParams(torch.rand(3, 2), colors, opacity, torch.zeros(3))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        load_triangles_json(tmp_path / "bad.json")
    data["verts"] = data["verts"][:-1]
    (tmp_path / "short.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="malformed"):
        load_triangles_json(tmp_path / "short.json")


def test_starts():
    target = load_image(None, 48)
    rnd = init_random(target, 30, seed=1)
    assert rnd.n_triangles == 30
    assert torch.equal(rnd.verts, init_random(target, 30, seed=1).verts)
    dl = init_delaunay(target, 40)
    assert dl.n_triangles == 40
    v, c, o, bg = dl()
    assert torch.allclose(o, torch.full_like(o, 0.95))
    # Larger triangles are drawn first; the Delaunay start is far better than a random one.
    d0, d1 = v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]
    area = (d0[:, 0] * d1[:, 1] - d0[:, 1] * d1[:, 0]).abs()
    assert area[0] >= area[-1]

    def start_psnr(params):
        verts, colors, opacity, background = params()
        img = tritri.render(verts, colors, opacity, height=48, width=48, background=background,
                            backend="torch")  # fmt: skip
        return psnr(img, target)

    assert start_psnr(dl) > start_psnr(rnd) + 1
    # tritri fit's start: the numpy greedy start as parameters, better than the mosaic here
    gr = init_greedy(target, 40, seed=2)
    assert gr.n_triangles == 40
    from tritri.fitting.starts import greedy_start

    expected = greedy_start(target.numpy(), 40, seed=2)
    v, c, o, bg = gr()
    np.testing.assert_allclose(v.detach().numpy(), expected["verts"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(c.detach().numpy(), expected["colors"], atol=2e-3)  # logit clamp
    assert start_psnr(gr) > start_psnr(dl)


def test_fit_triangles_improves_and_handles_interrupt():
    target = load_image(None, 32)
    params = init_random(target, 12, seed=0)
    result = fit_triangles(params, target, steps=25, backend="torch", reseed_every=5)
    assert result.steps == 25 and not result.interrupted
    assert result.history[-1]["psnr"] > result.history[0]["psnr"] + 1
    assert result.image.shape == (3, 32, 32)

    class Stop(torch.nn.Module):
        calls = 0

        def forward(self, pred, target):
            self.calls += 1
            if self.calls == 3:
                raise KeyboardInterrupt
            return {"l1": (pred - target).abs().mean()}

    result = fit_triangles(params, target, steps=10, criterion=Stop(), backend="torch")
    assert result.interrupted and result.steps == 2 and len(result.history) == 2


def test_reseed_moves_dead_triangles_on_top():
    target = load_image(None, 32)
    params = init_random(target, 10, seed=0)
    with torch.no_grad():
        params.opacity_logits[2] = -10.0  # transparent
        params.verts[5] = torch.tensor([[2.0, 2.0], [2.1, 2.0], [2.0, 2.1]])  # off-screen
    alive = [i for i in range(10) if i not in (2, 5)]
    before = params.verts.detach().clone()
    opt = torch.optim.Adam(params.parameters(), lr=0.1)
    params().__getitem__(0).sum().backward()
    opt.step()
    marked = params.verts.detach().clone()
    state = opt.state[params.verts]["exp_avg"].clone()
    image = torch.zeros_like(target)
    k = _reseed(params, opt, image, target, np.random.default_rng(0), max_fraction=0.5)
    assert k == 2
    # The survivors keep their order (and Adam state) at the bottom; the respawned are on top.
    assert torch.equal(params.verts[:8].detach(), marked[alive])
    assert torch.equal(opt.state[params.verts]["exp_avg"][:8], state[alive])
    assert (opt.state[params.verts]["exp_avg"][8:] == 0).all()
    _, _, opacity, _ = params()
    assert torch.allclose(opacity[8:], torch.full((2,), 0.5))
    assert ((params.verts[8:] > -0.5) & (params.verts[8:] < 1.5)).all()
    assert not torch.equal(before, params.verts.detach())


def test_svg_writer(tmp_path):
    verts = np.array([[[0, 0], [1, 0], [0, 1]], [[0.5, 0.5], [1, 1], [0.5, 1]]], dtype=float)
    path = save_svg(verts, np.array([[1, 0, 0], [0, 0.5, 1]]), np.array([1.0, 0.25]),
                    np.array([1, 1, 1]), tmp_path / "t.svg", width=20, height=10,
                    title="a < b")  # fmt: skip
    root = ET.parse(path).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    polys = root.findall(f"{ns}polygon")
    assert [p.get("fill") for p in polys] == ["#ff0000", "#0080ff"]
    assert [p.get("fill-opacity") for p in polys] == ["0.990", "0.250"]
    assert polys[1].get("points") == "10.00,5.00 20.00,10.00 10.00,10.00"
    assert root.find(f"{ns}rect").get("fill") == "#ffffff"
    assert root.find(f"{ns}title").text == "a < b"


def test_fit_losses():
    assert parse_losses("l1, MSE") == ("l1", "mse")
    with pytest.raises(ValueError, match="unknown loss"):
        parse_losses("l1,foo")
    with pytest.raises(ValueError, match="twice"):
        parse_losses("l1,l1")
    crit = FitLosses(("mse", "l1"))
    a, b = torch.zeros(1, 3, 8, 8), torch.full((1, 3, 8, 8), 0.5)
    out = crit(a, crit.encode(b))
    assert list(out) == ["mse", "l1"]
    assert torch.isclose(out["mse"], torch.tensor(0.25)) and torch.isclose(
        out["l1"], torch.tensor(0.5)
    )
    assert crit.min_size == 1 and crit.image_losses is None
    with_vgg = FitLosses(("l1", "perceptual"), weights=None)
    assert with_vgg.min_size == 8
    out = with_vgg(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    assert set(out) == {"l1", "perceptual"} and out["perceptual"] > 0
