"""``tritri fit [IMAGE]``: fit an image with N colored, semi-transparent triangles.

With no IMAGE it fits the bundled sample photograph (tritri/data/astronaut.png, NASA, public
domain). The defaults -- 256 triangles, steps by triangle count (:func:`default_steps`: 120 at
256), longest side 256 px, a greedy start (:func:`tritri.fitting.starts.greedy_start`: the
triangles placed one by one where they cut the error most, as geometrize does, then refined
together by gradient steps) -- were chosen against geometrize (perf/fit_vs_geometrize.py;
figures in the README's performance section).
Outputs, in ``--out``:

- ``final.png`` the fit; ``comparison.png`` target | fit side by side;
- ``triangles.svg`` the fit as vector polygons with the render's soft edges (draw order);
- ``triangles.json`` the parameters (continue with ``--init triangles.json``);
- ``metrics.jsonl`` one record per logged step (``step``, ``total``, ``loss/<name>``, ``psnr``,
  the balancer's weights, the monitor's warnings); ``loss.png`` the curves (Pillow).

Each is written atomically and on its own (:mod:`tritri.fitting.outputs`); the target is read by
:func:`tritri.fitting.images.read_image` (every Pillow mode by its own range, transparency over
white, the first frame of an animation).

Losses: ``--losses auto`` (default) is the pixel pair ``l1,mse``; on a GPU with the pretrained
VGG16 weights at hand (torch hub cache or ``--vgg-weights``) it adds ``perceptual,lpips``. Naming
VGG losses in ``--losses`` fetches torchvision's weights (once) when they are not cached. They are
balanced by the geometric mean of the losses unless ``--balancer`` / ``--config`` says otherwise.

Two loops run it. On a CPU with the default objective (pixel losses, geometric mean, the numba
rasterizer) it is :func:`tritri.fitting.cpu_fit.fit_triangles_cpu`, numpy and numba only: torch
is never imported (its import alone takes 2-3 s on a 2-core machine, more than a small fit).
Anything else -- a GPU, VGG losses, another balancer or backend -- runs the torch loop
(:func:`tritri.fitting.fit_triangles`). Both make the same moves at the same steps.

The outputs hold the triangles of the step with the best PSNR (normally the last; ``--last``
forces the last). ``--init triangles.json`` continues a fit, with the learning rates warmed up
over the first 10 % of the steps so that Adam's fresh moments do not shake a converged fit loose.
Ctrl-C stops the fit cleanly; the outputs are still written (exit status 130).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from tritri import _startup

__all__ = ["DEFAULTS", "add_arguments", "main", "run"]

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

_PROG = "tritri fit"

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


class _UsageError(Exception):
    """A bad argument: reported as one line, exit status 2."""


def _one_line_error(self: argparse.ArgumentParser, message: str) -> NoReturn:
    self.exit(2, f"{_PROG}: error: {message} (see {_PROG} --help)\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``tritri fit``'s options on ``parser``."""
    parser.description = (
        "Fit an image with N colored, semi-transparent triangles (default: the bundled sample "
        "photograph). Writes final.png, comparison.png, triangles.svg, triangles.json, "
        "metrics.jsonl and loss.png to --out."
    )
    # Bad arguments: one line, not argparse's usage block.
    parser.error = types.MethodType(_one_line_error, parser)  # type: ignore[method-assign]
    d = DEFAULTS
    parser.add_argument(
        "image", nargs="?", default=None,
        help="image to fit (any format Pillow reads, 8 or 16 bits or float; transparent pixels "
        "are composited over white, as a viewer shows them; an animated image's first frame); "
        "default: the bundled sample photograph",
    )  # fmt: skip
    parser.add_argument(
        "--triangles", "-n", type=int, default=None,
        help=f"number of triangles (default: {d['triangles']}, or the count in an --init JSON)",
    )  # fmt: skip
    parser.add_argument(
        "--steps", type=int, default=None,
        help="optimizer steps (default: by triangle count, 300 at 64 triangles, "
        "120 at 256 and more)",
    )  # fmt: skip
    parser.add_argument(
        "--size",
        type=int,
        default=d["size"],
        help="longest side of the fit, in pixels; a smaller image is fitted at its own size "
        "unless --upscale (default: %(default)s)",
    )
    parser.add_argument(
        "--upscale", action="store_true",
        help="enlarge an image smaller than --size to it (default: fit it at its own size)",
    )  # fmt: skip
    parser.add_argument(
        "--losses", default="auto",
        help="comma-separated losses from l1, mse, perceptual, lpips; 'auto' = l1,mse, plus "
        "perceptual,lpips on a GPU when the VGG16 weights are at hand (default: auto)",
    )  # fmt: skip
    parser.add_argument(
        "--vgg-weights", default="DEFAULT", metavar="DEFAULT|PATH",
        help="VGG16 weights of the perceptual / lpips losses: DEFAULT = torchvision's ImageNet "
        "weights (downloaded once into the torch hub cache; the default), or a torchvision-format "
        "state dict",
    )  # fmt: skip
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--balancer", default=d["balancer"],
        help="loss balancer type (geometric_mean, weighted_sum, uncertainty, gradnorm, adaptive, "
        "alternating, mgda, ...; default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--config", default=None, metavar="YAML",
        help="balancer config file (layout: loss: {type: geometric_mean, epsilon: 1e-8, ...})",
    )  # fmt: skip
    parser.add_argument(
        "--init", default="greedy", metavar="greedy|delaunay|random|FILE.json",
        help="start: triangles placed greedily where the error is (geometrize's hill climbing), "
        "the Delaunay mosaic of the image, random triangles, or a triangles.json to continue "
        "from (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--lr",
        type=float,
        default=d["lr"],
        help="learning rate of the color/opacity logits (default: %(default)s)",
    )
    parser.add_argument(
        "--lr-verts", type=float, default=d["lr_verts"],
        help="learning rate of the vertex positions, in pixels of the longest side "
        "(default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--sigma",
        type=float,
        default=d["sigma"],
        help="edge softness of the render, in pixels (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1..."
    )
    parser.add_argument(
        "--backend", default="auto", choices=("auto", "numba", "torch", "triton"),
        help="tritri.render backend (auto: Triton on CUDA, the compiled numba rasterizer on the "
        "CPU, Triton's interpreter under TRITON_INTERPRET=1)",
    )  # fmt: skip
    parser.add_argument("--out", default=d["out"], help="output directory (default: %(default)s)")
    parser.add_argument(
        "--log-every",
        type=int,
        default=1,
        help="write a metrics record every this many steps (default: %(default)s)",
    )
    parser.add_argument(
        "--last", action="store_true",
        help="write the last step's triangles (default: those of the step with the best PSNR)",
    )  # fmt: skip
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _note(message: str) -> None:
    print(f"{_PROG}: {message}", file=sys.stderr, flush=True)


