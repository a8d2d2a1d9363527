"""GeometricMeanLoss: value, hand-derived gradients, per-sample losses, dynamic ε, stats, state."""

from __future__ import annotations

import math

import pytest
import torch
from devices import triton_device

from tritri.losses import GeometricMeanLoss

BACKENDS = [False, True]  # torch path, fused Triton kernel (CUDA, or the interpreter on CPU)


def _device(use_triton: bool) -> torch.device:
    """CPU for the torch path; where this session runs Triton kernels for the fused kernel."""
    return triton_device() if use_triton else torch.device("cpu")


def _leaf(*values, dtype=torch.float32, device="cpu"):
    return torch.tensor(values, dtype=dtype, device=device, requires_grad=True)


@pytest.mark.parametrize("use_triton", BACKENDS)
def test_scalar_losses_value_and_gradient_by_hand(use_triton):
    """L = (0.5, 2.0, 5e-5), ε = 1e-8, m = 1e-4, w = 0.01. Only the third is under the floor:
    total = log(0.5+ε) + log(2+ε) + log(5e-5+ε) + 0.01·(5e-5)²,
    d/dL3 = 1/(5e-5+ε) - 2·0.01·(1e-4 - 5e-5) = 19996.0008 - 1e-6."""
    dev = _device(use_triton)
    l1, l2, l3 = (torch.tensor(v, device=dev, requires_grad=True) for v in (0.5, 2.0, 5e-5))
    crit = GeometricMeanLoss(use_triton=use_triton)
    total = crit({"l1": l1, "perceptual": l2, "lpips": l3})
    eps = 1e-8
    expected = math.log(0.5 + eps) + math.log(2 + eps) + math.log(5e-5 + eps) + 0.01 * 5e-5**2
    assert total.dim() == 0
    assert total.item() == pytest.approx(expected, rel=1e-6)
    total.backward()
    assert float(l1.grad) == pytest.approx(1 / (0.5 + eps), rel=1e-6)
    assert float(l2.grad) == pytest.approx(1 / (2 + eps), rel=1e-6)
    assert float(l3.grad) == pytest.approx(1 / (5e-5 + eps) - 2 * 0.01 * 5e-5, rel=1e-6)
    s = crit.stats
    assert s["total"] == pytest.approx(expected, rel=1e-6)
    assert s["regularization"] == pytest.approx(0.01 * 5e-5**2, rel=1e-5)
    assert s["loss/perceptual"] == pytest.approx(2.0)
    assert s["log/lpips"] == pytest.approx(math.log(5e-5 + eps), rel=1e-6)
    assert s["weight/l1"] == pytest.approx(float(l1.grad), rel=1e-6)
    assert s["weight/lpips"] == pytest.approx(float(l3.grad), rel=1e-6)
    assert all(type(v) is float for v in s.values())


@pytest.mark.parametrize("use_triton", BACKENDS)
def test_regularizer_gradient_by_hand(use_triton):
    """A strong penalty makes the regularizer's share visible: m = 1, w = 10, ε = 0.
    For L = 0.25 < m: d/dL = 1/0.25 - 2·10·(1 - 0.25) = 4 - 15 = -11 (the floor pushes the loss
    back up); for L = 3 > m: 1/3 and no penalty. total = log 0.25 + log 3 + 10·0.75²."""
    dev = _device(use_triton)
    a, b = (torch.tensor(v, device=dev, requires_grad=True) for v in (0.25, 3.0))
    crit = GeometricMeanLoss(
        epsilon=0.0, min_loss_value=1.0, regularization_weight=10.0, use_triton=use_triton
    )
    total = crit({"a": a, "b": b})
    assert total.item() == pytest.approx(math.log(0.25) + math.log(3.0) + 5.625, rel=1e-6)
    total.backward()
    assert float(a.grad) == pytest.approx(-11.0, rel=1e-6)
    assert float(b.grad) == pytest.approx(1 / 3, rel=1e-6)
    assert crit.stats["regularization"] == pytest.approx(5.625, rel=1e-6)


@pytest.mark.parametrize("use_triton", BACKENDS)
def test_per_sample_losses_are_batch_mean_of_per_sample_sums(use_triton):
    """(B,) losses: total = mean_b Σ_k f(L_bk); a scalar loss counts the same for every sample;
    gradients are f'(L_bk) / B. Compared with a plain autograd computation in float64."""
    dev = _device(use_triton)
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(4, generator=g) + 1e-5).double().to(dev).requires_grad_()
    b = torch.rand(4, generator=g).double()
    b[2] = 2e-5  # one sample under the floor
    b = b.to(dev).requires_grad_()
    c = torch.tensor(0.3, dtype=torch.float64, device=dev, requires_grad=True)
    eps, m, w = 1e-8, 1e-4, 0.01
    crit = GeometricMeanLoss(epsilon=eps, min_loss_value=m, regularization_weight=w,
                             use_triton=use_triton)  # fmt: skip
    total = crit({"a": a, "b": b, "c": c})
    L = torch.stack([a, b, c.expand(4)], dim=1)
    ref = (torch.log(L + eps) + w * (m - L).clamp_min(0) ** 2).sum(1).mean()
    torch.testing.assert_close(total.double(), ref, rtol=1e-6, atol=1e-9)
    ga, gb, gc = torch.autograd.grad(total, (a, b, c))
    ra, rb, rc = torch.autograd.grad(ref, (a, b, c))
    for got, want in ((ga, ra), (gb, rb), (gc, rc)):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-9)
    # the effective weight of a per-sample loss is the batch mean of the per-sample weights
    assert crit.stats["weight/a"] == pytest.approx((1 / (a.detach() + eps)).mean().item(), rel=1e-5)
    assert crit.stats["loss/b"] == pytest.approx(b.detach().mean().item(), rel=1e-6)


