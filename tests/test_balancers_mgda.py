"""MGDA: the min-norm solver against brute force over the simplex, and the balancer around it."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from tritri.losses.mgda import MGDA, _pairwise_frank_wolfe, min_norm_solve, min_norm_weights


def simplex_grid(k: int, n: int) -> np.ndarray:
    """All points of the probability simplex in R^k with coordinates in multiples of 1/n."""
    if k == 2:
        a = np.arange(n + 1) / n
        return np.stack([a, 1 - a], axis=1)
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = i + j <= n
    i, j = i[keep], j[keep]
    return np.stack([i, j, n - i - j], axis=1) / n


def norm2(alpha: np.ndarray, gram: np.ndarray) -> np.ndarray:
    return np.einsum("...i,ij,...j->...", alpha, gram, alpha)


@pytest.mark.parametrize("seed", range(8))
def test_min_norm_matches_grid_for_three_losses(seed: int) -> None:
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(3, 5))
    if seed % 2:  # make one gradient small: the optimum is often a vertex or an edge
        g[seed % 3] *= 0.1
    if seed == 4:  # three gradients in a plane, origin inside their hull: optimum norm 0
        g = np.array([[1.0, 0.0], [-1.0, 1.0], [-1.0, -1.0]])
    gram = g @ g.T
    alpha = min_norm_weights(gram)
    assert alpha.min() >= 0 and alpha.sum() == pytest.approx(1.0, abs=1e-12)
    grid = simplex_grid(3, 400)
    values = norm2(grid, gram)
    best = values.min()
    scale = np.diag(gram).max()
    # reaches at least the best grid point, never beats the true min
    assert norm2(alpha, gram) <= best + 1e-6 * scale
    assert norm2(alpha, gram) >= best - 1e-3 * scale  # grid spacing bound
    # KKT of the min-norm point d: g_k . d >= |d|^2 for every k, with equality on the support
    d = alpha @ g
    assert np.all(g @ d >= d @ d - 1e-6 * scale)
    near_best = grid[values <= best + 1e-4 * scale]
    assert np.abs(near_best - alpha).max(axis=1).min() <= 0.02


@pytest.mark.parametrize("seed", range(4))
def test_closed_form_matches_brute_force_for_two_losses(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    g = rng.normal(size=(2, 4)) * np.array([[1.0], [3.0 if seed % 2 else 0.5]])
    gram = g @ g.T
    alpha = min_norm_weights(gram)
    grid = simplex_grid(2, 100000)
    best = grid[np.argmin(norm2(grid, gram))]
    assert alpha == pytest.approx(best, abs=2e-5)
    assert min_norm_weights(np.array([[1.0, 1.0], [1.0, 1.0]])) == pytest.approx([0.5, 0.5])
    assert min_norm_weights(np.array([[4.0]])) == pytest.approx([1.0])


def test_mgda_balancer_total_and_pareto_direction() -> None:
    x = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    # gradients at x: a -> (1, 0, 0), b -> (0, 2, 0)*x1=..., c -> combination
    losses = {
        "a": x[0] * 1.0,
        "b": (x[1] ** 2) / 2.0,  # grad (0, -1, 0)
        "c": 0.25 * (x[0] + x[2]),  # grad (0.25, 0, 0.25)
    }
    bal = MGDA(["a", "b", "c"])
    total = bal(losses, shared=x)
    g = np.array([[1.0, 0, 0], [0, -1.0, 0], [0.25, 0, 0.25]])
    alpha = np.array([bal.stats[f"weight/{n}"] for n in "abc"])
    assert alpha.sum() == pytest.approx(1.0)
    brute = simplex_grid(3, 400)
    assert norm2(alpha, g @ g.T) <= norm2(brute, g @ g.T).min() + 1e-7
    expected = sum(a * v.item() for a, v in zip(alpha, losses.values(), strict=True))
    assert total.item() == pytest.approx(expected, rel=1e-6)
    total.backward()
    assert x.grad.numpy() == pytest.approx(alpha @ g, abs=1e-6)  # alpha is detached
    assert bal.stats["grad_norm/b"] == pytest.approx(1.0)
    # eval mode reuses the last weights without shared
    bal.eval()
    bal({"a": x[0], "b": x[1], "c": x[2]})
    assert [bal.stats[f"weight/{n}"] for n in "abc"] == pytest.approx(alpha.tolist(), abs=1e-6)


def test_mgda_needs_shared_in_training() -> None:
    x = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="shared="):
        MGDA(["a", "b"])({"a": x[0], "b": x[1]})
    with pytest.raises(ValueError, match="max_iter"):
        MGDA(["a"], max_iter=0)


# -- the exact solver against an independent exhaustive solution -----------------------------------


def exhaustive_min_norm(g: np.ndarray) -> tuple[float, np.ndarray]:
    """Min-norm point of the hull of the rows of ``g`` (``(K, D)``), independently of the library:
    for every face ``S`` the nearest point of the affine hull of ``g_S`` to 0, by least squares on
    the gradients themselves (``g_s0 + Σ t_i (g_si − g_s0)``; not the Gram, not a KKT system),
    kept when its weights are ``>= 0``. Returns ``(‖d‖², (K,) weights)`` of the best face (the
    smallest such face on ties)."""
    k = g.shape[0]
    best_value, best_w = np.inf, None
    scale = float(np.max(np.sum(g * g, axis=1)))
    for size in range(1, k + 1):
        for face in itertools.combinations(range(k), size):
            base = g[face[0]]
            diffs = (g[list(face[1:])] - base).T
            t = np.linalg.lstsq(diffs, -base, rcond=None)[0] if size > 1 else np.zeros(0)
            w = np.zeros(k)
            w[list(face[1:])] = t
            w[face[0]] = 1.0 - t.sum()
            if w.min() < -1e-12:
                continue
            w = np.clip(w, 0.0, None) / np.clip(w, 0.0, None).sum()
            d = w @ g
            if d @ d < best_value - 1e-15 * scale:
                best_value, best_w = float(d @ d), w
    return best_value, best_w


def slsqp_min_norm(gram: np.ndarray) -> float:
    """Best ``wᵀ M w`` SLSQP finds on the simplex (``M`` ``(K, K)``), from each vertex and the
    centre."""
    k = gram.shape[0]
    starts = [np.eye(k)[i] for i in range(k)] + [np.full(k, 1.0 / k)]
    best = np.inf
    for start in starts:
        result = minimize(
            lambda w: w @ gram @ w,
            start,
            jac=lambda w: 2 * gram @ w,
            method="SLSQP",
            bounds=[(0.0, 1.0)] * k,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
            options={"ftol": 1e-16, "maxiter": 500},
        )
        w = np.clip(result.x, 0.0, None)
        w /= w.sum()
        best = min(best, float(w @ gram @ w))
    return best


def ill_conditioned(seed: int, k: int, spread: float = 1e3) -> np.ndarray:
    """``(K, K+2)`` gradients whose Gram has eigenvalues from 1 down to ``1/spread``, in a random
    orthogonal mix: opposing gradients (obtuse angles), the optimum inside the hull or on a face."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(k + 2, k)))
    q, _ = np.linalg.qr(rng.normal(size=(k, k)))
    return q @ np.diag(np.logspace(0, -0.5 * np.log10(spread), k)) @ u.T


