"""Where the Triton kernels run in this test session (imported by tests and tests/conftest.py).

The root conftest.py switches the Triton interpreter on when there is no ``nvidia-smi``; on a CUDA
host it stays off and the kernels compile. So a test that forces the Triton path takes its tensors
from :func:`triton_device`: CUDA tensors on a CUDA host, CPU tensors under the interpreter, and a
skip (with the reason) where neither runs them, e.g. ``TRITON_INTERPRET=0`` on a CPU-only machine.

Every such test carries the ``triton`` marker (tests/conftest.py adds it to tests that take the
``device`` fixture or a ``backend="triton"`` parameter; others are marked by hand), so that
``pytest -m triton`` selects exactly the tests that run Triton kernels: CI runs them under the
interpreter and everything else with it off. :func:`triton_device` fails an unmarked test.
"""

from __future__ import annotations

import os

import pytest
import torch


def interpreter_on() -> bool:
    """Whether the Triton interpreter is on (it must be switched on before any kernel import)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


#: The test being run (set by tests/conftest.py), to hold :func:`triton_device`'s callers to the
#: ``triton`` marker.
CURRENT_TEST: pytest.Item | None = None


def triton_device() -> torch.device:
    """The device whose tensors the Triton kernels run on here; skips the calling test if none."""
    if CURRENT_TEST is not None and CURRENT_TEST.get_closest_marker("triton") is None:
        pytest.fail(
            f"{CURRENT_TEST.nodeid} runs Triton kernels: mark it @pytest.mark.triton (CI selects "
            "those with -m triton to run them under the interpreter)"
        )
    if torch.cuda.is_available():
        return torch.device("cuda")
    if interpreter_on():
        return torch.device("cpu")
    pytest.skip(
        "the Triton kernels need a CUDA GPU or the Triton interpreter (TRITON_INTERPRET=1), and "
        "this session has neither"
    )


def backend_device(backend: str) -> torch.device:
    """Tensors for ``tritri.render(..., backend=backend)``: the Triton device for "triton", the CPU
    for the CPU backends."""
    return triton_device() if backend == "triton" else torch.device("cpu")