@pytest.mark.parametrize("use_triton", BACKENDS)
def test_dynamic_epsilon_is_detached_and_per_sample(use_triton):
    """ε_b = max(ε, 0.01·min_k L_bk) without gradient through ε: dtotal/dL = 1/(L + ε_b)/B."""
    dev = _device(use_triton)
    a = _leaf(0.5, 4.0, device=dev)
    b = _leaf(2.0, 1e-12, device=dev)
    crit = GeometricMeanLoss(regularization_weight=0.0, dynamic_epsilon=True, use_triton=use_triton)
    total = crit({"a": a, "b": b})
    e0 = 0.01 * 0.5  # sample 0: min is 0.5
    e1 = 1e-8  # sample 1: 0.01 * 1e-12 < ε
    expected = (math.log(0.5 + e0) + math.log(2 + e0) + math.log(4 + e1) + math.log(1e-12 + e1)) / 2
    assert total.item() == pytest.approx(expected, rel=1e-6)
    total.backward()
    torch.testing.assert_close(a.grad.cpu(), torch.tensor([1 / (0.5 + e0), 1 / (4 + e1)]) / 2)
    torch.testing.assert_close(b.grad.cpu(), torch.tensor([1 / (2 + e0), 1 / (1e-12 + e1)]) / 2)
    assert crit.stats["epsilon"] == pytest.approx((e0 + e1) / 2, rel=1e-6)
    # without dynamic ε the small loss dominates with weight 1/(1e-12 + 1e-8)
    static = GeometricMeanLoss(regularization_weight=0.0, use_triton=use_triton)
    static({"a": a.detach(), "b": b.detach()})
    assert "epsilon" not in static.stats
    assert static.stats["log/a"] == pytest.approx((math.log(0.5 + 1e-8) + math.log(4 + 1e-8)) / 2)


@pytest.mark.triton
def test_triton_and_torch_paths_agree():
    """The fused kernel and the torch path: same total, gradients and stats (every value)."""
    g = torch.Generator().manual_seed(1)
    losses = {f"k{i}": torch.rand(6, generator=g) * 10 ** (-i) for i in range(5)}
    out = {}
    for use_triton in BACKENDS:
        dev = _device(use_triton)
        leaves = {k: v.to(dev).requires_grad_() for k, v in losses.items()}
        crit = GeometricMeanLoss(dynamic_epsilon=True, min_loss_value=1e-2,
                                 regularization_weight=1.0, use_triton=use_triton)  # fmt: skip
        total = crit(leaves)
        total.backward()
        out[use_triton] = (total.detach().cpu(), [v.grad.cpu() for v in leaves.values()],
                           crit.stats)  # fmt: skip
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-6, atol=1e-6)
    for a, b in zip(out[True][1], out[False][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=0)
    kernel, plain = out[True][2], out[False][2]
    assert kernel.keys() == plain.keys()
    assert plain["regularization"] > 1e-4  # losses under the floor: the penalty is exercised
    for key, value in plain.items():
        assert kernel[key] == pytest.approx(value, rel=1e-5, abs=1e-12), key


def test_state_dict_round_trip_keeps_hyperparameters():
    crit = GeometricMeanLoss(epsilon=1e-6, dynamic_epsilon=True)
    crit.regularization_weight = 0.1  # e.g. set by a staged schedule
    state = crit.state_dict()
    fresh = GeometricMeanLoss()
    fresh.load_state_dict(state)
    assert fresh.epsilon == 1e-6 and fresh.regularization_weight == 0.1
    assert fresh.dynamic_epsilon is True and fresh.min_loss_value == 1e-4


def test_step_epoch_shared_are_accepted():
    x = torch.tensor(1.5, requires_grad=True)
    total = GeometricMeanLoss()({"l1": x}, step=3, epoch=1, shared=x)
    assert total.item() == pytest.approx(math.log(1.5 + 1e-8))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="epsilon"):
        GeometricMeanLoss(epsilon=-1.0)
    with pytest.raises(TypeError, match="regularization_weight"):
        GeometricMeanLoss(regularization_weight="0.1")
    crit = GeometricMeanLoss()
    with pytest.raises(ValueError, match="losses"):
        crit({})
    with pytest.raises(ValueError, match=r"losses\['b'\]"):
        crit({"a": torch.rand(3), "b": torch.rand(2)})
    with pytest.raises(ValueError, match=r"losses\['a'\]"):
        crit({"a": torch.rand(2, 2)})
    with pytest.raises(TypeError, match=r"losses\['a'\]"):
        crit({"a": 1.0})
