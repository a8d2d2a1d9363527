"""Test fixtures and the ``gpu`` marker (the interpreter switch is in the root conftest.py)."""

from __future__ import annotations

import pytest
import torch
from devices import triton_device


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def device() -> torch.device:
    """The device Triton kernels run on in this session: CUDA if present, else the CPU under the
    interpreter; the test is skipped (with the reason) where neither is available."""
    return triton_device()
