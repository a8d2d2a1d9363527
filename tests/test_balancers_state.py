"""state_dict() round trips mid-run: a resumed run continues exactly (``docs/SPEC.md``
section 3.1)."""

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


#: Balancers run on their own call counter: train_step passes them no step=.
COUNTER_KINDS = {"alternating_counter"}
#: Steps before the state is saved: not a multiple of the 3 losses, so a counter that restarted
#: from 0 would focus on another loss than the saved one.
WARMUP = 5


def train_step(model, balancer, opt, z, target, step: int, kind: str = "") -> float:
    image = model(z)
    diff = image - target
    losses = {
        "l1": diff.abs().mean(dim=1),  # per-sample
        "mse": (diff**2).mean(),
        "edge": (image[:, 1:] - image[:, :-1] - (target[:, 1:] - target[:, :-1])).abs().mean(),
    }
    clock = None if kind in COUNTER_KINDS else step
    total = balancer(losses, step=clock, epoch=step / 2, shared=image)
    opt.zero_grad()
    total.backward()
    opt.step()
    return total.item()


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_round_trip_mid_run_gives_identical_totals(kind: str) -> None:
    factory = FACTORIES[kind]
    model, balancer, opt, z, target = make_run(factory)
    for step in range(WARMUP):
        train_step(model, balancer, opt, z, target, step, kind)
    buffer = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "balancer": balancer.state_dict(), "opt": opt.state_dict()},
        buffer,
    )
    reference = [
        train_step(model, balancer, opt, z, target, s, kind) for s in range(WARMUP, WARMUP + 6)
    ]
    reference_stats = copy.deepcopy(balancer.stats)

    model2, balancer2, opt2, _, _ = make_run(factory)  # fresh objects, then load
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    model2.load_state_dict(state["model"])
    balancer2.load_state_dict(state["balancer"])
    opt2.load_state_dict(state["opt"])
    resumed = [
        train_step(model2, balancer2, opt2, z, target, s, kind) for s in range(WARMUP, WARMUP + 6)
    ]
    assert resumed == reference
    assert balancer2.stats == reference_stats


#: Balancers whose continuation depends on what they learned or counted so far.
STATEFUL = ["adaptive", "alternating_counter", "gradnorm", "hybrid", "staged_hybrid",
            "uncertainty", "uncertainty_precision"]  # fmt: skip
#: Balancers that are a function of (losses, step, epoch) alone in training: the control. (MGDA
#: solves its weights afresh each training step; its saved weights serve eval mode.)
STATELESS = ["annealing", "mgda", "weighted_sum"] + (["staged_geometric"] if HAS_GEOMETRIC else [])


def _continue_without_balancer_state(kind: str) -> tuple[list[float], list[float]]:
    """WARMUP steps, then three more two ways: the same objects, and fresh objects given the model's
    and the optimizer's state but a fresh balancer. Only the balancer's state differs."""
    model, balancer, opt, z, target = make_run(FACTORIES[kind])
    for step in range(WARMUP):
        train_step(model, balancer, opt, z, target, step, kind)
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    reference = [
        train_step(model, balancer, opt, z, target, s, kind) for s in range(WARMUP, WARMUP + 3)
    ]
    model2, balancer2, opt2, _, _ = make_run(FACTORIES[kind])
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    fresh = [
        train_step(model2, balancer2, opt2, z, target, s, kind) for s in range(WARMUP, WARMUP + 3)
    ]
    return reference, fresh


@pytest.mark.parametrize("kind", STATEFUL)
def test_stateful_balancers_really_carry_state(kind: str) -> None:
    """The round trip is meaningful: a balancer that lost its state continues differently (the
    model and the optimizer continue from their saved state, so nothing else differs)."""
    reference, fresh = _continue_without_balancer_state(kind)
    assert fresh != reference, f"{kind}: a fresh balancer continues identically"


@pytest.mark.parametrize("kind", STATELESS)
def test_stateless_balancers_continue_identically_without_state(kind: str) -> None:
    """The control of the test above: with no balancer state there is nothing else to differ."""
    reference, fresh = _continue_without_balancer_state(kind)
    assert fresh == reference, kind
