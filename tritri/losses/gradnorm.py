"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from tritri.losses.base import Balancer, Shared, check_finite, per_loss_gradients

__all__ = ["GradNorm"]


class GradNorm(Balancer):
    """Weights ``w_k`` (``Σ w_k = K``, all ``> 0``) that keep the per-loss gradient norms balanced.

    Each training call, with ``G_k = ‖∇_shared (w_k·L_k)‖ = w_k·‖∇_shared L_k‖``::

        r_k      = (L_k / L_k(0)) / mean_j (L_j / L_j(0))      relative inverse training rate
        target_k = mean_j(G_j) · r_k^alpha                      (a constant, as in the paper)
        L_grad   = Σ_k |G_k − target_k|
        w        ← w − Adam_lr(∂L_grad/∂w)                      only w moves
        w        ← K · max(w, min_weight) / Σ_j max(w_j, min_weight)

    and the returned ``total = Σ_k w_k·L_k`` uses the weights *before* this update, detached. A loss
    whose gradient at ``shared`` is larger than its target is down-weighted; ``alpha > 0`` lets
    losses that train slowly (``r_k > 1``) keep larger gradients (the paper's ``r^+alpha``).

    Choices the paper leaves open:

    * ``shared`` (required in training mode) is one tensor or a sequence of tensors every loss
      depends on. For a renderer the rendered image is the natural choice: the per-loss gradients
      then cost only a backward pass through the loss functions, not the rasterizer.
    * Per-loss gradients come from ``torch.autograd.grad(L_k, shared, retain_graph=True)`` without
      ``create_graph``, so they are constants. ``L_grad`` lives on its own graph, whose only leaf
      is ``w``; since ``G_k`` is linear in ``w_k``, ``∂L_grad/∂w_k = sign(G_k − target_k)·
      ‖∇L_k‖`` exactly, and that closed form is what is applied. No second-order term can reach the
      model's gradients (lucidrains' implementation leaks them).
    * The weight update is this module's own Adam step (betas 0.9/0.999, eps 1e-8) with learning
      rate ``lr`` — Adam makes the step independent of the scale of the gradient norms, which for
      image losses at the image are tiny. The weights are buffers, not parameters: do not give them
      to the model's optimizer. Adam's moments and step count are buffers too, so ``state_dict()``
      resumes exactly.
    * Positivity: clamp at ``min_weight`` and renormalize to sum ``K`` after each update (the
      paper only renormalizes, which lets weights go negative).
    * ``L_k(0)`` is the batch loss of the first training call (a buffer). A zero initial loss is
      replaced by ``1e-12`` in the ratio.
    * Outside training (``module.eval()`` or under ``torch.no_grad()``) the weights are used as they
      are and ``shared`` is not needed.

    Per-sample ``(B,)`` losses are reduced to their batch mean. ``stats`` adds
    ``grad_norm/<name>`` (``‖∇_shared L_k‖``, unweighted) and ``gradnorm_loss`` (``L_grad``) on
    training calls.
    """

    def __init__(
        self,
        names: Sequence[str],
        alpha: float = 1.5,
        lr: float = 0.025,
        min_weight: float = 1e-3,
    ) -> None:
        super().__init__(names)
        self.alpha = check_finite(alpha, "alpha", nonneg=True)
        self.lr = check_finite(lr, "lr", positive=True)
        self.min_weight = check_finite(min_weight, "min_weight", positive=True)
        if self.min_weight >= 1.0:
            raise ValueError(f"min_weight must be < 1 (weights average 1), got {min_weight!r}")
        k = len(self.names)
        self.register_buffer("weights", torch.ones(k))
        self.register_buffer("initial_losses", torch.zeros(k))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("adam_step", torch.zeros((), dtype=torch.long))
        self.register_buffer("exp_avg", torch.zeros(k))
        self.register_buffer("exp_avg_sq", torch.zeros(k))

    def extra_repr(self) -> str:
        return (
            f"names={list(self.names)}, alpha={self.alpha}, lr={self.lr}, "
            f"min_weight={self.min_weight}"
        )

    def forward(
        self,
        losses: Mapping[str, Tensor],
        *,
        step: int | None = None,
        epoch: float | None = None,
        shared: Shared | None = None,
    ) -> Tensor:
        scalars = self._scalars(losses)
        values = torch.stack(scalars)
        weights = self.weights.detach().clone()
        total = (weights.to(values.dtype) * values).sum()
        if not (self.training and torch.is_grad_enabled()):
            self._record(total, values, weights)
            return total
        if shared is None:
            raise ValueError(
                "GradNorm needs shared=<tensor every loss depends on> in training mode (the "
                "rendered image is the natural choice); call .eval() to use fixed weights"
            )
        norms = per_loss_gradients(scalars, self.names, shared).norm(dim=1)
        grad_loss = self._update(values.detach().float(), norms)
        self._record(
            total,
            values,
            weights,
            per_loss={"grad_norm": norms},
            scalars={"gradnorm_loss": grad_loss},
        )
        return total

    @torch.no_grad()
    def _update(self, values: Tensor, norms: Tensor) -> Tensor:
        # no host sync: the first call records L(0), later calls keep it
        self.initial_losses.copy_(torch.where(self.initialized, self.initial_losses, values))
        self.initialized.fill_(True)
        w = self.weights
        g = w * norms
        ratio = values / self.initial_losses.clamp_min(1e-12)
        r = ratio / ratio.mean().clamp_min(1e-30)
        target = g.mean() * r.pow(self.alpha)
        grad_loss = (g - target).abs().sum()
        grad = torch.sign(g - target) * norms  # = ∂ grad_loss / ∂ w, exactly
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        self.adam_step += 1
        t = self.adam_step.to(w.dtype)
        self.exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        m_hat = self.exp_avg / (1 - torch.pow(beta1, t))
        v_hat = self.exp_avg_sq / (1 - torch.pow(beta2, t))
        w.sub_(self.lr * m_hat / (v_hat.sqrt() + eps))
        w.clamp_(min=self.min_weight)
        w.mul_(len(self.names) / w.sum())
        return grad_loss
