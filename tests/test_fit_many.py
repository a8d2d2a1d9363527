"""``tritri fit a.jpg b.png photos/ --out DIR``: a folder per image and DIR/summary.csv; an image
that fails is reported and skipped, never the rest; the torch loop fits the images as one
letterboxed batch (docs/SPEC.md section 5, "Several images").

Tiny images (16-32 px, a few triangles); the CPU fits run in-process (``--jobs 1``) or in worker
processes of a ``tritri fit`` subprocess; the batch runs the torch loop on the CPU (``--backend
torch``, and numba under autograd for the unit tests).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tritri.cli import main
from tritri.fitting.export import sample_image_path
from tritri.fitting.many import collect_images, folder_names, plan_jobs

pytest.importorskip("numba")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_network(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def fit(capsys, *args: str) -> tuple[int, str]:
    """``tritri fit -q ARGS`` in-process (``--backend numba``, the CPU fit, unless ARGS name a
    backend); (exit status, stderr)."""
    if "--backend" not in args:
        args = (*args, "--backend", "numba")
    try:
        rc = main(["fit", "-q", *args])
    except SystemExit as exit_:
        rc = exit_.code
    return rc, capsys.readouterr().err


def summary(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two photos (32x24 and 20x32), an image that is not one, a text file, a subfolder."""
    root = tmp_path_factory.mktemp("photos")
    with Image.open(sample_image_path()) as im:
        rgb = im.convert("RGB")
        rgb.crop((0, 0, 256, 192)).resize((32, 24)).save(root / "wide.png")
        rgb.crop((40, 0, 200, 256)).resize((20, 32)).save(root / "tall.jpg")
    (root / "broken.png").write_bytes(b"not a png")
    (root / "notes.txt").write_text("not an image")
    (root / "sub").mkdir()
    return root


TINY = ("-n", "6", "--steps", "8", "--size", "32")


def test_folder_names_are_unique():
    paths = [Path(p) for p in ("x/a.jpg", "y/a.png", "z/A.png", "b.png", "summary.csv.png")]
    names = folder_names(paths)
    assert names[:2] == ["a_jpg", "a_png"] and names[3] == "b"
    assert len({n.lower() for n in names}) == len(names)
    assert "summary.csv" not in names


def test_collect_images(folder):
    images, notes = collect_images([str(folder), str(folder / "wide.png"), "missing.png"])
    assert [p.name for p in images] == ["broken.png", "tall.jpg", "wide.png", "missing.png"]
    assert any("1 files that are not images" in n for n in notes)


def test_plan_jobs():
    assert plan_jobs(16, 2) == (2, 1)
    assert plan_jobs(16, 16) == (16, 1)
    assert plan_jobs(3, 16) == (3, 5)
    assert plan_jobs(16, 16, jobs=4) == (4, 4)
    assert plan_jobs(5, 8, jobs=1) == (1, 8)


def test_folder_one_bad_image_skipped_and_reported(capsys, tmp_path, folder):
    out = tmp_path / "out"
    rc, err = fit(capsys, str(folder), str(sample_image_path()), *TINY, "--jobs", "1",
                  "--out", str(out))  # fmt: skip
    assert rc == 1, err  # some failed
    assert "Traceback" not in err
    rows = summary(out)
    assert [Path(r["image"]).name for r in rows] == [
        "broken.png", "tall.jpg", "wide.png", "astronaut.png"
    ]  # fmt: skip
    bad, *good = rows
    assert bad["status"].startswith("failed: cannot read") and bad["PSNR"] == ""
    assert "tritri fit: error: cannot read" in err and "broken.png" in err
    for row in good:
        assert row["status"] == "ok" and row["N"] == "6" and float(row["PSNR"]) > 10
        assert float(row["seconds"]) > 0
        for name in ("final.png", "comparison.png", "triangles.svg", "triangles.json",
                     "metrics.jsonl", "loss.png"):  # fmt: skip
            assert (out / row["folder"] / name).is_file(), (row, name)
    assert not (out / "final.png").exists()
    assert "3 of 4 images fitted, 1 failed" in err


def test_single_image_unchanged(capsys, tmp_path, folder):
    out = tmp_path / "one"
    rc, err = fit(capsys, str(folder / "wide.png"), *TINY, "--out", str(out))
    assert rc == 0, err
    assert (out / "final.png").is_file() and not (out / "summary.csv").exists()
    outputs = ("final.png", "comparison.png", "triangles.svg", "triangles.json", "metrics.jsonl",
               "loss.png")  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == sorted(outputs)
    # an unreadable single image is still a one-line error, exit status 2
    rc, err = fit(capsys, str(folder / "broken.png"), *TINY, "--out", str(out))
    assert rc == 2 and err.count("error:") == 1


