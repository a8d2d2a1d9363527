"""The image fit on numpy arrays and the compiled CPU rasterizer: ``tritri fit``'s loop on a CPU,
without torch.

:func:`tritri.fitting.loop.fit_triangles` runs any objective on any device through torch
autograd; on a CPU with the pixel losses, importing torch alone (2-3 s on a 2-core machine) costs
more than the whole fit. This loop is the same fit for that case, with the gradient chain written
out: the numba setup (:mod:`tritri.fitting.cpu_geometry`, forward and hand-derived backward), the
numba rasterizer (:mod:`tritri.cpu.numba_raster`), the pixel losses and the geometric-mean
balancer in numpy, and Adam. It makes the same moves at the same steps as ``fit_triangles``
(shared in :mod:`tritri.fitting.schedule`): pruning an over-complete start down to ``keep`` by each
triangle's exact removal cost, re-placing the least useful ones greedily where they cut the
error most, a cosine learning-rate decay, and ending with the best step's triangles, their colors
solved exactly for the squared error (:mod:`tritri.fitting.colors`).

Objective: ``losses`` from ``l1`` (mean absolute error) and ``mse`` (mean squared error) of the
render against the target, balanced as :class:`tritri.losses.GeometricMeanLoss` does with its
defaults: ``total = Σ_k log(L_k + ε) + w Σ_{L_k < m} (m - L_k)²`` (ε = 1e-8, m = 1e-4,
w = 0.01); the metrics records carry the same keys as that balancer's ``stats``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tritri.fitting.loss_names import PIXEL_LOSSES
from tritri.fitting.numeric import logit, psnr, sigmoid
from tritri.fitting.schedule import (
    DEAD_LOGIT,
    GEOMETRIC_EPS,
    GEOMETRIC_MIN_LOSS,
    GEOMETRIC_REG_WEIGHT,
    StepLog,
    box_blur,
    greedy_search,
    lr_factor,
    move_steps,
    relocation_placement,
)

__all__ = ["CPU_LOSSES", "CpuFitResult", "fit_triangles_cpu", "render_cpu"]

#: The losses this loop computes: the pixel ones.
CPU_LOSSES = PIXEL_LOSSES


def render_cpu(values: dict[str, np.ndarray], height: int, width: int, sigma: float) -> np.ndarray:
    """``(3, H, W)`` float32 render of triangle values (verts, colors, opacity, background, as
    :func:`fit_triangles_cpu` takes them), not clamped."""
    return _Scene(_logits(values), height, width, sigma).render()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return sigmoid(np.asarray(x, np.float32))


def _logit(x: np.ndarray) -> np.ndarray:
    return logit(np.asarray(x, np.float64)).astype(np.float32)


def _logits(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The optimized arrays (float32 copies): verts and the color / opacity / background logits."""
    return {
        "verts": np.array(values["verts"], np.float32).reshape(-1, 3, 2),
        "color_logits": _logit(values["colors"]).reshape(-1, 3),
        "opacity_logits": _logit(values["opacity"]).reshape(-1),
        "background_logits": _logit(values["background"]).reshape(3),
    }


@dataclass
class CpuFitResult:
    """What :func:`fit_triangles_cpu` returns (as :class:`tritri.fitting.FitResult`, in numpy).

    Attributes:
        image: ``(3, H, W)`` float32 final render, clamped to [0, 1].
        psnr: its PSNR against the target, in dB.
        values: the returned triangles: ``verts`` (n, 3, 2) normalized, ``colors`` (n, 3),
            ``opacity`` (n,), ``background`` (3,), float32, index order = draw order.
        steps, best_step, interrupted, seconds, history, warnings: as in ``FitResult``.
    """

    image: np.ndarray
    psnr: float
    values: dict[str, np.ndarray]
    steps: int
    best_step: int
    interrupted: bool
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)


