"""state_dict() round trips mid-run: a resumed run continues exactly (SPEC 3.1)."""

from __future__ import annotations

import copy
import importlib.util
import io
from collections.abc import Callable

import pytest
import torch
from torch import nn

from tritri.losses.adaptive import AdaptiveWeighting
from tritri.losses.gradnorm import GradNorm
from tritri.losses.hybrid import GeometricUncertaintyHybrid
from tritri.losses.mgda import MGDA
from tritri.losses.schedules import AlternatingFocus, LossAnnealing, Staged, WeightedSum
from tritri.losses.uncertainty import UncertaintyWeighting

NAMES = ["l1", "mse", "edge"]
HAS_GEOMETRIC = importlib.util.find_spec("tritri.losses.geometric") is not None


def geometric_staged() -> nn.Module:
    from tritri.losses.geometric import GeometricMeanLoss

    return Staged(GeometricMeanLoss(), {0: {"regularization_weight": 0.1}, 2: {"epsilon": 1e-3}})


FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "uncertainty": lambda: UncertaintyWeighting(NAMES),
    "uncertainty_precision": lambda: UncertaintyWeighting(NAMES, form="precision"),
    "gradnorm": lambda: GradNorm(NAMES, lr=0.1),
    "adaptive": lambda: AdaptiveWeighting(NAMES, momentum=0.5),
    "alternating_counter": lambda: AlternatingFocus(NAMES),
    "annealing": lambda: LossAnnealing(["l1"], {"mse": 3, "edge": 7}),
    "weighted_sum": lambda: WeightedSum({"l1": 1.0, "mse": 0.5, "edge": 2.0}),
    "mgda": lambda: MGDA(NAMES),
    "hybrid": lambda: GeometricUncertaintyHybrid(NAMES),
    "staged_hybrid": lambda: Staged(
        GeometricUncertaintyHybrid(NAMES), {0: {"regularization_weight": 1.0}, 3: {"epsilon": 0.1}}
    ),
}
if HAS_GEOMETRIC:
    FACTORIES["staged_geometric"] = geometric_staged


def make_run(factory: Callable[[], nn.Module]):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 12))
    balancer = factory()
    params = list(model.parameters()) + list(balancer.parameters())
    opt = torch.optim.Adam(params, lr=0.01)
    z = torch.randn(3, 4)
    target = torch.rand(3, 12)
    return model, balancer, opt, z, target


def train_step(model, balancer, opt, z, target, step: int) -> float:
    image = model(z)
    diff = image - target
    losses = {
        "l1": diff.abs().mean(dim=1),  # per-sample
        "mse": (diff**2).mean(),
        "edge": (image[:, 1:] - image[:, :-1] - (target[:, 1:] - target[:, :-1])).abs().mean(),
    }
    total = balancer(losses, step=step, epoch=step / 2, shared=image)
    opt.zero_grad()
    total.backward()
    opt.step()
    return total.item()


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_round_trip_mid_run_gives_identical_totals(kind: str) -> None:
    factory = FACTORIES[kind]
    model, balancer, opt, z, target = make_run(factory)
    for step in range(6):
        train_step(model, balancer, opt, z, target, step)
    buffer = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "balancer": balancer.state_dict(), "opt": opt.state_dict()},
        buffer,
    )
    reference = [train_step(model, balancer, opt, z, target, s) for s in range(6, 12)]
    reference_stats = copy.deepcopy(balancer.stats)

    model2, balancer2, opt2, _, _ = make_run(factory)  # fresh objects, then load
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    model2.load_state_dict(state["model"])
    balancer2.load_state_dict(state["balancer"])
    opt2.load_state_dict(state["opt"])
    resumed = [train_step(model2, balancer2, opt2, z, target, s) for s in range(6, 12)]
    assert resumed == reference
    assert balancer2.stats == reference_stats


def test_stateful_balancers_really_carry_state() -> None:
    """The round trip is meaningful: without the loaded state the continuation differs."""
    for kind in ("gradnorm", "adaptive", "alternating_counter", "uncertainty"):
        model, balancer, opt, z, target = make_run(FACTORIES[kind])
        for step in range(6):
            train_step(model, balancer, opt, z, target, step)
        saved_model = copy.deepcopy(model.state_dict())
        reference = [train_step(model, balancer, opt, z, target, s) for s in range(6, 9)]
        model2, balancer2, opt2, _, _ = make_run(FACTORIES[kind])
        model2.load_state_dict(saved_model)  # model only, balancer from scratch
        fresh = [train_step(model2, balancer2, opt2, z, target, s) for s in range(6, 9)]
        assert fresh != reference, kind
