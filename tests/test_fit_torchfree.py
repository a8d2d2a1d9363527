"""The numpy cores of the fit's starts, triangles.json I/O, image export and monitor agree with the
torch-facing functions that wrap them (tests/test_imports.py checks they import without torch)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import tritri.fitting.mosaic
from tritri.fitting.export import (
    load_image,
    load_image_array,
    save_comparison,
    save_png,
    save_svg,
    to_uint8,
)
from tritri.fitting.numeric import logit, sigmoid
from tritri.fitting.params import (
    TriangleParams,
    init_delaunay,
    init_random,
    load_triangles_json,
    save_triangles_json,
)
from tritri.fitting.starts import (
    delaunay_start,
    random_start,
    read_triangles_json,
    write_triangles_json,
)
from tritri.losses.monitor import LossMonitor

KEYS = ("verts", "colors", "opacity", "background")


def _close_to_params(values, params, atol=1e-3 + 1e-6):
    """The values equal the params' (sigmoids of logits clamped to [1e-3, 1 - 1e-3])."""
    assert values["verts"].shape[0] == params.n_triangles
    for key, tensor in zip(KEYS, params(), strict=True):
        assert values[key].dtype == np.float32, key
        np.testing.assert_allclose(values[key], tensor.detach().numpy(), atol=atol, err_msg=key)


