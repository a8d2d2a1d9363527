"""``tritri fit`` end to end on the bundled image at tiny settings (CPU, the tiled torch backend).

The CLI runs in-process through ``tritri.cli.main`` (one subprocess test checks ``python -m
tritri``). ``--backend torch`` keeps the Triton interpreter (switched on by conftest) out of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tritri
from tritri.cli import main
from tritri.fitting import load_image, load_triangles_json

OUTPUTS = (
    "final.png",
    "comparison.png",
    "triangles.svg",
    "triangles.json",
    "metrics.jsonl",
    "loss.png",
)
SVG_NS = "{http://www.w3.org/2000/svg}"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch, tmp_path):
    """No test may reach the network: an empty torch hub and a download that fails loudly."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def fit(out: Path, *extra: str, size: int = 40, n: int = 24, steps: int = 12) -> int:
    argv = ["fit", "--size", str(size), "--steps", str(steps), "--backend", "torch"]
    if n:
        argv += ["--triangles", str(n)]
    return main([*argv, "--out", str(out), "-q", *extra])


def records(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_fit_writes_every_output(tmp_path, capsys):
    out = tmp_path / "run"
    assert fit(out, n=24, steps=12) == 0
    for name in OUTPUTS:
        assert (out / name).is_file(), name

    # fitted at 40 px, shown at the sample image's own 256 px (the default --render-size)
    with Image.open(out / "final.png") as im:
        assert im.size == (256, 256) and im.mode == "RGB"
    with Image.open(out / "comparison.png") as im:
        assert im.size == (2 * 256 + 4, 256)
        comp = np.asarray(im)
    with Image.open(out / "loss.png") as im:
        assert im.format == "PNG" and min(im.size) > 100
    assert json.loads((out / "triangles.json").read_text())["width"] == 40
    # The comparison's left half is the target, the right half the fit.
    final = np.asarray(Image.open(out / "final.png"))
    assert np.array_equal(comp[:, 260:], final)
    target = load_image(None, 256)
    assert np.abs(comp[:, :256] / 255.0 - target.permute(1, 2, 0).numpy()).max() < 1 / 255 + 1e-6

    root = ET.parse(out / "triangles.svg").getroot()
    assert root.tag == f"{SVG_NS}svg" and root.get("viewBox") == "0 0 40 40"
    # One group per triangle (nested copies through the shared blur filter: soft edges).
    groups = root.findall(f"{SVG_NS}g")
    assert len(groups) == 24
    assert root.find(f"{SVG_NS}defs/{SVG_NS}filter/{SVG_NS}feGaussianBlur") is not None
    for group in groups:
        assert group.get("fill").startswith("#") and len(group.get("fill")) == 7
        assert group.get("filter") == "url(#soft)"
        for poly in group.findall(f"{SVG_NS}polygon"):
            assert len(poly.get("points").split()) == 3
            assert 0.0 <= float(poly.get("fill-opacity")) <= 0.99

    params, meta = load_triangles_json(out / "triangles.json")
    assert params.n_triangles == 24
    assert (meta["width"], meta["height"], meta["steps"]) == (40, 40, 12)

    recs = records(out)
    assert [r["step"] for r in recs] == list(range(12))
    for r in recs:
        for key in ("step", "total", "loss/l1", "loss/mse", "psnr"):
            assert isinstance(r[key], (int, float)), key
    assert recs[-1]["psnr"] > recs[0]["psnr"] + 0.5  # the fit improves on its greedy start
    assert abs(meta["psnr"] - recs[-1]["psnr"]) < 1.0

    err = capsys.readouterr().err
    assert "PSNR" in err and str(out / "triangles.json") in err


def test_init_json_continues_the_fit(tmp_path, capsys):
    first = tmp_path / "first"
    assert fit(first, n=20, steps=15) == 0
    saved, meta = load_triangles_json(first / "triangles.json")

    # Zero steps from the saved file renders the same picture: the PSNR carries over.
    again = tmp_path / "again"
    assert fit(again, "--init", str(first / "triangles.json"), n=0, steps=0) == 0
    _, meta0 = load_triangles_json(again / "triangles.json")
    assert meta0["n_triangles"] == 20
    assert abs(meta0["psnr"] - meta["psnr"]) < 0.05
    err = capsys.readouterr().err
    assert f"start: {first / 'triangles.json'}" in err

    # A few more steps go on from there (and beat a fresh random start by far).
    more = tmp_path / "more"
    assert fit(more, "--init", str(first / "triangles.json"), n=0, steps=10) == 0
    recs = records(more)
    assert abs(recs[0]["psnr"] - meta["psnr"]) < 0.05
    # Never worse than where it started (best-PSNR step kept; the lr warms up when continuing).
    assert load_triangles_json(more / "triangles.json")[1]["psnr"] >= recs[0]["psnr"] - 1e-3
    random = tmp_path / "random"
    assert fit(random, "--init", "random", n=20, steps=0) == 0
    assert load_triangles_json(random / "triangles.json")[1]["psnr"] < meta["psnr"] - 1.0


def test_ctrl_c_still_writes_outputs(tmp_path, monkeypatch, capsys):
    real_render = tritri.render
    calls = {"n": 0}

    def render(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # call 1 renders the start; calls 2.. are loop steps 0..
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    monkeypatch.setattr(tritri, "render", render)
    out = tmp_path / "run"
    assert fit(out, n=16, steps=50) == 130
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    _, meta = load_triangles_json(out / "triangles.json")
    assert meta["steps"] == 4
    assert [r["step"] for r in records(out)] == [0, 1, 2, 3]
    ET.parse(out / "triangles.svg")
    assert "interrupted at step 4 of 50" in capsys.readouterr().err


def test_offline_fallback_to_pixel_losses(tmp_path, capsys):
    out = tmp_path / "run"
    assert fit(out, n=8, steps=2) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "VGG16" in line]
    assert len(notes) == 1
    assert "not available offline" in notes[0]
    assert "--losses l1,mse,perceptual,lpips" in notes[0]
    keys = set(records(out)[0])
    assert {"loss/l1", "loss/mse"} <= keys
    assert not any(k.startswith("loss/") and k not in ("loss/l1", "loss/mse") for k in keys)


def test_explicit_vgg_losses_offline_fail_in_one_line(tmp_path, capsys):
    assert fit(tmp_path / "run", "--losses", "l1,lpips", n=8, steps=1) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("tritri fit: error:") and "--vgg-weights" in err


def _random_vgg_file(path: Path) -> Path:
    from tritri.losses.vgg import VGG16Features

    trunk = VGG16Features(None, ("relu4_3",))
    torch.save(trunk.features.state_dict(), path)
    return path


def test_vgg_losses_with_a_weights_file(tmp_path, capsys):
    weights = _random_vgg_file(tmp_path / "vgg.pth")
    out = tmp_path / "run"
    assert fit(out, "--losses", "l1,perceptual", "--vgg-weights", str(weights), n=8, steps=2) == 0
    rec = records(out)[-1]
    assert rec["loss/perceptual"] > 0 and "loss/mse" not in rec
    assert "weight/perceptual" in rec  # the geometric-mean balancer's stats

    # auto, with the weights in the hub cache but on a CPU: pixel losses and a note saying why.
    from tritri.fitting.objective import cached_vgg_weights
    from tritri.losses.vgg import VGG16_URL

    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True)
    os.replace(weights, cache / os.path.basename(VGG16_URL))
    assert cached_vgg_weights() is not None
    capsys.readouterr()
    assert fit(tmp_path / "auto", n=8, steps=1) == 0
    err = capsys.readouterr().err
    assert "on the CPU" in err and "not available offline" not in err


