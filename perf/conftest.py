"""pytest-benchmark setup shared by the perf suites.

- Timings synchronize CUDA before the clock is read (:func:`synced`).
- The machine info stored with every run carries the GPU name, torch and triton versions.
- Problem sizes are real on a GPU and tiny on the CPU (where CI runs the suite with
  ``--benchmark-disable``: every case executes once, nothing is timed).
"""

from __future__ import annotations

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
