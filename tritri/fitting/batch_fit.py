"""Several images fitted at once: one batch through the renderer (``tritri fit`` with several
images in the torch loop, e.g. on a GPU).

:func:`fit_batch` is :func:`tritri.fitting.fit_triangles` for B images: the triangles of all of
them are rendered by one :func:`tritri.render` call per step (B = images), and each image's fit
is otherwise its own -- the same objective (the pixel losses balanced by the geometric mean, as
:class:`tritri.losses.GeometricMeanLoss` with its defaults), Adam state, moves (pruning and
relocation at the steps of :func:`tritri.fitting.schedule.move_steps`, each image placing its own
triangles greedily), random draws (each image seeded as its own fit) and best step.

Images of different sizes are letterboxed: the batch renders a canvas of the largest height and
the largest width among them, each image in its top-left corner, and each image's losses, PSNR
and statistics are taken over its own pixels only (a mask). Each image's vertices stay in its
own normalized coordinates (as in a single fit, so the learning rates, the moves and the outputs
are the same) and are scaled into the canvas for the render; what a triangle draws outside its
image costs nothing and is never seen. Images of one size waste nothing; a 4:3 photo beside a
3:4 one renders a third more pixels than it needs.

The objective and the moves are per image, so an image's fit does not depend on what else is in
its batch (up to float rounding; tests/test_fit_many.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

import tritri
from tritri.fitting.cpu_fit import CpuFitResult
from tritri.fitting.loss_names import PIXEL_LOSSES
from tritri.fitting.numeric import logit
from tritri.fitting.schedule import (
    DEAD_LOGIT,
    GEOMETRIC_EPS,
    GEOMETRIC_MIN_LOSS,
    GEOMETRIC_REG_WEIGHT,
    StepLog,
    greedy_search,
    lr_factor,
    move_steps,
    relocation_placement,
)
from tritri.fitting.starts import VALUE_KEYS

__all__ = ["BatchFitResult", "fit_batch"]


@dataclass
class BatchFitResult(CpuFitResult):
    """One image's result from :func:`fit_batch`: the fields of
    :class:`tritri.fitting.cpu_fit.CpuFitResult`, with ``image`` a tensor on the fit's device
    (``(3, H, W)`` at the image's size, clamped to [0, 1]); ``steps``, ``interrupted`` and
    ``seconds`` are the batch's."""


class _Adam:
    """Adam (torch's update, betas 0.9 / 0.99 as the single fits) on batched tensors, with the
    rows of one image resettable and permutable."""

    def __init__(self, params: dict[str, Tensor], betas=(0.9, 0.99), eps: float = 1e-8):
        self.params, self.betas, self.eps = params, betas, eps
        self.m = {k: torch.zeros_like(p) for k, p in params.items()}
        self.v = {k: torch.zeros_like(p) for k, p in params.items()}
        self.t = 0

    @torch.no_grad()
    def step(self, lrs: dict[str, Any]) -> None:
        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1.0 - b1**self.t, math.sqrt(1.0 - b2**self.t)
        for key, p in self.params.items():
            if p.grad is None:
                continue
            m, v = self.m[key], self.v[key]
            m.lerp_(p.grad, 1.0 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1.0 - b2)
            p.sub_(lrs[key] / c1 * m / (v.sqrt() / c2 + self.eps))

    def reset_rows(self, b: int, rows: Tensor) -> None:
        for key in ("verts", "color_logits", "opacity_logits"):
            self.m[key][b, rows] = 0
            self.v[key][b, rows] = 0

    def permute_rows(self, b: int, perm: Tensor, fresh: int) -> None:
        """Rows of image ``b`` reordered by ``perm``; the last ``fresh`` zeroed."""
        for key in ("verts", "color_logits", "opacity_logits"):
            for state in (self.m, self.v):
                state[key][b] = state[key][b][perm]
                state[key][b, -fresh:] = 0


def _objective(
    image: Tensor, target: Tensor, mask: Tensor, npix: Tensor, names: Sequence[str]
) -> tuple[Tensor, list[dict[str, float]], list[float], list[float]]:
    """The batch's total (the sum of each image's geometric-mean objective over its own pixels),
    each image's stats (GeometricMeanLoss's keys), PSNR of the clamped render and spatial std
    (max over channels)."""
    diff = (image - target) * mask
    count = 3.0 * npix
    values = {}
    if "l1" in names:
        values["l1"] = diff.abs().sum((1, 2, 3)) / count
    if "mse" in names:
        values["mse"] = diff.square().sum((1, 2, 3)) / count
    total = image.new_zeros(())
    per: dict[str, Tensor] = {}
    reg_all = image.new_zeros(image.shape[0])
    for name in names:
        L = values[name]
        under = (L < GEOMETRIC_MIN_LOSS).float()
        reg = GEOMETRIC_REG_WEIGHT * (GEOMETRIC_MIN_LOSS - L).square() * under
        log = torch.log(L + GEOMETRIC_EPS)
        total = total + (log + reg).sum()
        reg_all = reg_all + reg.detach()
        per[f"loss/{name}"] = L.detach()
        reg_slope = 2.0 * GEOMETRIC_REG_WEIGHT * (GEOMETRIC_MIN_LOSS - L) * under
        per[f"weight/{name}"] = (1.0 / (L + GEOMETRIC_EPS) - reg_slope).detach()
        per[f"log/{name}"] = log.detach()
    with torch.no_grad():
        clamped = ((image.clamp(0, 1) - target) * mask).square().sum((1, 2, 3)) / count
        shown = image * mask
        mean = shown.sum((2, 3)) / npix[:, None]
        var = (shown * image).sum((2, 3)) / npix[:, None] - mean.square()
        std = var.clamp_min(0).sqrt().amax(1)
        table = torch.stack([clamped, std, reg_all, *per.values()]).cpu().double().numpy()
    quality = [math.inf if c == 0 else 10.0 * math.log10(1.0 / c) for c in table[0]]
    stats = []
    for b in range(image.shape[0]):
        row = dict(zip(per, (float(x) for x in table[3:, b]), strict=True))
        logs = sum(row[f"log/{n}"] for n in names)
        stats.append({"total": logs + float(table[2, b]), "regularization": float(table[2, b]),
                      **row})  # fmt: skip
    return total, stats, quality, [float(s) for s in table[1]]


@torch.no_grad()
def _removal_costs(verts: Tensor, colors: Tensor, opacity: Tensor, background: Tensor,
                   target: np.ndarray, sigma: float) -> Tensor:  # fmt: skip
    """One image's per-triangle growth of the squared error without it (the CPU's exact
    statistics, :func:`tritri.cpu.triangle_stats`), at the image's own size."""
    from tritri.cpu import triangle_stats
    from tritri.geometry import prepare_triangles

    _, H, W = target.shape
    v, c, o, bg = (t.detach().float().cpu() for t in (verts, colors, opacity, background))
    prep = prepare_triangles(v[None], c[None], o[None], H, W, sigma)
    cost, _ = triangle_stats(prep, H, W, bg[None], torch.from_numpy(target)[None])
    return cost[0].to(verts.device)


def fit_batch(
    starts: Sequence[dict[str, np.ndarray]],
    targets: Sequence[np.ndarray],
    *,
    steps: int,
    losses: Sequence[str] = PIXEL_LOSSES,
    monitors: Sequence[Any] | None = None,
    lr: float = 0.2,
    lr_verts_px: float = 2.0,
    lr_final: float = 0.05,
    warmup: float = 0.0,
    sigma: float = 0.5,
    backend: str = "auto",
    device: str | torch.device = "cpu",
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
    progress: Any = None,
    on_warning: Sequence[Callable[[dict[str, Any]], None] | None] | None = None,
    fixed_opacity: float | None = None,
    fixed_background: bool = False,
    should_stop: Callable[[int], bool] | None = None,
    on_step: Callable[[int, list[Tensor]], None] | None = None,
) -> list[BatchFitResult]:
    """Fit B images at once, each from its start (module docstring).

    Args:
        starts: B values dicts (:mod:`tritri.fitting.starts`), each with the same number M of
            triangles (e.g. :func:`tritri.fitting.starts.greedy_start` of each image); not
            modified.
        targets: B ``(3, H_b, W_b)`` images in [0, 1] (numpy), of any sizes.
        losses: names from ``l1``, ``mse``, balanced by the geometric mean per image.
        monitors: B :class:`tritri.losses.LossMonitor` (or None), each given its image's stats
            and PSNR every ``log_every`` steps; ``on_warning``: B callbacks for their warnings.
        device: where the batch is rendered (the moves run on the CPU, per image).
        on_step: called after each step with its index and the B renders (each ``(3, H_b,
            W_b)``, before the step's update).
        steps, lr, lr_verts_px, lr_final, warmup, sigma, backend, log_every, keep, prune_from,
        prune_until, reseed_every, reseed_until, reseed_fraction, search, seed, keep_best,
        progress, fixed_opacity, fixed_background, should_stop: as in
        :func:`tritri.fitting.fit_triangles`, for each image (``seed`` seeds each image's draws
        as it seeds a single fit's; ``progress`` counts the batch's steps).

    Returns:
        B :class:`BatchFitResult`, in order. Ctrl-C ends the loop early (``interrupted``).
    """
    names = tuple(losses)
    if not names or any(n not in PIXEL_LOSSES for n in names) or len(set(names)) != len(names):
        raise ValueError(f"losses must be distinct names from {PIXEL_LOSSES}, got {names}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    B = len(targets)
    if B == 0 or len(starts) != B:
        raise ValueError(f"need one start per target, got {len(starts)} and {B}")
    counts = {len(s["opacity"]) for s in starts}
    if len(counts) != 1:
        raise ValueError(f"every start must have the same number of triangles, got {counts}")
    M = counts.pop()
    keep = M if keep is None else int(keep)
    if not 1 <= keep <= M:
        raise ValueError(f"keep must be in [1, {M}] (the triangles given), got {keep}")
    search = greedy_search(keep) if search is None else tuple(search)
    device = torch.device(device)
    targets = [np.ascontiguousarray(t, dtype=np.float32) for t in targets]
    sizes = [t.shape[1:] for t in targets]
    Hc, Wc = max(h for h, _ in sizes), max(w for _, w in sizes)
    target = torch.zeros(B, 3, Hc, Wc)
    mask = torch.zeros(B, 1, Hc, Wc)
    for b, (h, w) in enumerate(sizes):
        target[b, :, :h, :w] = torch.from_numpy(targets[b])
        mask[b, :, :h, :w] = 1.0
    target, mask = target.to(device), mask.to(device)
    npix = torch.tensor([float(h * w) for h, w in sizes], device=device)
    scale = torch.tensor([[w / Wc, h / Hc] for h, w in sizes], device=device).view(B, 1, 1, 2)

    def stack(key: str, fn: Callable[[np.ndarray], np.ndarray] = lambda x: x) -> Tensor:
        return torch.from_numpy(np.stack([fn(np.asarray(s[key], np.float64)) for s in starts])
                                .astype(np.float32)).to(device)  # fmt: skip

    params = {
        "verts": stack("verts"),
        "color_logits": stack("colors", logit),
        "opacity_logits": stack("opacity", logit),
        "background_logits": stack("background", logit),
    }
    if fixed_opacity is not None:
        params["opacity_logits"].fill_(float(logit(np.float64(fixed_opacity))))
    for p in params.values():
        p.requires_grad_(True)
    longest = torch.tensor([float(max(h, w)) for h, w in sizes], device=device)
    base_lr = {
        "verts": (lr_verts_px / longest).view(B, 1, 1, 1),
        "color_logits": lr,
        "opacity_logits": 0.0 if fixed_opacity is not None else lr,
        "background_logits": 0.0 if fixed_background else lr,
    }
    adam = _Adam(params)
    rngs = [np.random.default_rng(seed) for _ in range(B)]
    live = torch.ones(B, M, dtype=torch.bool, device=device)
    events, prune_events = move_steps(
        steps, every=reseed_every, until=reseed_until, prune_from=prune_from,
        prune_until=prune_until, prune=keep < M,
    )  # fmt: skip

    def render() -> Tensor:
        return tritri.render(
            params["verts"] * scale, torch.sigmoid(params["color_logits"]),
            torch.sigmoid(params["opacity_logits"]), height=Hc, width=Wc, sigma=sigma,
            background=torch.sigmoid(params["background_logits"]), backend=backend,
        )  # fmt: skip

    def crops(image: Tensor) -> list[Tensor]:
        return [image[b, :, :h, :w] for b, (h, w) in enumerate(sizes)]

    @torch.no_grad()
    def costs(b: int) -> Tensor:
        return _removal_costs(
            params["verts"][b], torch.sigmoid(params["color_logits"][b]),
            torch.sigmoid(params["opacity_logits"][b]),
            torch.sigmoid(params["background_logits"][b]), targets[b], sigma,
        )  # fmt: skip

    @torch.no_grad()
    def move(step: int, image: Tensor) -> list[str | None]:
        """Prune or relocate, image by image, at event ``step``."""
        nonlocal live
        moved: list[str | None] = [None] * B
        n_live = live.sum(1).tolist()
        if step in prune_events:
            i = prune_events.index(step)
            goal = round(M + (keep - M) * (i + 1) / len(prune_events))
            for b in range(B):
                if n_live[b] <= goal:
                    continue
                score = torch.where(live[b], costs(b), torch.inf)
                idx = torch.argsort(score, stable=True)[: n_live[b] - goal]
                live[b, idx] = False
                params["opacity_logits"][b, idx] = DEAD_LOGIT
                adam.reset_rows(b, idx)
                moved[b] = "pruned"
            return moved
        if reseed_fraction <= 0:
            return moved
        k = max(1, int(reseed_fraction * keep))
        chosen = {}
        for b in range(B):
            if n_live[b] == keep:
                score = torch.where(live[b], costs(b), torch.inf)
                chosen[b] = torch.argsort(score, stable=True)[:k]
        if not chosen:
            return moved
        if search[0] > 0:  # the images without them, to place their replacements on
            saved = params["opacity_logits"].clone()
            for b, idx in chosen.items():
                params["opacity_logits"][b, idx] = DEAD_LOGIT
            image = render()
            params["opacity_logits"].copy_(saved)
        views = crops(image)
        for b, idx in chosen.items():
            verts, colors, opacity = (
                torch.from_numpy(x).to(device)
                for x in relocation_placement(
                    views[b].float().cpu().numpy(), targets[b], k, keep, rngs[b], search=search,
                    opacity=fixed_opacity,
                )
            )  # fmt: skip
            stay = torch.ones(M, dtype=torch.bool, device=device)
            stay[idx] = False
            perm = torch.cat([stay.nonzero().flatten(), idx])  # relocated ones on top
            new = {"verts": verts, "color_logits": torch.logit(colors.clamp(1e-3, 1 - 1e-3)),
                   "opacity_logits": torch.logit(opacity.clamp(1e-3, 1 - 1e-3))}  # fmt: skip
            for key, value in new.items():
                params[key][b] = params[key][b][perm]
                params[key][b, M - k :] = value
            adam.permute_rows(b, perm, k)
            live[b] = live[b][perm]
            moved[b] = "relocated"
        return moved

    monitors = list(monitors) if monitors is not None else [None] * B
    warn = list(on_warning) if on_warning is not None else [None] * B
    logs = [StepLog(monitors[b], log_every, steps, None, warn[b]) for b in range(B)]
    best_psnr = [-math.inf] * B
    best_step = [-1] * B
    best_state: list[dict[str, Tensor] | None] = [None] * B
    interrupted = False
    step = 0
    start = time.perf_counter()
    try:
        for step in range(steps):
            if should_stop is not None and should_stop(step):
                break
            factor = lr_factor(step, steps, lr_final, warmup)
            image = render()
            total, stats, quality, std = _objective(image, target, mask, npix, names)
            for p in params.values():
                p.grad = None
            total.backward()
            done_pruning = (live.sum(1) == keep).tolist()
            for b in range(B):
                if keep_best and done_pruning[b] and quality[b] > best_psnr[b]:
                    best_psnr[b], best_step[b] = quality[b], step
                    best_state[b] = {k: p[b].detach().clone() for k, p in params.items()}
                    best_state[b]["live"] = live[b].clone()
            adam.step({k: v * factor for k, v in base_lr.items()})
            with torch.no_grad():
                params["opacity_logits"][~live] = DEAD_LOGIT
            moved = move(step, image.detach()) if step in events else [None] * B
            for b, log in enumerate(logs):
                if log.due(step):
                    log.record(step, stats[b], quality[b], image_std=std[b])
                log.done(step, moved[b])
            if progress is not None:
                progress.update(1)
            if on_step is not None:
                on_step(step, crops(image.detach()))
        else:
            step = steps
    except KeyboardInterrupt:
        interrupted = True
    seconds = time.perf_counter() - start
    with torch.no_grad():
        for b in range(B):
            if int(live[b].sum()) > keep:  # interrupted while pruning: keep the most opaque
                score = torch.where(live[b], params["opacity_logits"][b], -torch.inf)
                live[b] = False
                live[b, torch.argsort(score, descending=True, stable=True)[:keep]] = True
                params["opacity_logits"][b][~live[b]] = DEAD_LOGIT
        final = render().clamp(0, 1)
        _, _, final_psnr, _ = _objective(final, target, mask, npix, names)
        restored = False
        for b in range(B):
            if best_state[b] is not None and best_psnr[b] > final_psnr[b]:
                state = best_state[b]
                live[b] = state.pop("live")
                for k, p in params.items():
                    p[b] = state[k]
                restored = True
            else:
                best_step[b] = step
        if restored:
            final = render().clamp(0, 1)
            _, _, final_psnr, _ = _objective(final, target, mask, npix, names)
        images = crops(final)
        results = []
        for b in range(B):
            rows = live[b].nonzero().flatten() if keep < M else torch.arange(M, device=device)
            raw = {
                "verts": params["verts"][b, rows],
                "colors": torch.sigmoid(params["color_logits"][b, rows]),
                "opacity": torch.sigmoid(params["opacity_logits"][b, rows]),
                "background": torch.sigmoid(params["background_logits"][b]),
            }
            values = {k: raw[k].float().cpu().numpy() for k in VALUE_KEYS}
            results.append(BatchFitResult(
                image=images[b], psnr=final_psnr[b], values=values, steps=step,
                best_step=best_step[b], interrupted=interrupted, seconds=seconds,
                history=logs[b].history,
                warnings=list(getattr(monitors[b], "events", [])) if monitors[b] else [],
            ))  # fmt: skip
    return results