def test_balancer_choices(tmp_path):
    out = tmp_path / "ws"
    assert fit(out, "--balancer", "weighted_sum", n=8, steps=2) == 0
    rec = records(out)[-1]
    assert rec["weight/l1"] == 1.0 and rec["weight/mse"] == 1.0
    config = REPO / "examples" / "config_geometric.yaml"
    out = tmp_path / "cfg"
    assert fit(out, "--config", str(config), n=8, steps=2) == 0
    assert "log/l1" in records(out)[-1]


def test_monitor_warnings_are_shown_and_the_best_step_kept(tmp_path, capsys):
    flat = tmp_path / "grey.png"
    Image.new("RGB", (48, 32), (128, 128, 128)).save(flat)
    assert fit(tmp_path / "run", str(flat), n=6, steps=4) == 0
    err = capsys.readouterr().err
    assert "tritri fit: warning: step 0:" in err and "uniform color" in err
    assert "uniform_image" in records(tmp_path / "run")[0]["warnings"]
    # The Delaunay start of a flat image is exact; the fit keeps it rather than its last step.
    _, meta = load_triangles_json(tmp_path / "run" / "triangles.json")
    assert (meta["width"], meta["height"]) == (40, 27)
    assert meta["best_step"] == 0 and meta["psnr"] > 60
    assert "the best at step 0" in err
    assert fit(tmp_path / "last", str(flat), "--last", n=6, steps=4) == 0
    _, last = load_triangles_json(tmp_path / "last" / "triangles.json")
    assert last["best_step"] == 4 and last["psnr"] < meta["psnr"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "many"], "argument --steps"),
        (["--triangles", "1"], "--triangles must be >= 2"),
        (["--size", "4"], "--size must be >= 8"),
        (["--lr", "0"], "--lr must be a finite number > 0"),
        (["no/such/image.png"], "no such image file"),
        (["--init", "no/such.json"], "--init must be greedy, delaunay, random or a triangles.json"),
        (["--losses", "l1,sharpness"], "unknown loss sharpness"),
        (["--balancer", "nonesuch"], "unknown balancer type"),
        (["--config", "no/such.yaml"], "--config: no such file"),
        (["--vgg-weights", "no/such.pth", "--losses", "lpips"], "--vgg-weights: no such file"),
        (["--balancer", "gradnorm", "--config", "x.yaml"], "not allowed with argument"),
    ],
)
def test_bad_arguments_give_one_line(tmp_path, capsys, args, message):
    try:
        rc = main(["fit", "--out", str(tmp_path / "run"), "-q", *args])
    except SystemExit as exit_:  # argparse's own errors
        rc = exit_.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("tritri fit: error:") and message in err


