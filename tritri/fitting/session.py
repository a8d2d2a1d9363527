"""One fit of one image for ``tritri fit``: read the target, start, fit, write the outputs.

:func:`fit_image` runs it (the torch-free CPU fit where :func:`cpu_fit_applies`, else the torch
loop); :func:`fit_batch` fits several images as one batch in the torch loop. The command's
arguments are parsed and checked by :mod:`tritri.fitting.cli`; several images are shared out by
:mod:`tritri.fitting.many`. Neither is imported here.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritri import _startup

__all__ = ["DEFAULTS", "PROG", "RENDER_CAP", "Budget", "Outcome", "UsageError", "cpu_fit_applies",
           "default_steps", "fit_batch", "fit_image", "out_dir", "render_side",
           "skip_blas_probe"]  # fmt: skip

#: The command, as messages name it.
PROG = "tritri fit"

#: Default settings (measured: see perf/fit_vs_geometrize.py, perf/fit_quality.py and the README).
DEFAULTS: dict[str, Any] = {
    "triangles": 256,
    "steps": None,  # by triangle count: default_steps()
    "size": 256,
    "lr": 0.2,
    "lr_verts": 2.0,
    "sigma": 0.5,
    "out": "tritri_fit",
    "balancer": "geometric_mean",
}

#: The default ``--render-size`` is the input's longest side, at most this (primitive's ``-s``).
RENDER_CAP = 1024

#: The ``--init`` values that start a fresh fit (anything else is a triangles.json to continue).
FRESH_STARTS = ("greedy", "delaunay", "random")

#: The Delaunay and random starts have this many times the triangles the fit keeps and are pruned
#: down (see :func:`tritri.fitting.fit_triangles`).
OVERCOMPLETE = 2.0


def default_steps(n_triangles: int) -> int:
    """Steps of a default fit: fewer for more triangles, whose steps cost more (and which need
    fewer each): 300 at N <= 64, ``100 (256 / N)^0.8`` from there down to 120 steps (N >= 200),
    sized with the greedy start so that the whole CPU run at N >= 256 takes clearly less than
    geometrize's (README, performance). Measured on four 256-px photos, mean final PSNR: at
    N = 256, 120 steps instead of 100 gain 0.09 dB (140: 0.16 dB, for twice the extra time); at
    1024, 0.24 dB; at 128, 209 steps instead of 174 gain nothing."""
    return int(min(300, max(120, round(100 * (256 / max(n_triangles, 1)) ** 0.8))))


class UsageError(Exception):
    """A bad argument: reported as one line, exit status 2."""


def _note(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _device(spec: str):
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError) as err:
        raise UsageError(f"--device: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {spec}: CUDA is not available on this machine")
    return device


def _resolve_losses(
    args: argparse.Namespace, device_type: str, cached: Callable[[], Path | None]
) -> tuple[tuple[str, ...], Any, str | None]:
    """The loss names, the VGG weights to build them with, and a note for the user (or None).
    ``cached`` finds the VGG16 weights in the torch hub cache (None: not there)."""
    from tritri.fitting.loss_names import FULL_LOSSES, PIXEL_LOSSES, VGG_LOSSES, parse_losses

    spec = args.vgg_weights
    if spec != "DEFAULT" and not Path(spec).is_file():
        raise UsageError(f"--vgg-weights: no such file: {spec!r} (or pass DEFAULT)")
    local = Path(spec) if spec != "DEFAULT" else cached()
    full = ",".join(FULL_LOSSES)
    if args.losses.strip().lower() == "auto":
        if local is None:
            return (
                PIXEL_LOSSES,
                None,
                "pretrained VGG16 weights are not available offline, so fitting with "
                f"{','.join(PIXEL_LOSSES)} only; --losses {full} downloads them once and fits the "
                "full objective",
            )
        if device_type != "cuda":
            return (
                PIXEL_LOSSES,
                None,
                f"fitting with {','.join(PIXEL_LOSSES)} on the CPU (the VGG losses cost about a "
                f"second a step here); --losses {full} fits the full objective",
            )
        return FULL_LOSSES, str(local), None
    try:
        names = parse_losses(args.losses)
    except ValueError as err:
        raise UsageError(str(err)) from None
    needs_vgg = any(n in VGG_LOSSES for n in names)
    weights = (str(local) if local is not None else "DEFAULT") if needs_vgg else None
    return names, weights, None


def _build_balancer(args: argparse.Namespace, names: tuple[str, ...]):
    from tritri.losses import build_balancer
    from tritri.losses.config import load_config

    config_data = None
    if args.config is not None:
        try:  # a file that is not YAML or not a mapping: one line naming it
            config_data = load_config(args.config)
        except (ValueError, FileNotFoundError) as err:
            raise UsageError(f"--config: {err}") from None
    try:
        if config_data is not None:
            return build_balancer(config_data, names=list(names))
        config: dict[str, Any] = {"type": args.balancer}
        if args.balancer == "weighted_sum":
            config["weights"] = dict.fromkeys(names, 1.0)
        return build_balancer(config, names=list(names))
    except (ValueError, TypeError, KeyError, AttributeError, FileNotFoundError) as err:
        if args.config is not None:
            raise UsageError(f"--config: {args.config}: {err}") from None
        raise UsageError(f"--balancer: {err}") from None


def _start(
    args: argparse.Namespace, target, on_batch: Callable[[dict[str, Any]], None] | None = None
) -> tuple[dict[str, Any], str, int]:
    """The triangles to start from (numpy values: verts, colors, opacity, background), what they
    are, and how many the fit keeps. ``target`` is the (3, H, W) numpy image; ``on_batch``: the
    greedy start's (animation frames). ``--alpha`` and ``--background`` are applied to any
    start."""
    import numpy as np

    values, what, n_keep = _start_values(args, target, on_batch)
    if args.alpha is not None:
        values["opacity"] = np.full_like(values["opacity"], args.alpha)
    if args.background_rgb is not None:
        values["background"] = np.asarray(args.background_rgb, np.float32)
    return values, what, n_keep


def _start_values(
    args: argparse.Namespace, target, on_batch: Callable[[dict[str, Any]], None] | None
) -> tuple[dict[str, Any], str, int]:
    from tritri.fitting.starts import (
        delaunay_start,
        greedy_start,
        random_start,
        read_triangles_json,
    )

    n = args.triangles if args.triangles is not None else DEFAULTS["triangles"]
    if args.init in FRESH_STARTS:
        if args.steps is None:
            args.steps = default_steps(n)
        if args.init == "greedy":
            fixed = {"opacity": args.alpha, "background": args.background_rgb}
            values = greedy_start(target, n, seed=args.seed, sigma=args.sigma, on_batch=on_batch,
                                  **fixed)  # fmt: skip
            return values, "greedy placement", n
        # The mosaic and random starts are over-complete (pruned to n during the fit) unless the
        # run is short.
        m = max(n, round(OVERCOMPLETE * n)) if args.steps >= 20 else n
        if args.init == "delaunay":
            return delaunay_start(target, m, seed=args.seed), "Delaunay mosaic", n
        return random_start(target, m, seed=args.seed), "random triangles", n
    path = Path(args.init)
    if not path.is_file():
        raise UsageError(
            f"--init must be greedy, delaunay, random or a triangles.json; {args.init!r} is none"
        )
    try:
        values, _ = read_triangles_json(path)
    except ValueError as err:
        raise UsageError(f"--init: {str(err).splitlines()[0]}") from None
    count = len(values["opacity"])
    if args.triangles is not None and args.triangles != count:
        raise UsageError(
            f"--triangles {args.triangles} does not match the {count} triangles in "
            f"{path}; leave --triangles out to continue that fit"
        )
    if args.steps is None:
        args.steps = default_steps(count)
    return values, str(path), count


def _cuda_possible() -> bool:
    """Whether torch could see a CUDA GPU here, decided without importing torch (2-3 s): on Linux
    only with the NVIDIA driver loaded, never on macOS; elsewhere, ask torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if sys.platform.startswith("linux"):
        return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")
    return sys.platform != "darwin"


