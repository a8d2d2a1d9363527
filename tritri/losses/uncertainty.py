"""Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from tritri.losses.base import Balancer, Shared, check_finite

__all__ = ["UncertaintyWeighting"]

FORMS = ("kendall", "precision")


class UncertaintyWeighting(Balancer):
    """Learned per-loss uncertainties ``s_k``, one ``nn.Parameter`` each (the ``log_sigma`` vector).

    Two forms, both from the seeds:

    * ``form="kendall"`` (seed 000, paper Eq. 7 with ``s_k = log σ_k``)::

          total = Σ_k  L_k / (2·exp(2·s_k)) + s_k          weight_k = 1 / (2·exp(2·s_k))

    * ``form="precision"`` (seed 001, ``s_k = log σ_k²``)::

          total = Σ_k  exp(−s_k)·L_k + s_k                 weight_k = exp(−s_k)

    At the optimum over ``s`` the weight is ``1/(2 L_k)`` (kendall) or ``1/L_k`` (precision): both
    track the log loss, like the geometric mean. The total goes negative once a loss falls below
    ``1/2`` (kendall) or ``1`` (precision) — that is expected, not a bug.

    Add ``balancer.parameters()`` to the optimizer (optionally as their own param group; weight
    decay on ``s`` biases the weights toward 1/2 resp. 1).

    Args:
        names: loss names, in order.
        form: ``"kendall"`` or ``"precision"``.
        init: initial value of every ``s_k`` (0 gives weights 1/2 resp. 1).
        s_range: optional ``(low, high)``: ``s`` is clamped to it in the forward pass. Use it when a
            loss can reach 0 (e.g. a hinge): without it ``s_k → −∞`` and the weight diverges
            (research notes A.4.1). Outside the range the gradient on ``s`` is zero, so ``s`` stops
            moving; the raw parameter is not modified.

    Per-sample ``(B,)`` losses are reduced to their batch mean. ``stats`` adds
    ``uncertainty/<name>`` (the value of ``s_k`` used this step). There is no ``regularization``
    key: the ``+ s_k`` terms are part of the likelihood, not a penalty, and they legitimately
    dominate the total near convergence.
    """

    def __init__(
        self,
        names: Sequence[str],
        form: str = "kendall",
        init: float = 0.0,
        s_range: tuple[float, float] | None = None,
    ) -> None:
        super().__init__(names)
        if form not in FORMS:
            raise ValueError(f"form must be one of {list(FORMS)}, got {form!r}")
        self.form = form
        init = check_finite(init, "init")
        if s_range is not None:
            if len(s_range) != 2:
                raise ValueError(f"s_range must be (low, high), got {s_range!r}")
            low = check_finite(s_range[0], "s_range[0]")
            high = check_finite(s_range[1], "s_range[1]")
            if not low < high:
                raise ValueError(f"s_range must have low < high, got {s_range!r}")
            s_range = (low, high)
        self.s_range = s_range
        self.log_sigma = nn.Parameter(torch.full((len(self.names),), init))

    def extra_repr(self) -> str:
        return f"names={list(self.names)}, form={self.form!r}, s_range={self.s_range}"

    def forward(
        self,
        losses: Mapping[str, Tensor],
        *,
        step: int | None = None,
        epoch: float | None = None,
        shared: Shared | None = None,
    ) -> Tensor:
        values = self._stack(losses)
        s = self.log_sigma
        if self.s_range is not None:
            s = s.clamp(*self.s_range)
        s = s.to(values.dtype)
        weights = 0.5 * torch.exp(-2.0 * s) if self.form == "kendall" else torch.exp(-s)
        total = (weights * values).sum() + s.sum()
        self._record(total, values, weights, per_loss={"uncertainty": s})
        return total