def pareto_stationary(seed: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(K, K+2)`` gradients spanning ``K − 1`` dimensions with ``Σ w_k g_k = 0`` for known weights
    ``w`` (``(K,)``, all > 0): the min norm is 0, reached only at ``w``."""
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.full(k, 2.0))
    g = rng.normal(size=(k, k - 1)) @ rng.normal(size=(k - 1, k + 2))
    return g - w @ g, w


def nearly_parallel(seed: int, k: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u = rng.normal(size=k + 2)
    return u * rng.uniform(0.5, 2.0, size=(k, 1)) + 1e-3 * rng.normal(size=(k, k + 2))


def _cases() -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """``(id, gradients (K, D), known weights or None)``."""
    cases: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    for k in range(1, 7):
        cases.append((f"random-K{k}", np.random.default_rng(10 + k).normal(size=(k, k + 3)), None))
    for k in (3, 5):
        cases.append((f"parallel-K{k}", nearly_parallel(k, k), None))
    # eigenvalue spread 1e3; the first four are where the old 250-step loop stopped 0.2-4 % short
    for seed, k in [(7, 3), (70, 4), (10, 5), (34, 6), (0, 3), (1, 4), (2, 5)]:
        cases.append((f"ill-K{k}-seed{seed}", ill_conditioned(seed, k), None))
    cases.append(("ill1e6-K4", ill_conditioned(3, 4, spread=1e6), None))
    for k in range(3, 7):
        g, w = pareto_stationary(k, k)
        cases.append((f"stationary-K{k}", g, w))
    flat = np.array([[1.0, 0.0], [-1.0, 1.0], [-1.0, -1.0]])  # 0 inside a triangle in the plane
    cases.append(("stationary-plane", flat, np.array([0.5, 0.25, 0.25])))
    for k in (2, 3, 5):
        g = np.random.default_rng(20 + k).normal(size=(k, 6))
        g[-1] = g[0]
        cases.append((f"duplicate-K{k}", g, None))
    for k in (2, 4):
        g = np.random.default_rng(30 + k).normal(size=(k, 5))
        g[1] = 0.0
        cases.append((f"zero-K{k}", g, np.eye(k)[1]))
    return cases


CASES = _cases()
BIG_CASES = [c for c in CASES if c[1].shape[0] >= 3]


def assert_value_close(value: float, reference: float, gram: np.ndarray) -> None:
    """``value`` within ``1e-9`` relative or ``1e-12 · max_k M_kk`` absolute of ``reference``."""
    assert abs(value - reference) <= 1e-9 * reference + 1e-12 * np.max(np.diag(gram))


def check_against_exhaustive(name: str, g: np.ndarray, known: np.ndarray | None, w: np.ndarray):
    gram = g @ g.T
    value, w_ref = exhaustive_min_norm(g)
    assert w.shape == (g.shape[0],) and w.min() >= 0 and w.sum() == pytest.approx(1, abs=1e-12)
    assert_value_close(float(w @ gram @ w), value, gram)
    if known is not None:
        assert value <= 1e-24 * np.max(np.diag(gram))
        assert w == pytest.approx(known, abs=1e-9)
    elif name.startswith("duplicate"):  # g_0 = g_{K−1}: only their sum is determined
        assert w[0] == pytest.approx(w[-1], abs=1e-12)  # ... and it is split equally
        assert w[0] + w[-1] == pytest.approx(w_ref[0] + w_ref[-1], abs=1e-9)
        assert w[1:-1] == pytest.approx(w_ref[1:-1], abs=1e-9)
    else:  # the rest are in general position: the optimum is unique
        assert w == pytest.approx(w_ref, abs=1e-8)


@pytest.mark.parametrize(("name", "g", "known"), CASES, ids=[c[0] for c in CASES])
def test_min_norm_matches_exhaustive_faces(name: str, g: np.ndarray, known) -> None:
    check_against_exhaustive(name, g, known, min_norm_weights(g @ g.T))


@pytest.mark.parametrize(("name", "g", "known"), CASES, ids=[c[0] for c in CASES])
def test_min_norm_is_not_beaten_by_slsqp(name: str, g: np.ndarray, known) -> None:
    gram = g @ g.T
    w = min_norm_weights(gram)
    assert w @ gram @ w <= slsqp_min_norm(gram) * (1 + 1e-9) + 1e-12 * np.max(np.diag(gram))


@pytest.mark.parametrize(("name", "g", "known"), CASES, ids=[c[0] for c in CASES])
def test_min_norm_solve_certifies_its_optimum(name: str, g: np.ndarray, known) -> None:
    gram = g @ g.T
    sol = min_norm_solve(torch.from_numpy(gram))  # a tensor Gram works as well
    assert sol.exact and sol.converged and sol.iterations == 0
    assert sol.gap <= 1e-12  # wᵀMw − min_k (Mw)_k: f(w) − f* <= 2·gap·max M_kk
    assert sol.value == pytest.approx(sol.weights @ gram @ sol.weights, rel=1e-12, abs=1e-300)


@pytest.mark.parametrize(("name", "g", "known"), BIG_CASES, ids=[c[0] for c in BIG_CASES])
def test_active_set_fallback_matches_exhaustive_faces(name: str, g: np.ndarray, known) -> None:
    """The method used above EXACT_MAX_LOSSES, forced on small sets."""
    sol = min_norm_solve(g @ g.T, exact_max=2)
    assert not sol.exact and sol.converged and sol.gap <= 1e-10
    check_against_exhaustive(name, g, known, sol.weights)


@pytest.mark.parametrize(("seed", "k"), [(7, 3), (70, 4), (10, 5), (34, 6)])
def test_pairwise_frank_wolfe_alone_stops_short_on_ill_conditioned_sets(seed: int, k: int) -> None:
    """Why the solve is exact: 250 pairwise Frank-Wolfe steps (the solver up to now) leave ‖d‖²
    0.2-4 % above the minimum on these sets, and their gap far above tol."""
    g = ill_conditioned(seed, k)
    gram = g @ g.T
    gram = gram / np.max(np.diag(gram))
    w, steps = _pairwise_frank_wolfe(gram, np.full(k, 1.0 / k), 250, 1e-10)
    value, _ = exhaustive_min_norm(g / np.sqrt(np.max(np.sum(g * g, axis=1))))
    assert steps == 250 and w @ gram @ w > (1 + 1e-3) * value
    assert min_norm_solve(gram).weights @ gram @ min_norm_solve(gram).weights == pytest.approx(
        value, rel=1e-9
    )


def test_min_norm_solve_degenerate_grams() -> None:
    zero = min_norm_solve(np.zeros((3, 3)))
    assert zero.weights == pytest.approx([1 / 3] * 3) and zero.converged and zero.value == 0
    bad = min_norm_solve(np.array([[1.0, np.nan], [np.nan, 1.0]]))
    assert bad.weights == pytest.approx([0.5, 0.5]) and not bad.converged and np.isnan(bad.gap)
    with pytest.raises(ValueError, match="square"):
        min_norm_solve(np.ones((2, 3)))
    many = np.ones((10, 10))  # ten equal gradients: K > EXACT_MAX_LOSSES, split equally
    assert min_norm_solve(many).weights == pytest.approx([0.1] * 10)


# -- the balancer: stats, the warning, the gradients' dtype ----------------------------------------


def linear_losses(g: np.ndarray, dtype: torch.dtype = torch.float32):
    """Losses ``L_k = g_k · x`` (gradients exactly ``g``, ``(K, D)``) at ``x`` ``(D,)``."""
    x = torch.linspace(-1, 1, g.shape[1], dtype=dtype).requires_grad_()
    gt = torch.as_tensor(g, dtype=dtype)
    return {f"l{k}": gt[k] @ x for k in range(g.shape[0])}, x


def test_mgda_stats_record_the_gap_on_an_ill_conditioned_set() -> None:
    g = ill_conditioned(70, 4)
    losses, x = linear_losses(g, torch.float64)
    bal = MGDA(list(losses))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converged: no warning
        bal(losses, shared=x)
    assert bal.stats["mgda/converged"] == 1.0 and 0 <= bal.stats["mgda/gap"] <= 1e-12
    alpha = np.array([bal.stats[f"weight/{n}"] for n in losses])
    value, w_ref = exhaustive_min_norm(g)
    assert alpha == pytest.approx(w_ref, abs=1e-9)
    assert bal.alphas.numpy() == pytest.approx(w_ref, abs=1e-6)  # the float32 buffer for eval


def test_mgda_warns_once_when_the_iterative_solve_misses_tol() -> None:
    g = ill_conditioned(9, 10)  # K = 10 > EXACT_MAX_LOSSES: pairwise Frank-Wolfe + active set
    losses, x = linear_losses(g, torch.float64)
    bal = MGDA(list(losses), max_iter=1)
    with pytest.warns(RuntimeWarning, match="duality gap"):
        bal(losses, shared=x)
    assert bal.stats["mgda/converged"] == 0.0 and bal.stats["mgda/gap"] > 1e-10
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per balancer
        bal(losses, shared=x)
    assert bal.stats["mgda/converged"] == 0.0
    bal = MGDA(list(losses))  # the default budget reaches tol
    bal(losses, shared=x)
    assert bal.stats["mgda/converged"] == 1.0 and bal.stats["mgda/gap"] <= 1e-10


def test_mgda_keeps_float64_gradients() -> None:
    """Gradients of 1e-50 are 0 in float32 (uniform weights, zero norms); in float64 the weights
    are the min-norm ones: ‖(w, 2(1 − w))‖² is least at w = 0.8."""
    g = 1e-50 * np.array([[1.0, 0.0], [0.0, 2.0]])
    losses, x = linear_losses(g, torch.float64)
    bal = MGDA(list(losses))
    total = bal(losses, shared=x)
    assert total.dtype == torch.float64
    assert [bal.stats["weight/l0"], bal.stats["weight/l1"]] == pytest.approx([0.8, 0.2], abs=1e-12)
    assert bal.stats["grad_norm/l1"] == pytest.approx(2e-50, rel=1e-12)