def cpu_fit_applies(args: argparse.Namespace) -> bool:
    """Whether this fit runs as the torch-free CPU fit (:mod:`tritri.fitting.cpu_fit`): on the
    CPU, with the numba rasterizer (``--backend numba``, or ``auto`` without TRITON_INTERPRET=1),
    pixel losses only and the default geometric-mean balancer. Anything else (a GPU, other
    losses, balancers or backends, the Triton interpreter) runs the torch loop."""
    from tritri.cpu import numba_available
    from tritri.fitting.loss_names import PIXEL_LOSSES, parse_losses

    if args.backend not in ("auto", "numba") or args.config is not None:
        return False
    if args.backend == "auto" and os.environ.get("TRITON_INTERPRET") == "1":
        return False  # "auto" then means Triton's interpreter, as for tritri.render (docs/SPEC.md)
    if args.balancer != "geometric_mean":
        return False
    if args.device == "auto" and _cuda_possible() or args.device not in ("auto", "cpu"):
        return False
    if args.losses.strip().lower() != "auto":
        try:
            names = parse_losses(args.losses)
        except ValueError as err:
            raise UsageError(str(err)) from None
        if any(n not in PIXEL_LOSSES for n in names):
            return False
    return numba_available()


@dataclass
class Outcome:
    """How the fit of one image went (a row of ``summary.csv`` with several images).

    Attributes:
        status: the exit status of a single-image run (0; 1 an output not written; 2 the image
            or an argument refused; 130 Ctrl-C, outputs written).
        psnr: the written fit's PSNR (dB; None: no fit); n: its triangles; steps: steps run.
        seconds: wall time from reading the image to the outputs written.
        error: why it failed (one line; empty when it did not).
    """

    status: int
    psnr: float | None = None
    n: int | None = None
    steps: int | None = None
    seconds: float = 0.0
    error: str = ""


