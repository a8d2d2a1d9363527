"""The fit's optimizer (pruning, relocation, hand-rolled Adam), its start-up cost and bad input."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

from tritri.cli import main
from tritri.fitting import fit_triangles, init_delaunay, load_image
from tritri.fitting.loop import _Adam
from tritri.fitting.session import _warmup, default_steps


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def test_adam_matches_torch():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5, 3, generator=g))
    b = torch.nn.Parameter(a.detach().clone())
    ours = _Adam([{"params": [a], "lr": 0.05}])
    ref = torch.optim.Adam([b], lr=0.05, betas=(0.9, 0.99), foreach=False)
    for _ in range(6):
        grad = torch.randn(5, 3, generator=g)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)


def test_pruning_keeps_the_asked_count_and_fits_well():
    target = load_image(None, 40)
    params = init_delaunay(target, 32)
    result = fit_triangles(params, target, steps=40, keep=16, backend="numba", log_every=0)
    assert params.n_triangles == 16 and params.color_logits.shape == (16, 3)
    assert params.opacity_logits.shape == (16,)
    # better than a plain fit of 16 triangles from their own mosaic
    plain = init_delaunay(target, 16)
    baseline = fit_triangles(plain, target, steps=40, reseed_every=0, backend="numba", log_every=0)
    assert result.psnr > baseline.psnr
    with pytest.raises(ValueError, match="keep"):
        fit_triangles(init_delaunay(target, 8), target, steps=1, keep=9)


def test_pruning_and_relocation_are_not_reported_as_sudden_jumps(tmp_path):
    """The default schedule prunes an over-complete start and relocates triangles: the total
    steps up on purpose there. The monitor is told (``discontinuity``), so a default fit prints no
    "sudden jump" warning; the records of the steps after a move say what changed."""
    from tritri.fitting.objective import FitLosses
    from tritri.losses import LossMonitor, build_balancer

    target = load_image(None, 64)
    params = init_delaunay(target, 96)
    monitor = LossMonitor(tmp_path / "m.jsonl", warn=False)
    balancer = build_balancer({"type": "geometric_mean"}, names=["l1", "mse"])
    fit_triangles(params, target, steps=150, keep=48, criterion=FitLosses(("l1", "mse")),
                  balancer=balancer, monitor=monitor, backend="numba")  # fmt: skip
    monitor.close()
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    marked = {r["step"]: r["discontinuity"] for r in records if "discontinuity" in r}
    assert marked[10] == "pruned" and marked[60] == "pruned" and marked[65] == "relocated"
    assert set(marked) == {s + 1 for s in range(9, 120, 5)}  # every 5 steps, pruning from 7.5
    assert [e for e in monitor.events if e["kind"] == "total_jump"] == []


def test_short_runs_prune_at_once():
    target = load_image(None, 24)
    params = init_delaunay(target, 12)
    fit_triangles(params, target, steps=3, keep=6, backend="numba", log_every=0)
    assert params.n_triangles == 6


def test_a_fit_without_pruning_relocates_at_every_event():
    from tritri.fitting.schedule import move_steps

    args = {"every": 5, "until": 0.8, "prune_from": 0.05, "prune_until": 0.4}
    events, prune_events = move_steps(100, prune=False, **args)
    assert events == list(range(4, 80, 5)) and prune_events == []
    events, prune_events = move_steps(100, prune=True, **args)
    assert events == list(range(4, 80, 5)) and prune_events == list(range(9, 40, 5))
    assert move_steps(3, prune=True, **args) == ([0], [0])


def test_default_steps_fall_with_the_triangle_count():
    assert default_steps(64) == 300
    assert default_steps(128) == 174
    assert default_steps(200) == 122
    assert default_steps(256) == 120
    assert default_steps(1024) == 120
    assert default_steps(16) == 300


def test_warm_up_by_start():
    """Continuing a fit ramps the learning rates up over 10 % of the steps, the greedy start over
    5 % (Adam's first steps would shake a good start), the mosaic and random starts not at all."""
    assert _warmup(argparse.Namespace(init="run/triangles.json")) == 0.1
    assert _warmup(argparse.Namespace(init="greedy")) == 0.05
    assert _warmup(argparse.Namespace(init="delaunay")) == 0.0
    assert _warmup(argparse.Namespace(init="random")) == 0.0


def test_warm_up_lasts_at_least_a_few_steps():
    from tritri.fitting.schedule import MIN_WARMUP_STEPS, lr_factor

    assert MIN_WARMUP_STEPS == 3
    for steps, ramp in ((12, 3), (100, 5)):  # 5 % of 12 steps is 0.6: three steps all the same
        for s in range(ramp + 2):
            plain = lr_factor(s, steps, 0.05)
            assert lr_factor(s, steps, 0.05, 0.05) == pytest.approx(plain * min(1, (s + 1) / ramp))
    assert lr_factor(0, 12, 0.05, 0.0) == 1.0  # no warm-up asked: none


def test_fit_imports_nothing_it_does_not_use(tmp_path):
    """No torch._dynamo (torch.optim), no matplotlib, no other subcommand's module, no
    scipy.linalg (numba's BLAS probe, answered by tritri.fitting.session.skip_blas_probe)."""
    code = (
        "import sys\n"
        "from tritri.cli import main\n"
        f"rc = main(['fit', '--size', '16', '-n', '4', '--steps', '2', '-q', '--out', "
        f"{str(tmp_path / 'run')!r}])\n"
        "heavy = [m for m in ('torch._dynamo', 'matplotlib', 'tritri.tuning.tune', 'triton',"
        " 'torchvision', 'scipy.linalg') if m in sys.modules]\n"
        "assert rc == 0 and not heavy, heavy\n"
        # numba's BLAS probe was answered without scipy.linalg, which is still importable
        "import numba.np.arraymath as am\n"
        "assert am._HAVE_BLAS is False\n"
        "try:\n"
        "    import scipy.linalg.cython_blas\n"
        "except ModuleNotFoundError as err:\n"
        "    assert err.name.split('.')[0] != 'scipy' or 'halted' not in str(err), err\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TORCH_HOME"] = str(tmp_path / "torch_home")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _write(path, content: str | bytes):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _fit_error(tmp_path, capsys, *args: str) -> str:
    """The one-line error of a tiny ``tritri fit`` run with ``args`` that must fail (status 2)."""
    argv = ["fit", "--size", "16", "--steps", "1", "-q", "--backend", "torch"]
    assert main([*argv, "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("tritri fit: error:")
    return err


@pytest.mark.parametrize(
    "content, message",
    [
        ("loss: {type: geometric_mean\n  bad: [", "is not valid YAML"),
        ("- 1\n- 2\n", "must hold a mapping"),
        (b"\x89PNG\x00\xff\xfe", "cannot read"),
        ("just words", "must hold a mapping"),
        ("loss: 3\n", "bad.yaml"),
    ],
    ids=["not-yaml", "list", "binary", "scalar", "wrong-shape"],
)
def test_bad_config_is_one_line_naming_the_file(tmp_path, capsys, content, message):
    path = _write(tmp_path / "bad.yaml", content)
    err = _fit_error(tmp_path, capsys, "--config", str(path))
    assert message in err and "--config" in err and "bad.yaml" in err


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"format": "tritri-triangles", "version": 1, "verts": [[[0, 0', "is not JSON"),
        (b"\x00\x9f\x92\x96 not text", "is not JSON (it does not start with '{')"),  # unparsed
        ('{"format": "tritri-triangles", "version": 1, "verts": "x", "colors": 1, '
         '"opacity": [], "background": [0, 0, 0]}', "malformed triangles"),
        ("[1, 2, 3]", "not a tritri triangles.json"),
    ],
    ids=["truncated", "binary", "wrong-fields", "not-an-object"],
)  # fmt: skip
def test_corrupt_init_json_is_one_line(tmp_path, capsys, content, message):
    path = _write(tmp_path / "bad.json", content)
    err = _fit_error(tmp_path, capsys, "--init", str(path))
    assert err.startswith("tritri fit: error: --init:") and message in err
    assert "bad.json" in err


def test_saved_json_round_trips_after_pruning(tmp_path):
    out = tmp_path / "run"
    # the numba rasterizer: "auto" under the suite's TRITON_INTERPRET=1 is the interpreter (40 s)
    argv = ["fit", "--size", "24", "-n", "6", "--steps", "25", "-q", "--out", str(out)]
    assert main([*argv, "--backend", "numba"]) == 0
    data = json.loads((out / "triangles.json").read_text())
    assert data["n_triangles"] == 6 and len(data["verts"]) == 6