class _Adam:
    """Adam with torch's update (betas 0.9 / 0.99 as ``fit_triangles``), one state per array."""

    def __init__(self, arrays: dict[str, np.ndarray], betas=(0.9, 0.99), eps: float = 1e-8):
        self.betas, self.eps = betas, eps
        self.m = {k: np.zeros_like(a) for k, a in arrays.items()}
        self.v = {k: np.zeros_like(a) for k, a in arrays.items()}
        self.t = 0

    def step(self, arrays: dict[str, np.ndarray], grads: dict[str, np.ndarray], lrs) -> None:
        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1.0 - b1**self.t, math.sqrt(1.0 - b2**self.t)
        for key, p in arrays.items():
            g = grads[key]
            m, v = self.m[key], self.v[key]
            m += (1.0 - b1) * (g - m)
            v *= b2
            v += (1.0 - b2) * g * g
            p -= (lrs[key] / c1) * m / (np.sqrt(v) / c2 + self.eps)

    def reset_rows(self, rows: np.ndarray) -> None:
        for key in ("verts", "color_logits", "opacity_logits"):
            self.m[key][rows] = 0
            self.v[key][rows] = 0

    def permute_rows(self, perm: np.ndarray, fresh: slice) -> None:
        for key in ("verts", "color_logits", "opacity_logits"):
            for state in (self.m, self.v):
                state[key] = state[key][perm]
                state[key][fresh] = 0


class _Scene:
    """The parameters and one render of them (numba setup and rasterizer, B = 1)."""

    def __init__(self, params: dict[str, np.ndarray], height: int, width: int, sigma: float):
        self.p = params
        self.H, self.W, self.sigma = height, width, float(sigma)

    def prepare(self) -> None:
        from tritri.fitting.cpu_geometry import prepare_flat

        p, M = self.p, self.p["verts"].shape[0]
        self.colors = _sigmoid(p["color_logits"])
        self.opacity = _sigmoid(p["opacity_logits"])
        self.background = _sigmoid(p["background_logits"])
        self.edges = np.empty((1, M, 9), np.float32)
        self.colors_in = np.empty((1, M, 1, 3), np.float32)
        self.opacity_in = np.empty((1, M), np.float32)
        self.cull = np.empty((1, M, 5), np.float32)
        self.valid = np.empty((1, M), np.uint8)
        prepare_flat(
            p["verts"][None], self.colors[None], self.opacity[None], self.H, self.W, self.sigma,
            self.edges, self.colors_in, self.opacity_in, self.cull, self.valid,
        )  # fmt: skip

    def render(self, target: np.ndarray | None = None) -> np.ndarray:
        """``(3, H, W)`` float32 render (not clamped); with ``target``, also gathers the sums of
        :func:`tritri.fitting.cpu_objective.pixel_sums` into ``self.sums``."""
        from tritri.cpu.numba_raster import raster_forward
        from tritri.fitting.cpu_objective import pixel_sums

        self.prepare()
        color, T, lists = raster_forward(
            self.edges, None, self.colors_in, self.opacity_in, self.cull, self.H, self.W
        )
        self.color, self.T, self.lists = color, T, lists
        if target is None:
            return color[0] + T[0] * self.background[:, None, None]
        self.image = np.empty_like(color[0])
        self.sums = pixel_sums(color[0], T[0], self.background, target, self.image)
        return self.image

    def backward(self, target: np.ndarray, w_abs: float, w_sq: float) -> dict[str, np.ndarray]:
        """Gradients of the parameters of the last :meth:`render` (with ``target``) for the
        objective ``dtotal/dimage = w_abs * sign(image - target) + w_sq * (image - target)``."""
        from tritri.cpu.numba_raster import raster_backward
        from tritri.fitting.cpu_geometry import prepare_backward
        from tritri.fitting.cpu_objective import pixel_grads

        g = np.empty_like(self.image)
        grad_T = np.empty_like(self.T[0])
        g_bg = pixel_grads(self.image, target, w_abs, w_sq, self.T[0], self.background, g, grad_T)
        sums = raster_backward(
            self.edges, None, self.colors_in, self.opacity_in, self.cull, self.lists,
            self.color, self.T, g[None], grad_T[None],
        )[0]  # fmt: skip
        grad_verts = np.empty((1, *self.p["verts"].shape), np.float32)
        prepare_backward(
            self.p["verts"][None], self.valid, self.H, self.W, self.sigma,
            np.ascontiguousarray(sums[None, :, :9]), grad_verts,
        )  # fmt: skip
        valid = self.valid[0].astype(np.float32)
        bg = self.background
        return {
            "verts": grad_verts[0],
            "color_logits": sums[:, 19:22] * valid[:, None] * self.colors * (1 - self.colors),
            "opacity_logits": sums[:, 9] * valid * self.opacity * (1 - self.opacity),
            "background_logits": (g_bg * bg * (1 - bg)).astype(np.float32),
        }

    def solve_colors(self, target: np.ndarray, fix_background: bool = False) -> None:
        """Set the colors and the background to those that minimize the squared error of the
        render against ``target`` for the current vertices and opacities
        (:func:`tritri.fitting.colors.best_colors`; never worse than the current ones)."""
        from tritri.fitting.colors import best_colors

        self.prepare()
        colors, background = best_colors(
            self.edges, self.opacity_in, self.cull, self.H, self.W, target, self.colors,
            self.background, fix_background,
        )  # fmt: skip
        self.p["color_logits"][:] = _logit(colors)
        if not fix_background:
            self.p["background_logits"][:] = _logit(background)

    def removal_costs(self, target: np.ndarray) -> np.ndarray:
        """Per triangle, how much the squared error of the last :meth:`render` would grow
        without it (M,), from that render's tile lists and buffers: the parameters as they were
        then (the fit asks right after the step's update; one step's difference does not change
        which triangles are worth least, and it saves a render)."""
        from tritri.cpu.numba_raster import removal_stats

        cost, _ = removal_stats(
            self.edges, self.colors_in, self.opacity_in, self.cull, self.H, self.W,
            self.background[None].astype(np.float32), target[None],
            forward=(self.color, self.T, self.lists),
        )  # fmt: skip
        return cost[0]


