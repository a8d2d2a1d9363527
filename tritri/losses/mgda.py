"""MGDA: the min-norm point of the convex hull of the per-loss gradients (Désidéri 2012; Sener &
Koltun, NeurIPS 2018)."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from tritri.losses.base import Balancer, Shared, per_loss_gradients

__all__ = ["EXACT_MAX_LOSSES", "MGDA", "MinNormSolution", "min_norm_solve", "min_norm_weights"]

#: Up to this many losses the min-norm problem is solved exactly, by enumerating the
#: ``2^K − 1`` faces of the simplex; above it, by pairwise Frank-Wolfe with Wolfe's minor cycle.
EXACT_MAX_LOSSES = 8

#: A face's solution is feasible when its weights are ``>= -_FEASIBLE`` (then clipped to 0).
_FEASIBLE = 1e-10
#: Pseudo-inverse cutoff of a face's KKT matrix, relative to its largest singular value.
_RCOND = 1e-13


@dataclass(frozen=True)
class MinNormSolution:
    """The result of :func:`min_norm_solve`.

    Attributes:
        weights: ``(K,)`` float64 point of the simplex.
        value: ``‖Σ_k w_k g_k‖² = wᵀ M w``, in the Gram's units.
        gap: the Frank-Wolfe duality gap ``wᵀMw − min_k (Mw)_k`` relative to ``max_k M_kk`` (0 at
            the optimum; ``wᵀMw − min ≤ 2·gap·max_k M_kk``); NaN for a non-finite Gram.
        converged: ``gap <= tol``.
        exact: whether the face enumeration (``3 <= K <= exact_max``) or a closed form (``K <= 2``)
            produced the weights.
        iterations: Frank-Wolfe steps taken (0 when the exact solution met ``tol``).
    """

    weights: np.ndarray
    value: float
    gap: float
    converged: bool
    exact: bool
    iterations: int


def _as_gram(gram: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(gram, Tensor):
        gram = gram.detach().cpu().double().numpy()
    m = np.asarray(gram, np.float64)
    k = m.shape[0] if m.ndim else 0
    if m.shape != (k, k) or k == 0:
        raise ValueError(f"gram must be a square (K, K) matrix, got shape {m.shape}")
    return 0.5 * (m + m.T)


@lru_cache(maxsize=16)
def _faces(k: int) -> tuple[np.ndarray, ...]:
    """The faces of the simplex in ``R^k`` by size: entry ``s − 1`` is ``(C(k, s), s)`` indices."""
    return tuple(
        np.array(list(itertools.combinations(range(k), s)), dtype=np.intp).reshape(-1, s)
        for s in range(1, k + 1)
    )


def _face_solutions(m: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """For each face ``S`` (a row of ``faces``, ``(C, s)``), the minimizer of ``wᵀ M_S w`` over the
    affine hull ``Σ w = 1``: the KKT system ``[[M_S, 1], [1ᵀ, 0]] [w; −λ] = [0; 1]`` solved by
    pseudo-inverse (least squares when ``M_S`` is singular: the system is always consistent, and
    among its solutions the pseudo-inverse takes the one of least norm, which splits the weight of
    duplicated gradients equally). Returns ``(C, s)`` weights, not yet checked for ``w >= 0``."""
    c, s = faces.shape
    if s == 1:
        return np.ones((c, 1))
    kkt = np.zeros((c, s + 1, s + 1))
    kkt[:, :s, :s] = m[faces[:, :, None], faces[:, None, :]]
    kkt[:, :s, s] = 1.0
    kkt[:, s, :s] = 1.0
    # column s of the pseudo-inverse is the solution for the right-hand side e_s
    return np.linalg.pinv(kkt, rcond=_RCOND, hermitian=True)[:, :s, s]


def _exact_min_norm(m: np.ndarray) -> np.ndarray:
    """Exact minimizer of ``wᵀ M w`` over the simplex, ``M`` ``(K, K)`` with ``max diag M = 1``.

    The optimum lies in the relative interior of some face ``S``, where it minimizes the quadratic
    over the affine hull of ``S``; so the best feasible (``w_S >= 0``) face solution is a global
    minimizer. Every candidate is clipped to the simplex and evaluated exactly, so rounding in a
    face solve can only cost optimality, never feasibility. Ties (duplicated or zero gradients, a
    zero min-norm reached several ways) go to the candidate with the largest support, then the
    lowest value.
    """
    k = m.shape[0]
    candidates = []
    for faces in _faces(k):
        w_face = _face_solutions(m, faces)
        keep = np.all(np.isfinite(w_face), axis=1) & np.all(w_face >= -_FEASIBLE, axis=1)
        if not keep.any():
            continue
        w_face = np.clip(w_face[keep], 0.0, None)
        w = np.zeros((w_face.shape[0], k))
        np.put_along_axis(w, faces[keep], w_face, axis=1)
        candidates.append(w)
    w = np.concatenate(candidates)
    total = w.sum(axis=1)
    w = w[total > 0] / total[total > 0, None]
    values = np.einsum("ci,ij,cj->c", w, m, w)
    best = values.min()
    tied = np.flatnonzero(values <= best + 1e-13 + 1e-12 * best)
    support = np.count_nonzero(w[tied] > 0, axis=1)
    order = np.lexsort((values[tied], -support))
    return w[tied[order[0]]]


def _pairwise_frank_wolfe(
    m: np.ndarray, alpha: np.ndarray, max_iter: int, tol: float
) -> tuple[np.ndarray, int]:
    """Pairwise Frank-Wolfe with exact line search from ``alpha`` (``(K,)``, on the simplex), ``M``
    ``(K, K)`` scaled to ``max diag M = 1``; returns the weights and the steps taken."""
    alpha = alpha.copy()
    steps = 0
    for _ in range(max_iter):
        m_alpha = m @ alpha
        t = int(np.argmin(m_alpha))  # Frank-Wolfe vertex
        support = np.flatnonzero(alpha > 0)
        s = int(support[np.argmax(m_alpha[support])])  # away vertex
        gap = float(m_alpha[s] - m_alpha[t])  # >= the Frank-Wolfe duality gap
        if gap <= tol:
            break
        # move mass from s to t: f(alpha + g(e_t - e_s)) is a parabola in g, minimized on [0, a_s]
        curvature = float(m[t, t] - 2 * m[t, s] + m[s, s])
        step = alpha[s] if curvature <= 0 else min(alpha[s], gap / curvature)
        alpha[t] += step
        alpha[s] -= step
        if alpha[s] <= 1e-15:
            alpha[s] = 0.0
        steps += 1
    return alpha, steps


def _polish_on_support(m: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Wolfe's minor cycle from ``alpha`` (``(K,)``, on the simplex): solve the KKT system on the
    support; if the affine minimizer ``y`` is feasible take it, else move from ``alpha`` towards
    ``y`` until a weight reaches 0, drop it and repeat (at most ``K`` solves). The objective never
    increases along the way (``y`` minimizes the convex quadratic over the support's affine hull).
    ``M`` ``(K, K)``; returns ``(K,)`` weights."""
    best = alpha
    w = alpha.copy()
    for _ in range(alpha.shape[0]):
        support = np.flatnonzero(w > 0)
        y_face = _face_solutions(m, support[None, :])[0]
        if not np.all(np.isfinite(y_face)):
            break
        y = np.zeros_like(w)
        y[support] = y_face
        if np.all(y_face >= -_FEASIBLE):
            w = np.clip(y, 0.0, None)
            w /= w.sum()
            if w @ m @ w <= best @ m @ best:
                best = w
            break
        blocking = support[y_face < 0]
        ratios = w[blocking] / (w[blocking] - y[blocking])
        theta = float(ratios.min())
        w = w + theta * (y - w)
        w[blocking[ratios <= theta]] = 0.0
        w = np.clip(w, 0.0, None)
        w /= w.sum()
        if w @ m @ w <= best @ m @ best:
            best = w
    return best


