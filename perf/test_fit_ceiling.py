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
