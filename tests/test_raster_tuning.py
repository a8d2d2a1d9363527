"""The rasterizer's tunables: registered for tritri tune, and the tuner's check accepts them."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from devices import triton_device

from tritri.tuning import tunables
from tritri.tuning.tuner import tune_problem

TINY = {"batch": 1, "n_triangles": 12, "height": 20, "width": 24}


@pytest.fixture(scope="module")
def raster_tunables():
    import importlib

    import tritri.tuning.candidates as raster

    if "raster_forward" not in tunables():  # another test cleared the registry
        importlib.reload(raster)  # registers on import
    return tunables()


def test_raster_kernels_are_tunable(raster_tunables):
    assert {"raster_forward", "raster_backward"} <= set(raster_tunables)
    forward = raster_tunables["raster_forward"]
    assert {c["binning"] for c in forward.candidates} == {"scan", "sorted"}
    assert all(c["tile"] in (8, 16, 32) for c in forward.candidates)


@pytest.mark.triton
@pytest.mark.parametrize("kernel", ["raster_forward", "raster_backward"])
def test_tuning_a_tiny_problem_picks_a_verified_config(raster_tunables, kernel):
    triton_device()  # the runners launch the kernels on CUDA, else on the CPU (interpreter)
    tunable = raster_tunables[kernel]
    tunable = dataclasses.replace(tunable, candidates=tunable.candidates[:3])
    times = iter([3.0, 1.0, 2.0, 9.0])  # fake timer: the second candidate is fastest
    entry, summary = tune_problem(tunable, TINY, time_fn=lambda run: (run(), next(times))[1])
    assert entry is not None and entry["verified"], summary
    assert entry["config"] == dict(tunable.candidates[1])


def test_every_launcher_kernel_has_a_default_and_cpu_uses_it(recwarn):
    """Every kernel's default is registered by importing tritri.tuning alone (no kernel module,
    no triton), and CPU launches use it without a warning."""
    code = (
        "import sys, tritri.tuning as t\n"
        "print(sorted(t.registered_kernels()), 'triton' in sys.modules, "
        "any(m.startswith('tritri.kernels') for m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [
        "['log_sum',", "'loss_level_backward',", "'loss_level_forward',", "'raster_backward',",
        "'raster_forward']", "False", "False",
    ]  # fmt: skip

    import tritri.kernels.log_sum  # noqa: F401 - the launchers import the same defaults
    import tritri.kernels.loss_levels  # noqa: F401
    from tritri.configs.defaults import level_default, log_sum_default, raster_default
    from tritri.tuning import launch_config, registered_kernels

    expected = {"raster_forward", "raster_backward", "loss_level_forward", "loss_level_backward",
                "log_sum"}  # fmt: skip
    assert expected <= set(registered_kernels())
    level = {"batch": 2, "channels": 64, "pixels": 4096}
    assert launch_config("loss_level_forward", level, "cpu") == level_default(level)
    assert launch_config("log_sum", {"batch": 4, "n_losses": 3}, "cpu") == (
        log_sum_default({"batch": 4, "n_losses": 3})
    )
    assert launch_config("raster_forward", TINY, "cpu") == raster_default(TINY)
    assert not [w for w in recwarn if "config" in str(w.message).lower()]  # CPU: no warning