def fit_image(args: argparse.Namespace) -> Outcome:
    """Fit ``args.image`` (None: the sample) into ``args.out``: read, start, fit, write. Raises
    ``UsageError`` for a bad argument or image (before any output is written)."""
    begin = time.perf_counter()
    image = _read_target(args)
    if cpu_fit_applies(args):
        outcome = _run_cpu(args, image)
    else:
        outcome = _run_torch(args, image)
    outcome.seconds = time.perf_counter() - begin
    return outcome


class Budget:
    """``--seconds``: the deadline of one fit, counted from ``begin`` (perf_counter seconds: when
    the start placement begins, the libraries imported)."""

    #: The share of the time left that the sized steps aim to fill.
    FILL = 0.95
    #: Steps of the pilot that times a step (:func:`_size_steps`); the 5th moves triangles.
    PILOT = 6

    def __init__(self, seconds: float, begin: float) -> None:
        self.seconds = float(seconds)
        self.deadline = begin + self.seconds
        self._loop_start: float | None = None

    def steps(self, step_seconds: float) -> int:
        """Steps that fill the time left at ``step_seconds`` a step."""
        left = self.deadline - time.perf_counter()
        return int(min(1_000_000, max(1, self.FILL * left / max(step_seconds, 1e-6))))

    def should_stop(self, step: int) -> bool:
        """The loops' ``should_stop``: past the deadline, or the mean step so far would end past
        it (so a fit ends within one step of the budget)."""
        now = time.perf_counter()
        if step == 0 or self._loop_start is None:
            self._loop_start = now
            return now >= self.deadline
        return now + (now - self._loop_start) / step > self.deadline


def _read_target(args: argparse.Namespace):
    """The target image (:class:`tritri.fitting.images.TargetImage`); its notes (frames,
    transparency, size) said on stderr."""
    from tritri.fitting.images import WHITE, read_image

    background = args.background_rgb if args.background_rgb is not None else WHITE
    try:
        image = read_image(args.image, args.size, upscale=args.upscale, background=background)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    for note in image.notes:
        _note(note)
    w, h = image.source_size
    if max(w, h) < args.size and not args.upscale:
        name = args.image if args.image is not None else "the sample image"
        _note(f"{name} is {w}x{h}: fitting it at that size (--upscale enlarges it to --size "
              f"{args.size})")  # fmt: skip
    return image


def out_dir(args: argparse.Namespace) -> Path:
    from tritri.fitting.outputs import prepare_out_dir

    try:
        return prepare_out_dir(args.out)
    except ValueError as err:
        raise UsageError(f"--out: {err}") from None


def _announce(args, target, n_keep: int, names, balancer: str, device: str, start: str,
              start_psnr: float) -> None:  # fmt: skip
    _, H, W = target.shape
    image_name = args.image if args.image is not None else "the sample image"
    budget = f" (at most {args.seconds:g} s)" if args.seconds is not None else ""
    fixed = []
    if args.alpha is not None:
        fixed.append(f"opacity {args.alpha:g}")
    if args.background is not None:
        fixed.append(f"background {args.background}")
    fixed_note = f"; fixed: {', '.join(fixed)}" if fixed else ""
    _note(
        f"fitting {image_name} ({W}x{H}) with {n_keep} triangles, {args.steps} steps{budget}, "
        f"losses {','.join(names)}, {balancer}, on {device}; start: {start} "
        f"({start_psnr:.2f} dB){fixed_note}"
    )


def render_side(args: argparse.Namespace, source_size: tuple[int, int], fit_shape) -> int:
    """The longest side of final.png and comparison.png, px: ``--render-size``, or by default the
    input's own longest side capped at :data:`RENDER_CAP`, never below the fit's
    (``fit_shape``: the target's ``(3, H, W)``)."""
    fit_side = max(fit_shape[1:])
    if args.render_size is not None:
        return int(args.render_size)
    return max(fit_side, min(max(source_size), RENDER_CAP))