def test_sigmoid_and_logit():
    x = np.array([-1000.0, -3.0, 0.0, 3.0, 1000.0], dtype=np.float32)
    s = sigmoid(x)
    assert s.dtype == np.float32 and np.isfinite(s).all()
    np.testing.assert_allclose(s, torch.sigmoid(torch.from_numpy(x)).numpy(), atol=1e-7)
    p = np.array([0.0, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(logit(p), torch.logit(torch.from_numpy(p), eps=1e-3).numpy())
    np.testing.assert_allclose(sigmoid(logit(np.array([0.2, 0.7]))), [0.2, 0.7])


def test_delaunay_start_matches_init_delaunay():
    target = load_image_array(None, 48)
    values = delaunay_start(target, 40)
    _close_to_params(values, init_delaunay(torch.from_numpy(target), 40))
    assert set(values) == set(KEYS)
    assert values["verts"].shape == (40, 3, 2) and values["colors"].shape == (40, 3)
    assert values["opacity"].shape == (40,) and values["background"].shape == (3,)
    assert np.allclose(values["opacity"], 0.95)
    np.testing.assert_allclose(values["background"], target.mean(axis=(1, 2)), atol=1e-6)
    # larger triangles first
    d0 = values["verts"][:, 1] - values["verts"][:, 0]
    d1 = values["verts"][:, 2] - values["verts"][:, 0]
    area = np.abs(d0[:, 0] * d1[:, 1] - d0[:, 1] * d1[:, 0])
    assert area[0] >= area[-1]
    other = delaunay_start(target, 40, opacity=0.5, grow_px=0.0)
    assert np.allclose(other["opacity"], 0.5)
    _close_to_params(other, init_delaunay(torch.from_numpy(target), 40, opacity=0.5, grow_px=0.0))


def test_delaunay_start_fills_up_with_faint_random_triangles(monkeypatch):
    real = tritri.fitting.mosaic.delaunay_mosaic

    def short(image, n_triangles, seed=0):  # degenerate sampling: 5 triangles short
        m = real(image, n_triangles, seed)
        return dataclasses.replace(m, verts=m.verts[:-5], colors=m.colors[:-5])

    monkeypatch.setattr(tritri.fitting.mosaic, "delaunay_mosaic", short)
    target = load_image_array(None, 32)
    values = delaunay_start(target, 20, seed=3)
    assert values["verts"].shape == (20, 3, 2)
    assert np.allclose(values["opacity"][:15], 0.95) and np.allclose(values["opacity"][15:], 0.05)
    fill = random_start(target, 5, seed=4, size=0.02)
    np.testing.assert_array_equal(values["verts"][15:], fill["verts"])
    np.testing.assert_array_equal(values["colors"][15:], fill["colors"])
    _close_to_params(values, init_delaunay(torch.from_numpy(target), 20, seed=3))


def test_random_start():
    target = load_image_array(None, 40)
    a = random_start(target, 30, seed=1)
    assert {k: v.dtype for k, v in a.items()} == dict.fromkeys(KEYS, np.dtype(np.float32))
    assert a["verts"].shape == (30, 3, 2) and a["colors"].shape == (30, 3)
    assert np.array_equal(a["verts"], random_start(target, 30, seed=1)["verts"])
    assert not np.array_equal(a["verts"], random_start(target, 30, seed=2)["verts"])
    assert np.allclose(a["opacity"], 0.5)
    _close_to_params(a, init_random(torch.from_numpy(target), 30, seed=1))
    with pytest.raises(ValueError, match="n_triangles must be >= 1"):
        random_start(target, 0)
    with pytest.raises(ValueError, match="target must be a"):
        random_start(target[0], 3)


def test_write_triangles_json_is_byte_identical_to_save(tmp_path):
    target = load_image(None, 32)
    params = init_delaunay(target, 24)
    kwargs = {"width": 32, "height": 32, "sigma": 0.5, "extra": {"psnr": 21.25, "steps": 3}}
    a = save_triangles_json(params, tmp_path / "a.json", **kwargs)
    b = write_triangles_json(params.values(), tmp_path / "b.json", **kwargs)
    assert a.read_bytes() == b.read_bytes()
    # float32 values (what the numpy loop holds) and tensors write the same file
    v, c, o, bg = params()
    c32 = write_triangles_json(
        {k: t.detach().numpy() for k, t in zip(KEYS, (v, c, o, bg), strict=True)},
        tmp_path / "c.json",
        **kwargs,
    )
    d = write_triangles_json(dict(zip(KEYS, (v, c, o, bg), strict=True)), tmp_path / "d.json",
                             **kwargs)  # fmt: skip
    assert c32.read_bytes() == a.read_bytes() == d.read_bytes()


def test_write_triangles_json_layout(tmp_path):
    values = {
        "verts": np.array([[[0.1234567, 0.5], [1.0, 0.0], [0.25, 1.0 / 3.0]]]),
        "colors": np.array([[0.2, 0.4, 0.6]]),
        "opacity": np.array([0.9]),
        "background": np.array([1.0, 0.5, 0.0]),
    }
    path = write_triangles_json(values, tmp_path / "t.json", width=8, height=6, sigma=1)
    assert path.read_text() == (
        '{"format":"tritri-triangles","version":1,"width":8,"height":6,"sigma":1.0,'
        '"n_triangles":1,"background":[1.0,0.5,0.0],'
        '"verts":[[[0.123457,0.5],[1.0,0.0],[0.25,0.333333]]],"colors":[[0.2,0.4,0.6]],'
        '"opacity":[0.9]}\n'
    )
    with pytest.raises(ValueError, match=r"colors must be \(1, 3\)"):
        write_triangles_json({**values, "colors": np.zeros((2, 3))}, tmp_path / "x.json",
                             width=8, height=6, sigma=1)  # fmt: skip


def test_read_triangles_json_round_trip(tmp_path):
    target = load_image_array(None, 24)
    values = random_start(target, 9, seed=5)
    path = write_triangles_json(values, tmp_path / "t.json", width=24, height=24, sigma=0.5,
                                extra={"psnr": 12.0})  # fmt: skip
    loaded, meta = read_triangles_json(path)
    assert meta == {"format": "tritri-triangles", "version": 1, "width": 24, "height": 24,
                    "sigma": 0.5, "n_triangles": 9, "psnr": 12.0}  # fmt: skip
    for key in KEYS:
        assert loaded[key].dtype == np.float32 and loaded[key].shape == values[key].shape
        np.testing.assert_allclose(loaded[key], values[key], atol=1e-6)
    params, meta2 = load_triangles_json(path)
    assert meta2 == meta
    _close_to_params(loaded, params, atol=2e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: "{", r"is not JSON \(Expecting property name"),
        (lambda d: "[]", r"is not a tritri triangles.json \(no 'format': 'tritri-triangles'\)"),
        (lambda d: {**d, "format": "x"}, "is not a tritri triangles.json"),
        (lambda d: {**d, "version": 2}, "unsupported version 2"),
        (lambda d: {**d, "verts": d["verts"][:-1]},
         r"malformed triangles \(ValueError: colors must be \(1, 3\), got \(2, 3\)\)"),
        (lambda d: {k: v for k, v in d.items() if k != "opacity"},
         r"malformed triangles \(KeyError: 'opacity'\)"),
        (lambda d: {**d, "opacity": ["0.5", "0.5"]}, r"malformed triangles \(TypeError"),
        (lambda d: {**d, "colors": [[0.1, 0.2], [0.3, 0.4, 0.5]]}, r"malformed triangles"),
        (lambda d: {**d, "background": [0.1, 0.2]}, r"malformed triangles \(ValueError"),
        (lambda d: {**d, "verts": [], "colors": [], "opacity": []}, "holds no triangles"),
    ],
)  # fmt: skip
def test_read_triangles_json_errors(tmp_path, change, message):
    values = random_start(load_image_array(None, 16), 2)
    good = write_triangles_json(values, tmp_path / "good.json", width=16, height=16, sigma=0.5)
    data = change(json.loads(good.read_text()))
    bad = tmp_path / "bad.json"
    bad.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(ValueError, match=message) as err:
        read_triangles_json(bad)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)
    with pytest.raises(ValueError, match=message):  # the torch wrapper says the same
        load_triangles_json(bad)


