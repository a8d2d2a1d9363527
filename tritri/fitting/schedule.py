"""What both fit loops share (torch-free): the learning-rate schedule, the steps at which
triangles are pruned or relocated, and where a relocated triangle goes.

Used by :func:`tritri.fitting.loop.fit_triangles` (torch, any device) and
:func:`tritri.fitting.cpu_fit.fit_triangles_cpu` (numpy + numba), so that the two make the same
moves at the same steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "DEAD_LOGIT",
    "GEOMETRIC_EPS",
    "GEOMETRIC_MIN_LOSS",
    "GEOMETRIC_REG_WEIGHT",
    "StepLog",
    "box_blur",
    "greedy_search",
    "lr_factor",
    "move_steps",
    "relocation_placement",
]

#: GeometricMeanLoss's defaults (epsilon, min_loss_value, regularization_weight), for the loops
#: that compute the objective themselves (the CPU loop and the batched torch loop).
GEOMETRIC_EPS, GEOMETRIC_MIN_LOSS, GEOMETRIC_REG_WEIGHT = 1e-8, 1e-4, 0.01
#: Opacity logit of a pruned slot: opacity ~1e-13, culled by the renderer.
DEAD_LOGIT = -30.0


#: The shortest warm-up, in steps, when there is one: Adam's first steps move every parameter by
#: about the learning rate whatever its gradient, and a ramp of one or two steps does not temper
#: that (a 12-step fit from the greedy start lost 3 dB on its first step and ended 0.7 dB lower).
MIN_WARMUP_STEPS = 3


def lr_factor(step: int, steps: int, final: float, warmup: float = 0.0) -> float:
    """Cosine decay from 1 to ``final`` over ``steps``, after a linear warm-up over the first
    ``warmup`` fraction of the steps (at least :data:`MIN_WARMUP_STEPS` when ``warmup`` > 0)."""
    t = min(1.0, step / max(1, steps - 1))
    factor = final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t))
    ramp = max(MIN_WARMUP_STEPS if warmup > 0 else 1, int(warmup * steps))
    return factor * min(1.0, (step + 1) / ramp)


def move_steps(
    steps: int, *, every: int, until: float, prune_from: float, prune_until: float, prune: bool
) -> tuple[list[int], list[int]]:
    """``(events, prune_events)``: the steps after which triangles are pruned or relocated (every
    ``every`` steps before ``until`` of the run; 0 = never) and those of them that prune (between
    ``prune_from`` and ``prune_until``; none without ``prune``, so that a fit started at its final
    count relocates at every event). With ``prune`` and no pruning step in that window (a short
    run), the fit prunes at once, after step 0.

    (Until this rule, a fit without pruning skipped the events of the pruning window: no
    relocation between 5 % and 40 % of the run. Relocating there too gains 0.13 dB at N = 256 and
    0.07 dB at N = 64 from the greedy start, mean final PSNR of four 256-px photos.)"""
    events = [s for s in range(steps) if every and s % every == every - 1 and s < until * steps]
    if not prune:
        return events, []
    prune_events = [s for s in events if prune_from * steps <= s < prune_until * steps]
    if not prune_events and steps:
        prune_events = [0]
        events = sorted(set(events) | {0})
    return events, prune_events


class StepLog:
    """The records of a fit loop: every ``every`` steps (and the last of ``steps``) the step's
    stats go to ``monitor`` (a :class:`tritri.losses.LossMonitor`, or None: plain records), whose
    new warning events go to ``on_warning``; the record is kept in :attr:`history`, passed to
    ``on_log`` and its losses and PSNR shown on ``progress`` (a tqdm bar, or None).

    A move that changed the objective on purpose (:meth:`done` with "pruned" / "relocated") is
    passed to the monitor with the next record, which renders the changed scene, so that the
    change of the total is not taken for a sudden jump.
    """

    def __init__(
        self, monitor: Any, every: int, steps: int, progress: Any = None,
        on_warning: Callable[[dict[str, Any]], None] | None = None,
        on_log: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:  # fmt: skip
        self.monitor, self.every, self.steps = monitor, every, steps
        self.progress, self.on_warning, self.on_log = progress, on_warning, on_log
        self.history: list[dict[str, Any]] = []
        self._changed: str | None = None
        self._n_events = 0

    def due(self, step: int) -> bool:
        """Whether ``step`` is logged."""
        return bool(self.every) and (step % self.every == 0 or step == self.steps - 1)

    def record(
        self, step: int, stats: Mapping[str, float], quality: float, **image: Any
    ) -> dict[str, Any]:
        """Log ``step``: ``stats`` (the balancer's keys, ``loss/<name>`` among them), its PSNR
        ``quality`` and ``image=`` or ``image_std=`` for the monitor's uniform-color check."""
        if self.monitor is not None:
            record = self.monitor.log(stats, step, psnr=quality, discontinuity=self._changed,
                                      **image)  # fmt: skip
            self._changed = None
            events = getattr(self.monitor, "events", [])
            if self.on_warning is not None:
                for event in events[self._n_events :]:
                    self.on_warning(event)
            self._n_events = len(events)
        else:
            record = {"step": step, **stats, "psnr": quality}
        self.history.append(record)
        if self.on_log is not None:
            self.on_log(record)
        if self.progress is not None:
            shown = {k.split("/", 1)[1]: f"{v:.4g}" for k, v in stats.items() if k[:5] == "loss/"}
            self.progress.set_postfix({**shown, "psnr": f"{quality:.2f}"}, refresh=False)
        return record

    def done(self, step: int, moved: str | None) -> None:
        """End of ``step``, after which the fit ``moved`` triangles ("pruned" / "relocated") or
        not (None)."""
        if self.progress is not None:
            self.progress.update(1)
        self._changed = moved or self._changed


def box_blur(image: np.ndarray, size: int = 5) -> np.ndarray:
    """Mean over the ``size`` x ``size`` window around each pixel of ``(C, H, W)``, counting only
    the pixels inside the image (``avg_pool2d(..., count_include_pad=False)``); float64."""
    r = size // 2
    out = np.asarray(image, np.float64)
    for axis in (1, 2):  # separable: a running sum along each axis, divided by the pixels in it
        n = out.shape[axis]
        pad = [(0, 0)] * 3
        pad[axis] = (r + 1, r)
        run = np.cumsum(np.pad(out, pad), axis=axis)
        hi = np.take(run, np.arange(n) + 2 * r + 1, axis=axis)
        lo = np.take(run, np.arange(n), axis=axis)
        idx = np.arange(n)
        count = np.minimum(idx + r, n - 1) - np.maximum(idx - r, 0) + 1
        shape = [1, 1, 1]
        shape[axis] = n
        out = (hi - lo) / count.reshape(shape)
    return out


def greedy_search(n_triangles: int) -> tuple[int, int]:
    """``(candidates, mutations)`` per triangle of the greedy placement
    (:func:`relocation_placement`) in a fit of ``n_triangles``, for its start
    (:func:`tritri.fitting.starts.greedy_start`) and its relocations: (16, 200) up to 64
    triangles, each scaled by ``sqrt(64 / n)`` beyond (256: (8, 100); 1024: (4, 50)), so that a
    search costs about the same at any count (smaller triangles, more of them).

    Measured on four 256-px photos with the CPU fit from the greedy start: (8, 100) at N = 64
    ends 0.13 dB lower than (16, 200); at N = 256 and 1024, (16, 200) is worth 0.03 dB more
    for 0.2-0.6 s. (Before the greedy start, relocating 10 % every 5 steps greedily instead of
    2 % every 10 steps at error-weighted pixels gained 0.2-0.65 dB at every N.)"""
    scale = min(1.0, math.sqrt(64.0 / max(1, n_triangles)))
    return max(2, round(16 * scale)), max(20, round(200 * scale))


def _error_centers(
    image: np.ndarray, target: np.ndarray, count: int, rng: np.random.Generator, replace: bool
) -> np.ndarray:
    """``count`` pixels (flat indices) drawn in proportion to the box-blurred squared error."""
    _, H, W = target.shape
    err = box_blur(np.square(image - target).sum(0, keepdims=True))[0]
    weight = np.clip(err.ravel(), 0.0, None) + 1e-12
    return rng.choice(H * W, size=count, replace=replace, p=weight / weight.sum())


def relocation_placement(
    image: np.ndarray, target: np.ndarray, k: int, n_live: int, rng: np.random.Generator, *,
    search: tuple[int, int] | None = None, blurred_target: np.ndarray | None = None,
    opacity: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """New vertices ``(k, 3, 2)`` (normalized), colors ``(k, 3)`` and opacities ``(k,)`` for ``k``
    triangles relocated on top of ``image`` (``(3, H, W)``, rendered without them) to fit
    ``target``; their size is about ``0.5 / sqrt(n_live)`` of the longest side.

    ``search = (candidates, mutations)`` (default :func:`greedy_search` of ``n_live``): each
    triangle is placed greedily, one after the other
    (:func:`tritri.fitting.greedy.place`): the best, by the exact change of the squared error with
    its best color and opacity, of ``candidates`` random triangles around pixels drawn in
    proportion to the (box-blurred) squared error, each hill-climbed by ``mutations`` vertex
    moves. ``(0, 0)``, or without numba: equilateral triangles at distinct error-drawn pixels,
    in the blurred target's color there, opacity 0.5 (``blurred_target``: ``box_blur(target)``,
    if the caller keeps it).

    ``opacity`` (in (0, 1]; None: chosen per triangle) fixes every new triangle's opacity
    (``tritri fit --alpha``): the search scores only that one, and the colors are the best for it.
    """
    from tritri.cpu import numba_available

    _, H, W = target.shape
    candidates, mutations = greedy_search(n_live) if search is None else search
    if candidates > 0 and numba_available():
        from tritri.fitting.greedy import place

        pick = _error_centers(image, target, k * candidates, rng, replace=True)
        centers = np.stack([pick % W + 0.5, pick // W + 0.5], axis=-1).astype(np.float64)
        size = 0.5 * math.sqrt(1.0 / max(1, n_live)) * max(H, W)
        alphas = {} if opacity is None else {"alphas": np.array([float(opacity)])}
        v, colors, alpha = place(
            image, target, centers, size, candidates, mutations, int(rng.integers(1 << 30)),
            **alphas,
        )  # fmt: skip
        if opacity is not None:  # also where place() found no pixel to score (its 0.5)
            alpha[:] = float(opacity)
        verts = v / np.array([W, H])
        return verts.astype(np.float32), colors.astype(np.float32), alpha.astype(np.float32)
    pick = _error_centers(image, target, k, rng, replace=False)
    cy, cx = pick // W, pick % W
    center = np.stack([(cx + 0.5) / W, (cy + 0.5) / H], axis=-1)
    radius = 0.5 * math.sqrt(1.0 / max(1, n_live))
    angle = rng.random((k, 1)) * 2 * math.pi + np.array([0.0, 2.0, 4.0]) * math.pi / 3
    verts = center[:, None] + radius * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
    blurred = box_blur(target) if blurred_target is None else blurred_target
    colors = np.clip(blurred[:, cy, cx].T, 1e-3, 1 - 1e-3)
    alpha = 0.5 if opacity is None else float(opacity)
    return verts.astype(np.float32), colors.astype(np.float32), np.full(k, alpha, np.float32)
