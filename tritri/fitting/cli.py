"""``tritri fit [IMAGE ...]``: fit an image with N colored, semi-transparent triangles.

With no IMAGE it fits the bundled sample photograph (tritri/data/astronaut.png, NASA, public
domain). The defaults -- 256 triangles, steps by triangle count
(:func:`~tritri.fitting.session.default_steps`: 120 at 256), longest side 256 px, a greedy start
(:func:`tritri.fitting.starts.greedy_start`: the triangles placed one by one where they cut the
error most, as geometrize does, then refined together by gradient steps) -- were chosen against
geometrize (perf/fit_vs_geometrize.py; figures in the README's performance section).
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

For primitive / geometrize users: ``--render-size PX`` renders final.png and comparison.png from
the triangles at PX (default: the input's size up to 1024:
:func:`~tritri.fitting.session.render_side`); ``--animation out.gif`` writes the fit being built
(:mod:`tritri.fitting.animation`); ``--seconds S`` stops at a time budget
(:class:`~tritri.fitting.session.Budget`); ``--alpha`` / ``--background`` fix the opacity / the
background. Several images (or folders) are fitted each into a folder of its own with a
summary.csv (:mod:`tritri.fitting.many`; the torch loop batches them:
:mod:`tritri.fitting.batch_fit`).

This module parses and checks the arguments; :mod:`tritri.fitting.session` runs the fit of one
image (read, start, fit, write), :mod:`tritri.fitting.many` shares several out.
"""

from __future__ import annotations

import argparse
import math
import sys
import types
from pathlib import Path
from typing import NoReturn

from tritri.fitting.session import DEFAULTS, PROG, RENDER_CAP, UsageError, fit_image

__all__ = ["add_arguments", "main", "run"]

#: The largest ``--render-size`` (a 8192² float render is 0.8 GB).
RENDER_MAX = 8192


