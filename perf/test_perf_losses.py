"""Loss stack forward + backward: tritri (one trunk pass, cached target, fused reductions,
GeometricMeanLoss) vs the naive composition (torchvision perceptual + lpips.LPIPS + L1 + a Python
log-sum). Same objective; see perf/bench_losses.py for the interleaved ratio script.

Groups are ``losses-fwdbwd-<case>``; ``extra_info["impl"]`` names the implementation.
"""

from __future__ import annotations

import functools

import pytest
import torch
from bench_losses import build_stacks
from perf_utils import synced

_stacks = functools.lru_cache(maxsize=2)(build_stacks)

# name: (batch, size)
GPU_CASES = {"b8-256px": (8, 256), "b2-512px": (2, 512)}
CPU_CASES = {"b2-32px": (2, 32)}


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", list(GPU_CASES if torch.cuda.is_available() else CPU_CASES))


@pytest.mark.parametrize("impl", ["tritri", "naive"])
def test_losses_forward_backward(benchmark, impl, case, device):
    batch, size = (GPU_CASES if device.type == "cuda" else CPU_CASES)[case]
    naive, fused, *_ = _stacks(batch, size, device)
    benchmark.group = f"losses-fwdbwd-{case}"
    benchmark.extra_info["impl"] = impl
    total, grad = benchmark(synced(fused if impl == "tritri" else naive))
    assert torch.isfinite(total) and torch.isfinite(grad).all()
