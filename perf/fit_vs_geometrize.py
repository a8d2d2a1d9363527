"""``tritri fit`` against geometrize (the hill-climbing triangle tool) at equal triangle count.

    npm install geometrizejs              # once, here or in some directory (--geometrize-dir)
    python perf/fit_vs_geometrize.py      # the bundled image, N = 64, 256, 1024
    python perf/fit_vs_geometrize.py a.jpg b.png --n 256 --geometrize-dir ~/geo --json out.json

Both tools get the same target: the image resized (Lanczos) to ``--size`` px on its long side and
rounded to 8 bits, written to a temporary file. Each run is one whole process, timed from start to
exit, and each pair is run ``--repeat`` times (default 3); the table gives the median of each
tool's wall times and of its PSNRs (geometrize is randomized, tritri is not), so that one slow
run on a shared machine does not decide a row:

- **geometrize**: ``node perf/geometrize_driver.js`` on that target as raw RGBA (no image decoding
  on its side): triangles only, shape alpha 128, 50 candidate shapes x 100 mutations per shape,
  starting from the average color -- geometrize's usual settings;
- **tritri**: ``python -m tritri fit TARGET.png --triangles N --size SIZE`` with every other option
  at its default, outputs written to a temporary directory (all of them: PNG, SVG, JSON, loss.png).

Images: the README's table fits the bundled photograph and three photos from scikit-image's
sample data (coffee.png, chelsea.png, rocket.jpg), and textured images from the same place:
hubble_deep_field.jpg (a star field; NASA, public domain), ihc.png (microscopy, colonic glands
under immunohistochemical staining; no known copyright restrictions), grass.png and gravel.png
(CC0 textures), and, with more structure, retina.jpg (a fundus photograph, CC0), cell.png (CC0),
brick.png (CC0) and moon.png. None is shipped here; they are the files under ``skimage/data/`` of
``pip download --no-deps scikit-image==0.26.0`` (a wheel is a zip; its ``skimage/data/_fetchers.py``
gives each image's source and license). Grey images are fitted as RGB.

PSNR is measured the same way for both: the 8-bit result (geometrize's bitmap, tritri's
``final.png``) against the 8-bit target. Before timing, one short untimed ``tritri fit`` fills
numba's on-disk compile cache (the first run after installing compiles the CPU kernels once).
Runs alternate tool by tool, so machine load hits both alike. Installs nothing: without ``node``
or ``geometrizejs`` it says so and exits 0. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).resolve().parent / "geometrize_driver.js"


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)) / 255.0**2
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _node_env(geometrize_dir: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(geometrize_dir / "node_modules")] if geometrize_dir else []
    paths.append(str(Path.cwd() / "node_modules"))
    if env.get("NODE_PATH"):
        paths.append(env["NODE_PATH"])
    env["NODE_PATH"] = os.pathsep.join(paths)
    return env


def geometrize_available(geometrize_dir: Path | None) -> str | None:
    """None when node and geometrizejs can run here, else why not."""
    if shutil.which("node") is None:
        return "node is not on PATH"
    probe = subprocess.run(
        ["node", "-e", "require('geometrizejs')"], env=_node_env(geometrize_dir),
        cwd=geometrize_dir or Path.cwd(), capture_output=True, text=True,
    )  # fmt: skip
    if probe.returncode != 0:
        return "geometrizejs is not installed (npm install geometrizejs; see --geometrize-dir)"
    return None


def prepare_target(image: str | None, size: int, workdir: Path) -> tuple[np.ndarray, Path, Path]:
    """The 8-bit target (H, W, 3), its PNG (for tritri) and its raw RGBA file (for geometrize)."""
    from PIL import Image

    from tritri.fitting.export import load_image, to_uint8

    target = to_uint8(load_image(image, size))
    h, w, _ = target.shape
    png = workdir / "target.png"
    Image.fromarray(target).save(png)
    raw = workdir / "target.rgba"
    np.concatenate([target, np.full((h, w, 1), 255, np.uint8)], axis=2).tofile(raw)
    return target, png, raw


def run_geometrize(
    raw: Path, shape: tuple[int, int], n: int, workdir: Path, geometrize_dir: Path | None,
    candidates: int, mutations: int, alpha: int,
) -> tuple[np.ndarray, float]:  # fmt: skip
    h, w = shape
    out = workdir / f"geometrize_{n}.rgba"
    cmd = ["node", str(DRIVER), str(raw), str(w), str(h), str(n), str(out),
           str(candidates), str(mutations), str(alpha)]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=_node_env(geometrize_dir), cwd=geometrize_dir or None)
    seconds = time.perf_counter() - t0
    result = np.fromfile(out, np.uint8).reshape(h, w, 4)[..., :3]
    return result, seconds


def _tritri_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_tritri(
    png: Path, n: int, size: int, workdir: Path, extra: list[str]
) -> tuple[np.ndarray, float]:
    from PIL import Image

    out = workdir / f"tritri_{n}"
    cmd = [sys.executable, "-m", "tritri", "fit", str(png), "--triangles", str(n),
           "--size", str(size), "--render-size", str(size), "--out", str(out), "-q",
           *extra]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=_tritri_env(), stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    with Image.open(out / "final.png") as im:
        result = np.asarray(im.convert("RGB"))
    return result, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "images", nargs="*", default=[None],
        help="images to fit (default: the bundled sample photograph)",
    )  # fmt: skip
    parser.add_argument("--n", type=int, nargs="+", default=[64, 256, 1024], help="triangles")
    parser.add_argument("--size", type=int, default=256, help="long side of the target, px")
    parser.add_argument(
        "--geometrize-dir", type=Path, default=None,
        help="directory holding node_modules/geometrizejs (default: the current directory or "
        "NODE_PATH)",
    )  # fmt: skip
    parser.add_argument("--candidates", type=int, default=50, help="geometrize candidates/shape")
    parser.add_argument("--mutations", type=int, default=100, help="geometrize mutations/shape")
    parser.add_argument("--alpha", type=int, default=128, help="geometrize shape alpha (0-255)")
    parser.add_argument(
        "--tritri-args", default="", help="extra tritri fit arguments, e.g. '--steps 200'"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each tool per row (median; default: 3)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument(
        "--skip-tritri", action="store_true", help="run geometrize only (its side of the table)"
    )
    args = parser.parse_args(argv)

    why = geometrize_available(args.geometrize_dir)
    if why is not None:
        print(f"fit_vs_geometrize: skipped: {why}")
        return 0
    extra = args.tritri_args.split()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        warm = workdir / "warm"
        warm.mkdir()
        _, png, _ = prepare_target(None, 64, warm)
        if not args.skip_tritri:
            run_tritri(png, 16, 64, warm, ["--steps", "2"])  # fills numba's compile cache
        for image in args.images:
            name = Path(image).name if image else "astronaut.png (bundled)"
            target, png, raw = prepare_target(image, args.size, workdir)
            h, w, _ = target.shape
            for n in args.n:
                runs: dict[str, list[float]] = {k: [] for k in ("gp", "gs", "tp", "ts")}
                for _ in range(max(1, args.repeat)):
                    if args.skip_tritri:
                        t_img, t_sec = np.zeros_like(target), math.nan
                    else:
                        t_img, t_sec = run_tritri(png, n, args.size, workdir, extra)
                    g_img, g_sec = run_geometrize(
                        raw, (h, w), n, workdir, args.geometrize_dir, args.candidates,
                        args.mutations, args.alpha,
                    )  # fmt: skip
                    runs["tp"].append(_psnr(t_img, target))
                    runs["ts"].append(t_sec)
                    runs["gp"].append(_psnr(g_img, target))
                    runs["gs"].append(g_sec)
                row = {
                    "image": name, "width": w, "height": h, "n": n,
                    "geometrize_psnr": float(np.median(runs["gp"])),
                    "geometrize_s": float(np.median(runs["gs"])),
                    "tritri_psnr": float(np.median(runs["tp"])),
                    "tritri_s": float(np.median(runs["ts"])),
                    "runs": {"geometrize_psnr": runs["gp"], "geometrize_s": runs["gs"],
                             "tritri_psnr": runs["tp"], "tritri_s": runs["ts"]},
                }  # fmt: skip
                row["gain_db"] = row["tritri_psnr"] - row["geometrize_psnr"]
                row["time_ratio"] = row["tritri_s"] / row["geometrize_s"]
                rows.append(row)
                print(
                    f"{name} N={n}: geometrize {row['geometrize_psnr']:.2f} dB {g_sec:.1f} s, "
                    f"tritri {row['tritri_psnr']:.2f} dB {t_sec:.1f} s", file=sys.stderr,
                    flush=True,
                )  # fmt: skip

    settings = "defaults" + (f" {args.tritri_args}" if extra else "")
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; geometrize: "
        f"triangles, alpha {args.alpha}, {args.candidates} candidates x {args.mutations} "
        f"mutations; tritri fit: {settings}; median of {max(1, args.repeat)} runs each\n"
    )
    print("| image | N | geometrize | tritri fit | gain | time ratio |")
    print("|---|---:|---|---|---:|---:|")
    for r in rows:
        print(
            f"| {r['image']} {r['width']}×{r['height']} | {r['n']} | "
            f"{r['geometrize_psnr']:.2f} dB, {r['geometrize_s']:.1f} s | "
            f"{r['tritri_psnr']:.2f} dB, {r['tritri_s']:.1f} s | {r['gain_db']:+.2f} dB | "
            f"{r['time_ratio']:.2f}× |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
