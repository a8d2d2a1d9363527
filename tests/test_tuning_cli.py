"""``tritri tune``: clean refusal without a GPU; a full run on a simulated GPU with a fake timer."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tritri.configs import lookup
from tritri.configs.lookup import clear_cache, get_config, load_config_file
from tritri.tuning import tune, tuner

REPO = Path(__file__).resolve().parents[1]
GPU = "Fake GPU 9000"
KERNEL = "fake_scale"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tritri tune")
    tune.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuner, "_TUNABLES", {})
    monkeypatch.setattr(lookup, "SHIPPED_CONFIG_DIR", tmp_path / "shipped")
    monkeypatch.delenv(lookup.ENV_CONFIG_DIR, raising=False)
    monkeypatch.setitem(lookup._DEFAULTS, KERNEL, lambda problem: {"block": 1})
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA 'available' with a fake name, interpreter off, launchers not imported, fake timer."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: GPU)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(tune, "import_tunables", lambda: [])
    times = {1: 3.0, 2: 1.0, 4: 2.0}
    monkeypatch.setattr(tune, "make_time_fn", lambda quick: lambda run: times[run.block])
    clear_cache()


def register_fake(name: str = KERNEL) -> None:
    def make_runner(problem: dict, config: dict):
        x = torch.arange(problem["n"], dtype=torch.float32)

        def run() -> torch.Tensor:
            return x * 2

        run.block = config["block"]
        return run

    tuner.register_tunable(
        name, [{"block": b} for b in (1, 2, 4)], [{"n": 8}, {"n": 64}, {"n": 512}], make_runner
    )


def test_refuses_without_gpu_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    register_fake()
    assert tune.run(parse("--out", str(tmp_path))) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA GPU is available" in err
    assert list(tmp_path.iterdir()) == []


def test_refuses_under_the_interpreter(
    fake_gpu: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    register_fake()
    assert tune.run(parse()) == 1
    assert "TRITON_INTERPRET" in capsys.readouterr().err


def test_refuses_without_gpu_subprocess(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tritri", "tune", "--out", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "no CUDA GPU is available" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_full_run_on_a_simulated_gpu(
    fake_gpu: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    register_fake()
    register_fake("other_kernel")
    assert tune.run(parse("--out", str(tmp_path), "--kernels", KERNEL)) == 0
    path = tmp_path / "fake_gpu_9000.json"
    doc = load_config_file(path)
    assert doc["device_name"] == GPU and doc["capability"] == "9.0" and doc["quick"] is False
    assert doc["torch"] == torch.__version__ and doc["date"]
    assert list(doc["kernels"]) == [KERNEL]
    entries = doc["kernels"][KERNEL]
    assert [e["problem"]["n"] for e in entries] == [8, 64, 512]
    assert all(e["config"] == {"block": 2} and e["time_ms"] == 1.0 for e in entries)
    assert [c["time_ms"] for c in entries[0]["candidates"]] == [3.0, 1.0, 2.0]
    out = capsys.readouterr().out
    assert str(path) in out and out.count(KERNEL) >= 3
    # the written file is what get_config serves (via TRITRI_CONFIG_DIR) on this "GPU"
    os.environ[lookup.ENV_CONFIG_DIR] = str(tmp_path)
    try:
        assert get_config(KERNEL, {"n": 100}) == {"block": 2}
    finally:
        del os.environ[lookup.ENV_CONFIG_DIR]

    # a second run of the other kernel, --quick, keeps the first kernel's entries
    assert tune.run(parse("--out", str(tmp_path), "--kernels", "other_kernel", "--quick")) == 0
    doc = load_config_file(path)
    assert sorted(doc["kernels"]) == [KERNEL, "other_kernel"]
    assert [e["problem"]["n"] for e in doc["kernels"]["other_kernel"]] == [8, 512]


def test_out_defaults_to_env_dir(
    fake_gpu: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_fake()
    monkeypatch.setenv(lookup.ENV_CONFIG_DIR, str(tmp_path / "env"))
    assert tune.run(parse("--quick")) == 0
    assert (tmp_path / "env" / "fake_gpu_9000.json").is_file()
    assert not lookup.SHIPPED_CONFIG_DIR.exists()


def test_kernel_selection_and_errors(
    fake_gpu: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tune.run(parse("--out", str(tmp_path))) == 1
    assert "no tunable kernels" in capsys.readouterr().err
    register_fake("a")
    register_fake("b")
    register_fake("c")
    selected, unknown = tune._selected(parse("--kernels", "a,c", "b", "a").kernels)
    assert [t.kernel for t in selected] == ["a", "c", "b"] and unknown == []
    assert tune.run(parse("--out", str(tmp_path), "--kernels", "a,nope")) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "a, b, c" in err
    assert list(tmp_path.iterdir()) == []


def test_unwritable_out_is_a_clean_error(
    fake_gpu: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    register_fake()
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert tune.run(parse("--out", str(blocker / "sub"), "--quick")) == 1
    assert "cannot write" in capsys.readouterr().err


def test_import_tunables_reports_broken_modules(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "fake_tunables_good.py").write_text(
        "from tritri.tuning import register_tunable\n"
        "register_tunable('from_module', [{'b': 1}], [{'n': 1}], lambda p, c: lambda: 0)\n"
    )
    (tmp_path / "fake_tunables_bad.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    failures = tune.import_tunables(
        ("fake_tunables_good", "fake_tunables_bad", "no_such_module_xyz")
    )
    assert "from_module" in tuner.tunables()
    assert len(failures) == 2
    assert any("fake_tunables_bad" in f and "boom" in f for f in failures)
    assert any("no_such_module_xyz" in f for f in failures)
    for name in ("fake_tunables_good", "fake_tunables_bad"):
        sys.modules.pop(name, None)


def test_tunables_are_found_in_one_place(monkeypatch) -> None:
    """Every tunable kernel comes from tune.TUNABLE_MODULES, and the rasterizer's are there."""
    for name in tune.TUNABLE_MODULES:  # imported afresh: other tests clear the registry
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert tune.import_tunables() == []
    assert {"raster_forward", "raster_backward"} <= set(tuner.tunables())
