"""How far the flat-triangle fit goes at a given triangle count: ``tritri fit``'s defaults against
a run with far more compute, and against the same triangles given per-vertex colors.

    python perf/fit_ceiling.py IMG1 IMG2 --n 64                 # ~3 min per image, 2-core CPU
    python perf/fit_ceiling.py --n 64 --seeds 2 --long-steps 1000 --json out.json

The evidence behind the N = 64 row of ``perf/fit_vs_geometrize.py`` (README, performance): there
the goal is +3 dB over geometrize, and this shows how much of it more compute can buy. For every
image (the bundled one by default), resized (Lanczos) to ``--size`` px (8-bit values, the peer
benchmark's target), in-process on the CPU fit:

- **default**: the greedy start and :func:`tritri.fitting.cpu_fit.fit_triangles_cpu` as
  ``tritri fit --triangles N`` runs them (its steps, warm-up, edge softness 0.5 px, seed 0);
- **long**: ``--long-steps`` steps (default 3000, ten times the N = 64 default) relocating every
  25 steps, edge softness ``--long-sigma`` (default 0.7 px, the best single value on chelsea),
  for each of ``--seeds`` seeds (start and fit): the best PSNR of them, and their spread;
- **coarse error removed**: the default fit's PSNR if the part of its error coarser than
  ``--scale`` px (the error's ``--scale`` x ``--scale`` box blur) were gone -- an estimate of what a
  better arrangement of triangles about that size could still gain, where the rest of the error
  is texture finer than them (on textured images: grass, gravel, microscopy, star fields);
- **per-vertex**: the default fit's triangles with each flat color copied to its three vertices,
  then ``--vertex-steps`` Adam steps (MSE, torch, :func:`tritri.render`) on vertices,
  per-vertex colors, opacities and background: what a richer primitive at the same count adds
  (geometrize and primitive draw flat triangles; ``tritri fit`` does too).

Prints a table of PSNRs (dB against the 8-bit target). A benchmark, not a test: nothing is timed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def flat_fit(
    target: np.ndarray, n: int, *, steps: int | None = None, seed: int = 0, sigma: float = 0.5,
    reseed_every: int = 5,
):  # fmt: skip
    """The CPU fit as ``tritri fit --triangles n`` runs it (greedy start, 5 % warm-up), with
    ``steps`` (None: its default by count), ``seed``, ``sigma`` and ``reseed_every`` changeable.
    Returns the :class:`tritri.fitting.cpu_fit.CpuFitResult`."""
    from tritri.fitting.cpu_fit import fit_triangles_cpu
    from tritri.fitting.session import default_steps
    from tritri.fitting.starts import greedy_start

    steps = default_steps(n) if steps is None else steps
    start = greedy_start(target, n, seed=seed, sigma=sigma)
    return fit_triangles_cpu(
        start, target, steps=steps, warmup=0.05, keep=n, seed=seed, sigma=sigma,
        reseed_every=reseed_every,
    )  # fmt: skip


def coarse_error_removed(image: np.ndarray, target: np.ndarray, scale: int) -> float:
    """PSNR of ``image`` (C, H, W) against ``target`` with the part of the error coarser than
    ``scale`` px removed: the error minus its ``scale`` x ``scale`` box blur
    (:func:`tritri.fitting.schedule.box_blur`)."""
    from tritri.fitting.schedule import box_blur

    error = np.asarray(image, np.float64) - np.asarray(target, np.float64)
    fine = error - box_blur(error, scale)
    return 10.0 * math.log10(1.0 / float(np.mean(fine * fine)))


def per_vertex_refine(
    values: dict[str, np.ndarray], target: np.ndarray, *, steps: int, sigma: float = 0.5,
    lr: float = 0.05, lr_verts_px: float = 1.0,
) -> tuple[float, float]:  # fmt: skip
    """``(start, best)`` PSNR of ``values`` (a flat fit's triangles) rendered with per-vertex
    colors, each vertex starting at its triangle's flat color (so ``start`` is the flat render's
    PSNR), then ``steps`` Adam steps on the MSE (vertices, color / opacity / background logits;
    betas 0.9 / 0.99 as the fits). ``best`` is the best PSNR seen, ``start`` included."""
    import torch

    import tritri
    from tritri.fitting.numeric import psnr

    _, H, W = target.shape
    goal = torch.from_numpy(target)

    def logit(x: np.ndarray) -> torch.Tensor:  # numeric.logit clamps to 1e-3: fitted values go past
        return torch.logit(torch.as_tensor(x, dtype=torch.float32).clamp(1e-4, 1 - 1e-4))

    verts = torch.tensor(values["verts"], dtype=torch.float32)[None].requires_grad_()
    color = logit(values["colors"])[:, None, :].repeat(1, 3, 1)[None].requires_grad_()
    opacity = logit(values["opacity"])[None].requires_grad_()
    background = logit(values["background"]).requires_grad_()
    optimizer = torch.optim.Adam(
        [{"params": [verts], "lr": lr_verts_px / max(H, W)},
         {"params": [color, opacity, background], "lr": lr}],
        betas=(0.9, 0.99),
    )  # fmt: skip
    start = best = -math.inf
    for step in range(steps + 1):
        image = tritri.render(
            verts, torch.sigmoid(color), torch.sigmoid(opacity), height=H, width=W,
            sigma=sigma, background=torch.sigmoid(background),
        )[0]  # fmt: skip
        quality = psnr(image.detach().numpy(), target)
        start = quality if step == 0 else start
        best = max(best, quality)
        if step == steps:
            break
        loss = ((image - goal) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return start, best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", help="images (default: the bundled one)")
    parser.add_argument("--n", type=int, default=64, help="triangle count (default 64)")
    parser.add_argument("--size", type=int, default=256, help="longest side in px (256)")
    parser.add_argument("--steps", type=int, default=None, help="default run's steps (its own)")
    parser.add_argument("--long-steps", type=int, default=3000, help="steps of the long runs")
    parser.add_argument("--long-sigma", type=float, default=0.7, help="their edge softness, px")
    parser.add_argument("--seeds", type=int, default=4, help="long runs, seeds 0, 1, ...")
    parser.add_argument("--vertex-steps", type=int, default=300, help="per-vertex color steps")
    parser.add_argument("--scale", type=int, default=9, help="coarse error: box size, px (9)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.n < 1:
        parser.error("--n and --seeds must be >= 1")

    import torch

    from tritri.fitting.export import load_image_array

    torch.set_num_threads(1)  # torch's ops; the rasterizer uses every core (README, CPU threads)
    rows = []
    print(f"flat-triangle fit at N = {args.n}: defaults, {args.seeds} long run(s) of "
          f"{args.long_steps} steps (sigma {args.long_sigma}), per-vertex colors "
          f"({args.vertex_steps} steps)")  # fmt: skip
    print(f"| image | default | long, best (range) | coarse error (>= {args.scale} px) removed "
          "| per-vertex |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    for image in args.images or [None]:
        target = load_image_array(image, args.size)  # 8-bit values, as the peer's target
        default = flat_fit(target, args.n, steps=args.steps)
        long = [
            flat_fit(target, args.n, steps=args.long_steps, seed=seed, sigma=args.long_sigma,
                     reseed_every=25).psnr
            for seed in range(args.seeds)
        ]  # fmt: skip
        coarse = coarse_error_removed(default.image, target, args.scale)
        start, vertex = per_vertex_refine(default.values, target, steps=args.vertex_steps)
        name = Path(image).name if image else "astronaut.png (bundled)"
        row = {"image": name, "n": args.n, "default": default.psnr, "long": long,
               "coarse": coarse, "scale": args.scale, "vertex_start": start,
               "vertex": vertex}  # fmt: skip
        rows.append(row)
        print(f"| {name} | {default.psnr:.2f} | {max(long):.2f} ({min(long):.2f}-{max(long):.2f}) "
              f"| {coarse:.2f} | {vertex:.2f} |", flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
