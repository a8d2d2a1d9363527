"""perf/fit_ceiling.py's own logic on a tiny image and a few steps: it runs every row, the
per-vertex refinement starts from exactly the flat fit's picture and never ends below it."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("numba")


@pytest.fixture
def ceiling(perf_script):
    return perf_script("fit_ceiling")


def test_every_row_on_a_tiny_image(ceiling, tmp_path, capsys):
    from PIL import Image

    y, x = np.mgrid[0:24, 0:32]
    rgb = np.stack([x / 31, y / 23, ((x + y) % 7) / 6], axis=-1)
    rgb[(x - 16) ** 2 + (y - 12) ** 2 < 40] = (0.9, 0.2, 0.1)
    path = tmp_path / "tiny.png"
    Image.fromarray((rgb * 255).astype(np.uint8)).save(path)
    out = tmp_path / "rows.json"
    argv = [str(path), "--n", "4", "--size", "32", "--steps", "8", "--long-steps", "8",
            "--seeds", "2", "--vertex-steps", "4", "--json", str(out)]  # fmt: skip
    assert ceiling.main(argv) == 0
    assert "| tiny.png |" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())
    assert len(row["long"]) == 2 and all(np.isfinite(row["long"]))
    # the same triangles, colors copied to the vertices: the same picture
    assert row["vertex_start"] == pytest.approx(row["default"], abs=0.02)
    assert row["vertex"] >= row["vertex_start"]
    assert np.isfinite(row["coarse"]) and row["scale"] == 9


def test_coarse_error_removed(ceiling):
    """An error that is all coarse (a constant) goes entirely; one finer than the box (a
    checkerboard, whose 3 x 3 means are ~1/9 of it inside) mostly stays."""
    target = np.full((3, 30, 30), 0.5)
    assert ceiling.coarse_error_removed(target + 0.1, target, 9) > 100
    y, x = np.mgrid[0:30, 0:30]
    checker = 0.1 * (-1.0) ** (x + y)
    kept = ceiling.coarse_error_removed(target + checker, target, 3)
    assert 20.0 < kept < 20.0 + 1.0  # PSNR of the whole checkerboard error: 20 dB
