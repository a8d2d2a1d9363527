"""Each balancing rule against hand-computed values (``docs/SPEC.md`` section 3.1), plus input
validation."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from tritri.losses.adaptive import AdaptiveWeighting, project_capped_simplex
from tritri.losses.hybrid import GeometricUncertaintyHybrid
from tritri.losses.schedules import AlternatingFocus, LossAnnealing, Staged, WeightedSum
from tritri.losses.uncertainty import UncertaintyWeighting

HAS_GEOMETRIC = importlib.util.find_spec("tritri.losses.geometric") is not None


def scalars(**values: float) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in values.items()}


def close(a: float, b: float, tol: float = 1e-9) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(b))


# -- UncertaintyWeighting ----------------------------------------------------------------------


@pytest.mark.parametrize("form", ["kendall", "precision"])
def test_uncertainty_value_weights_and_gradients(form: str) -> None:
    bal = UncertaintyWeighting(["a", "b"], form=form)
    with torch.no_grad():
        bal.log_sigma.copy_(torch.tensor([0.3, -0.2]))
    losses = scalars(a=2.0, b=0.5)
    total = bal(losses)
    s = [0.3, -0.2]
    if form == "kendall":
        w = [1 / (2 * math.exp(2 * si)) for si in s]
        ds = [-2 * wi * li + 1 for wi, li in zip(w, (2.0, 0.5), strict=True)]
    else:
        w = [math.exp(-si) for si in s]
        ds = [-wi * li + 1 for wi, li in zip(w, (2.0, 0.5), strict=True)]
    expected = w[0] * 2.0 + w[1] * 0.5 + sum(s)
    assert close(total.item(), expected, 1e-6)
    assert close(bal.stats["total"], expected, 1e-6)
    assert close(bal.stats["weight/a"], w[0], 1e-6) and close(bal.stats["weight/b"], w[1], 1e-6)
    assert bal.stats["loss/a"] == 2.0 and close(bal.stats["uncertainty/b"], -0.2, 1e-6)
    total.backward()
    assert close(losses["a"].grad.item(), w[0], 1e-6)  # effective weight = d total / d L
    assert torch.allclose(bal.log_sigma.grad, torch.tensor(ds, dtype=torch.float32), atol=1e-5)


def test_uncertainty_reaches_inverse_loss_weight_and_s_range_clamps() -> None:
    """At the optimum over s the precision weight is 1/L (research notes A.4.1)."""
    bal = UncertaintyWeighting(["a"], form="precision")
    opt = torch.optim.Adam(bal.parameters(), lr=0.05)
    for _ in range(600):
        opt.zero_grad()
        bal(scalars(a=0.25)).backward()
        opt.step()
    assert abs(bal.stats["weight/a"] - 4.0) < 0.05
    clamped = UncertaintyWeighting(["a"], form="precision", s_range=(-1.0, 1.0))
    with torch.no_grad():
        clamped.log_sigma.fill_(-5.0)
    clamped(scalars(a=0.25))
    assert close(clamped.stats["weight/a"], math.e, 1e-6)


def test_uncertainty_is_learnable_and_validates() -> None:
    bal = UncertaintyWeighting(["a", "b"])
    assert [p.shape for p in bal.parameters()] == [torch.Size([2])]
    with pytest.raises(ValueError, match="form"):
        UncertaintyWeighting(["a"], form="softmax")
    with pytest.raises(ValueError, match="s_range"):
        UncertaintyWeighting(["a"], s_range=(1.0, -1.0))


# -- AdaptiveWeighting -------------------------------------------------------------------------


def test_adaptive_two_losses_is_the_seed_formula() -> None:
    bal = AdaptiveWeighting(["focal", "hausdorff"], momentum=0.9, clamp=(0.1, 0.9))
    mf = mh = 0.0
    clamped = 0
    for lf, lh in [(1.0, 3.0), (0.5, 3.5), (0.2, 8.0), (0.1, 20.0), (4.0, 0.1)]:
        total = bal(scalars(focal=lf, hausdorff=lh))
        # the seed: moving averages from 0, alpha = clamp(m_h / (m_f + m_h), 0.1, 0.9)
        mf = 0.9 * mf + 0.1 * lf
        mh = 0.9 * mh + 0.1 * lh
        alpha = min(0.9, max(0.1, mh / (mf + mh)))
        assert close(bal.stats["weight/focal"], alpha, 1e-6)
        assert close(bal.stats["weight/hausdorff"], 1 - alpha, 1e-6)
        assert close(total.item(), alpha * lf + (1 - alpha) * lh, 1e-6)
        clamped += alpha == 0.9
    assert clamped  # the sequence exercises the clamp


def test_adaptive_three_losses_hand_computed() -> None:
    bal = AdaptiveWeighting(["a", "b", "c"], momentum=0.5, clamp=(0.0, 1.0))
    bal(scalars(a=1.0, b=2.0, c=5.0))
    # m = (0.5, 1, 2.5), shares (1/8, 1/4, 5/8); weights (1 - share)/2
    for name, share in zip("abc", (2 / 16, 4 / 16, 10 / 16), strict=True):
        assert close(bal.stats[f"weight/{name}"], (1 - share) / 2, 1e-6)
    # with a tight clamp the weights are the projection onto the capped simplex
    tight = AdaptiveWeighting(["a", "b", "c"], momentum=0.5, clamp=(0.25, 0.4))
    tight(scalars(a=1.0, b=2.0, c=5.0))
    w = [tight.stats[f"weight/{n}"] for n in "abc"]
    # unclamped (0.4375, 0.375, 0.1875): clamp(u - tau, 0.25, 0.4) sums to 1 at tau = 0.025
    assert w == pytest.approx([0.4, 0.35, 0.25], abs=1e-6)
    assert sum(w) == pytest.approx(1.0, abs=1e-6)


def test_capped_simplex_projection_matches_brute_force() -> None:
    torch.manual_seed(0)
    for _ in range(20):
        x = torch.rand(4, dtype=torch.float64)
        p = project_capped_simplex(x, 0.1, 0.5)
        assert p.sum().item() == pytest.approx(1.0, abs=1e-9)
        assert p.min() >= 0.1 - 1e-9 and p.max() <= 0.5 + 1e-9
        # the projection is the closest feasible point: compare to random feasible candidates
        cand = project_capped_simplex(torch.rand(2000, 4, dtype=torch.float64), 0.1, 0.5)
        assert ((cand - x) ** 2).sum(1).min() >= ((p - x) ** 2).sum() - 1e-12


def test_adaptive_rejects_infeasible_clamp_and_eval_freezes() -> None:
    with pytest.raises(ValueError, match="clamp"):
        AdaptiveWeighting(["a", "b", "c"], clamp=(0.4, 0.9))
    bal = AdaptiveWeighting(["a", "b"])
    bal(scalars(a=1.0, b=3.0))
    before = bal.averages.clone()
    bal.eval()
    bal(scalars(a=5.0, b=5.0))
    assert torch.equal(bal.averages, before)


# -- WeightedSum, AlternatingFocus, LossAnnealing ----------------------------------------------


def test_weighted_sum() -> None:
    bal = WeightedSum({"l1": 1.0, "lpips": 0.25})
    losses = scalars(l1=0.5, lpips=2.0)
    total = bal(losses)
    assert close(total.item(), 1.0)
    assert bal.stats == {
        "total": 1.0,
        "loss/l1": 0.5,
        "loss/lpips": 2.0,
        "weight/l1": 1.0,
        "weight/lpips": 0.25,
    }
    with pytest.raises(ValueError, match=r"weights\['x'\]"):
        WeightedSum({"x": -1.0})


def test_alternating_focus_cycles_with_step_epoch_and_counter() -> None:
    bal = AlternatingFocus(["a", "b", "c"])
    losses = scalars(a=1.0, b=2.0, c=3.0)
    assert [bal(losses, step=t).item() for t in range(5)] == [1.0, 2.0, 3.0, 1.0, 2.0]
    assert bal.stats["weight/b"] == 1.0 and bal.stats["weight/a"] == 0.0
    counter = AlternatingFocus(["a", "b"], period=2)
    assert [counter(scalars(a=1.0, b=2.0)).item() for _ in range(5)] == [1, 1, 2, 2, 1]
    by_epoch = AlternatingFocus(["a", "b"], by="epoch")
    assert by_epoch(scalars(a=1.0, b=2.0), epoch=3.7).item() == 2.0
    with pytest.raises(ValueError, match="epoch="):
        by_epoch(scalars(a=1.0, b=2.0))
    # the unfocused losses stay in the graph with a zero gradient
    losses = scalars(a=1.0, b=2.0)
    AlternatingFocus(["a", "b"])(losses, step=0).backward()
    assert losses["a"].grad.item() == 1.0 and losses["b"].grad.item() == 0.0


def test_loss_annealing_ramps() -> None:
    bal = LossAnnealing(["l1"], {"perceptual": 10, "lpips": 0})
    losses = scalars(l1=1.0, perceptual=2.0, lpips=4.0)
    for epoch, ramp in [(0, 0.0), (2.5, 0.25), (10, 1.0), (30, 1.0), (-3, 0.0)]:
        total = bal(losses, epoch=epoch)
        assert close(total.item(), 1.0 + ramp * 2.0 + 4.0)
        assert close(bal.stats["weight/perceptual"], ramp)
    assert LossAnnealing([], {"b": 100}, by="step")(scalars(b=2.0), step=50).item() == 1.0
    with pytest.raises(ValueError, match="epoch="):
        bal(losses)
    with pytest.raises(ValueError, match="both base and ramps"):
        LossAnnealing(["a"], {"a": 3})


# -- Staged ------------------------------------------------------------------------------------


def test_staged_changes_attributes_by_epoch() -> None:
    inner = GeometricUncertaintyHybrid(["a"], regularization_weight=0.5)
    bal = Staged(
        inner,
        {
            0: {"regularization_weight": 0.1},
            50: {"regularization_weight": 0.01},
            150: {"regularization_weight": 0.001},
        },
    )
    losses = scalars(a=0.0)  # below the floor m = 1e-4: penalty w * m^2
    for epoch, w in [(0, 0.1), (49.9, 0.1), (50, 0.01), (149, 0.01), (150, 0.001), (999, 0.001)]:
        bal(losses, epoch=epoch)
        assert inner.regularization_weight == w
        assert close(bal.stats["regularization"], w * 1e-8, 1e-6)
        assert bal.stats["stage/regularization_weight"] == w
    late = Staged(
        GeometricUncertaintyHybrid(["a"], regularization_weight=0.5), {10: {"epsilon": 1}}
    )
    late(losses, epoch=3)
    assert late.balancer.epsilon == 1e-8  # before the first stage: the balancer's own value
    late(losses, epoch=10)
    assert late.balancer.epsilon == 1


def test_staged_unknown_attribute_is_an_error_listing_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"no attribute 'regularisation'.*regularization_weight"):
        Staged(GeometricUncertaintyHybrid(["a"]), {0: {"regularisation": 0.1}})
    with pytest.raises(ValueError, match="stages"):
        Staged(GeometricUncertaintyHybrid(["a"]), {})
    with pytest.raises(ValueError, match="epoch="):
        Staged(GeometricUncertaintyHybrid(["a"]), {0: {"epsilon": 0.1}})(scalars(a=1.0))


def test_staged_sets_tensor_buffers_in_place() -> None:
    inner = WeightedSum({"a": 1.0, "b": 1.0})
    bal = Staged(inner, {"5": {"weight_values": [2.0, 0.0]}}, by="step")
    assert bal(scalars(a=1.0, b=3.0), step=4).item() == 4.0
    assert bal(scalars(a=1.0, b=3.0), step=5).item() == 2.0


@pytest.mark.skipif(not HAS_GEOMETRIC, reason="tritri.losses.geometric is not written yet")
def test_staged_geometric_mean_seed_schedule() -> None:
    from tritri.losses.geometric import GeometricMeanLoss

    bal = Staged(
        GeometricMeanLoss(),
        {0: {"regularization_weight": 0.1}, 50: {"regularization_weight": 0.01}},
    )
    losses = {"l1": torch.tensor(0.5), "lpips": torch.tensor(0.0)}
    bal(losses, epoch=60)
    assert bal.balancer.regularization_weight == 0.01
    expected = math.log(0.5 + 1e-8) + math.log(1e-8) + 0.01 * 1e-8
    assert close(bal.stats["total"], expected, 1e-6)


# -- GeometricUncertaintyHybrid ----------------------------------------------------------------


def test_hybrid_hand_computed() -> None:
    bal = GeometricUncertaintyHybrid(["a", "b"], epsilon=1e-3, regularization_weight=2.0)
    with torch.no_grad():  # s = (0, 1): raw = logit((s + 4) / 8)
        bal.raw_uncertainty.copy_(torch.tensor([0.0, math.log(5 / 3)]))
    losses = scalars(a=0.5, b=5e-5)
    total = bal(losses)
    s = (0.0, 1.0)
    ell = [math.log(1 + 0.5 / 1e-3), math.log(1 + 5e-5 / 1e-3)]
    reg = 2.0 * (1e-4 - 5e-5) ** 2
    expected = sum(math.exp(-si) * li + si for si, li in zip(s, ell, strict=True)) + reg
    assert close(total.item(), expected, 1e-6)
    assert close(bal.stats["regularization"], reg, 1e-6)
    assert close(bal.stats["log/b"], math.log(5e-5 + 1e-3), 1e-6)
    total.backward()
    w_b = math.exp(-1.0) / (5e-5 + 1e-3) - 2 * 2.0 * (1e-4 - 5e-5)
    assert close(losses["b"].grad.item(), w_b, 1e-6)
    assert close(bal.stats["weight/b"], w_b, 1e-5)


# -- shared validation -------------------------------------------------------------------------


def test_per_sample_losses_are_batch_means() -> None:
    bal = WeightedSum({"a": 2.0, "b": 1.0})
    per_sample = {"a": torch.tensor([1.0, 3.0]), "b": torch.tensor(0.5)}
    assert bal(per_sample).item() == 2.0 * 2.0 + 0.5
    assert bal.stats["loss/a"] == 2.0


def test_losses_are_validated_with_clear_errors() -> None:
    bal = UncertaintyWeighting(["l1", "lpips"])
    with pytest.raises(ValueError, match=r"missing \['lpips'\]"):
        bal({"l1": torch.tensor(1.0)})
    with pytest.raises(ValueError, match=r"unexpected \['vgg'\]"):
        bal({"l1": torch.tensor(1.0), "lpips": torch.tensor(1.0), "vgg": torch.tensor(1.0)})
    with pytest.raises(ValueError, match=r"losses\['l1'\].*shape \(2, 2\)"):
        bal({"l1": torch.ones(2, 2), "lpips": torch.tensor(1.0)})
    with pytest.raises(TypeError, match=r"losses\['l1'\] must be a tensor"):
        bal({"l1": 1.0, "lpips": torch.tensor(1.0)})
    with pytest.raises(TypeError, match="names"):
        UncertaintyWeighting("l1")
    with pytest.raises(ValueError, match="duplicate"):
        UncertaintyWeighting(["a", "a"])


def test_stats_are_plain_floats_for_every_balancer() -> None:
    x = torch.randn(6, requires_grad=True)
    balancers = [
        UncertaintyWeighting(["a", "b"]),
        AdaptiveWeighting(["a", "b"]),
        WeightedSum({"a": 1.0, "b": 1.0}),
        AlternatingFocus(["a", "b"]),
        LossAnnealing(["a"], {"b": 3}),
        GeometricUncertaintyHybrid(["a", "b"]),
    ]
    for bal in balancers:
        bal({"a": (x**2).mean(), "b": x.abs().mean()}, step=1, epoch=1, shared=x)
        assert all(type(v) is float for v in bal.stats.values()), type(bal).__name__
        assert {"total", "loss/a", "loss/b", "weight/a", "weight/b"} <= set(bal.stats)
