"""``tritri fit``'s options for primitive / geometrize users: ``--render-size``, ``--animation``,
``--seconds``, ``--alpha``, ``--background`` (docs/SPEC.md section 5).

Fits are tiny (16-32 px, a few triangles) and run in-process on the torch-free CPU loop unless a
test names the torch loop (``--backend torch``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from fit_helpers import one_line_error
from PIL import Image

from tritri.cli import main
from tritri.fitting.export import sample_image_path

pytest.importorskip("numba")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def fit(capsys, *args: str) -> tuple[int, str]:
    """Run ``tritri fit -q ARGS`` in-process; (exit status, stderr). Without a ``--backend`` in
    ARGS: ``--backend numba``, the torch-free CPU fit (under the Triton interpreter the suite
    switches on, ``auto`` would mean the torch loop over Triton)."""
    if "--backend" not in args:
        args = (*args, "--backend", "numba")
    try:
        rc = main(["fit", "-q", *args])
    except SystemExit as exit_:  # argparse's own errors
        rc = exit_.code
    return rc, capsys.readouterr().err


def png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.float32) / 255.0


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A 96x64 crop of the sample photograph."""
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    with Image.open(sample_image_path()) as im:
        im.convert("RGB").crop((40, 60, 232, 188)).resize((96, 64), Image.LANCZOS).save(path)
    return path


# --- --render-size ---------------------------------------------------------------------------


def test_render_size_is_a_render_of_the_triangles_at_that_size(capsys, tmp_path, photo):
    from tritri.fitting.cpu_fit import render_cpu
    from tritri.fitting.starts import read_triangles_json

    out = tmp_path / "out"
    rc, err = fit(capsys, str(photo), "--size", "24", "-n", "12", "--steps", "6",
                  "--render-size", "48", "--out", str(out))  # fmt: skip
    assert rc == 0, err
    values, meta = read_triangles_json(out / "triangles.json")
    assert (meta["width"], meta["height"]) == (24, 16)  # the fit's size, as the SVG's
    assert 'width="24" height="16"' in (out / "triangles.svg").read_text()
    big = png(out / "final.png")
    assert big.shape == (32, 48, 3)
    assert png(out / "comparison.png").shape == (32, 2 * 48 + 4, 3)
    # exactly the triangles rendered at 2x, edges soft by 2 sigma (the fit's sigma in its pixels)
    want = np.clip(render_cpu(values, 32, 48, 2 * meta["sigma"]), 0, 1).transpose(1, 2, 0)
    assert np.abs(big - want).max() <= 1.01 / 255
    # and, pooled 2x2, the fit-size render within the soft edges' tolerance
    small = np.clip(render_cpu(values, 16, 24, meta["sigma"]), 0, 1).transpose(1, 2, 0)
    pooled = big.reshape(16, 2, 24, 2, 3).mean(axis=(1, 3))
    diff = np.abs(pooled - small)
    assert diff.mean() < 0.01 and diff.max() < 0.15, (diff.mean(), diff.max())


def test_render_size_default_is_the_input_size_up_to_1024(capsys, tmp_path, photo):
    from tritri.fitting.session import RENDER_CAP

    out = tmp_path / "default"
    rc, err = fit(capsys, str(photo), "--size", "16", "-n", "4", "--steps", "1",
                  "--out", str(out))  # fmt: skip
    assert rc == 0, err
    assert png(out / "final.png").shape == (64, 96, 3)  # the photo's own size
    assert png(out / "comparison.png").shape == (64, 2 * 96 + 4, 3)
    wide = tmp_path / "wide.png"
    ramp = (np.arange(1200) % 256).astype(np.uint8)
    Image.fromarray(np.tile(ramp[None, :, None], (300, 1, 3))).save(wide)
    rc, err = fit(capsys, str(wide), "--size", "16", "-n", "4", "--steps", "1",
                  "--out", str(out))  # fmt: skip
    assert rc == 0, err
    assert png(out / "final.png").shape == (256, RENDER_CAP, 3)
    # an image no larger than the fit: the fit's size
    rc, err = fit(capsys, "--size", "300", "--upscale", "-n", "4", "--steps", "1",
                  "--out", str(out))  # fmt: skip
    assert rc == 0, err
    assert png(out / "final.png").shape == (300, 300, 3)