def test_read_triangles_json_unreadable(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        read_triangles_json(tmp_path)  # a directory
    with pytest.raises(ValueError, match="cannot read"):
        read_triangles_json(tmp_path / "missing.json")
    with pytest.raises(ValueError, match=r"verts must be \(N, 3, 2\), got \(3, 2\)"):
        TriangleParams(torch.rand(3, 2), torch.rand(3, 3), torch.rand(3), torch.zeros(3))


def test_export_takes_arrays_and_tensors(tmp_path):
    tensor = load_image(None, 20)
    array = load_image_array(None, 20)
    assert isinstance(array, np.ndarray) and array.dtype == np.float32
    assert array.shape == (3, 20, 20) and array.flags.c_contiguous
    assert np.array_equal(tensor.numpy(), array)
    # out of range, with grad: clamped the same way
    wild = (tensor * 1.4 - 0.2).requires_grad_()
    u8 = to_uint8(wild)
    assert u8.dtype == np.uint8 and u8.shape == (20, 20, 3)
    expected = (wild.detach().clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    assert np.array_equal(u8, expected)
    assert np.array_equal(to_uint8(wild.detach().numpy()), u8)
    assert np.array_equal(
        to_uint8(wild.detach().double()), to_uint8(wild.detach().double().numpy())
    )
    a = save_png(wild, tmp_path / "a.png")
    b = save_png(wild.detach().numpy(), tmp_path / "b.png")
    assert a.read_bytes() == b.read_bytes()
    a = save_comparison(tensor, wild, tmp_path / "ca.png")
    b = save_comparison(array, wild.detach().numpy(), tmp_path / "cb.png")
    assert a.read_bytes() == b.read_bytes()
    params = init_delaunay(tensor, 8)
    v, c, o, bg = params()  # tensors requiring grad
    a = save_svg(v, c, o, bg, tmp_path / "a.svg", width=20, height=20, sigma=0.5)
    arrays = [t.detach().numpy() for t in (v, c, o, bg)]
    b = save_svg(*arrays, tmp_path / "b.svg", width=20, height=20, sigma=0.5)
    assert a.read_bytes() == b.read_bytes()
    with pytest.raises(FileNotFoundError):
        load_image_array(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read"):
        load_image_array(tmp_path / "text.png")
    with pytest.raises(ValueError, match="size must be >= 1"):
        load_image_array(None, 0)


def test_monitor_takes_numpy_images():
    rng = np.random.default_rng(0)
    batch = rng.random((3, 3, 10, 12)).astype(np.float32)
    batch[1, :, :, :6] = 0.5  # a smaller spread in image 1
    for image in (batch, batch[1]):
        a = LossMonitor(warn=False).log({"total": 1.0}, 0, image=image)["image_std"]
        b = LossMonitor(warn=False).log({"total": 1.0}, 0, image=torch.from_numpy(image))
        assert a == pytest.approx(b["image_std"], rel=1e-6)
    flat = np.full((3, 8, 8), 0.2, dtype=np.float32)
    monitor = LossMonitor(warn=False)
    record = monitor.log({"total": np.float64(1.0)}, 0, image=flat,
                         grad_norms={"l1": np.float32(0.5)})  # fmt: skip
    assert record["image_std"] == pytest.approx(0.0, abs=1e-7)
    assert record["warnings"] == ["uniform_image"]
    assert record["grad_norm/l1"] == 0.5
    for bad in (np.ones((8, 8)), np.ones((1, 1, 3, 8, 8)), [[1.0]]):
        with pytest.raises(ValueError, match=r"image must be a \(B, C, H, W\) or \(C, H, W\)"):
            LossMonitor().log({"total": 1.0}, image=bad)