def _objective(
    sums: np.ndarray, shape: tuple[int, ...], names: Sequence[str]
) -> tuple[dict[str, float], float, float, float, float]:
    """From a render's :func:`tritri.fitting.cpu_objective.pixel_sums` (image ``shape`` (C, H, W)):
    the geometric-mean objective's stats (GeometricMeanLoss's keys), the coefficients ``w_abs``,
    ``w_sq`` of its pixel gradient (:meth:`_Scene.backward`), the PSNR of the clamped render and
    the image's spatial std (max over channels)."""
    from tritri.fitting.cpu_objective import CHANNEL_SUMS, SUM_ABS, SUM_SQ, SUM_SQ_CLAMPED

    C = shape[0]
    n = float(np.prod(shape))
    pixels = n / C
    values = {"l1": sums[SUM_ABS] / n, "mse": sums[SUM_SQ] / n}
    stats: dict[str, float] = {"total": 0.0, "regularization": 0.0}
    w_abs = w_sq = 0.0
    for name in names:
        L = float(values[name])
        log = math.log(L + GEOMETRIC_EPS)
        under = L < GEOMETRIC_MIN_LOSS
        penalty = GEOMETRIC_REG_WEIGHT * (GEOMETRIC_MIN_LOSS - L) ** 2 if under else 0.0
        weight = 1.0 / (L + GEOMETRIC_EPS) - (
            2.0 * GEOMETRIC_REG_WEIGHT * (GEOMETRIC_MIN_LOSS - L) if under else 0.0
        )
        stats["total"] += log + penalty
        stats["regularization"] += penalty
        stats[f"loss/{name}"] = L
        stats[f"weight/{name}"] = weight
        stats[f"log/{name}"] = log
        if name == "l1":
            w_abs = weight / n
        else:
            w_sq = 2.0 * weight / n
    clamped = sums[SUM_SQ_CLAMPED] / n
    quality = math.inf if clamped == 0 else 10.0 * math.log10(1.0 / clamped)
    mean = sums[CHANNEL_SUMS::2] / pixels
    var = sums[CHANNEL_SUMS + 1 :: 2] / pixels - mean * mean
    std = float(np.sqrt(np.clip(var, 0.0, None)).max())
    return stats, w_abs, w_sq, quality, std