@pytest.mark.parametrize("value", ["4", "9000"])
def test_render_size_refused_outside_its_range(capsys, tmp_path, value):
    rc, err = fit(capsys, "--render-size", value, "--out", str(tmp_path))
    assert rc == 2
    one_line_error(err, "--render-size")


# --- --animation -----------------------------------------------------------------------------


def test_animation_gif_bounded_frames_and_palette(capsys, tmp_path, photo):
    gif = tmp_path / "anim" / "fit.gif"
    rc, err = fit(capsys, str(photo), "--size", "32", "-n", "40", "--steps", "50",
                  "--animation", str(gif), "--frames", "12", "--render-size", "32",
                  "--out", str(tmp_path / "o"))  # fmt: skip
    assert rc == 0, err
    assert str(gif) in err  # listed among the files written
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.size == (32, 21)
        n = im.n_frames
        assert 3 <= n <= 12
        for i in range(n):
            im.seek(i)
            colors = im.convert("RGB").getcolors(maxcolors=100_000)
            assert colors is not None and len(colors) <= 256
        last = np.asarray(im.convert("RGB"), np.float32) / 255
    # the last frame is the fit as written (through the palette)
    assert np.abs(last - png(tmp_path / "o" / "final.png")).mean() < 0.03


def test_animation_frames_and_steps_capped():
    from tritri.fitting.animation import Animation

    anim = Animation("x.gif", max_frames=10)
    flat = np.zeros((3, 8, 8), np.float32)
    for _ in range(4):
        anim.add_start(flat)
    anim.plan(20)
    for step in range(200):  # ten times the steps planned
        anim.on_step(step, flat)
    anim.finish(flat)
    assert len(anim.frames) == len(anim.durations) <= 10
    big = Animation("y.gif", max_frames=5)
    for _ in range(30):  # more start frames than the cap
        big.add_start(flat)
    big.finish(flat)
    assert len(big.frames) == 5


def test_animation_webp(capsys, tmp_path, photo):
    from PIL import features

    if not features.check("webp"):
        pytest.skip("this Pillow cannot write WebP")
    path = tmp_path / "fit.webp"
    rc, err = fit(capsys, str(photo), "--size", "24", "-n", "8", "--steps", "10",
                  "--animation", str(path), "--out", str(tmp_path / "o"))  # fmt: skip
    assert rc == 0, err
    with Image.open(path) as im:
        assert im.format == "WEBP" and im.n_frames >= 3


def test_animation_refuses_other_formats(capsys, tmp_path):
    rc, err = fit(capsys, "--animation", str(tmp_path / "fit.mp4"), "--out", str(tmp_path))
    assert rc == 2
    one_line_error(err, "--animation", ".gif")


def test_animation_off_costs_no_frames(capsys, tmp_path, monkeypatch):
    """Without --animation the loops get no frame callback at all."""
    from tritri.fitting import cpu_fit

    seen = {}
    real = cpu_fit.fit_triangles_cpu

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(cpu_fit, "fit_triangles_cpu", spy)
    rc, err = fit(capsys, "--size", "16", "-n", "4", "--steps", "2", "--out", str(tmp_path))
    assert rc == 0, err
    assert seen["on_step"] is None and seen["should_stop"] is None


# --- --seconds -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_seconds_budget_respected_within_one_step(capsys, tmp_path, monkeypatch, backend):
    from tritri.fitting import session

    calls: list[tuple[float, bool]] = []
    budgets = []
    real = session.Budget.should_stop

    def spy(self, step):
        stop = real(self, step)
        calls.append((time.perf_counter(), stop))
        budgets.append(self)
        return stop

    monkeypatch.setattr(session.Budget, "should_stop", spy)
    seconds = 2.0
    out = tmp_path / "out"
    rc, err = fit(capsys, "--size", "24", "-n", "8", "--steps", "100000", "--seconds",
                  str(seconds), "--backend", backend, "--out", str(out))  # fmt: skip
    assert rc == 0, err
    deadline = budgets[-1].deadline
    times = np.array([t for t, _ in calls])
    assert calls[-1][1] and not any(stop for _, stop in calls[:-1])
    step = np.diff(times).max()  # the longest step
    assert times[-1] <= deadline + step  # ended within one step of the budget
    assert times[-1] >= deadline - 3 * step  # and used it
    steps = json.loads((out / "triangles.json").read_text())["steps"]
    assert steps == len(calls) - 1 < 100000


