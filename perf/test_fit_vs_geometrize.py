"""perf/fit_vs_geometrize.py's own logic, without running either tool: what it says without node
or geometrizejs, and the table it builds from repeated runs (medians, gain, time ratio)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest


@pytest.fixture
def bench(perf_script):
    return perf_script("fit_vs_geometrize")


def test_without_node_it_says_so_and_exits_0(bench, monkeypatch, capsys):
    monkeypatch.setattr(bench.shutil, "which", lambda name: None)
    assert bench.main([]) == 0
    assert "skipped: node is not on PATH" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed here")
def test_without_geometrizejs_it_says_so_and_exits_0(bench, monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("NODE_PATH", raising=False)
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--geometrize-dir", str(tmp_path)]) == 0
    assert "skipped: geometrizejs is not installed" in capsys.readouterr().out


def test_the_table_holds_medians_of_the_repeated_runs(bench, monkeypatch, capsys, tmp_path):
    """Fake tools: tritri's image is the target plus a constant error, geometrize's a larger
    one that changes per run; times are scripted. The row must hold each tool's median PSNR and
    time, and the gain and time ratio of those medians."""
    monkeypatch.setattr(bench, "geometrize_available", lambda d: None)
    t_times, g_times = iter([3.0, 1.0, 2.0]), iter([2.0, 9.0, 4.0])
    g_errors = iter([8, 4, 6])
    runs = {"tritri": 0, "geometrize": 0}

    def fake_tritri(png, n, size, workdir, extra):
        runs["tritri"] += 1
        if n == 16:  # the untimed warm-up run
            return None, 0.0
        from PIL import Image

        target = np.asarray(Image.open(png).convert("RGB"))
        return np.clip(target.astype(int) + 2, 0, 255).astype(np.uint8), next(t_times)

    def fake_geometrize(raw, shape, n, workdir, geometrize_dir, candidates, mutations, alpha):
        runs["geometrize"] += 1
        h, w = shape
        target = np.fromfile(raw, np.uint8).reshape(h, w, 4)[..., :3]
        return np.clip(target.astype(int) + next(g_errors), 0, 255).astype(np.uint8), next(g_times)

    monkeypatch.setattr(bench, "run_tritri", fake_tritri)
    monkeypatch.setattr(bench, "run_geometrize", fake_geometrize)
    out = tmp_path / "rows.json"
    assert bench.main(["--n", "8", "--size", "32", "--repeat", "3", "--json", str(out)]) == 0
    assert runs == {"tritri": 4, "geometrize": 3}
    (row,) = json.loads(out.read_text())
    assert row["tritri_s"] == 2.0 and row["geometrize_s"] == 4.0
    assert row["time_ratio"] == pytest.approx(0.5)
    assert row["runs"]["geometrize_s"] == [2.0, 9.0, 4.0]
    psnr = row["runs"]["geometrize_psnr"]
    assert row["geometrize_psnr"] == pytest.approx(sorted(psnr)[1])
    assert row["gain_db"] == pytest.approx(row["tritri_psnr"] - row["geometrize_psnr"])
    assert row["tritri_psnr"] > row["geometrize_psnr"]
    table = capsys.readouterr().out
    assert "| 8 |" in table and "0.50×" in table and "median of 3 runs" in table
