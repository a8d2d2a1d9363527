"""Geometric-mean loss balancer: Σ_k log(L_k + ε) plus a floor penalty (seed 000,
``docs/SPEC.md`` section 3.1)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["GeometricMeanLoss", "log_sum"]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _resolve_use_triton(use_triton: bool | None, device: torch.device) -> bool:
    if use_triton is None:
        return device.type == "cuda"
    if use_triton and device.type != "cuda" and not _interpreting():
        raise ValueError(
            f"use_triton=True needs CUDA tensors (the losses are on {device}) or the Triton "
            "interpreter (TRITON_INTERPRET=1 set before triton is imported)"
        )
    return bool(use_triton)


def _log_sum_torch(
    losses: Tensor, eps: Tensor, min_loss_value: float, regularization_weight: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Torch twin of :func:`tritri.kernels.log_sum.log_sum_forward` (same outputs)."""
    B = losses.shape[0]
    x = losses + eps[:, None]
    gap = torch.where(losses < min_loss_value, min_loss_value - losses, torch.zeros_like(losses))
    log_sums = torch.log(x).sum(0)
    reg_sums = (regularization_weight * gap * gap).sum(0)
    grad = (1.0 / x - (2.0 * regularization_weight) * gap) / B
    return log_sums, reg_sums, grad


class _LogSum(torch.autograd.Function):
    """Batch-mean of Σ_k log(L_bk + ε_b) + w·Σ_k relu(m - L_bk)², derivative from the same pass."""

    @staticmethod
    def forward(ctx, losses, eps, min_loss_value, regularization_weight, use_triton):
        L = losses.detach()
        if use_triton:
            from tritri.kernels.log_sum import log_sum_forward

            log_sums, reg_sums, grad = log_sum_forward(
                L, eps, min_loss_value, regularization_weight
            )
            log_sums = log_sums.to(L.dtype)
            reg_sums = reg_sums.to(L.dtype)
        else:
            log_sums, reg_sums, grad = _log_sum_torch(L, eps, min_loss_value, regularization_weight)
        total = (log_sums.sum() + reg_sums.sum()) / L.shape[0]
        ctx.save_for_backward(grad)
        ctx.dtype = losses.dtype
        ctx.mark_non_differentiable(log_sums, reg_sums, grad)
        return total, log_sums, reg_sums, grad

    @staticmethod
    @once_differentiable
    def backward(ctx, g_total, *_unused):
        (grad,) = ctx.saved_tensors
        return (g_total * grad).to(ctx.dtype), None, None, None, None