def _shown(args: argparse.Namespace, image, target, values: dict[str, Any],
           render: Callable[..., Any]) -> tuple[Any, Any]:  # fmt: skip
    """``(image, target)`` at the render size (:func:`render_side`): the triangles ``values``
    rendered by ``render(values, H, W, sigma)`` with sigma scaled by the same factor (edges as
    soft, relative to the picture, as in the fit and the SVG), and the target read again at that
    size; ``(None, None)`` at the fit's own size."""
    import numpy as np

    from tritri.fitting.images import WHITE, read_image

    side = render_side(args, image.source_size, target.shape)
    if side == max(target.shape[1:]):
        return None, None
    background = args.background_rgb if args.background_rgb is not None else WHITE
    shown_target = read_image(args.image, side, upscale=True, background=background).pixels
    _, h, w = shown_target.shape
    scale = max(h, w) / max(target.shape[1:])
    shown = np.clip(np.asarray(render(values, h, w, args.sigma * scale), np.float32), 0.0, 1.0)
    return shown, shown_target


def _animation(args: argparse.Namespace):
    """The :class:`tritri.fitting.animation.Animation` of ``--animation`` (None without it); its
    folder created and checked writable first (one-line error)."""
    if args.animation is None:
        return None
    from tritri.fitting.animation import Animation
    from tritri.fitting.outputs import prepare_out_dir

    path = Path(args.animation)
    try:
        prepare_out_dir(path.parent, clean=False)
    except ValueError as err:
        raise UsageError(f"--animation: {err}") from None
    return Animation(path, max_frames=args.frames)


def _progress(args: argparse.Namespace):
    from tqdm import tqdm

    bar = tqdm(
        total=args.steps, desc="fit", unit="step", dynamic_ncols=True, disable=args.quiet,
        file=sys.stderr,
    )  # fmt: skip

    def on_warning(event: dict[str, Any]) -> None:
        tqdm.write(f"{PROG}: warning: step {event['step']}: {event['message']}", file=sys.stderr)

    return bar, on_warning


def _write_outputs(
    args: argparse.Namespace, out: Path, source, image, values: dict[str, Any], result: Any,
    names, start_psnr: float, t0: float, render: Callable[..., Any], animation: Any = None,
) -> Outcome:  # fmt: skip
    """Write the outputs of a finished (or interrupted) fit and the closing note; the outcome
    (status 0; 1 when an output could not be written; 130 after a Ctrl-C). ``source``: the
    :class:`~tritri.fitting.images.TargetImage`; ``image``: the (3, H, W) render; ``values``:
    the triangles as numpy arrays; ``render(values, H, W, sigma)``: a render at another size
    (``--render-size``); ``animation``: the :class:`~tritri.fitting.animation.Animation` to
    finish and write, or None."""
    import numpy as np

    from tritri.fitting.outputs import FitOutputs, write_outputs

    target = source.pixels
    if result.interrupted:
        _note(f"interrupted at step {result.steps} of {args.steps}; writing the outputs")
    # --alpha / --background exactly as given (the fit held their logits, which are clamped to
    # [1e-3, 1 - 1e-3]: white was 0.999, under half an 8-bit level away)
    values = dict(values)
    if args.alpha is not None:
        values["opacity"] = np.full_like(values["opacity"], args.alpha)
    if args.background_rgb is not None:
        values["background"] = np.asarray(args.background_rgb, np.float32)
    failed: list[tuple[Path, str]] = []
    try:
        shown, shown_target = _shown(args, source, target, values, render)
    except Exception as err:  # final.png and comparison.png are then at the fit's size
        shown = shown_target = None
        failed.append((out / "final.png", f"not rendered at --render-size: {_one_line(err)}"))
    fit = FitOutputs(
        target=target, image=image, values=values, sigma=args.sigma, psnr=result.psnr,
        steps=result.steps, best_step=result.best_step, losses=names,
        image_name=os.fspath(args.image) if args.image is not None else "astronaut.png",
        history=result.history, shown_image=shown, shown_target=shown_target,
    )  # fmt: skip
    done = write_outputs(out, fit)
    failed += [(out / name, reason) for name, reason in done.failed]
    if animation is not None and not done.interrupted:
        try:
            animation.finish(image)
            done.files.append(animation.write())
        except KeyboardInterrupt:
            done.interrupted = True
        except Exception as err:
            failed.append((animation.path, _one_line(err)))
    for path, reason in failed:
        print(f"{PROG}: error: could not write {path}: {reason}", file=sys.stderr)
    seconds = time.perf_counter() - t0
    best = f", the best at step {result.best_step}" if result.best_step < result.steps else ""
    files = ", ".join(str(f) for f in done.files) or "nothing"
    stop = "; interrupted while writing the outputs" if done.interrupted else ""
    _note(
        f"PSNR {result.psnr:.2f} dB (start {start_psnr:.2f} dB) after {result.steps} steps"
        f"{best} in {seconds:.1f} s{stop}; wrote {files}"
    )
    status = 130 if result.interrupted or done.interrupted else 1 if failed else 0
    error = "; ".join(f"could not write {p.name}: {r}" for p, r in failed)
    if status == 130:
        error = "interrupted" + (f"; {error}" if error else "")
    return Outcome(status, psnr=float(result.psnr), n=len(values["opacity"]),
                   steps=result.steps, error=error)  # fmt: skip


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _warmup(args: argparse.Namespace) -> float:
    """The share of the steps over which the learning rates ramp up. Continuing a fit: 10 %, so
    that Adam's fresh moments (its first steps move every parameter by about the learning rate,
    whatever the gradient) do not shake a converged fit loose. The greedy start: 5 %, for the same
    reason on a smaller scale (measured on four 256-px photos, mean final PSNR: +0.04 dB at
    N = 64, +0.07 at 256, +0.25 at 1024). The Delaunay and random starts: none."""
    if args.init not in FRESH_STARTS:
        return 0.1
    return 0.05 if args.init == "greedy" else 0.0


