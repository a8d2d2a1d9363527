"""pytest-benchmark setup shared by the perf suites.

- Timings synchronize CUDA before the clock is read (:func:`synced`).
- The machine info stored with every run carries the GPU name, torch and triton versions.
- Problem sizes are real on a GPU and tiny on the CPU (where CI runs the suite with
  ``--benchmark-disable``: every case executes once, nothing is timed).
- The benchmark scripts beside the suites are imported by file for their own tests
  (:func:`perf_script`).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch


def pytest_benchmark_update_machine_info(config, machine_info):
    import triton

    machine_info["torch"] = torch.__version__
    machine_info["triton"] = triton.__version__
    machine_info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def on_gpu(device) -> bool:
    return device.type == "cuda"


@pytest.fixture
def perf_script():
    """``load(name)``: the script ``perf/<name>.py`` imported as module ``name``, registered in
    ``sys.modules`` while the test runs (as a plain import would be) and removed after."""
    loaded: list[str] = []

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loaded.append(name)
        spec.loader.exec_module(module)
        return module

    yield load
    for name in loaded:
        sys.modules.pop(name, None)