def log_sum(
    losses: Tensor,
    eps: Tensor,
    min_loss_value: float,
    regularization_weight: float,
    *,
    use_triton: bool | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Differentiable ``(total, log_sums (K,), reg_sums (K,), grad (B, K))`` for ``(B, K)`` losses.

    ``total = mean_b Σ_k [log(L_bk + eps_b) + w·(m - L_bk)²·[L_bk < m]]`` is differentiable with
    respect to ``losses`` (once: the backward is the derivative computed in the forward pass, scaled
    by the upstream gradient); the other outputs are detached diagnostics. ``use_triton``: None =
    the fused kernel for CUDA tensors, torch otherwise; True forces the kernel (CUDA or the
    interpreter).
    """
    use = _resolve_use_triton(use_triton, losses.device)
    return _LogSum.apply(losses, eps, float(min_loss_value), float(regularization_weight), use)


def _check_number(value: Any, argument: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{argument} must be a number, got {type(value).__name__} {value!r}")
    out = float(value)
    if not math.isfinite(out) or out < 0:
        raise ValueError(f"{argument} must be finite and >= 0, got {value!r}")
    return out


class GeometricMeanLoss(nn.Module):
    """``total = Σ_k log(L_k + ε) + w·Σ_{L_k < m} (m - L_k)²`` (seed 000, MultiNet++ log form).

    Each loss gets the effective weight ``d total / d L_k = 1/(L_k + ε) - 2w(m - L_k)·[L_k < m]``:
    lagging (large) losses are pushed less per unit than ones that are nearly solved, so no loss can
    be traded for another and none needs a hand-tuned weight. The penalty keeps a gradient alive
    once a loss drops under ``m`` (the seed's "L1 regularization").

    Args:
        epsilon: ε (>= 0) inside the log.
        min_loss_value: m, the floor under which the penalty acts.
        regularization_weight: w (>= 0).
        dynamic_epsilon: if True, ``ε = max(epsilon, 0.01·min_k L_k)`` (detached), computed per
            sample when the losses are per-sample (each sample's log-sum is its own).
        use_triton: None (default) runs the fused Triton kernel for CUDA losses and torch for CPU
            ones; True forces the kernel (CUDA or ``TRITON_INTERPRET=1``); False forces torch.

    Call as ``balancer(losses, *, step=None, epoch=None, shared=None)``; ``losses`` maps names to
    scalars or per-sample ``(B,)`` tensors (all ``(B,)`` ones of one B; scalars count the same for
    every sample). With per-sample losses the total is the batch mean of the per-sample sums.
    ``step``, ``epoch`` and ``shared`` are accepted for the common balancer interface and unused.
    The result is an fp32 (or fp64 for fp64 losses) scalar; the backward is first-order only.

    ``stats`` (plain floats, one device-to-host copy per call): ``total``, ``loss/<name>`` (batch
    mean), ``weight/<name>`` (the batch mean of the per-sample ``d total_b / d L_bk``; for scalar
    losses exactly ``d total / d L_k``), ``log/<name>`` (batch mean of ``log(L_k + ε)``),
    ``regularization`` (the penalty part of the total) and, with ``dynamic_epsilon``, ``epsilon``
    (batch mean of the ε used). The hyper-parameters are saved in ``state_dict()`` (extra state) so
    a schedule that changed them resumes where it stopped.
    """

    def __init__(
        self,
        epsilon: float = 1e-8,
        min_loss_value: float = 1e-4,
        regularization_weight: float = 0.01,
        dynamic_epsilon: bool = False,
        *,
        use_triton: bool | None = None,
    ) -> None:
        super().__init__()
        self.epsilon = _check_number(epsilon, "epsilon")
        self.min_loss_value = _check_number(min_loss_value, "min_loss_value")
        self.regularization_weight = _check_number(regularization_weight, "regularization_weight")
        self.dynamic_epsilon = bool(dynamic_epsilon)
        if use_triton not in (None, True, False):
            raise TypeError(f"use_triton must be None, True or False, got {use_triton!r}")
        self.use_triton = use_triton
        self.stats: dict[str, float] = {}

    def extra_repr(self) -> str:
        return (
            f"epsilon={self.epsilon}, min_loss_value={self.min_loss_value}, "
            f"regularization_weight={self.regularization_weight}, "
            f"dynamic_epsilon={self.dynamic_epsilon}"
        )

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "min_loss_value": self.min_loss_value,
            "regularization_weight": self.regularization_weight,
            "dynamic_epsilon": self.dynamic_epsilon,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.epsilon = _check_number(state["epsilon"], "epsilon")
        self.min_loss_value = _check_number(state["min_loss_value"], "min_loss_value")
        self.regularization_weight = _check_number(
            state["regularization_weight"], "regularization_weight"
        )
        self.dynamic_epsilon = bool(state["dynamic_epsilon"])

    def _stack(self, losses: Mapping[str, Tensor]) -> tuple[list[str], Tensor]:
        if not isinstance(losses, Mapping):
            raise TypeError(f"losses must be a mapping name -> tensor, got {type(losses).__name__}")
        if not losses:
            raise ValueError("losses is empty; pass at least one loss")
        names = list(losses)
        batch = None
        device = None
        dtype = torch.float32
        for name in names:
            v = losses[name]
            if not isinstance(v, Tensor) or not v.is_floating_point():
                raise TypeError(f"losses[{name!r}] must be a floating-point tensor, got {v!r:.60}")
            if v.dim() > 1 or v.numel() == 0:
                raise ValueError(
                    f"losses[{name!r}] must be a scalar or a per-sample (B,) tensor, got shape "
                    f"{tuple(v.shape)}"
                )
            if device is None:
                device = v.device
            elif v.device != device:
                raise ValueError(
                    f"losses[{name!r}] is on {v.device}, losses[{names[0]!r}] on {device}"
                )
            if v.dim() == 1:
                if batch is None:
                    batch = v.shape[0]
                elif v.shape[0] != batch:
                    raise ValueError(
                        f"losses[{name!r}] has {v.shape[0]} samples, another loss has {batch}"
                    )
            if v.dtype == torch.float64:
                dtype = torch.float64
        b = batch or 1
        cols = [losses[n].to(dtype).reshape(-1).expand(b) for n in names]
        return names, torch.stack(cols, dim=1)

    def forward(
        self,
        losses: Mapping[str, Tensor],
        *,
        step: int | None = None,
        epoch: float | None = None,
        shared: Any = None,
    ) -> Tensor:
        names, L = self._stack(losses)
        B = L.shape[0]
        eps = torch.full((B,), self.epsilon, device=L.device, dtype=L.dtype)
        if self.dynamic_epsilon:
            eps = torch.maximum(eps, 0.01 * L.detach().min(dim=1).values)
        total, log_sums, reg_sums, grad = log_sum(
            L, eps, self.min_loss_value, self.regularization_weight, use_triton=self.use_triton
        )
        with torch.no_grad():
            parts = [
                total.reshape(1),
                (reg_sums.sum() / B).reshape(1),
                L.mean(0),
                grad.sum(0).to(L.dtype),
                log_sums / B,
            ]
            if self.dynamic_epsilon:
                parts.append(eps.mean().reshape(1))
            flat = torch.cat([p.to(torch.float64) for p in parts]).cpu().tolist()
        K = len(names)
        stats = {"total": flat[0], "regularization": flat[1]}
        for i, name in enumerate(names):
            stats[f"loss/{name}"] = flat[2 + i]
            stats[f"weight/{name}"] = flat[2 + K + i]
            stats[f"log/{name}"] = flat[2 + 2 * K + i]
        if self.dynamic_epsilon:
            stats["epsilon"] = flat[2 + 3 * K]
        self.stats = stats
        return total
