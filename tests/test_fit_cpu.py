"""The torch-free CPU fit (``tritri.fitting.cpu_fit``) and what it is made of.

- the numba setup (:mod:`tritri.fitting.cpu_geometry`) against
  :func:`tritri.geometry.prepare_triangles` (planes, culling data, bad triangles) and its
  hand-derived backward against torch autograd;
- one step of the loop (render, objective, every parameter gradient) against the dense reference
  and torch's :class:`tritri.losses.GeometricMeanLoss` through autograd;
- the loop itself (pruning, relocation, best step, Ctrl-C) and ``tritri fit`` choosing it without
  importing torch, beside the torch loop on the same start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from fit_helpers import smooth_target

from tritri.fitting import cpu_fit  # noqa: E402
from tritri.fitting.cpu_fit import _logits, _objective, _Scene, fit_triangles_cpu  # noqa: E402
from tritri.fitting.cpu_geometry import prepare_backward, prepare_flat  # noqa: E402
from tritri.fitting.numeric import psnr  # noqa: E402
from tritri.geometry import prepare_triangles  # noqa: E402
from tritri.reference import render_dense  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _triangles(M=40, seed=0, bad=True):
    rng = np.random.default_rng(seed)
    center = rng.random((M, 1, 2)) * 1.2 - 0.1
    verts = (center + (rng.random((M, 3, 2)) - 0.5) * 0.5).astype(np.float32)
    colors = rng.random((M, 3)).astype(np.float32)
    opacity = (rng.random(M) * 0.9 + 0.05).astype(np.float32)
    if bad:
        verts[3] = verts[3, 0]  # degenerate
        verts[5, 1, 0] = np.nan  # non-finite vertex
        colors[7, 2] = np.inf  # non-finite color
        opacity[9] = 0.002  # never reaches alpha 1/255: culled
    return verts, colors, opacity


def _prep_np(verts, colors, opacity, H, W, sigma):
    B, M = 1, verts.shape[0]
    out = (
        np.empty((B, M, 9), np.float32),
        np.empty((B, M, 1, 3), np.float32),
        np.empty((B, M), np.float32),
        np.empty((B, M, 5), np.float32),
        np.empty((B, M), np.uint8),
    )
    prepare_flat(verts[None], colors[None], opacity[None], H, W, sigma, *out)
    return out


def test_setup_matches_prepare_triangles():
    H, W, sigma = 29, 45, 0.7
    verts, colors, opacity = _triangles()
    edges, cols, op, cull, valid = _prep_np(verts, colors, opacity, H, W, sigma)
    ref = prepare_triangles(
        *(torch.from_numpy(x)[None] for x in (verts, colors, opacity)), H, W, sigma
    )
    np.testing.assert_allclose(edges, ref.edges.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cols, ref.colors.detach().numpy())
    np.testing.assert_array_equal(op, ref.opacity.detach().numpy())
    want = ref.cull.numpy()
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(cull), finite)
    np.testing.assert_allclose(cull[finite], want[finite], rtol=1e-5, atol=1e-4)
    assert valid[0].tolist() == [0 if i in (3, 5, 7) else 1 for i in range(len(opacity))]


def test_setup_backward_matches_autograd():
    H, W, sigma = 31, 23, 0.5
    verts, colors, opacity = _triangles(seed=1)
    g = np.random.default_rng(2).standard_normal((1, len(opacity), 9)).astype(np.float32)
    *_, valid = _prep_np(verts, colors, opacity, H, W, sigma)
    got = np.empty((1, *verts.shape), np.float32)
    prepare_backward(verts[None], valid, H, W, sigma, g, got)
    v = torch.from_numpy(verts)[None].requires_grad_()
    ref = prepare_triangles(
        v, torch.from_numpy(colors)[None], torch.from_numpy(opacity)[None], H, W, sigma
    )
    (ref.edges * torch.from_numpy(g)).sum().backward()
    want = torch.nan_to_num(v.grad).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert not got[0, [3, 5, 7]].any()


@pytest.mark.parametrize("names", [("l1", "mse"), ("mse",), ("l1",)])
def test_one_step_matches_dense_reference_and_balancer(names):
    """Render, objective and every gradient of the CPU loop against render_dense + autograd +
    GeometricMeanLoss (odd size, bad triangles, several tiles)."""
    from tritri.losses import GeometricMeanLoss

    H, W, sigma = 37, 53, 0.7
    verts, colors, opacity = _triangles(seed=3)
    background = np.array([0.2, 0.5, 0.9], np.float32)
    target = np.random.default_rng(4).random((3, H, W)).astype(np.float32)
    start = {"verts": verts, "colors": colors, "opacity": opacity, "background": background}
    params = _logits(start)
    scene = _Scene(params, H, W, sigma)
    image = scene.render(target)
    stats, w_abs, w_sq, quality, std = _objective(scene.sums, image.shape, names)
    grads = scene.backward(target, w_abs, w_sq)
    assert quality == pytest.approx(psnr(image, target), abs=1e-6)
    assert std == pytest.approx(float(image.astype(np.float64).std(axis=(1, 2)).max()), rel=1e-5)

    leaves = {k: torch.from_numpy(v.copy()).requires_grad_() for k, v in params.items()}
    ref_image = render_dense(
        leaves["verts"][None], torch.sigmoid(leaves["color_logits"])[None],
        torch.sigmoid(leaves["opacity_logits"])[None], height=H, width=W, sigma=sigma,
        background=torch.sigmoid(leaves["background_logits"]),
    )[0]  # fmt: skip
    np.testing.assert_allclose(image, ref_image.detach().numpy(), atol=2e-5)
    diff = ref_image - torch.from_numpy(target)
    losses = {"l1": diff.abs().mean(), "mse": diff.square().mean()}
    balancer = GeometricMeanLoss()
    balancer({n: losses[n] for n in names}).backward()
    for key, value in balancer.stats.items():
        assert stats[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    for key, leaf in leaves.items():
        want = torch.nan_to_num(leaf.grad).numpy()
        np.testing.assert_allclose(
            grads[key], want, rtol=1e-3, atol=2e-3 * np.abs(want).max(), err_msg=key
        )


def test_fit_prunes_relocates_and_improves():
    from tritri.fitting.starts import delaunay_start

    target = smooth_target()
    start = delaunay_start(target, 24, seed=0)
    records = []
    result = fit_triangles_cpu(start, target, steps=40, keep=12, on_log=records.append)
    assert result.values["verts"].shape == (12, 3, 2)
    assert result.values["colors"].shape == (12, 3) and result.values["opacity"].shape == (12,)
    assert result.steps == 40 and [r["step"] for r in records] == list(range(40))
    start_psnr = psnr(cpu_fit.render_cpu(start, *target.shape[1:], 0.5), target)
    assert result.psnr > start_psnr + 2
    again = cpu_fit.render_cpu(result.values, *target.shape[1:], 0.5)
    assert psnr(again, target) == pytest.approx(result.psnr, abs=1e-4)
    assert {"total", "loss/l1", "loss/mse", "weight/l1", "log/mse", "psnr"} <= set(records[-1])
    assert np.all(np.isfinite(result.image))


def test_fit_interrupted_keeps_the_steps_done(monkeypatch):
    target = smooth_target(seed=1)
    from tritri.fitting.starts import random_start

    start = random_start(target, 20, seed=0)
    real = _Scene.backward
    calls = {"n": 0}

    def backward(self, *args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(_Scene, "backward", backward)
    result = fit_triangles_cpu(start, target, steps=30, keep=10)
    assert result.interrupted and result.steps == 3
    assert result.values["verts"].shape == (10, 3, 2)  # pruned to keep even mid-pruning


def test_bad_arguments():
    target = smooth_target()
    from tritri.fitting.starts import random_start

    start = random_start(target, 5)
    with pytest.raises(ValueError, match="losses"):
        fit_triangles_cpu(start, target, steps=1, losses=("lpips",))
    with pytest.raises(ValueError, match="keep"):
        fit_triangles_cpu(start, target, steps=1, keep=9)
    with pytest.raises(ValueError, match="target"):
        fit_triangles_cpu(start, target[0], steps=1)


def _cli(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TORCH_HOME"] = str(tmp_path / "torch_home")
    code = (
        "import sys; from tritri.cli import main; rc = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    return subprocess.run(
        [sys.executable, "-c", code, "fit", *args], env=env, capture_output=True, text=True,
        timeout=300, cwd=tmp_path,
    )  # fmt: skip


def test_cli_fits_on_the_cpu_without_torch(tmp_path):
    out = tmp_path / "run"
    proc = _cli(tmp_path, "--size", "40", "-n", "12", "--steps", "25", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "on cpu" in proc.stderr and "GeometricMeanLoss" in proc.stderr
    assert "VGG16 weights are not available offline" in proc.stderr  # torch's hub, unread
    for name in ("final.png", "comparison.png", "triangles.svg", "triangles.json", "loss.png"):
        assert (out / name).is_file(), name
    data = json.loads((out / "triangles.json").read_text())
    assert data["n_triangles"] == 12 and data["steps"] == 25
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 25 and "weight/mse" in json.loads(lines[-1])
    # continue from it, still without torch
    proc = _cli(tmp_path, "--size", "40", "--steps", "3", "--init", str(out / "triangles.json"),
                "--out", str(tmp_path / "more"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "more" / "triangles.json").read_text())["n_triangles"] == 12
    assert "on the CPU" not in proc.stderr
    # with the weights in the hub cache (found without torch): the note says why not VGG
    from tritri.fitting.loss_names import VGG16_FILE

    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / VGG16_FILE).write_bytes(b"")
    proc = _cli(tmp_path, "--size", "24", "-n", "4", "--steps", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "on the CPU (the VGG losses cost" in proc.stderr


def test_cli_cpu_fit_beside_the_torch_loop(tmp_path):
    """Same start, same schedule: the CPU fit and the torch loop end within 0.5 dB."""
    from tritri.cli import main

    common = ["fit", "--size", "40", "-n", "16", "--steps", "40", "-q"]
    assert main([*common, "--backend", "numba", "--out", str(tmp_path / "cpu")]) == 0
    assert main([*common, "--backend", "torch", "--out", str(tmp_path / "torch")]) == 0
    a = json.loads((tmp_path / "cpu" / "triangles.json").read_text())["psnr"]
    b = json.loads((tmp_path / "torch" / "triangles.json").read_text())["psnr"]
    assert abs(a - b) < 0.5, (a, b)


@pytest.mark.parametrize(
    "extra, expected",
    [
        ([], True),
        (["--backend", "numba"], True),
        (["--device", "cpu", "--losses", "mse"], True),
        (["--backend", "torch"], False),
        (["--losses", "l1,lpips"], False),
        (["--balancer", "weighted_sum"], False),
        (["--config", "x.yaml"], False),
        (["--device", "cuda"], False),
    ],
)
def test_which_loop_runs(extra, expected, monkeypatch):
    import argparse

    from tritri.fitting import cli, session

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(session, "_cuda_possible", lambda: False)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert session.cpu_fit_applies(parser.parse_args(extra)) is expected
    monkeypatch.setattr(session, "_cuda_possible", lambda: True)
    assert session.cpu_fit_applies(parser.parse_args(extra)) is (expected and "--device" in extra)
    # under the Triton interpreter "auto" means Triton, as for tritri.render; numba stays numba
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(session, "_cuda_possible", lambda: False)
    assert session.cpu_fit_applies(parser.parse_args(extra)) is (expected and "numba" in extra)


def test_vgg_file_name_matches_the_url():
    from tritri.fitting.loss_names import VGG16_FILE
    from tritri.losses.vgg import VGG16_URL

    assert os.path.basename(VGG16_URL) == VGG16_FILE


def test_the_loops_geometric_constants_are_geometric_mean_losss_defaults():
    """The CPU and batched loops compute GeometricMeanLoss themselves from
    tritri.fitting.schedule's constants (torch-free); they must be the loss's own defaults."""
    from tritri.fitting.schedule import GEOMETRIC_EPS, GEOMETRIC_MIN_LOSS, GEOMETRIC_REG_WEIGHT
    from tritri.losses import GeometricMeanLoss

    loss = GeometricMeanLoss()
    assert (loss.epsilon, loss.min_loss_value, loss.regularization_weight) == (
        GEOMETRIC_EPS, GEOMETRIC_MIN_LOSS, GEOMETRIC_REG_WEIGHT,
    )  # fmt: skip
