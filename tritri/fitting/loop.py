"""The optimization loop of ``tritri fit``: render, losses, balancer, Adam, monitor.

:func:`fit_triangles` is usable from Python too::

    from tritri.fitting import fit_triangles, init_delaunay, load_image
    target = load_image("photo.jpg", size=256)               # (3, H, W) in [0, 1]
    params = init_delaunay(target, 256)
    result = fit_triangles(params, target, steps=500)
    print(result.psnr)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import tritri
from tritri.fitting.loss_names import PIXEL_LOSSES
from tritri.fitting.numeric import logit, psnr
from tritri.fitting.params import TriangleParams
from tritri.fitting.schedule import (
    DEAD_LOGIT,
    StepLog,
    greedy_search,
    lr_factor,
    move_steps,
    relocation_placement,
)

__all__ = ["FitResult", "fit_triangles", "psnr"]


@dataclass
class FitResult:
    """What :func:`fit_triangles` returns.

    Attributes:
        image: ``(3, H, W)`` the final render (detached, on the fit's device).
        psnr: its PSNR against the target, in dB.
        steps: optimizer steps taken.
        best_step: the parameters returned are those rendered at this step (``steps`` when they
            are the final ones; see ``keep_best``).
        interrupted: the loop was stopped by KeyboardInterrupt (Ctrl-C).
        seconds: wall time of the loop.
        history: the records logged (one per logged step).
        warnings: the monitor's warning events.
    """

    image: Tensor
    psnr: float
    steps: int
    best_step: int
    interrupted: bool
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)


class _L1Only(nn.Module):
    """Stand-in criterion (mean |pred - target|) when none is given."""

    names = ("l1",)

    def forward(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        return {"l1": (pred.float() - target.float()).abs().mean()}


class _Sum(nn.Module):
    """Stand-in balancer (plain sum) when none is given."""

    def __init__(self) -> None:
        super().__init__()
        self.stats: dict[str, float] = {}

    def forward(self, losses: Mapping[str, Tensor], **_: Any) -> Tensor:
        total = sum(losses.values())
        self.stats = {
            "total": float(total.detach()),
            **{f"loss/{k}": float(v.detach()) for k, v in losses.items()},
        }
        return total


class _Adam:
    """Adam (Kingma & Ba), the same update as ``torch.optim.Adam`` with its defaults otherwise.

    Hand-rolled because building any ``torch.optim`` optimizer imports ``torch._dynamo`` (about 2 s
    on a 2-core CPU, more than a whole small fit). Per-parameter state lives in
    ``state[param] = {"exp_avg", "exp_avg_sq", "step"}`` like torch's, so rows can be permuted or
    reset (:func:`_reseed`, pruning). ``param_groups`` are dicts with ``params`` and ``lr``.
    """

    def __init__(
        self, groups: list[dict[str, Any]], betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-8,
    ) -> None:  # fmt: skip
        self.param_groups = groups
        self.betas, self.eps = betas, eps
        self.state: dict[Tensor, dict[str, Any]] = {}

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.get(p)
                if state is None:
                    state = self.state[p] = {
                        "step": 0,
                        "exp_avg": torch.zeros_like(p),
                        "exp_avg_sq": torch.zeros_like(p),
                    }
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(p.grad, 1.0 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
                denom = (v.sqrt() / math.sqrt(1.0 - beta2**t)).add_(self.eps)
                p.addcdiv_(m, denom, value=-group["lr"] / (1.0 - beta1**t))


def _reset_rows(optimizer: Any, param: Tensor, rows: Tensor) -> None:
    state = optimizer.state.get(param, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][rows] = 0


def _permute_rows(optimizer: Any, param: Tensor, perm: Tensor, fresh: Tensor) -> None:
    state = optimizer.state.get(param, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key].copy_(state[key][perm])
            state[key][fresh] = 0


@torch.no_grad()
def _respawn(
    params: TriangleParams,
    optimizer: Any,
    idx: Tensor,
    image: Tensor,
    target: Tensor,
    rng: np.random.Generator,
    n_live: int,
    search: tuple[int, int] = (0, 0),
    opacity: float | None = None,
) -> Tensor:
    """Move the triangles ``idx`` on top of the draw order, to where the error is largest.

    Each goes where :func:`tritri.fitting.schedule.relocation_placement` puts it on ``image``
    (with ``search``, a render without them; ``opacity``: fixed), with fresh Adam state; the
    others keep their order and state. Returns the permutation applied (new position -> old
    index), for callers that keep per-triangle data.
    """
    verts = params.verts
    N = params.n_triangles
    device = verts.device
    k = idx.numel()
    perm = torch.arange(N, device=device)
    if k == 0:
        return perm
    new_verts, new_colors, new_opacity = (
        torch.from_numpy(x).to(device)
        for x in relocation_placement(
            image.detach().float().cpu().numpy(), target.detach().float().cpu().numpy(), k,
            n_live, rng, search=search, opacity=opacity,
        )
    )  # fmt: skip
    keep = torch.ones(N, dtype=torch.bool, device=device)
    keep[idx] = False
    perm = torch.cat([keep.nonzero().flatten(), idx])  # respawned ones on top
    fresh = torch.zeros(N, dtype=torch.bool, device=device)
    fresh[N - k :] = True
    updates = {
        params.verts: new_verts,
        params.color_logits: torch.log(new_colors) - torch.log1p(-new_colors),
        params.opacity_logits: torch.log(new_opacity) - torch.log1p(-new_opacity),
    }
    for p, new in updates.items():
        p.data.copy_(p.data[perm])
        p.data[N - k :] = new.to(p.dtype)
        _permute_rows(optimizer, p, perm, fresh)
    return perm


@torch.no_grad()
def _reseed(
    params: TriangleParams,
    optimizer: Any,
    image: Tensor,
    target: Tensor,
    rng: np.random.Generator,
    max_fraction: float,
    fixed_opacity: float | None = None,
) -> int:
    """Move dead triangles (transparent, degenerate or off-screen) to where the error is largest.

    The fallback of :func:`fit_triangles` where the per-triangle statistics of
    :func:`tritri.cpu.triangle_stats` cannot be had (no numba). Respawned triangles go
    on top of the draw order (their Adam state is reset); the others keep their order and state.
    Returns how many were respawned.
    """
    verts, _, opacity, _ = params()
    N = params.n_triangles
    _, H, W = target.shape
    px = verts * torch.tensor([W, H], device=verts.device, dtype=verts.dtype)
    d0, d1 = px[:, 1] - px[:, 0], px[:, 2] - px[:, 0]
    area = 0.5 * (d0[:, 0] * d1[:, 1] - d0[:, 1] * d1[:, 0]).abs()
    lo, hi = verts.amin(dim=1), verts.amax(dim=1)
    offscreen = (hi < 0).any(dim=1) | (lo > 1).any(dim=1)
    dead = (opacity < 0.02) | (area < 0.5) | offscreen
    idx = dead.nonzero().flatten()[: max(1, int(max_fraction * N))]
    _respawn(params, optimizer, idx, image, target, rng, N, opacity=fixed_opacity)
    return int(idx.numel())


@torch.no_grad()
def _triangle_costs(params: TriangleParams, target: Tensor, sigma: float) -> Tensor | None:
    """Per triangle, how much the squared error would grow without it (CPU, numba); None when
    numba is not available. Works for a fit on any device (the triangles are small to move)."""
    from tritri.cpu import numba_available, triangle_stats

    if not numba_available():
        return None
    from tritri.geometry import prepare_triangles

    _, H, W = target.shape
    verts, colors, opacity, background = (t.detach().float().cpu() for t in params())
    prep = prepare_triangles(verts[None], colors[None], opacity[None], H, W, sigma)
    cost, _ = triangle_stats(prep, H, W, background[None], target.detach().float().cpu()[None])
    return cost[0].to(params.verts.device)


@torch.no_grad()
def _solve_colors(
    params: TriangleParams, target: Tensor, sigma: float, fix_background: bool = False
) -> bool:
    """Set the colors and background of ``params`` to those that minimize the squared error
    against ``target`` for their vertices and opacities (:func:`tritri.fitting.colors.best_colors`,
    numba, on the CPU whatever the fit's device); False (nothing done) without numba."""
    from tritri.cpu import numba_available

    if not numba_available():
        return False
    from tritri.fitting.colors import best_colors
    from tritri.geometry import prepare_triangles

    _, H, W = target.shape
    verts, colors, opacity, background = (t.detach().float().cpu() for t in params())
    prep = prepare_triangles(verts[None], colors[None], opacity[None], H, W, sigma)
    new_colors, new_background = best_colors(
        prep.edges.contiguous().numpy(), prep.opacity.contiguous().numpy(),
        prep.cull.contiguous().numpy(), H, W, target.detach().float().cpu().numpy(),
        colors.numpy(), background.numpy(), fix_background,
    )  # fmt: skip
    device = params.color_logits.device
    solved = [(params.color_logits, new_colors)]
    if not fix_background:
        solved.append((params.background_logits, new_background))
    for p, value in solved:
        x = torch.from_numpy(value).to(device=device, dtype=p.dtype)
        p.data.copy_(torch.log(x) - torch.log1p(-x))
    return True


def fit_triangles(
    params: TriangleParams,
    target: Tensor,
    *,
    steps: int,
    criterion: nn.Module | None = None,
    target_encoded: Any = None,
    balancer: nn.Module | None = None,
    monitor: Any = None,
    lr: float = 0.2,
    lr_verts_px: float = 2.0,
    lr_final: float = 0.05,
    warmup: float = 0.0,
    sigma: float = 0.5,
    backend: str = "auto",
    log_every: int = 1,
    keep: int | None = None,
    prune_from: float = 0.05,
    prune_until: float = 0.4,
    reseed_every: int = 5,
    reseed_until: float = 0.8,
    reseed_fraction: float = 0.1,
    search: tuple[int, int] | None = None,
    seed: int = 0,
    keep_best: bool = True,
    solve_colors: bool | None = None,
    progress: Any = None,
    on_warning: Callable[[dict[str, Any]], None] | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    fixed_opacity: float | None = None,
    fixed_background: bool = False,
    should_stop: Callable[[int], bool] | None = None,
    on_step: Callable[[int, Tensor], None] | None = None,
) -> FitResult:
    """Optimize ``params`` so that their render matches ``target``.

    The optimizer is Adam on the vertices and the color / opacity / background logits, with a
    cosine learning-rate decay, plus two moves that put triangles where the error is (measured:
    see the README's performance section):

    - **pruning** (``keep`` < ``params.n_triangles``): the fit starts with more triangles than it
      keeps -- an over-complete start converges faster and lands in better minima -- and between
      ``prune_from`` and ``prune_until`` of the run, every ``reseed_every`` steps, removes the
      triangles whose removal costs the least squared error, down to ``keep``;
    - **relocation**: every ``reseed_every`` steps up to ``reseed_until`` of the run (outside
      the pruning window when pruning; at every such step without pruning), the
      ``reseed_fraction`` of triangles that are worth least (transparent, tiny, off-screen, hidden
      under others, or just contributing little) move on top, each placed greedily where it
      lowers the squared error most (a geometrize-style hill-climbing search on a render without
      them, scored exactly from running sums: :func:`tritri.fitting.schedule.relocation_placement`).

    "Worth" is the exact growth of the squared error if the triangle were removed
    (:func:`tritri.cpu.triangle_stats`, on the CPU whatever the fit's device); without
    numba, relocation falls back to dead triangles only (transparent, degenerate, off-screen) and
    pruning to the least opaque.

    Args:
        params: the triangles (moved to ``target``'s device by the caller); modified in place --
            with ``keep``, compacted to the ``keep`` triangles that survive, in draw order.
        target: ``(3, H, W)`` image in [0, 1].
        steps: Adam steps.
        criterion: called as ``criterion(pred (1, 3, H, W), target_encoded or target (1, 3, H, W))``
            and returning ``{name: loss}``, e.g. :class:`tritri.losses.ImageLosses`; default L1.
        target_encoded: what to pass as the target (e.g. ``criterion.encode(target[None])``);
            default the target image itself.
        balancer: turns the losses into one total (any tritri balancer); default their sum. It
            is called with ``step=``, ``epoch=`` (= step) and ``shared=`` (the rendered image).
            Its learnable parameters, if any, are optimized with the triangles.
        monitor: a :class:`tritri.losses.LossMonitor` (or None): gets the balancer's stats, the
            rendered image and ``psnr=`` every ``log_every`` steps.
        lr: Adam learning rate of the color / opacity / background logits and of any balancer
            parameters.
        lr_verts_px: learning rate of the vertex positions, in pixels of the longest side.
        lr_final: the learning rates decay (cosine) to ``lr_final`` times their start.
        warmup: fraction of the steps over which the learning rates ramp up linearly first
            (useful when continuing a converged fit: fresh Adam moments make large first steps).
        sigma: edge softness of the render, in pixels.
        backend: :func:`tritri.render` backend.
        log_every: logging period in steps (the last step is always logged).
        keep: number of triangles to end with (default: all of them, no pruning).
        prune_from, prune_until: the pruning phase, as fractions of ``steps``.
        reseed_every: period, in steps, of pruning and relocation (0 = neither).
        reseed_until: relocation stops at this fraction of the run.
        reseed_fraction: share of ``keep`` relocated each time.
        search: ``(candidates, mutations)`` of the greedy placement (default:
            :func:`tritri.fitting.schedule.greedy_search` of ``keep``); ``(0, 0)`` puts relocated
            triangles at error-weighted random pixels instead (cheaper, 0.2-0.65 dB lower).
        seed: seed of the relocation draws.
        keep_best: end with the parameters of the step whose render had the best PSNR (the last
            ones if they are not worse; only steps after the pruning count), so a fit never ends
            below its start. Off: the last.
        solve_colors: end with the colors and background that minimize the squared error for
            the returned vertices and opacities: given those, the render is linear in the colors,
            and a small box-constrained least-squares solve gives them exactly
            (:func:`tritri.fitting.colors.best_colors`; numba, on the CPU; never a higher error
            than the fit's own colors). None (default): when the objective is pixel losses only
            (``criterion`` None or its ``names`` within ``l1``, ``mse``): the PSNR is then what
            the fit is for; with a perceptual loss the colors stay the fit's.
        progress: a tqdm bar (or None) to update with step, losses and PSNR.
        on_warning: called with each new monitor warning event as it happens.
        on_log: called with each logged record.
        fixed_opacity: every triangle's opacity, fixed (in (0, 1]; ``tritri fit --alpha``): the
            opacities are set to it, not optimized, and relocated triangles are placed with it.
            None (default): learned.
        fixed_background: the background keeps its start value (not optimized).
        should_stop: called with the step index before each step; True ends the fit there
            (``steps`` in the result = the steps done; e.g. a time budget).
        on_step: called after each step with its index and its render (``(1, 3, H, W)``,
            the parameters before the step's update; e.g. animation frames).

    Returns:
        a :class:`FitResult`; ``params`` hold the returned triangles (the best step's with
        ``keep_best``). Ctrl-C (KeyboardInterrupt) ends the loop early with ``interrupted=True``;
        the result then covers the steps completed before it.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    M = params.n_triangles
    keep = M if keep is None else int(keep)
    search = greedy_search(keep) if search is None else tuple(search)
    if not 1 <= keep <= M:
        raise ValueError(f"keep must be in [1, {M}] (the triangles given), got {keep}")
    target = target.detach().float()
    device = target.device
    _, H, W = target.shape
    target_b = target[None]
    criterion = criterion if criterion is not None else _L1Only()
    balancer = balancer if balancer is not None else _Sum()
    tgt = target_encoded if target_encoded is not None else target_b
    longest = max(H, W)
    if fixed_opacity is not None:
        with torch.no_grad():
            params.opacity_logits.fill_(float(logit(np.float64(fixed_opacity))))
    fixed = [fixed_opacity is not None, fixed_background]
    groups = [
        {"params": [params.verts], "lr": lr_verts_px / longest, "name": "verts"},
        {
            "params": [params.color_logits]
            + [p for p, f in zip((params.opacity_logits, params.background_logits), fixed,
                                 strict=True) if not f],
            "lr": lr,
            "name": "logits",
        },
    ]  # fmt: skip
    extra = [p for p in balancer.parameters() if p.requires_grad]
    if extra:
        groups.append({"params": extra, "lr": lr, "name": "balancer"})
    for g in groups:
        g["initial_lr"] = g["lr"]
    optimizer = _Adam(groups)
    rng = np.random.default_rng(seed)
    live = torch.ones(M, dtype=torch.bool, device=device)
    events, prune_events = move_steps(
        steps, every=reseed_every, until=reseed_until, prune_from=prune_from,
        prune_until=prune_until, prune=keep < M,
    )  # fmt: skip

    def render() -> Tensor:
        verts, colors, opacity, background = params()
        return tritri.render(
            verts[None], colors[None], opacity[None], height=H, width=W, sigma=sigma,
            background=background, backend=backend,
        )  # fmt: skip

    def move(step: int, image: Tensor) -> str | None:
        """Prune or relocate at event ``step``; returns what it did ("pruned" / "relocated"),
        or None. The removal costs (a CPU render pass) are computed only when used."""
        nonlocal live
        n_live = int(live.sum())
        if step in prune_events:
            i = prune_events.index(step)
            goal = round(M + (keep - M) * (i + 1) / len(prune_events))
            if n_live <= goal:
                return None
            cost = _triangle_costs(params, target, sigma)
            score = cost if cost is not None else params.opacity_logits.detach().clone()
            score = torch.where(live, score, torch.inf)
            idx = torch.argsort(score, stable=True)[: n_live - goal]
            live[idx] = False
            params.opacity_logits.data[idx] = DEAD_LOGIT
            for p in (params.verts, params.color_logits, params.opacity_logits):
                _reset_rows(optimizer, p, idx)
            return "pruned"
        if n_live != keep or reseed_fraction <= 0:
            return None
        cost = _triangle_costs(params, target, sigma)
        if cost is None:
            _reseed(params, optimizer, image, target, rng, reseed_fraction, fixed_opacity)
            return "relocated"
        k = max(1, int(reseed_fraction * keep))
        idx = torch.argsort(torch.where(live, cost, torch.inf), stable=True)[:k]
        if search[0] > 0:  # place the replacements on a render without them
            saved = params.opacity_logits.data[idx].clone()
            params.opacity_logits.data[idx] = DEAD_LOGIT
            image = render()[0].detach()
            params.opacity_logits.data[idx] = saved
        perm = _respawn(params, optimizer, idx, image, target, rng, keep, search,
                        fixed_opacity)  # fmt: skip
        live = live[perm]
        return "relocated"

    log = StepLog(monitor, log_every, steps, progress, on_warning, on_log)
    interrupted = False
    step = 0
    best_psnr, best_step, best_state = -math.inf, -1, None
    start = time.perf_counter()
    try:
        for step in range(steps):
            if should_stop is not None and should_stop(step):
                break
            factor = lr_factor(step, steps, lr_final, warmup)
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"] * factor
            image = render()
            losses = criterion(image, tgt)
            total = balancer(losses, step=step, epoch=step, shared=image)
            optimizer.zero_grad()
            total.backward()
            quality = psnr(image[0], target)  # of the parameters before this step's update
            done_pruning = int(live.sum()) == keep
            if keep_best and done_pruning and quality > best_psnr:
                best_psnr, best_step = quality, step
                best_state = {k: v.detach().clone() for k, v in params.state_dict().items()}
                best_state["live"] = live.clone()
            optimizer.step()
            if not bool(live.all()):
                params.opacity_logits.data[~live] = DEAD_LOGIT
            moved = move(step, image.detach()[0]) if step in events else None
            if log.due(step):
                stats = dict(getattr(balancer, "stats", {}) or {})
                if "total" not in stats:
                    stats["total"] = float(total)
                for name, value in losses.items():
                    stats.setdefault(f"loss/{name}", float(value.detach().mean()))
                log.record(step, stats, quality, image=image.detach())
            log.done(step, moved)
            if on_step is not None:
                on_step(step, image.detach())
        else:
            step = steps
    except KeyboardInterrupt:
        interrupted = True
    seconds = time.perf_counter() - start
    with torch.no_grad():
        if int(live.sum()) > keep:  # interrupted while pruning: keep the most opaque
            score = torch.where(live, params.opacity_logits.detach(), -torch.inf)
            live = torch.zeros_like(live)
            live[torch.argsort(score, descending=True, stable=True)[:keep]] = True
            params.opacity_logits.data[~live] = DEAD_LOGIT
        final = render()[0].clamp(0, 1)
        final_psnr = psnr(final, target)
        if best_state is not None and best_psnr > final_psnr:
            live = best_state.pop("live")
            params.load_state_dict(best_state)
            final = render()[0].clamp(0, 1)
            final_psnr = psnr(final, target)
        else:
            best_step = step
        if solve_colors is None:
            names = getattr(criterion, "names", None)
            solve_colors = names is not None and set(names) <= set(PIXEL_LOSSES)
        if solve_colors and _solve_colors(params, target, sigma, fixed_background):
            final = render()[0].clamp(0, 1)
            final_psnr = psnr(final, target)
        if keep < M:
            rows = live.nonzero().flatten()
            for p in (params.verts, params.color_logits, params.opacity_logits):
                p.data = p.data[rows].contiguous()
    return FitResult(
        image=final,
        psnr=final_psnr,
        steps=step,
        best_step=best_step,
        interrupted=interrupted,
        seconds=seconds,
        history=log.history,
        warnings=list(getattr(monitor, "events", [])) if monitor is not None else [],
    )
