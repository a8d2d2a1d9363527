"""The rasterizer's tunables: registered for tritri tune, and the tuner's check accepts them."""

from __future__ import annotations

import dataclasses

import pytest

from tritri.tuning import tunables
from tritri.tuning.tuner import tune_problem

TINY = {"batch": 1, "n_triangles": 12, "height": 20, "width": 24}


@pytest.fixture(scope="module")
def raster_tunables():
    import tritri.kernels.raster_tuning  # noqa: F401 - registers on import

    return tunables()


def test_raster_kernels_are_tunable(raster_tunables):
    assert {"raster_forward", "raster_backward"} <= set(raster_tunables)
    forward = raster_tunables["raster_forward"]
    assert {c["binning"] for c in forward.candidates} == {"scan", "sorted"}
    assert all(c["tile"] in (8, 16, 32) for c in forward.candidates)


@pytest.mark.parametrize("kernel", ["raster_forward", "raster_backward"])
def test_tuning_a_tiny_problem_picks_a_verified_config(raster_tunables, kernel):
    tunable = raster_tunables[kernel]
    tunable = dataclasses.replace(tunable, candidates=tunable.candidates[:3])
    times = iter([3.0, 1.0, 2.0, 9.0])  # fake timer: the second candidate is fastest
    entry, summary = tune_problem(tunable, TINY, time_fn=lambda run: (run(), next(times))[1])
    assert entry is not None and entry["verified"], summary
    assert entry["config"] == dict(tunable.candidates[1])
