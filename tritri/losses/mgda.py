"""MGDA: the min-norm point of the convex hull of the per-loss gradients (Désidéri 2012; Sener &
Koltun, NeurIPS 2018)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from tritri.losses.base import Balancer, Shared, per_loss_gradients

__all__ = ["MGDA", "min_norm_weights"]


def min_norm_weights(
    gram: Tensor | np.ndarray, max_iter: int = 250, tol: float = 1e-10
) -> np.ndarray:
    """Solve ``min_α αᵀ M α`` over the probability simplex, ``M = G Gᵀ`` the Gram matrix.

    ``K = 1``: ``α = 1``. ``K = 2``: closed form ``α_1 = clamp((M_22 − M_12) / (M_11 − 2 M_12 +
    M_22), 0, 1)`` (``1/2`` when the two gradients are equal). ``K > 2``: Frank-Wolfe from the
    uniform point with exact line search, in its pairwise form (Lacoste-Julien & Jaggi 2015):
    each step moves weight from the "away" vertex ``s = argmax_{α_k > 0} (Mα)_k`` to the
    Frank-Wolfe vertex ``t = argmin_k (Mα)_k`` by the amount that minimizes the norm. Plain
    Frank-Wolfe (Sener & Koltun's solver) zigzags when the optimum lies on a face of the simplex;
    the pairwise form converges linearly and can set weights exactly to 0. It stops when
    ``(Mα)_s − (Mα)_t`` (an upper bound of the duality gap ``αᵀMα − (Mα)_t``) falls below
    ``tol · max(diag M)``, or after ``max_iter`` steps. Runs in float64 on the host (``M`` is
    ``K×K``).
    """
    m = np.asarray(gram.detach().cpu().double() if isinstance(gram, Tensor) else gram, np.float64)
    k = m.shape[0]
    if m.shape != (k, k) or k == 0:
        raise ValueError(f"gram must be a square (K, K) matrix, got shape {m.shape}")
    if k == 1:
        return np.ones(1)
    if k == 2:
        denom = m[0, 0] - 2 * m[0, 1] + m[1, 1]
        a = 0.5 if denom <= 1e-30 * max(m[0, 0], m[1, 1], 1e-300) else (m[1, 1] - m[0, 1]) / denom
        a = min(1.0, max(0.0, a))
        return np.array([a, 1.0 - a])
    alpha = np.full(k, 1.0 / k)
    scale = max(float(np.max(np.diag(m))), 1e-300)
    for _ in range(max_iter):
        m_alpha = m @ alpha
        t = int(np.argmin(m_alpha))  # Frank-Wolfe vertex
        support = np.flatnonzero(alpha > 0)
        s = int(support[np.argmax(m_alpha[support])])  # away vertex
        gap = float(m_alpha[s] - m_alpha[t])  # >= the Frank-Wolfe duality gap
        if gap <= tol * scale:
            break
        # move mass from s to t: f(alpha + g(e_t - e_s)) is a parabola in g, minimized on [0, a_s]
        curvature = float(m[t, t] - 2 * m[t, s] + m[s, s])
        step = alpha[s] if curvature <= 0 else min(alpha[s], gap / curvature)
        alpha[t] += step
        alpha[s] -= step
        if alpha[s] <= 1e-15:
            alpha[s] = 0.0
    return alpha


class MGDA(Balancer):
    """Multiple-gradient descent: weights ``α`` on the simplex whose combined gradient has min norm.

    With ``g_k = ∇_shared L_k`` (one flattened row per loss)::

        α = argmin_{α ≥ 0, Σα = 1} ‖Σ_k α_k g_k‖²          (closed form K = 2, Frank-Wolfe K > 2)
        total = Σ_k α_k·L_k                                  (α detached)

    The direction ``Σ α_k g_k`` decreases every loss at once (or is 0 at a Pareto-stationary
    point). ``shared`` (required in training mode) is the tensor, or sequence of tensors, the
    gradients are taken at — the rendered image, or the shared parameters (MGDA-UB in Sener &
    Koltun uses the shared representation, as here). The per-loss gradients come from
    ``torch.autograd.grad(..., retain_graph=True)`` without ``create_graph`` and nothing of the
    solve is differentiated. No gradient normalization is applied (MGDA favours the loss with the
    smallest gradient; rescale the losses if that is not wanted).

    In eval mode or under ``torch.no_grad()`` the last weights (a buffer, uniform at first) are
    used and ``shared`` is not needed. Per-sample ``(B,)`` losses are reduced to their batch mean.
    ``stats`` adds ``grad_norm/<name>`` on training calls.

    Args:
        names: loss names, in order.
        max_iter: Frank-Wolfe iteration limit (``K > 2``).
        tol: Frank-Wolfe stopping tolerance on the duality gap, relative to ``max_k ‖g_k‖²``.
    """

    def __init__(self, names: Sequence[str], max_iter: int = 250, tol: float = 1e-10) -> None:
        super().__init__(names)
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
        if not isinstance(tol, int | float) or not tol >= 0:
            raise ValueError(f"tol must be a number >= 0, got {tol!r}")
        self.max_iter = max_iter
        self.tol = float(tol)
        k = len(self.names)
        self.register_buffer("alphas", torch.full((k,), 1.0 / k))

    def extra_repr(self) -> str:
        return f"names={list(self.names)}, max_iter={self.max_iter}, tol={self.tol}"

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
        if not (self.training and torch.is_grad_enabled()):
            alphas = self.alphas.detach().clone()
            total = (alphas.to(values.dtype) * values).sum()
            self._record(total, values, alphas)
            return total
        if shared is None:
            raise ValueError(
                "MGDA needs shared=<tensor every loss depends on> in training mode (the rendered "
                "image, or the shared parameters); call .eval() to reuse the last weights"
            )
        grads = per_loss_gradients(scalars, self.names, shared)
        grads = grads.double()
        gram = grads @ grads.T
        alphas = torch.as_tensor(
            min_norm_weights(gram, self.max_iter, self.tol), dtype=self.alphas.dtype
        ).to(values.device)
        self.alphas.copy_(alphas)
        total = (alphas.to(values.dtype) * values).sum()
        self._record(total, values, alphas, per_loss={"grad_norm": gram.diagonal().sqrt()})
        return total
