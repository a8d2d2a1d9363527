"""tritri._startup: the collector paused during a tritri process's start-up, and only there."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest

from tritri import _startup


@pytest.fixture
def restore_gc():
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()
    else:
        gc.disable()
    _startup._paused = False


def test_resume_without_pause_changes_nothing(restore_gc):
    frozen = gc.get_freeze_count()
    _startup.resume_gc()
    assert gc.isenabled() and gc.get_freeze_count() == frozen


def test_pause_then_resume_freezes_what_start_up_made(restore_gc):
    _startup.pause_gc()
    assert not gc.isenabled()
    made = [[i] for i in range(1000)]  # start-up objects
    _startup.resume_gc()
    assert gc.isenabled() and gc.get_freeze_count() >= len(made)
    _startup.resume_gc()  # once only
    assert gc.isenabled()


def test_pause_leaves_a_disabled_collector_alone(restore_gc):
    gc.disable()
    _startup.pause_gc()
    _startup.resume_gc()
    assert not gc.isenabled()  # it was not ours to pause, nor to resume


def test_cli_main_in_process_keeps_the_collector(tmp_path, restore_gc):
    from tritri.cli import main

    frozen = gc.get_freeze_count()
    argv = ["fit", "--size", "16", "-n", "4", "--steps", "2", "-q", "--out", str(tmp_path / "r")]
    assert main([*argv, "--backend", "numba"]) == 0  # not the Triton interpreter: 10 s
    assert gc.isenabled() and gc.get_freeze_count() == frozen


def test_python_m_tritri_runs_a_fit_with_the_collector_back_on(tmp_path):
    """In its own process the fit resumes the collector before its loop (checked from a log
    callback) and exits 0."""
    code = (
        "import gc, sys\n"
        "import tritri.fitting.cpu_fit as cf\n"
        "seen = []\n"
        "real = cf.fit_triangles_cpu\n"
        "def spy(*a, **k):\n"
        "    seen.append(gc.isenabled())\n"
        "    return real(*a, **k)\n"
        "cf.fit_triangles_cpu = spy\n"
        "from tritri import _startup\n"
        "_startup.pause_gc()\n"
        "from tritri.cli import main\n"
        f"rc = main(['fit', '--size', '16', '-n', '4', '--steps', '2', '-q', '--out', "
        f"{str(tmp_path / 'run')!r}, '--backend', 'numba'])\n"
        "assert rc == 0 and seen == [True], (rc, seen)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "tritri", "fit", "--size", "16", "-n", "4", "--steps", "2", "-q",
         "--out", str(tmp_path / "run2"), "--backend", "numba"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run2" / "final.png").is_file()
