"""The geometric-mean + uncertainty hybrid stays bounded when a loss goes to 0 (seed 000, 3B)."""

from __future__ import annotations

import math

import pytest
import torch

from tritri.losses.hybrid import GeometricUncertaintyHybrid


def naive_hybrid(losses: dict[str, torch.Tensor], s: torch.Tensor, eps: float) -> torch.Tensor:
    """The obvious combination, sum_k exp(-s_k) log(L_k + eps) + s_k: unbounded below."""
    return sum(torch.exp(-s[i]) * torch.log(v + eps) + s[i] for i, v in enumerate(losses.values()))


def test_hybrid_bounded_while_a_loss_is_driven_to_zero() -> None:
    """Train the model and the uncertainties jointly while one loss goes to exactly 0."""
    theta = torch.tensor([1.0, 2.0], requires_grad=True)
    bal = GeometricUncertaintyHybrid(["vanishing", "steady"], s_range=(-4.0, 4.0))
    opt = torch.optim.Adam([theta, *bal.parameters()], lr=0.1)
    bound = 2 * -4.0
    seen_zero = False
    for step in range(600):
        vanishing = theta[0] ** 2 if step < 300 else theta[0] * 0.0  # reaches 0, then exactly 0
        losses = {"vanishing": vanishing, "steady": 0.5 + (theta[1] - 3.0) ** 2}
        total = bal(losses, step=step)
        assert math.isfinite(total.item())
        assert total.item() >= bound - 1e-5
        seen_zero |= bal.stats["loss/vanishing"] == 0.0
        opt.zero_grad()
        total.backward()
        assert all(torch.isfinite(p.grad).all() for p in [theta, *bal.parameters()])
        assert bal.stats["weight/vanishing"] <= math.exp(4.0) / bal.epsilon * (1 + 1e-6)
        opt.step()
    assert seen_zero
    s = bal.uncertainty()
    assert s.min().item() >= -4.0 and s.max().item() <= 4.0
    # it did push the vanishing loss's uncertainty to the lower bound: the bound is what held it
    assert bal.stats["uncertainty/vanishing"] < -3.5


def test_naive_hybrid_diverges_under_the_same_schedule() -> None:
    """The failure mode the design removes (so the test above is not vacuous)."""
    s = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([s], lr=0.1)
    losses = {"vanishing": torch.tensor(0.0), "steady": torch.tensor(0.5)}
    for _ in range(300):
        total = naive_hybrid(losses, s, 1e-8)
        opt.zero_grad()
        total.backward()
        opt.step()
    assert total.item() < -1e6


@pytest.mark.parametrize("loss", [0.0, 1e-30, 1e-12, 1e-6, 0.3, 1e6])
def test_hybrid_lower_bound_holds_for_any_loss_and_uncertainty(loss: float) -> None:
    bal = GeometricUncertaintyHybrid(["a", "b"], s_range=(-2.0, 3.0))
    for raw in (-50.0, -5.0, 0.0, 5.0, 50.0):
        with torch.no_grad():
            bal.raw_uncertainty.fill_(raw)
        total = bal({"a": torch.tensor(loss), "b": torch.tensor(0.1)})
        assert torch.isfinite(total)
        assert total.item() >= 2 * -2.0 - 1e-6
