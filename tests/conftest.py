"""Test setup.

Without a CUDA GPU the Triton kernels run under the Triton interpreter, which must be switched on
before triton (or tritri) is imported. With a GPU (``nvidia-smi`` on PATH) they run natively unless
TRITON_INTERPRET is set explicitly.
"""

from __future__ import annotations

import os
import shutil

if "TRITON_INTERPRET" not in os.environ and shutil.which("nvidia-smi") is None:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def device() -> torch.device:
    """The device Triton kernels run on in this session: CUDA if present, else CPU (interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