def fit_triangles_cpu(
    start: dict[str, np.ndarray],
    target: np.ndarray,
    *,
    steps: int,
    losses: Sequence[str] = CPU_LOSSES,
    monitor: Any = None,
    lr: float = 0.2,
    lr_verts_px: float = 2.0,
    lr_final: float = 0.05,
    warmup: float = 0.0,
    sigma: float = 0.5,
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
    solve_colors: bool = True,
    progress: Any = None,
    on_warning: Callable[[dict[str, Any]], None] | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    fixed_opacity: float | None = None,
    fixed_background: bool = False,
    should_stop: Callable[[int], bool] | None = None,
    on_step: Callable[[int, np.ndarray], None] | None = None,
) -> CpuFitResult:
    """Optimize the triangles ``start`` so that their render matches ``target``, on the CPU.

    The arguments are :func:`tritri.fitting.loop.fit_triangles`'s (read its docstring for the
    pruning and relocation moves), with the triangles as numpy arrays and the objective fixed:

    Args:
        start: ``verts`` (M, 3, 2) normalized, ``colors`` (M, 3), ``opacity`` (M,) in [0, 1]
            and ``background`` (3,) (e.g. :func:`tritri.fitting.starts.delaunay_start`); not
            modified.
        target: ``(3, H, W)`` image in [0, 1].
        losses: names from ``l1``, ``mse``, balanced by the geometric mean (module docstring).
        monitor: a :class:`tritri.losses.LossMonitor` (or None), given the stats, the render
            and ``psnr=`` every ``log_every`` steps.
        fixed_opacity, fixed_background, should_stop, on_step: as in ``fit_triangles`` (the
            render passed to ``on_step`` is a ``(3, H, W)`` float32 array, not clamped).
        solve_colors: end with the colors and background that minimize the squared error for the
            returned vertices and opacities (as ``fit_triangles``'s ``solve_colors``).

    Returns:
        a :class:`CpuFitResult` (the triangles in ``values``, compacted to ``keep``).
    """
    from tritri.cpu import numba_available

    if not numba_available():
        raise RuntimeError("the CPU fit needs the numba package (pip install numba)")
    names = tuple(losses)
    if not names or any(n not in CPU_LOSSES for n in names) or len(set(names)) != len(names):
        raise ValueError(f"losses must be distinct names from {CPU_LOSSES}, got {names}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    target = np.ascontiguousarray(target, dtype=np.float32)
    if target.ndim != 3 or target.shape[0] != 3:
        raise ValueError(f"target must be (3, H, W), got {target.shape}")
    _, H, W = target.shape
    params = _logits(start)
    if fixed_opacity is not None:
        params["opacity_logits"][:] = _logit(np.float32(fixed_opacity))
    M = params["verts"].shape[0]
    keep = M if keep is None else int(keep)
    if not 1 <= keep <= M:
        raise ValueError(f"keep must be in [1, {M}] (the triangles given), got {keep}")
    search = greedy_search(keep) if search is None else tuple(search)
    scene = _Scene(params, H, W, sigma)
    longest = max(H, W)
    base_lr = {
        "verts": lr_verts_px / longest,
        "color_logits": lr,
        "opacity_logits": 0.0 if fixed_opacity is not None else lr,
        "background_logits": 0.0 if fixed_background else lr,
    }
    adam = _Adam(params)
    rng = np.random.default_rng(seed)
    blurred_target = box_blur(target) if search[0] == 0 else None
    live = np.ones(M, bool)
    events, prune_events = move_steps(
        steps, every=reseed_every, until=reseed_until, prune_from=prune_from,
        prune_until=prune_until, prune=keep < M,
    )  # fmt: skip

    def move(step: int, image: np.ndarray) -> str | None:
        nonlocal live
        n_live = int(live.sum())
        if step in prune_events:
            i = prune_events.index(step)
            goal = round(M + (keep - M) * (i + 1) / len(prune_events))
            if n_live <= goal:
                return None
            score = np.where(live, scene.removal_costs(target), np.inf)
            idx = np.argsort(score, kind="stable")[: n_live - goal]
            live[idx] = False
            params["opacity_logits"][idx] = DEAD_LOGIT
            adam.reset_rows(idx)
            return "pruned"
        if n_live != keep or reseed_fraction <= 0:
            return None
        k = max(1, int(reseed_fraction * keep))
        idx = np.argsort(np.where(live, scene.removal_costs(target), np.inf), kind="stable")[:k]
        if search[0] > 0:  # the image without them, to place their replacements on
            saved = params["opacity_logits"][idx].copy()
            params["opacity_logits"][idx] = DEAD_LOGIT
            image = scene.render()
            params["opacity_logits"][idx] = saved
        verts, colors, opacity = relocation_placement(
            image, target, k, keep, rng, search=search, blurred_target=blurred_target,
            opacity=fixed_opacity,
        )  # fmt: skip
        stay = np.ones(M, bool)
        stay[idx] = False
        perm = np.concatenate([np.flatnonzero(stay), idx])  # relocated ones on top
        new = {"verts": verts, "color_logits": _logit(colors), "opacity_logits": _logit(opacity)}
        for key, value in new.items():
            params[key] = params[key][perm]
            params[key][M - k :] = value
        adam.permute_rows(perm, slice(M - k, None))
        live = live[perm]
        return "relocated"

    log = StepLog(monitor, log_every, steps, progress, on_warning, on_log)
    interrupted = False
    step = 0
    best_psnr, best_step, best_state = -math.inf, -1, None
    t0 = time.perf_counter()
    try:
        for step in range(steps):
            if should_stop is not None and should_stop(step):
                break
            factor = lr_factor(step, steps, lr_final, warmup)
            image = scene.render(target)
            stats, w_abs, w_sq, quality, std = _objective(scene.sums, image.shape, names)
            grads = scene.backward(target, w_abs, w_sq)
            # quality: the PSNR of the parameters before this step's update
            if keep_best and int(live.sum()) == keep and quality > best_psnr:
                best_psnr, best_step = quality, step
                best_state = ({k: v.copy() for k, v in params.items()}, live.copy())
            adam.step(params, grads, {k: v * factor for k, v in base_lr.items()})
            if not live.all():
                params["opacity_logits"][~live] = DEAD_LOGIT
            moved = move(step, image) if step in events else None
            if log.due(step):
                log.record(step, stats, quality, image_std=std)
            log.done(step, moved)
            if on_step is not None:
                on_step(step, image)
        else:
            step = steps
    except KeyboardInterrupt:
        interrupted = True
    seconds = time.perf_counter() - t0
    if int(live.sum()) > keep:  # interrupted while pruning: keep the most opaque
        score = np.where(live, params["opacity_logits"], -np.inf)
        live = np.zeros(M, bool)
        live[np.argsort(-score, kind="stable")[:keep]] = True
        params["opacity_logits"][~live] = DEAD_LOGIT
    final = np.clip(scene.render(), 0.0, 1.0)
    final_psnr = psnr(final, target)
    if best_state is not None and best_psnr > final_psnr:
        saved, live = best_state
        params.update(saved)
        final = np.clip(scene.render(), 0.0, 1.0)
        final_psnr = psnr(final, target)
    else:
        best_step = step
    if solve_colors:
        scene.solve_colors(target, fix_background=fixed_background)
        final = np.clip(scene.render(), 0.0, 1.0)
        final_psnr = psnr(final, target)
    rows = np.flatnonzero(live) if keep < M else np.arange(M)
    values = {
        "verts": params["verts"][rows].copy(),
        "colors": _sigmoid(params["color_logits"][rows]),
        "opacity": _sigmoid(params["opacity_logits"][rows]),
        "background": _sigmoid(params["background_logits"]),
    }
    return CpuFitResult(
        image=final.astype(np.float32),
        psnr=final_psnr,
        values=values,
        steps=step,
        best_step=best_step,
        interrupted=interrupted,
        seconds=seconds,
        history=log.history,
        warnings=list(monitor.events) if monitor is not None else [],
    )