def skip_blas_probe() -> None:
    """Answer numba's BLAS probe with "none" without importing scipy.linalg.

    When numba's CPU target first loads it imports ``scipy.linalg.cython_blas`` (in
    ``numba.np.arraymath``) to learn whether ``np.dot`` and friends can be compiled: 0.1-0.25 s
    of a 2-s fit on a 2-core machine, and the fit's kernels use no BLAS. So ``tritri fit``'s own
    process (never the library: a user's njit code may want BLAS) imports that numba module with
    the scipy module masked (``None`` in ``sys.modules`` makes its import fail at once), then
    unmasks it; scipy itself stays importable."""
    name = "scipy.linalg.cython_blas"
    if "numba.np.arraymath" in sys.modules or name in sys.modules:
        return
    sys.modules[name] = None  # type: ignore[assignment]
    try:
        import numba.np.arraymath  # noqa: F401  (runs the probe once)
    except ImportError:
        pass
    finally:
        if name in sys.modules and sys.modules[name] is None:
            del sys.modules[name]


def _start_frames(args: argparse.Namespace, animation: Any, target):
    """The greedy start's ``on_batch`` for ``animation`` (None without one), after the first
    frame: the background alone."""
    import numpy as np

    if animation is None or args.init != "greedy":
        return None
    from tritri.fitting.cpu_fit import render_cpu

    bg = args.background_rgb
    bg = target.mean(axis=(1, 2)) if bg is None else np.asarray(bg, np.float32)
    animation.add_start(np.broadcast_to(np.asarray(bg, np.float32)[:, None, None], target.shape))
    _, H, W = target.shape
    return lambda values: animation.add_start(render_cpu(values, H, W, args.sigma))


def _size_steps(args: argparse.Namespace, budget: Budget | None,
                pilot: Callable[[int, Callable[..., None]], Any]) -> None:  # fmt: skip
    """With ``--seconds`` and no ``--steps``: size ``args.steps`` to the time left, from a pilot
    fit of :attr:`Budget.PILOT` steps (``pilot(steps, on_step)``, its result dropped): the
    median of its plain steps after the first (which loads the backward kernels), plus the
    extra of its 5th step (a relocation or pruning event) for the 4 events in 25 steps of a fit.
    About 3 % of a 5-s budget at N = 256; a render's time, scaled, missed by up to 2x on a
    loaded machine."""
    import numpy as np

    if budget is None or args.steps_given:
        return
    stamps = [time.perf_counter()]
    pilot(Budget.PILOT, lambda step, image: stamps.append(time.perf_counter()))
    took = np.diff(stamps)[1:]  # steps 1..5
    if len(took) < Budget.PILOT - 1:  # stopped early (Ctrl-C): the default steps
        return
    plain = float(np.median(np.delete(took, 3)))
    args.steps = budget.steps(plain + max(0.0, float(took[3]) - plain) * 4 / 25)


