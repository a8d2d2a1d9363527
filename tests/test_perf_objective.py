"""The loss benchmarks (perf/bench_losses.py, test_perf_losses.py, test_perf_train_step.py) time
tritri's loss stack against the naive composition (torchvision perceptual + lpips.LPIPS + L1
+ a Python log-sum) on the claim that both compute the same objective. That claim is checked
here, on the stacks the benchmarks build, so a change on either side that breaks it fails a test
rather than skewing a timing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

PERF = Path(__file__).resolve().parent.parent / "perf"


def _bench_losses():
    spec = importlib.util.spec_from_file_location("bench_losses", PERF / "bench_losses.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_naive_and_tritri_loss_stacks_compute_the_same_objective():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    naive, fused, *_ = _bench_losses().build_stacks(2, 32, device)
    t_naive, g_naive = naive()
    t_fused, g_fused = fused()
    assert torch.isfinite(t_naive) and g_naive.abs().max() > 0
    rel = abs(float(t_naive) - float(t_fused)) / abs(float(t_naive))
    assert rel < 1e-5, (float(t_naive), float(t_fused))
    # norm-wise, as the benchmark script: a near-tie in a max-pool window may route one pixel's
    # gradient differently in the two stacks, so single entries may differ
    grel = float((g_naive - g_fused).norm() / g_naive.norm())
    assert grel < 1e-3, grel