def _active_set_frank_wolfe(
    m: np.ndarray, alpha: np.ndarray, max_iter: int, tol: float
) -> tuple[np.ndarray, int]:
    """From ``alpha`` (``(K,)``, on the simplex): :func:`_polish_on_support`, then rounds of ``2K``
    pairwise Frank-Wolfe steps each followed by it, until the duality gap is ``<= tol``, Frank-Wolfe
    stops on its own criterion, or ``max_iter`` steps in all; ``M`` ``(K, K)`` scaled to
    ``max diag M = 1``. Returns the weights and the Frank-Wolfe steps taken."""
    steps = 0
    stalled = False
    while True:
        alpha = _polish_on_support(m, alpha)
        if stalled or steps >= max_iter or _gap(m, alpha) <= tol:
            return alpha, steps
        chunk = min(max_iter - steps, 2 * m.shape[0])
        alpha, taken = _pairwise_frank_wolfe(m, alpha, chunk, tol)
        steps += taken
        stalled = taken < chunk


def _gap(m: np.ndarray, w: np.ndarray) -> float:
    m_w = m @ w
    return max(0.0, float(w @ m_w - m_w.min()))


def min_norm_solve(
    gram: Tensor | np.ndarray,
    max_iter: int = 250,
    tol: float = 1e-10,
    *,
    exact_max: int = EXACT_MAX_LOSSES,
) -> MinNormSolution:
    """Solve ``min_w wᵀ M w`` over the probability simplex, ``M = G Gᵀ`` the ``(K, K)`` Gram
    matrix of the ``K`` gradients, in float64 on the host (``M`` is scaled by ``max_k M_kk``).

    - ``K = 1``: ``w = 1``. ``K = 2``: closed form ``w_1 = clamp((M_22 − M_12) / (M_11 − 2 M_12 +
      M_22), 0, 1)`` (``1/2`` when the two gradients are equal).
    - ``3 <= K <= exact_max``: exact, by enumerating the ``2^K − 1`` faces of the simplex: on each
      face the equality-constrained QP is a ``(|S|+1)``-square KKT system, solved by
      pseudo-inverse (so singular Grams — parallel, duplicated or zero gradients, or a zero
      min-norm point inside the hull — are handled); the best feasible face solution is the
      minimizer (see :func:`_exact_min_norm` for ties).
    - ``K > exact_max``: pairwise Frank-Wolfe (Lacoste-Julien & Jaggi 2015) from the uniform point
      with exact line search, at most ``max_iter`` steps in all, stopping when ``(Mw)_s − (Mw)_t``
      (away vertex ``s``, Frank-Wolfe vertex ``t``) falls below ``tol``; before the first and
      after every ``2K`` steps, Wolfe's minor cycle (1976) on the current support
      (:func:`_polish_on_support`): Frank-Wolfe finds the optimal face, the KKT solve lands on
      its optimum exactly.

    If the exact solution's gap exceeds ``tol`` (extreme conditioning), Frank-Wolfe continues
    from it. The result says whether ``tol`` was reached (:class:`MinNormSolution`); all-zero
    gradients give uniform weights; a non-finite Gram gives uniform weights, NaN gap, not
    converged.
    """
    m = _as_gram(gram)
    k = m.shape[0]
    uniform = np.full(k, 1.0 / k)
    if not np.all(np.isfinite(m)):
        return MinNormSolution(uniform, float("nan"), float("nan"), False, False, 0)
    scale = float(np.max(np.diag(m)))
    if k == 1 or scale <= 0:
        return MinNormSolution(uniform, max(scale, 0.0), 0.0, True, True, 0)
    ms = m / scale
    exact = k <= max(exact_max, 2)
    if k == 2:
        denom = ms[0, 0] - 2 * ms[0, 1] + ms[1, 1]
        a = 0.5 if denom <= 1e-30 else (ms[1, 1] - ms[0, 1]) / denom
        a = min(1.0, max(0.0, a))
        w = np.array([a, 1.0 - a])
        steps = 0
    elif exact:
        w = _exact_min_norm(ms)
        steps = 0
        if _gap(ms, w) > tol:
            w, steps = _active_set_frank_wolfe(ms, w, max_iter, tol)
    else:
        w, steps = _active_set_frank_wolfe(ms, uniform, max_iter, tol)
    gap = _gap(ms, w)
    return MinNormSolution(w, float(w @ m @ w), gap, gap <= tol, exact, steps)