def _budget(args: argparse.Namespace) -> Budget | None:
    """The ``--seconds`` budget, from now (None without one)."""
    return Budget(args.seconds, time.perf_counter()) if args.seconds is not None else None


def _run_cpu(args: argparse.Namespace, source) -> Outcome:
    """The fit without torch: numpy, numba (:func:`tritri.fitting.cpu_fit.fit_triangles_cpu`)."""
    skip_blas_probe()
    from tritri.fitting.cpu_fit import fit_triangles_cpu, render_cpu
    from tritri.fitting.loss_names import cached_vgg_weights_file
    from tritri.fitting.numeric import psnr
    from tritri.losses.monitor import LossMonitor

    target = source.pixels
    names, _, note = _resolve_losses(args, "cpu", cached_vgg_weights_file)
    animation = _animation(args)
    budget = _budget(args)
    start, what, n_keep = _start(args, target, _start_frames(args, animation, target))
    _startup.resume_gc()  # numba and the kernels are loaded (the start used them)
    out = out_dir(args)
    if note is not None:
        _note(note)
    _, H, W = target.shape
    start_image = render_cpu(start, H, W, args.sigma)
    _size_steps(args, budget, lambda steps, on_step: fit_triangles_cpu(
        start, target, steps=steps, losses=names, lr=args.lr, lr_verts_px=args.lr_verts,
        sigma=args.sigma, log_every=0, seed=args.seed, keep_best=False, keep=n_keep,
        reseed_until=1.0, fixed_opacity=args.alpha, on_step=on_step))  # fmt: skip
    start_psnr = psnr(start_image, target)
    if animation is not None:
        if args.init != "greedy":
            animation.add_start(start_image)
        animation.plan(args.steps)
    _announce(args, target, n_keep, names, "GeometricMeanLoss", "cpu", what, start_psnr)
    monitor = LossMonitor(out / "metrics.jsonl", warn=False)
    bar, on_warning = _progress(args)
    t0 = time.perf_counter()
    try:
        result = fit_triangles_cpu(
            start, target, steps=args.steps, losses=names, monitor=monitor,
            **_loop_options(args, n_keep, budget, animation, bar, on_warning),
        )  # fmt: skip
    finally:
        bar.close()
        monitor.close()
    return _write_outputs(
        args, out, source, result.image, result.values, result, names, start_psnr, t0,
        render_cpu, animation,
    )  # fmt: skip


def _loop_options(args: argparse.Namespace, n_keep: int, budget: Budget | None, animation: Any,
                  bar: Any, on_warning: Any) -> dict[str, Any]:  # fmt: skip
    """The keyword arguments both fit loops (``fit_triangles_cpu``, ``fit_triangles``) take from
    the command line, the budget, the animation and the progress bar."""
    return {
        "lr": args.lr, "lr_verts_px": args.lr_verts, "sigma": args.sigma,
        "log_every": args.log_every, "seed": args.seed, "progress": bar, "on_warning": on_warning,
        "keep_best": not args.last, "warmup": _warmup(args), "keep": n_keep,
        "fixed_opacity": args.alpha, "fixed_background": args.background_rgb is not None,
        "should_stop": budget.should_stop if budget is not None else None,
        "on_step": animation.on_step if animation is not None else None,
    }  # fmt: skip


def _torch_renderer(args: argparse.Namespace, device) -> Callable[..., Any]:
    """``render(values, H, W, sigma) -> (3, H, W)`` numpy: the triangles through
    :func:`tritri.render` on ``device`` with ``--backend``."""
    import numpy as np
    import torch

    import tritri
    from tritri.fitting.starts import VALUE_KEYS

    def render(values: dict[str, Any], height: int, width: int, sigma: float):
        v, c, o, bg = (torch.as_tensor(np.asarray(values[k], np.float32), device=device)
                       for k in VALUE_KEYS)  # fmt: skip
        with torch.no_grad():
            image = tritri.render(v[None], c[None], o[None], height=height, width=width,
                                  sigma=sigma, background=bg, backend=args.backend)[0]  # fmt: skip
        return image.float().cpu().numpy()

    return render


