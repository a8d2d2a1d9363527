"""Test fixtures and the ``gpu`` and ``triton`` markers (the interpreter switch is in the root
conftest.py)."""

from __future__ import annotations

from pathlib import Path

import devices
import pytest
import torch
from devices import triton_device

try:  # the property tests' settings (tests/test_render_properties.py)
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis not installed: those tests skip
    pass
else:
    _SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]
    # CI (the default): a few examples, derandomized (the same ones on every run), no deadline
    # (the Triton interpreter and numba's first compile vary a lot in time).
    settings.register_profile("ci", max_examples=12, deadline=None, derandomize=True,
                              print_blob=True, suppress_health_check=_SLOW_OK)  # fmt: skip
    # `pytest --hypothesis-profile thorough tests/test_render_properties.py`: a real search.
    settings.register_profile("thorough", max_examples=400, deadline=None, print_blob=True,
                              suppress_health_check=_SLOW_OK)  # fmt: skip
    settings.load_profile("ci")


def _runs_triton(item: pytest.Item) -> bool:
    """Whether a test runs Triton kernels by its signature: the ``device`` fixture (the Triton
    device), a ``backend="triton"`` or a ``use_triton=True`` parameter."""
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    return (
        "device" in getattr(item, "fixturenames", ())
        or params.get("backend") == "triton"
        or params.get("use_triton") is True
    )


_TESTS_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    # This hook sees every collected item, perf/ included; the marker is for the tests here only
    # (perf's own ``device`` fixture is a plain torch device, not the Triton one).
    for item in items:
        if _TESTS_DIR in Path(item.path).resolve().parents and _runs_triton(item):
            item.add_marker(pytest.mark.triton)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _current_test(request):
    devices.CURRENT_TEST = request.node
    yield
    devices.CURRENT_TEST = None


@pytest.fixture
def device() -> torch.device:
    """The device Triton kernels run on in this session: CUDA if present, else the CPU under the
    interpreter; the test is skipped (with the reason) where neither is available."""
    return triton_device()
