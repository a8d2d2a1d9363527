"""Fused log-sum (geometric-mean loss) forward + derivative kernel and its launcher.

For per-sample losses ``L`` of shape ``(B, K)`` and per-sample ``eps`` of shape ``(B,)``::

    log part   Σ_b Σ_k log(L_bk + eps_b)
    reg part   Σ_b Σ_k w·(m - L_bk)²·[L_bk < m]
    dL_bk    = (1/(L_bk + eps_b) - 2w·(m - L_bk)·[L_bk < m]) / B

One pass computes the column sums of both parts (one row of partials per program, finished in
torch) and the derivative of the batch-mean total, which the autograd backward only rescales by the
upstream gradient. fp32 math, int64 offsets.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from tritri.configs.defaults import LOG_SUM_KERNEL, LOG_SUM_PROBLEM_KEYS
from tritri.configs.lookup import launch_config
from tritri.kernels import FP_FUSION

__all__ = ["LOG_SUM_KERNEL", "LOG_SUM_PROBLEM_KEYS", "log_sum_forward"]


@triton.jit
def log_sum_kernel(
    l_ptr, eps_ptr, dl_ptr, log_part_ptr, reg_part_ptr,
    B, K, inv_B, min_loss, reg_weight,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Grid ``(cdiv(B, BLOCK_B),)``. l: (B, K) contiguous, any float dtype; eps: (B,) fp32;
    dl: (B, K) fp32; log_part/reg_part: (n_programs, K) fp32 column partial sums."""
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    cols = tl.arange(0, BLOCK_K).to(tl.int64)
    rmask = rows < B
    cmask = cols < K
    m = rmask[:, None] & cmask[None, :]
    offs = rows[:, None] * K + cols[None, :]
    L = tl.load(l_ptr + offs, mask=m, other=1.0).to(tl.float32)
    eps = tl.load(eps_ptr + rows, mask=rmask, other=1.0).to(tl.float32)
    x = L + eps[:, None]
    log_v = tl.where(m, tl.log(x), 0.0)
    gap = tl.where(m & (L < min_loss), min_loss - L, 0.0)
    reg = reg_weight * gap * gap
    dl = (1.0 / x - (2.0 * reg_weight) * gap) * inv_B
    tl.store(dl_ptr + offs, dl, mask=m)
    tl.store(log_part_ptr + pid * K + cols, tl.sum(log_v, axis=0), mask=cmask)
    tl.store(reg_part_ptr + pid * K + cols, tl.sum(reg, axis=0), mask=cmask)


def log_sum_forward(
    losses: Tensor,
    eps: Tensor,
    min_loss_value: float,
    regularization_weight: float,
    *,
    config: dict | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(log_sums (K,), reg_sums (K,), grad (B, K))``, all fp32.

    ``losses`` is ``(B, K)``; ``eps`` is ``(B,)``. ``log_sums``/``reg_sums`` are summed over the
    batch (divide by B for the batch mean); ``grad`` is the derivative of the batch-mean total
    ``(Σ log_sums + Σ reg_sums) / B`` with respect to ``losses``. Kernel name ``log_sum``, problem
    keys :data:`LOG_SUM_PROBLEM_KEYS`; ``config`` defaults to
    :func:`tritri.configs.defaults.log_sum_default`.
    """
    if losses.dim() != 2 or losses.numel() == 0:
        raise ValueError(f"losses must be a non-empty (B, K) tensor, got {tuple(losses.shape)}")
    B, K = losses.shape
    if eps.shape != (B,):
        raise ValueError(f"eps must have shape ({B},), got {tuple(eps.shape)}")
    if eps.device != losses.device:
        raise ValueError(f"eps is on {eps.device}, losses on {losses.device}")
    cfg = config or launch_config(LOG_SUM_KERNEL, {"batch": B, "n_losses": K}, losses.device)
    block_b = cfg["BLOCK_B"]
    block_k = triton.next_power_of_2(K)
    L = losses.contiguous()
    e = eps.to(torch.float32).contiguous()
    n_prog = triton.cdiv(B, block_b)
    grad = torch.empty((B, K), device=L.device, dtype=torch.float32)
    log_part = torch.empty((n_prog, K), device=L.device, dtype=torch.float32)
    reg_part = torch.empty((n_prog, K), device=L.device, dtype=torch.float32)
    log_sum_kernel[(n_prog,)](
        L, e, grad, log_part, reg_part,
        B, K, 1.0 / B, float(min_loss_value), float(regularization_weight),
        BLOCK_B=block_b, BLOCK_K=block_k, num_warps=cfg.get("num_warps", 1),
        enable_fp_fusion=FP_FUSION,
    )  # fmt: skip
    return log_part.sum(0), reg_part.sum(0), grad