def _run_torch(args: argparse.Namespace, source) -> Outcome:
    """The fit through torch autograd (:func:`tritri.fitting.fit_triangles`): any device, losses
    and balancer."""
    _startup.resume_gc()
    import torch

    import tritri
    from tritri.fitting.loop import fit_triangles, psnr
    from tritri.fitting.objective import FitLosses, cached_vgg_weights
    from tritri.fitting.params import TriangleParams
    from tritri.losses import LossMonitor

    target_np = source.pixels
    device = _device(args.device)
    torch.manual_seed(args.seed)
    target = torch.from_numpy(target_np)
    _, H, W = target.shape
    names, weights, note = _resolve_losses(args, device.type, cached_vgg_weights)
    try:
        criterion = FitLosses(names, weights=weights)
    except (RuntimeError, FileNotFoundError, ValueError) as err:
        first = str(err).split(". Either")[0]
        raise UsageError(
            f"cannot build the {','.join(names)} losses: {first}; pass --vgg-weights PATH or "
            "--losses l1,mse"
        ) from None
    if min(H, W) < criterion.min_size:
        raise UsageError(
            f"the VGG losses need images of at least {criterion.min_size} px a side; the fit is "
            f"{W}x{H} (raise --size)"
        )
    balancer = _build_balancer(args, names)
    animation = _animation(args)
    budget = _budget(args)
    start, what, n_keep = _start(args, target_np, _start_frames(args, animation, target_np))
    params = TriangleParams.from_values(start)
    out = out_dir(args)
    if note is not None:
        _note(note)

    target = target.to(device)
    params = params.to(device)
    criterion = criterion.to(device)
    balancer = balancer.to(device)
    encoded = criterion.encode(target[None])

    with torch.no_grad():
        verts, colors, opacity, background = params()
        try:
            start_image = tritri.render(
                verts[None], colors[None], opacity[None], height=H, width=W, sigma=args.sigma,
                background=background, backend=args.backend,
            )[0]  # fmt: skip
        except RuntimeError as err:  # e.g. --backend triton on a CPU without the interpreter
            raise UsageError(f"--backend {args.backend}: {str(err).splitlines()[0]}") from None
    _size_steps(args, budget, lambda steps, on_step: fit_triangles(
        TriangleParams.from_values(start).to(device), target, steps=steps, criterion=criterion,
        target_encoded=encoded, balancer=copy.deepcopy(balancer), lr=args.lr,
        lr_verts_px=args.lr_verts, sigma=args.sigma, backend=args.backend, log_every=0,
        seed=args.seed, keep_best=False, keep=n_keep, reseed_until=1.0,
        fixed_opacity=args.alpha, on_step=on_step))  # fmt: skip
    start_psnr = psnr(start_image, target)
    if animation is not None:
        if args.init != "greedy":
            animation.add_start(start_image.float().cpu().numpy())
        animation.plan(args.steps)
    _announce(args, target, n_keep, names, type(balancer).__name__, str(device), what, start_psnr)
    monitor = LossMonitor(out / "metrics.jsonl", warn=False)
    bar, on_warning = _progress(args)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    if device.type == "cpu":
        # torch's small ops on one thread (its OpenMP barriers stall when the machine is busy);
        # the numba rasterizer keeps all of them.
        from tritri.cpu import set_num_threads

        set_num_threads(threads)
        torch.set_num_threads(1)
    try:
        result = fit_triangles(
            params, target, steps=args.steps, criterion=criterion, target_encoded=encoded,
            balancer=balancer, monitor=monitor, backend=args.backend,
            **_loop_options(args, n_keep, budget, animation, bar, on_warning),
        )  # fmt: skip
    finally:
        bar.close()
        monitor.close()
        torch.set_num_threads(threads)
    values = {k: v.astype("float32") for k, v in params.values().items()}
    return _write_outputs(
        args, out, source, result.image.cpu().numpy(), values, result, names, start_psnr, t0,
        _torch_renderer(args, device), animation,
    )  # fmt: skip


def _batchable(args: argparse.Namespace, names: tuple[str, ...]) -> bool:
    """Whether the torch loop can fit several images as one batch
    (:func:`tritri.fitting.batch_fit.fit_batch`): pixel losses, the default balancer, numba (for
    the moves' exact statistics)."""
    from tritri.cpu import numba_available
    from tritri.fitting.loss_names import PIXEL_LOSSES

    return (
        all(n in PIXEL_LOSSES for n in names)
        and args.config is None
        and args.balancer == "geometric_mean"
        and numba_available()
    )


