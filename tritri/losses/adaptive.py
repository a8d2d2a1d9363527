"""Moving-average adaptive weighting (seed 001's ``AdaptiveLossCombination``, generalized to K)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from tritri.losses.base import Balancer, Shared, check_finite

__all__ = ["AdaptiveWeighting", "project_capped_simplex"]


def project_capped_simplex(x: Tensor, low: float, high: float, iters: int = 60) -> Tensor:
    """Euclidean projection of ``x`` (last dim) onto ``{w : low ≤ w_k ≤ high, Σ_k w_k = 1}``.

    The projection is ``clamp(x − τ, low, high)`` for the ``τ`` that makes the sum 1; ``τ`` is found
    by bisection (the sum is monotone in ``τ``), with a fixed iteration count so it never syncs.
    Requires ``K·low ≤ 1 ≤ K·high``.
    """
    k = x.shape[-1]
    lo = (x.min(dim=-1, keepdim=True).values - high).detach()
    hi = (x.max(dim=-1, keepdim=True).values - low).detach()
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        s = (x - mid).clamp(low, high).sum(dim=-1, keepdim=True)
        too_big = s > 1.0
        lo = torch.where(too_big, mid, lo)
        hi = torch.where(too_big, hi, mid)
    w = (x - 0.5 * (lo + hi)).clamp(low, high)
    # remove the bisection's last rounding error without leaving the box when possible
    return w + (1.0 - w.sum(dim=-1, keepdim=True)) / k


class AdaptiveWeighting(Balancer):
    """Weights from moving averages of the losses: each loss is weighted by the *others'* share.

    Each call (in training mode) first updates the moving averages, starting from 0 like the seed::

        m_k ← momentum·m_k + (1 − momentum)·L_k            (L_k detached)
        p_k = m_k / Σ_j m_j                                 (share of loss k)
        u_k = (1 − p_k) / (K − 1)                           (the other losses' share, Σ u_k = 1)
        w   = projection of u onto {clamp[0] ≤ w_k ≤ clamp[1], Σ w_k = 1}
        total = Σ_k w_k·L_k

    For ``K = 2`` this is exactly the seed: ``w_1 = clamp(m_2/(m_1 + m_2), 0.1, 0.9)`` and
    ``w_2 = 1 − w_1`` (with ``clamp[0] + clamp[1] = 1``). For ``K > 2`` the clamp is the Euclidean
    projection onto the capped simplex (clamp, then shift all weights by the same amount until they
    sum to 1), so the weights always sum to 1 and stay inside the bounds. Before any loss is
    non-zero the shares are undefined and the weights are uniform. ``K = 1`` gives weight 1.

    Unlike the seed the weights are not an ``nn.Parameter`` (the seed overwrote it every step
    anyway): the moving averages are a buffer, so ``state_dict()`` resumes
    exactly. In eval mode the averages are not updated.

    Per-sample ``(B,)`` losses are reduced to their batch mean. ``stats`` adds ``average/<name>``.
    """

    def __init__(
        self,
        names: Sequence[str],
        momentum: float = 0.9,
        clamp: tuple[float, float] = (0.1, 0.9),
    ) -> None:
        super().__init__(names)
        self.momentum = check_finite(momentum, "momentum", nonneg=True)
        if self.momentum >= 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if len(clamp) != 2:
            raise ValueError(f"clamp must be (low, high), got {clamp!r}")
        low = check_finite(clamp[0], "clamp[0]", nonneg=True)
        high = check_finite(clamp[1], "clamp[1]", positive=True)
        k = len(self.names)
        if not low <= high or k * low > 1.0 + 1e-12 or k * high < 1.0 - 1e-12:
            raise ValueError(
                f"clamp={tuple(clamp)} is infeasible for {k} losses: weights sum to 1, so it needs "
                f"low <= high, {k}*low <= 1 and {k}*high >= 1"
            )
        self.clamp = (low, high)
        self.register_buffer("averages", torch.zeros(k))

    def extra_repr(self) -> str:
        return f"names={list(self.names)}, momentum={self.momentum}, clamp={self.clamp}"

    def current_weights(self) -> Tensor:
        """The weights the current moving averages give (without updating them)."""
        m = self.averages
        k = m.numel()
        if k == 1:
            return torch.ones_like(m)
        total = m.sum()
        share = torch.where(total > 0, m / total.clamp_min(1e-30), torch.full_like(m, 1.0 / k))
        return project_capped_simplex((1.0 - share) / (k - 1), *self.clamp)

    def forward(
        self,
        losses: Mapping[str, Tensor],
        *,
        step: int | None = None,
        epoch: float | None = None,
        shared: Shared | None = None,
    ) -> Tensor:
        values = self._stack(losses)
        if self.training:
            with torch.no_grad():
                m = self.momentum
                self.averages.mul_(m).add_(values.detach().to(self.averages.dtype), alpha=1 - m)
        weights = self.current_weights().detach()
        total = (weights.to(values.dtype) * values).sum()
        self._record(total, values, weights, per_loss={"average": self.averages})
        return total