def test_init_json_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    assert fit(tmp_path / "a", "--init", str(bad)) == 2
    assert "not a tritri triangles.json" in capsys.readouterr().err
    assert fit(tmp_path / "b", n=10, steps=0) == 0
    saved = tmp_path / "b" / "triangles.json"
    assert fit(tmp_path / "c", "--init", str(saved), n=12) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "does not match the 10 triangles" in err


def test_python_m_tritri_fit(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TORCH_HOME"] = str(tmp_path / "torch_home")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "tritri", "fit", "--size", "24", "-n", "8", "--steps", "3"]
    proc = subprocess.run(
        [*cmd, "--out", str(out)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert all((out / name).is_file() for name in OUTPUTS)
    assert "fit: 100%" in proc.stderr  # the tqdm bar
    assert "psnr=" in proc.stderr


def test_triton_backend_on_cpu_without_interpreter_is_one_line(tmp_path, capsys, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: --backend triton is valid")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from tritri.kernels import raster as triton_raster

    monkeypatch.setattr(triton_raster, "interpreter_active", lambda: False)
    argv = ["fit", "--size", "24", "-n", "4", "--steps", "1", "--backend", "triton", "-q"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tritri fit: error: --backend triton:")
    assert "TRITON_INTERPRET" in err[-1]


def test_loss_png_needs_no_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "run"
    assert fit(out, n=6, steps=2) == 0
    assert all((out / name).is_file() for name in OUTPUTS)
    with Image.open(out / "loss.png") as im:
        assert im.format == "PNG" and min(im.size) > 100