def _one_line_error(self: argparse.ArgumentParser, message: str) -> NoReturn:
    self.exit(2, f"{PROG}: error: {message} (see {PROG} --help)\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``tritri fit``'s options on ``parser``."""
    parser.description = (
        "Fit an image with N colored, semi-transparent triangles (default: the bundled sample "
        "photograph). Writes final.png, comparison.png, triangles.svg, triangles.json, "
        "metrics.jsonl and loss.png to --out. Several images (or folders of them) are fitted "
        "each into a folder of its own in --out, with a summary.csv."
    )
    # Bad arguments: one line, not argparse's usage block.
    parser.error = types.MethodType(_one_line_error, parser)  # type: ignore[method-assign]
    d = DEFAULTS
    parser.add_argument(
        "images", nargs="*", default=[], metavar="IMAGE",
        help="image to fit (any format Pillow reads, 8 or 16 bits or float; transparent pixels "
        "are composited over white or --background, as a viewer shows them; an animated image's "
        "first frame); default: the bundled sample photograph. Several images, or a folder (its "
        "image files, by suffix): each is fitted into --out/NAME/, and --out/summary.csv lists "
        "them (an image that fails is reported and skipped; exit status 1)",
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
    parser.add_argument(
        "--render-size", type=int, default=None, metavar="PX",
        help="longest side of final.png and comparison.png, px: the fitted triangles rendered at "
        "that size, edges as soft as in the fit (sigma scaled with it); triangles.svg and "
        "triangles.json keep the fit's size. Default: the input's own size, at most "
        f"{RENDER_CAP}, never below the fit's size -- a picture as large as the one given, as "
        "primitive renders 1024 px from a 256-px fit, and quick to render and write",
    )  # fmt: skip
    parser.add_argument(
        "--alpha", type=float, default=None, metavar="A",
        help="fix every triangle's opacity at A in (0, 1] instead of learning it (primitive's "
        "and geometrize's look: their alpha 128 is 0.5); default: learned",
    )  # fmt: skip
    parser.add_argument(
        "--background", default=None, metavar="COLOR",
        help="fix the background color (a name or #hex, as Pillow's ImageColor reads it: white, "
        "'#1e90ff', 'rgb(0,0,0)') instead of learning it; also the color transparent pixels are "
        "composited over (default: learned; transparency over white)",
    )  # fmt: skip
    parser.add_argument(
        "--seconds", type=float, default=None, metavar="S",
        help="time budget of a fit, in seconds, counted from the start placement (after reading "
        "the image and importing the libraries; not writing the outputs): the refinement "
        "stops before a step that would end past it (the greedy start always completes); "
        "without --steps, the steps are sized to fill it",
    )  # fmt: skip
    parser.add_argument(
        "--animation", default=None, metavar="FILE.gif|FILE.webp",
        help="also write an animation of the fit being built: the greedy start batch by batch, "
        "then the refinement (at most --frames frames, at the fit's size up to 512 px; GIF: one "
        "palette of 256 colors). With several images, each image's folder gets one of this "
        "file name",
    )  # fmt: skip
    parser.add_argument(
        "--frames", type=int, default=60,
        help="the most frames of --animation (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--jobs", "-j", type=int, default=None,
        help="several images on the CPU: worker processes, each fitting one image at a time "
        "with the cores shared out (default: one per core, at most one per image; 1: one "
        "image after the other, each on all cores)",
    )  # fmt: skip
    parser.add_argument(
        "--batch", type=int, default=16,
        help="several images in the torch loop (a GPU, --backend torch/triton): images rendered "
        "together in one batch (default: %(default)s)",
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


def _check(args: argparse.Namespace) -> None:
    if args.triangles is not None and args.triangles < 2:
        raise UsageError(f"--triangles must be >= 2, got {args.triangles}")
    if args.steps is not None and args.steps < 0:
        raise UsageError(f"--steps must be >= 0, got {args.steps}")
    if args.size < 8:
        raise UsageError(f"--size must be >= 8 pixels, got {args.size}")
    for flag, value in (("--lr", args.lr), ("--lr-verts", args.lr_verts), ("--sigma", args.sigma)):
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"{flag} must be a finite number > 0, got {value}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if args.log_every < 1:
        raise UsageError(f"--log-every must be >= 1, got {args.log_every}")
    if args.config is not None and not Path(args.config).is_file():
        raise UsageError(f"--config: no such file: {args.config!r}")
    if args.render_size is not None and not 8 <= args.render_size <= RENDER_MAX:
        raise UsageError(f"--render-size must be in [8, {RENDER_MAX}] pixels, "
                          f"got {args.render_size}")  # fmt: skip
    if args.alpha is not None and not (math.isfinite(args.alpha) and 0 < args.alpha <= 1):
        raise UsageError(f"--alpha must be in (0, 1] (geometrize's alpha 128 is 0.5), "
                          f"got {args.alpha}")  # fmt: skip
    if args.seconds is not None and not (math.isfinite(args.seconds) and args.seconds > 0):
        raise UsageError(f"--seconds must be a finite number > 0, got {args.seconds}")
    if not 2 <= args.frames <= 1000:
        raise UsageError(f"--frames must be in [2, 1000], got {args.frames}")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    args.background_rgb = _colour(args.background)
    args.steps_given = args.steps is not None
    if args.animation is not None:
        from tritri.fitting.animation import check_animation_path

        try:
            check_animation_path(args.animation)
        except ValueError as err:
            raise UsageError(f"--animation: {err}") from None


def _colour(spec: str | None) -> tuple[float, float, float] | None:
    """``--background``: RGB in [0, 1] of a color name or hex (Pillow's ImageColor), or None."""
    if spec is None:
        return None
    from PIL import ImageColor

    try:
        rgb = ImageColor.getrgb(spec.strip())
    except ValueError:
        raise UsageError(
            f"--background: unknown color {spec!r} (a name such as white, or #rrggbb)"
        ) from None
    if len(rgb) == 4 and rgb[3] != 255:
        raise UsageError(f"--background: {spec!r} is not opaque (the background must be)")
    return (rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0)


def run(args: argparse.Namespace) -> int:
    """Run ``tritri fit`` with parsed ``args``; returns the exit status (0, 1 an output or an
    image of several failed, 2 bad arguments, 130 interrupted by Ctrl-C after writing the
    outputs)."""
    try:
        _check(args)
        if _several(args.images):
            from tritri.fitting.many import run_many

            return run_many(args)
        args.image = args.images[0] if args.images else None
        return fit_image(args).status
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2


def _several(images: list[str]) -> bool:
    """Whether IMAGE names several images: more than one path, or a folder."""
    return len(images) > 1 or (len(images) == 1 and Path(images[0]).is_dir())


def main(argv: list[str] | None = None) -> int:
    """``python -m tritri.fitting.cli``: the same as ``tritri fit``."""
    parser = argparse.ArgumentParser(prog=PROG)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