def fit_batch(jobs: list[argparse.Namespace]) -> list[tuple[Outcome, str]] | None:
    """Several images in the torch loop, rendered as one batch (B = images, letterboxed to the
    largest size: :mod:`tritri.fitting.batch_fit`); each image read, started and written as
    :func:`fit_image` would. ``(outcome, its messages)`` per job, in order; None where the
    objective cannot be batched (:func:`_batchable`): the images are then fitted one after the
    other (:func:`tritri.fitting.many.run_one`)."""
    import contextlib
    import io

    _startup.resume_gc()
    import torch

    from tritri.fitting import batch_fit
    from tritri.fitting.objective import cached_vgg_weights
    from tritri.losses import LossMonitor

    args = jobs[0]
    device = _device(args.device)
    names, _, note = _resolve_losses(args, device.type, cached_vgg_weights)
    if not _batchable(args, names):
        return None
    if note is not None:
        _note(note)
    begin = time.perf_counter()
    budget = _budget(args)
    results: list[tuple[Outcome, str] | None] = [None] * len(jobs)
    texts = [io.StringIO() for _ in jobs]
    ready = []  # (index, job, source, start, what, n_keep, out, animation)
    for i, job in enumerate(jobs):
        with contextlib.redirect_stderr(texts[i]):
            try:
                source = _read_target(job)
                animation = _animation(job)
                start, what, n_keep = _start(
                    job, source.pixels, _start_frames(job, animation, source.pixels)
                )
                out = out_dir(job)
            except UsageError as err:
                results[i] = (Outcome(2, error=str(err)),
                              texts[i].getvalue() + f"{PROG}: error: {err}\n")  # fmt: skip
                continue
        ready.append((i, job, source, start, what, n_keep, out, animation))
    if not ready:
        return results  # type: ignore[return-value]
    steps_given, n_keep = args.steps_given, ready[0][5]
    steps = ready[0][1].steps
    targets = [r[2].pixels for r in ready]
    sizes = [t.shape[1:] for t in targets]
    canvas = (max(h for h, _ in sizes), max(w for _, w in sizes))
    if budget is not None and not steps_given:
        _size_steps(args, budget, lambda steps, on_step: batch_fit.fit_batch(
            [r[3] for r in ready], targets, steps=steps, losses=names, lr=args.lr,
            lr_verts_px=args.lr_verts, sigma=args.sigma, backend=args.backend, device=device,
            log_every=0, keep=n_keep, seed=args.seed, keep_best=False, reseed_until=1.0,
            fixed_opacity=args.alpha, on_step=on_step))  # fmt: skip
        steps = args.steps
    for r in ready:
        r[1].steps = steps
        if r[7] is not None:
            r[7].plan(steps)
    _note(
        f"fitting {len(ready)} images as one batch (B = {len(ready)}, on a {canvas[1]}x"
        f"{canvas[0]} canvas) with {n_keep} triangles, {steps} steps"
        + (f" (at most {args.seconds:g} s)" if budget is not None else "")
        + f", losses {','.join(names)}, GeometricMeanLoss per image, on {device}"
    )
    monitors = [LossMonitor(r[6] / "metrics.jsonl", warn=False) for r in ready]

    def warner(path: str) -> Callable[[dict[str, Any]], None]:
        return lambda event: print(f"{PROG}: warning: {path}: step {event['step']}: "
                                   f"{event['message']}", file=sys.stderr)  # fmt: skip

    def on_step(step: int, images: list[Any]) -> None:
        for r, image in zip(ready, images, strict=True):
            if r[7] is not None:
                r[7].on_step(step, image)

    animated = any(r[7] is not None for r in ready)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        from tritri.cpu import set_num_threads

        set_num_threads(threads)
        torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        fitted = batch_fit.fit_batch(
            [r[3] for r in ready], targets, steps=steps, losses=names, monitors=monitors,
            lr=args.lr, lr_verts_px=args.lr_verts, sigma=args.sigma, backend=args.backend,
            device=device, log_every=args.log_every, keep=n_keep, seed=args.seed,
            keep_best=not args.last, warmup=_warmup(args),
            on_warning=[warner(str(r[1].image)) for r in ready], fixed_opacity=args.alpha,
            fixed_background=args.background_rgb is not None,
            should_stop=budget.should_stop if budget is not None else None,
            on_step=on_step if animated else None,
        )  # fmt: skip
    finally:
        for monitor in monitors:
            monitor.close()
        torch.set_num_threads(threads)
    render = _torch_renderer(args, device)
    share = (time.perf_counter() - begin) / len(ready)
    for r, result in zip(ready, fitted, strict=True):
        i, job, source, start = r[0], r[1], r[2], r[3]
        with contextlib.redirect_stderr(texts[i]):
            start_psnr = float(result.history[0]["psnr"]) if result.history else result.psnr
            outcome = _write_outputs(
                job, r[6], source, result.image.float().cpu().numpy(), result.values, result,
                names, start_psnr, t0, render, r[7],
            )  # fmt: skip
        outcome.seconds = share
        results[i] = (outcome, texts[i].getvalue())
    return results  # type: ignore[return-value]
