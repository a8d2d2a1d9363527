"""GradNorm: hand-computed updates, the 100x toy problem, and no second-order leakage."""

from __future__ import annotations

import math

import pytest
import torch

from tritri.losses.gradnorm import GradNorm


def adam_reference(grads: list[list[float]], lr: float, k: int) -> list[float]:
    """Plain-Python Adam on weights starting at 1, renormalized to sum k after each step."""
    w = [1.0] * k
    m = [0.0] * k
    v = [0.0] * k
    for t, g in enumerate(grads, 1):
        for i in range(k):
            m[i] = 0.9 * m[i] + 0.1 * g[i]
            v[i] = 0.999 * v[i] + 0.001 * g[i] ** 2
            w[i] -= lr * (m[i] / (1 - 0.9**t)) / (math.sqrt(v[i] / (1 - 0.999**t)) + 1e-8)
        w = [max(wi, 1e-3) for wi in w]
        w = [k * wi / sum(w) for wi in w]
    return w


def test_gradnorm_two_steps_hand_computed() -> None:
    bal = GradNorm(["a", "b"], alpha=1.5, lr=0.025)
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    # step 1: |grad a| = 3, |grad b| = 4 (2*x1); r = (1, 1); target = mean G = 3.5
    total = bal({"a": 3 * x[0], "b": x[1] ** 2}, shared=x)
    assert total.item() == pytest.approx(3.0 + 4.0)  # the weights before the update (1, 1)
    assert bal.stats["gradnorm_loss"] == pytest.approx(1.0)
    assert bal.stats["grad_norm/a"] == pytest.approx(3.0)
    g1 = [-3.0, 4.0]  # sign(G - target) * |grad|
    assert bal.weights.tolist() == pytest.approx(adam_reference([g1], 0.025, 2), abs=1e-6)
    assert bal.initial_losses.tolist() == [3.0, 4.0]
    # step 2: L~ = (3/3, 2/4) -> r = (4/3, 2/3); norms (3, 2)
    w = bal.weights.tolist()
    total = bal({"a": 3 * x[0], "b": 0.5 * x[1] ** 2}, shared=x)
    assert total.item() == pytest.approx(w[0] * 3 + w[1] * 2, rel=1e-6)
    G = [w[0] * 3, w[1] * 2]
    r = [4 / 3, 2 / 3]
    target = [sum(G) / 2 * ri**1.5 for ri in r]
    g2 = [math.copysign(n, Gi - ti) for n, Gi, ti in zip((3.0, 2.0), G, target, strict=True)]
    grad_loss = sum(abs(a - b) for a, b in zip(G, target, strict=True))
    assert bal.stats["gradnorm_loss"] == pytest.approx(grad_loss)
    assert bal.weights.tolist() == pytest.approx(adam_reference([g1, g2], 0.025, 2), abs=1e-6)


def toy_problem(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(8, 32)
    z = torch.randn(4, 8)
    t1, t2 = torch.rand(4, 32), torch.rand(4, 32)

    def losses():
        image = model(z)
        # same form, gradients 100x apart
        return image, {
            "small": ((image - t1) ** 2).mean(),
            "large": 100.0 * ((image - t2) ** 2).mean(),
        }

    return model, losses


def test_gradnorm_down_weights_the_loss_with_100x_larger_gradients() -> None:
    model, losses = toy_problem()
    bal = GradNorm(["small", "large"], alpha=1.5, lr=0.025)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(60):
        image, values = losses()
        total = bal(values, shared=image)
        opt.zero_grad()
        total.backward()
        opt.step()
        w = bal.weights
        assert torch.all(w > 0)
        assert w.sum().item() == pytest.approx(2.0, abs=1e-5)
    ratio = bal.stats["grad_norm/large"] / bal.stats["grad_norm/small"]
    assert 30 < ratio < 300  # the toy problem is what it says
    assert bal.weights[1] < 0.5 < 1.5 < bal.weights[0]
    assert bal.stats["weight/large"] < bal.stats["weight/small"]


def test_gradnorm_weights_stay_positive_at_the_floor() -> None:
    model, losses = toy_problem(1)
    bal = GradNorm(["small", "large"], alpha=0.0, lr=0.5, min_weight=0.01)
    for _ in range(100):
        image, values = losses()
        bal(values, shared=image)
    assert bal.weights.min().item() > 0
    assert bal.weights.sum().item() == pytest.approx(2.0, abs=1e-5)


def test_gradnorm_does_not_leak_into_model_gradients() -> None:
    model, losses = toy_problem(2)
    bal = GradNorm(["small", "large"])
    for _ in range(3):  # move the weights off 1
        image, values = losses()
        bal(values, shared=image)
    w = bal.weights.clone()
    image, values = losses()
    total = bal(values, shared=image)
    assert all(p.grad is None for p in model.parameters())  # the weight update touched no .grad
    assert not any(t.requires_grad for t in bal.buffers())
    total.backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    _, values = losses()
    (w[0] * values["small"] + w[1] * values["large"]).backward()
    for a, b in zip(got, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_gradnorm_needs_shared_in_training_but_not_in_eval() -> None:
    bal = GradNorm(["a", "b"])
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(ValueError, match="shared="):
        bal({"a": x[0], "b": x[1]})
    with pytest.raises(ValueError, match="'b' does not depend on shared"):
        bal({"a": x[0], "b": torch.tensor(1.0, requires_grad=True)}, shared=x)
    bal.eval()
    assert bal({"a": x[0], "b": x[1]}).item() == 3.0
    assert not bool(bal.initialized)
    bal.train()
    with torch.no_grad():
        bal({"a": x[0], "b": x[1]})  # no grad: no update, no error
    assert not bool(bal.initialized)


def test_gradnorm_accepts_a_list_of_shared_parameters() -> None:
    model, losses = toy_problem(3)
    bal = GradNorm(["small", "large"])
    _, values = losses()
    bal(values, shared=list(model.parameters()))
    assert bal.stats["grad_norm/large"] > bal.stats["grad_norm/small"] > 0
    with pytest.raises(ValueError, match="alpha"):
        GradNorm(["a"], alpha=-1)
    with pytest.raises(ValueError, match="lr"):
        GradNorm(["a"], lr=0)