def _device(spec: str):
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError) as err:
        raise _UsageError(f"--device: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise _UsageError(f"--device {spec}: CUDA is not available on this machine")
    return device


def _check(args: argparse.Namespace) -> None:
    if args.triangles is not None and args.triangles < 2:
        raise _UsageError(f"--triangles must be >= 2, got {args.triangles}")
    if args.steps is not None and args.steps < 0:
        raise _UsageError(f"--steps must be >= 0, got {args.steps}")
    if args.size < 8:
        raise _UsageError(f"--size must be >= 8 pixels, got {args.size}")
    for flag, value in (("--lr", args.lr), ("--lr-verts", args.lr_verts), ("--sigma", args.sigma)):
        if not (math.isfinite(value) and value > 0):
            raise _UsageError(f"{flag} must be a finite number > 0, got {value}")
    if args.seed < 0:
        raise _UsageError(f"--seed must be >= 0, got {args.seed}")
    if args.log_every < 1:
        raise _UsageError(f"--log-every must be >= 1, got {args.log_every}")
    if args.config is not None and not Path(args.config).is_file():
        raise _UsageError(f"--config: no such file: {args.config!r}")


def _resolve_losses(
    args: argparse.Namespace, device_type: str, cached: Callable[[], Path | None]
) -> tuple[tuple[str, ...], Any, str | None]:
    """The loss names, the VGG weights to build them with, and a note for the user (or None).
    ``cached`` finds the VGG16 weights in the torch hub cache (None: not there)."""
    from tritri.fitting.loss_names import FULL_LOSSES, PIXEL_LOSSES, VGG_LOSSES, parse_losses

    spec = args.vgg_weights
    if spec != "DEFAULT" and not Path(spec).is_file():
        raise _UsageError(f"--vgg-weights: no such file: {spec!r} (or pass DEFAULT)")
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
        raise _UsageError(str(err)) from None
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
            raise _UsageError(f"--config: {err}") from None
    try:
        if config_data is not None:
            return build_balancer(config_data, names=list(names))
        config: dict[str, Any] = {"type": args.balancer}
        if args.balancer == "weighted_sum":
            config["weights"] = dict.fromkeys(names, 1.0)
        return build_balancer(config, names=list(names))
    except (ValueError, TypeError, KeyError, AttributeError, FileNotFoundError) as err:
        if args.config is not None:
            raise _UsageError(f"--config: {args.config}: {err}") from None
        raise _UsageError(f"--balancer: {err}") from None


def _start(args: argparse.Namespace, target) -> tuple[dict[str, Any], str, int]:
    """The triangles to start from (numpy values: verts, colors, opacity, background), what they
    are, and how many the fit keeps. ``target`` is the (3, H, W) numpy image."""
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
            return greedy_start(target, n, seed=args.seed, sigma=args.sigma), "greedy placement", n
        # The mosaic and random starts are over-complete (pruned to n during the fit) unless the
        # run is short.
        m = max(n, round(OVERCOMPLETE * n)) if args.steps >= 20 else n
        if args.init == "delaunay":
            return delaunay_start(target, m, seed=args.seed), "Delaunay mosaic", n
        return random_start(target, m, seed=args.seed), "random triangles", n
    path = Path(args.init)
    if not path.is_file():
        raise _UsageError(
            f"--init must be greedy, delaunay, random or a triangles.json; {args.init!r} is none"
        )
    try:
        values, _ = read_triangles_json(path)
    except ValueError as err:
        raise _UsageError(f"--init: {str(err).splitlines()[0]}") from None
    count = len(values["opacity"])
    if args.triangles is not None and args.triangles != count:
        raise _UsageError(
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


def _cpu_fit_applies(args: argparse.Namespace) -> bool:
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
            raise _UsageError(str(err)) from None
        if any(n not in PIXEL_LOSSES for n in names):
            return False
    return numba_available()


def run(args: argparse.Namespace) -> int:
    """Run ``tritri fit`` with parsed ``args``; returns the exit status (0, 2 bad arguments, 130
    interrupted by Ctrl-C after writing the outputs)."""
    try:
        return _run(args)
    except _UsageError as err:
        print(f"{_PROG}: error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    _check(args)
    target = _read_target(args)
    if _cpu_fit_applies(args):
        return _run_cpu(args, target)
    return _run_torch(args, target)


def _read_target(args: argparse.Namespace):
    """The (3, H, W) numpy target; its notes (frames, transparency, size) said on stderr."""
    from tritri.fitting.images import read_image

    try:
        image = read_image(args.image, args.size, upscale=args.upscale)
    except (FileNotFoundError, ValueError) as err:
        raise _UsageError(str(err)) from None
    for note in image.notes:
        _note(note)
    w, h = image.source_size
    if max(w, h) < args.size and not args.upscale:
        name = args.image if args.image is not None else "the sample image"
        _note(f"{name} is {w}x{h}: fitting it at that size (--upscale enlarges it to --size "
              f"{args.size})")  # fmt: skip
    return image.pixels


def _out_dir(args: argparse.Namespace) -> Path:
    from tritri.fitting.outputs import prepare_out_dir

    try:
        return prepare_out_dir(args.out)
    except ValueError as err:
        raise _UsageError(f"--out: {err}") from None


def _announce(args, target, n_keep: int, names, balancer: str, device: str, start: str,
              start_psnr: float) -> None:  # fmt: skip
    _, H, W = target.shape
    image_name = args.image if args.image is not None else "the sample image"
    _note(
        f"fitting {image_name} ({W}x{H}) with {n_keep} triangles, {args.steps} steps, "
        f"losses {','.join(names)}, {balancer}, on {device}; start: {start} "
        f"({start_psnr:.2f} dB)"
    )


def _progress(args: argparse.Namespace):
    from tqdm import tqdm

    bar = tqdm(
        total=args.steps, desc="fit", unit="step", dynamic_ncols=True, disable=args.quiet,
        file=sys.stderr,
    )  # fmt: skip

    def on_warning(event: dict[str, Any]) -> None:
        tqdm.write(f"{_PROG}: warning: step {event['step']}: {event['message']}", file=sys.stderr)

    return bar, on_warning


def _write_outputs(
    args: argparse.Namespace, out: Path, target, image, values: dict[str, Any], result: Any,
    names, start_psnr: float, t0: float,
) -> int:  # fmt: skip
    """Write the outputs of a finished (or interrupted) fit and the closing note; the exit status
    (0; 1 when an output could not be written; 130 after a Ctrl-C). ``target``, ``image``:
    (3, H, W) arrays; ``values``: the triangles as numpy arrays."""
    from tritri.fitting.outputs import FitOutputs, write_outputs

    if result.interrupted:
        _note(f"interrupted at step {result.steps} of {args.steps}; writing the outputs")
    fit = FitOutputs(
        target=target, image=image, values=values, sigma=args.sigma, psnr=result.psnr,
        steps=result.steps, best_step=result.best_step, losses=names,
        image_name=os.fspath(args.image) if args.image is not None else "astronaut.png",
        history=result.history,
    )  # fmt: skip
    done = write_outputs(out, fit)
    for name, reason in done.failed:
        print(f"{_PROG}: error: could not write {out / name}: {reason}", file=sys.stderr)
    seconds = time.perf_counter() - t0
    best = f", the best at step {result.best_step}" if result.best_step < result.steps else ""
    files = ", ".join(str(f) for f in done.files) or "nothing"
    stop = "; interrupted while writing the outputs" if done.interrupted else ""
    _note(
        f"PSNR {result.psnr:.2f} dB (start {start_psnr:.2f} dB) after {result.steps} steps"
        f"{best} in {seconds:.1f} s{stop}; wrote {files}"
    )
    if result.interrupted or done.interrupted:
        return 130
    return 1 if done.failed else 0


def _warmup(args: argparse.Namespace) -> float:
    """The share of the steps over which the learning rates ramp up. Continuing a fit: 10 %, so
    that Adam's fresh moments (its first steps move every parameter by about the learning rate,
    whatever the gradient) do not shake a converged fit loose. The greedy start: 5 %, for the same
    reason on a smaller scale (measured on four 256-px photos, mean final PSNR: +0.04 dB at
    N = 64, +0.07 at 256, +0.25 at 1024). The Delaunay and random starts: none."""
    if args.init not in FRESH_STARTS:
        return 0.1
    return 0.05 if args.init == "greedy" else 0.0


def _skip_blas_probe() -> None:
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


def _run_cpu(args: argparse.Namespace, target) -> int:
    """The fit without torch: numpy, numba (:func:`tritri.fitting.cpu_fit.fit_triangles_cpu`)."""
    _skip_blas_probe()
    from tritri.fitting.cpu_fit import fit_triangles_cpu, render_cpu
    from tritri.fitting.loss_names import cached_vgg_weights_file
    from tritri.fitting.numeric import psnr
    from tritri.losses.monitor import LossMonitor

    names, _, note = _resolve_losses(args, "cpu", cached_vgg_weights_file)
    start, what, n_keep = _start(args, target)
    _startup.resume_gc()  # numba and the kernels are loaded (the start used them)
    out = _out_dir(args)
    if note is not None:
        _note(note)
    _, H, W = target.shape
    start_psnr = psnr(render_cpu(start, H, W, args.sigma), target)
    _announce(args, target, n_keep, names, "GeometricMeanLoss", "cpu", what, start_psnr)
    monitor = LossMonitor(out / "metrics.jsonl", warn=False)
    bar, on_warning = _progress(args)
    t0 = time.perf_counter()
    try:
        result = fit_triangles_cpu(
            start, target, steps=args.steps, losses=names, monitor=monitor, lr=args.lr,
            lr_verts_px=args.lr_verts, sigma=args.sigma, log_every=args.log_every, seed=args.seed,
            progress=bar, on_warning=on_warning, keep_best=not args.last,
            warmup=_warmup(args), keep=n_keep,
        )  # fmt: skip
    finally:
        bar.close()
        monitor.close()
    return _write_outputs(
        args, out, target, result.image, result.values, result, names, start_psnr, t0
    )


def _run_torch(args: argparse.Namespace, target_np) -> int:
    """The fit through torch autograd (:func:`tritri.fitting.fit_triangles`): any device, losses
    and balancer."""
    _startup.resume_gc()
    import torch

    import tritri
    from tritri.fitting.loop import fit_triangles, psnr
    from tritri.fitting.objective import FitLosses, cached_vgg_weights
    from tritri.fitting.params import TriangleParams
    from tritri.losses import LossMonitor

    device = _device(args.device)
    torch.manual_seed(args.seed)
    target = torch.from_numpy(target_np)
    _, H, W = target.shape
    names, weights, note = _resolve_losses(args, device.type, cached_vgg_weights)
    try:
        criterion = FitLosses(names, weights=weights)
    except (RuntimeError, FileNotFoundError, ValueError) as err:
        first = str(err).split(". Either")[0]
        raise _UsageError(
            f"cannot build the {','.join(names)} losses: {first}; pass --vgg-weights PATH or "
            "--losses l1,mse"
        ) from None
    if min(H, W) < criterion.min_size:
        raise _UsageError(
            f"the VGG losses need images of at least {criterion.min_size} px a side; the fit is "
            f"{W}x{H} (raise --size)"
        )
    balancer = _build_balancer(args, names)
    start, what, n_keep = _start(args, target_np)
    params = TriangleParams.from_values(start)
    out = _out_dir(args)
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
            raise _UsageError(f"--backend {args.backend}: {str(err).splitlines()[0]}") from None
    start_psnr = psnr(start_image, target)
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
            balancer=balancer, monitor=monitor, lr=args.lr, lr_verts_px=args.lr_verts,
            sigma=args.sigma, backend=args.backend, log_every=args.log_every, seed=args.seed,
            progress=bar, on_warning=on_warning, keep_best=not args.last,
            warmup=_warmup(args), keep=n_keep,
        )  # fmt: skip
    finally:
        bar.close()
        monitor.close()
        torch.set_num_threads(threads)
    values = {k: v.astype("float32") for k, v in params.values().items()}
    return _write_outputs(
        args, out, target_np, result.image.cpu().numpy(), values, result, names, start_psnr, t0
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m tritri.fitting.cli``: the same as ``tritri fit``."""
    parser = argparse.ArgumentParser(prog=_PROG)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
