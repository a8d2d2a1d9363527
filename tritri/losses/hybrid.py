"""Geometric mean + learned uncertainty (seed 000, section 3B), built so it cannot diverge."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from tritri.losses.base import Balancer, Shared, check_finite

__all__ = ["GeometricUncertaintyHybrid"]


class GeometricUncertaintyHybrid(Balancer):
    """Uncertainty weighting applied to the geometric-mean log losses, bounded below by design.

    The naive combination ``Σ_k exp(−s_k)·log(L_k + ε) + s_k`` diverges: ``log(L_k + ε)`` is
    negative once ``L_k < 1 − ε``, and then ``s_k → −∞`` drives the total to ``−∞`` (the weight on a
    negative term grows without limit). Two changes make that impossible::

        ℓ_k   = log(L_k + ε) − log(ε) = log(1 + L_k/ε)          ≥ 0 for every L_k ≥ 0
        s_k   = s_min + (s_max − s_min)·sigmoid(ρ_k)            ρ_k the learned parameters
        total = Σ_k [ exp(−s_k)·ℓ_k + s_k ]  +  w·Σ_{L_k < m} (m − L_k)²

    1. Shifting each log loss by the constant ``log ε`` (its value at ``L = 0``) makes it
       non-negative without changing its gradient: ``∂ℓ_k/∂L_k = 1/(L_k + ε)``, exactly the
       geometric mean's. 2. Squashing ``s_k`` into ``[s_min, s_max]`` (smoothly, so it never gets
       stuck with a zero gradient the way a clamp would) bounds the weights ``exp(−s_k)``.

    **Bound.** Every term but ``s_k`` is ``≥ 0`` and ``s_k ≥ s_min``, so ``total ≥ K·s_min`` for
    any losses, including a loss that reaches exactly 0; and the weight on each raw loss,
    ``exp(−s_k)/(L_k + ε)``, is at most ``exp(−s_min)/ε``. (Shift alone is not enough: with
    unbounded ``s``, ``min_s exp(−s)·ℓ + s = 1 + log ℓ → −∞`` as ``L → 0``.)

    At the optimum over ``s`` (inside the bounds) ``exp(−s_k) = 1/ℓ_k``: the learned uncertainty
    tempers losses whose log loss is large relative to their floor, on top of the geometric
    mean's ``1/(L_k + ε)``. ``m`` and ``w`` are the geometric mean's floor penalty
    (``min_loss_value``, ``regularization_weight``; ``Staged`` can change them, as it can
    ``epsilon``).

    Per-sample ``(B,)`` losses are reduced to their batch mean first. ``stats``: ``log/<name>`` is
    ``log(L_k + ε)`` (unshifted, as ``GeometricMeanLoss`` reports it), ``weight/<name>`` is
    ``d total / d L_k = exp(−s_k)/(L_k + ε) − 2w(m − L_k)·[L_k < m]``, ``uncertainty/<name>``
    is ``s_k``, and ``regularization`` the floor penalty. Add ``balancer.parameters()`` (the ``ρ``
    vector ``raw_uncertainty``) to the optimizer.

    Args:
        names: loss names, in order.
        epsilon: ``ε`` of the log loss (``> 0``).
        min_loss_value: floor ``m`` of the penalty (``>= 0``).
        regularization_weight: ``w`` of the penalty (``>= 0``).
        s_range: ``(s_min, s_max)``; ``s`` starts at 0 if 0 is inside, else at the midpoint.
    """

    def __init__(
        self,
        names: Sequence[str],
        epsilon: float = 1e-8,
        min_loss_value: float = 1e-4,
        regularization_weight: float = 0.01,
        s_range: tuple[float, float] = (-4.0, 4.0),
    ) -> None:
        super().__init__(names)
        self.epsilon = check_finite(epsilon, "epsilon", positive=True)
        self.min_loss_value = check_finite(min_loss_value, "min_loss_value", nonneg=True)
        self.regularization_weight = check_finite(
            regularization_weight, "regularization_weight", nonneg=True
        )
        if len(s_range) != 2:
            raise ValueError(f"s_range must be (s_min, s_max), got {s_range!r}")
        low = check_finite(s_range[0], "s_range[0]")
        high = check_finite(s_range[1], "s_range[1]")
        if not low < high:
            raise ValueError(f"s_range must have s_min < s_max, got {s_range!r}")
        self.s_range = (low, high)
        frac = (0.0 - low) / (high - low) if low < 0.0 < high else 0.5
        self.raw_uncertainty = nn.Parameter(
            torch.full((len(self.names),), math.log(frac / (1.0 - frac)))
        )

    def extra_repr(self) -> str:
        return (
            f"names={list(self.names)}, epsilon={self.epsilon}, min_loss_value="
            f"{self.min_loss_value}, regularization_weight={self.regularization_weight}, "
            f"s_range={self.s_range}"
        )

    def uncertainty(self) -> Tensor:
        """The current ``s`` vector, in ``[s_min, s_max]``."""
        low, high = self.s_range
        return low + (high - low) * torch.sigmoid(self.raw_uncertainty)

    def forward(
        self,
        losses: Mapping[str, Tensor],
        *,
        step: int | None = None,
        epoch: float | None = None,
        shared: Shared | None = None,
    ) -> Tensor:
        values = self._stack(losses)
        eps = self.epsilon
        logs = torch.log(values + eps)
        shifted = logs - math.log(eps)
        s = self.uncertainty().to(values.dtype)
        precision = torch.exp(-s)
        m = self.min_loss_value
        gap = (m - values).clamp_min(0.0)
        regularization = self.regularization_weight * gap.pow(2).sum()
        total = (precision * shifted + s).sum() + regularization
        self._record(
            total,
            values,
            precision / (values + eps) - 2.0 * self.regularization_weight * gap,
            logs=logs,
            regularization=regularization,
            per_loss={"uncertainty": s},
        )
        return total