def min_norm_weights(
    gram: Tensor | np.ndarray, max_iter: int = 250, tol: float = 1e-10
) -> np.ndarray:
    """The ``(K,)`` float64 weights of :func:`min_norm_solve` (``gram`` ``(K, K)``)."""
    return min_norm_solve(gram, max_iter, tol).weights


class MGDA(Balancer):
    """Multiple-gradient descent: weights ``α`` on the simplex whose combined gradient has min norm.

    With ``g_k = ∇_shared L_k`` (one flattened row per loss, ``G`` ``(K, D)``)::

        α = argmin_{α ≥ 0, Σα = 1} ‖Σ_k α_k g_k‖²        (exact for K <= EXACT_MAX_LOSSES)
        total = Σ_k α_k·L_k                                  (α detached)

    The direction ``Σ α_k g_k`` decreases every loss at once (or is 0 at a Pareto-stationary
    point). ``shared`` (required in training mode) is the tensor, or sequence of tensors, the
    gradients are taken at — the rendered image, or the shared parameters (MGDA-UB in Sener &
    Koltun uses the shared representation, as here). The per-loss gradients come from
    ``torch.autograd.grad(..., retain_graph=True)`` without ``create_graph``, in the losses' dtype
    (float32 for half-precision losses); the ``(K, K)`` Gram is formed in float64 and solved on
    the host by :func:`min_norm_solve` (exact face enumeration up to ``EXACT_MAX_LOSSES`` losses,
    pairwise Frank-Wolfe above); nothing of the solve is differentiated. No gradient normalization
    is applied (MGDA favours the loss with the smallest gradient; rescale the losses if that is
    not wanted).

    In eval mode or under ``torch.no_grad()`` the last weights (a buffer, uniform at first) are
    used and ``shared`` is not needed. Per-sample ``(B,)`` losses are reduced to their batch mean.
    ``stats`` adds, on training calls, ``grad_norm/<name>``, ``mgda/gap`` (the duality gap
    ``αᵀMα − min_k (Mα)_k`` relative to ``max_k ‖g_k‖²``) and ``mgda/converged`` (1.0 when
    ``mgda/gap <= tol``, else 0.0; the first miss also warns, once per balancer).

    Args:
        names: loss names, in order.
        max_iter: Frank-Wolfe iteration limit (``K > EXACT_MAX_LOSSES``, or an exact solution
            that misses ``tol``).
        tol: tolerance on the duality gap, relative to ``max_k ‖g_k‖²``.
    """

    def __init__(self, names: Sequence[str], max_iter: int = 250, tol: float = 1e-10) -> None:
        super().__init__(names)
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
        if not isinstance(tol, int | float) or not tol >= 0:
            raise ValueError(f"tol must be a number >= 0, got {tol!r}")
        self.max_iter = max_iter
        self.tol = float(tol)
        self._warned = False
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
        grads = per_loss_gradients(scalars, self.names, shared, dtype=values.dtype).double()
        gram = grads @ grads.T
        solution = min_norm_solve(gram, self.max_iter, self.tol)
        if not solution.converged and not self._warned:
            self._warned = True
            warnings.warn(
                f"MGDA: the min-norm solve stopped at a duality gap of {solution.gap:.3g} "
                f"(relative to max ||g_k||^2), above tol={self.tol:g}; see stats['mgda/gap'] "
                "(warned once per balancer)",
                RuntimeWarning,
                stacklevel=2,
            )
        alphas = torch.as_tensor(solution.weights, dtype=values.dtype).to(values.device)
        self.alphas.copy_(alphas)
        total = (alphas * values).sum()
        self._record(
            total,
            values,
            alphas,
            per_loss={"grad_norm": gram.diagonal().sqrt()},
            scalars={"mgda/gap": solution.gap, "mgda/converged": float(solution.converged)},
        )
        return total