def test_no_images_and_init_json_refused(capsys, tmp_path, folder):
    rc, err = fit(capsys, str(folder / "sub"), "--out", str(tmp_path))
    assert rc == 2 and "no image files" in err
    rc, err = fit(capsys, str(folder), "--init", str(tmp_path / "t.json"), "--out", str(tmp_path))
    assert rc == 2 and "--init FILE.json continues one fit" in err


def test_worker_processes(tmp_path, folder):
    """--jobs 2: two worker processes (a subprocess of its own, as the command runs)."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCH_HOME": str(tmp_path / "th")}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [sys.executable, "-m", "tritri", "fit", str(folder), *TINY, "--jobs", "2",
         "--animation", "a.gif", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "2 processes x" in proc.stderr and "Traceback" not in proc.stderr
    rows = {Path(r["image"]).name: r for r in summary(out)}
    assert rows["broken.png"]["status"].startswith("failed")
    for name in ("tall.jpg", "wide.png"):
        assert rows[name]["status"] == "ok"
        assert (out / rows[name]["folder"] / "a.gif").is_file()  # each folder's animation


def test_torch_loop_batch(capsys, tmp_path, folder):
    """The torch loop: one batch of images of two sizes (letterboxed), fixed alpha and
    background honoured, the bad image skipped."""
    out = tmp_path / "out"
    rc, err = fit(capsys, str(folder), *TINY, "--backend", "torch", "--alpha", "0.5",
                  "--background", "white", "--render-size", "48", "--out", str(out))  # fmt: skip
    assert rc == 1, err
    assert "as one batch (B = 2, on a 32x32 canvas)" in err
    rows = {Path(r["image"]).name: r for r in summary(out)}
    assert rows["broken.png"]["status"].startswith("failed")
    for name, size in (("tall.jpg", (32, 20)), ("wide.png", (24, 32))):
        assert rows[name]["status"] == "ok", rows[name]
        data = json.loads((out / rows[name]["folder"] / "triangles.json").read_text())
        assert (data["height"], data["width"]) == size and data["n_triangles"] == 6
        assert np.allclose(data["opacity"], 0.5) and data["background"] == [1, 1, 1]
        with Image.open(out / rows[name]["folder"] / "final.png") as im:
            assert max(im.size) == 48


def _targets():
    with Image.open(sample_image_path()) as im:
        rgb = im.convert("RGB")
        a = np.asarray(rgb.crop((0, 0, 256, 192)).resize((32, 24)), np.float32) / 255
        b = np.asarray(rgb.crop((40, 0, 200, 256)).resize((20, 32)), np.float32) / 255
    return a.transpose(2, 0, 1).copy(), b.transpose(2, 0, 1).copy()


def test_batch_fit_is_each_images_own_fit():
    """An image's fit in a batch equals its fit alone (up to float rounding), and the batched
    loop matches the single torch loop."""
    import torch

    from tritri.fitting import TriangleParams, fit_triangles
    from tritri.fitting.batch_fit import fit_batch
    from tritri.fitting.objective import FitLosses
    from tritri.fitting.starts import greedy_start
    from tritri.losses import GeometricMeanLoss

    a, b = _targets()
    sa, sb = greedy_start(a, 10, seed=0), greedy_start(b, 10, seed=0)
    common = {"steps": 12, "backend": "numba", "warmup": 0.05}
    alone = fit_batch([sa], [a], **common)[0]
    both = fit_batch([sa, sb], [a, b], **common)
    assert abs(alone.psnr - both[0].psnr) < 0.05, (alone.psnr, both[0].psnr)
    assert np.abs(alone.values["verts"] - both[0].values["verts"]).max() < 0.02
    assert both[0].image.shape == (3, 24, 32) and both[1].image.shape == (3, 32, 20)
    # the single torch loop, same objective and moves
    params = TriangleParams.from_values(sa)
    single = fit_triangles(params, torch.from_numpy(a), criterion=FitLosses(("l1", "mse")),
                           balancer=GeometricMeanLoss(), **common)  # fmt: skip
    assert abs(single.psnr - alone.psnr) < 0.3, (single.psnr, alone.psnr)
    assert alone.psnr > both[0].history[0]["psnr"]  # it improved on the start


def test_batch_fit_prunes_each_image_to_keep():
    from tritri.fitting.batch_fit import fit_batch
    from tritri.fitting.starts import delaunay_start

    a, b = _targets()
    starts = [delaunay_start(a, 16), delaunay_start(b, 16)]
    results = fit_batch(starts, [a, b], steps=30, keep=8, backend="numba", fixed_opacity=0.7)
    for r in results:
        assert r.values["verts"].shape == (8, 3, 2)
        assert np.allclose(r.values["opacity"], 0.7, atol=1e-6)
        assert r.steps == 30 and np.isfinite(r.psnr)
