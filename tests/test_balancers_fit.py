"""fit_triangles with balancers that need more than the losses: learnable parameters (uncertainty
weighting) or the shared tensor (GradNorm, MGDA) -- the image fit passes its render as
``shared=`` and optimizes a balancer's parameters with the triangles."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tritri.fitting import fit_triangles, init_random, psnr
from tritri.losses.gradnorm import GradNorm
from tritri.losses.mgda import MGDA
from tritri.losses.uncertainty import UncertaintyWeighting


class TwoLosses(nn.Module):
    """l1 and mse of the render against the target (cheap: no VGG)."""

    def forward(self, pred, target):
        diff = pred.float() - target.float()
        return {"l1": diff.abs().mean(), "mse": diff.square().mean()}


def _target(seed: int = 0) -> torch.Tensor:
    """A 16x16 image: two flat regions split by a diagonal, plus seeded noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    split = (xx + yy < 16).float()
    image = torch.stack([split * 0.8 + 0.1, 0.7 - split * 0.5, torch.full_like(split, 0.4)])
    return (image + 0.05 * torch.rand(3, 16, 16, generator=g)).clamp(0, 1)


def _fit(balancer: nn.Module, steps: int = 12):
    target = _target()
    params = init_random(target, 10, seed=1)
    with torch.no_grad():
        start = psnr(fit_render(params, target), target)
    result = fit_triangles(params, target, steps=steps, criterion=TwoLosses(), balancer=balancer,
                           backend="torch", reseed_every=0, log_every=1,
                           keep_best=False)  # fmt: skip
    return start, result


def fit_render(params, target):
    import tritri

    verts, colors, opacity, background = params()
    _, H, W = target.shape
    return tritri.render(verts[None], colors[None], opacity[None], height=H, width=W,
                         background=background, backend="torch")[0]  # fmt: skip


def test_uncertainty_parameters_are_learned_with_the_triangles():
    balancer = UncertaintyWeighting(["l1", "mse"])
    before = balancer.log_sigma.detach().clone()
    start, result = _fit(balancer)
    assert result.steps == 12 and result.psnr > start + 0.5, (start, result.psnr)
    moved = (balancer.log_sigma.detach() - before).abs()
    # the loop's Adam steps them: a dozen steps at lr 0.2 (decaying) move each by ~1
    assert (moved > 0.1).all(), moved
    assert all("weight/l1" in record for record in result.history)


@pytest.mark.parametrize("kind", ["gradnorm", "mgda"])
def test_balancers_that_need_the_shared_render(kind):
    balancer = GradNorm(["l1", "mse"], lr=0.05) if kind == "gradnorm" else MGDA(["l1", "mse"])
    start, result = _fit(balancer)
    assert result.steps == 12 and result.psnr > start + 0.5, (start, result.psnr)
    # both computed per-loss gradients at the render on every logged step
    assert all("grad_norm/l1" in record and "grad_norm/mse" in record for record in result.history)
    learned = balancer.weights if kind == "gradnorm" else balancer.alphas
    initial = torch.ones(2) if kind == "gradnorm" else torch.full((2,), 0.5)
    assert not torch.allclose(learned, initial, rtol=0, atol=1e-3), learned