def test_seconds_sizes_the_steps_and_the_start_always_completes(capsys, tmp_path):
    rc, err = fit(capsys, "--size", "24", "-n", "16", "--seconds", "1e-6", "--out",
                  str(tmp_path))  # fmt: skip
    assert rc == 0, err
    data = json.loads((tmp_path / "triangles.json").read_text())
    assert data["n_triangles"] == 16 and data["steps"] == 0  # the greedy start, whole
    rc, err = fit(capsys, "--size", "24", "-n", "16", "--seconds", "1.5", "--out",
                  str(tmp_path))  # fmt: skip
    assert rc == 0, err
    sized = json.loads((tmp_path / "triangles.json").read_text())["steps"]
    assert sized > 20  # far more than the 1e-6 s budget allowed, sized to 1.5 s
    assert "(at most 1.5 s)" in err


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_seconds_refused(capsys, tmp_path, value):
    rc, err = fit(capsys, "--seconds", value, "--out", str(tmp_path))
    assert rc == 2
    one_line_error(err, "--seconds")


# --- --alpha / --background ------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("init", ["greedy", "delaunay"])
def test_alpha_and_background_fixed(capsys, tmp_path, photo, backend, init):
    """Fixed in triangles.json after a fit with relocations (and, from the Delaunay mosaic,
    pruning) on both loops."""
    out = tmp_path / "out"
    rc, err = fit(capsys, str(photo), "--size", "24", "-n", "10", "--steps", "30",
                  "--alpha", "0.6", "--background", "#336699", "--init", init,
                  "--backend", backend, "--out", str(out))  # fmt: skip
    assert rc == 0, err
    assert "fixed: opacity 0.6, background #336699" in err
    data = json.loads((out / "triangles.json").read_text())
    assert data["n_triangles"] == 10
    assert np.allclose(data["opacity"], 0.6, atol=1e-6)
    assert np.allclose(data["background"], [0.2, 0.4, 0.6], atol=1e-6)


def test_alpha_continues_a_fit_with_its_opacity(capsys, tmp_path):
    rc, err = fit(capsys, "--size", "16", "-n", "6", "--steps", "5", "--out", str(tmp_path / "a"))
    assert rc == 0, err
    rc, err = fit(capsys, "--size", "16", "--steps", "5", "--alpha", "0.25", "--background",
                  "black", "--init", str(tmp_path / "a" / "triangles.json"),
                  "--out", str(tmp_path / "b"))  # fmt: skip
    assert rc == 0, err
    data = json.loads((tmp_path / "b" / "triangles.json").read_text())
    assert np.allclose(data["opacity"], 0.25) and data["background"] == [0, 0, 0]


def test_background_is_also_what_transparency_is_composited_over(capsys, tmp_path):
    rgba = np.zeros((24, 24, 4), np.uint8)
    rgba[:, :12] = (0, 0, 255, 255)  # left half blue, right half transparent
    path = tmp_path / "half.png"
    Image.fromarray(rgba).save(path)
    rc, err = fit(capsys, str(path), "-n", "4", "--steps", "2", "--background", "orange",
                  "--out", str(tmp_path / "o"))  # fmt: skip
    assert rc == 0, err
    assert "composited over #ffa500" in err
    target = png(tmp_path / "o" / "comparison.png")[:, :24]
    assert np.allclose(target[:, 12:], np.array([255, 165, 0]) / 255, atol=1 / 255)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--alpha", "0"], "--alpha"),
        (["--alpha", "1.5"], "--alpha"),
        (["--background", "no-such-colour"], "--background"),
        (["--background", "#12345"], "--background"),
    ],
)
def test_alpha_background_refused(capsys, tmp_path, args, needle):
    rc, err = fit(capsys, *args, "--out", str(tmp_path))
    assert rc == 2
    one_line_error(err, needle)
