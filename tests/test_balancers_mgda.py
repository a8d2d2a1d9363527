"""MGDA: the min-norm solver against brute force over the simplex, and the balancer around it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tritri.losses.mgda import MGDA, min_norm_weights


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
def test_frank_wolfe_matches_brute_force_for_three_losses(seed: int) -> None:
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
    # FW reaches (to within its tolerance) at least the best grid point, never beats the true min
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
