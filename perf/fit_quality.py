"""Quality and speed of ``tritri fit`` against the classic Delaunay triangle mosaic.

    python perf/fit_quality.py                       # N = 64, 256, 1024 + the default run's time
    python perf/fit_quality.py --n 256 --seeds 3     # one N, three seeds
    python perf/fit_quality.py --json perf/fit_quality.json

For every N, on the bundled sample image at the default size (longest side 256 px):

- **mosaic**: :func:`tritri.fitting.mosaic.delaunay_mosaic` -- N triangles over edge-weighted sample
  points, each filled with the mean color of its pixels (the L2-optimal flat color);
- **fit**: ``tritri fit --triangles N`` with every other option at its default (its greedy start;
  ``--init delaunay`` starts from that same mosaic), run in-process; its PSNR is the one written
  to ``triangles.json``.

The target is to beat the mosaic by at least 2 dB at every N. Then the default command
(``tritri fit`` with no arguments) is run once in a fresh process and its wall time reported,
against the 2-minute budget for a 2-core CPU (``--threads`` limits torch's threads, to emulate one).
This is a benchmark, not a test: nothing here is timed inside pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_GAIN_DB = 2.0
TIME_BUDGET_S = 120.0


def mosaic_psnr(n: int, seed: int, size: int) -> float:
    from tritri.fitting.export import load_image
    from tritri.fitting.mosaic import delaunay_mosaic

    target = load_image(None, size)
    return delaunay_mosaic(target.permute(1, 2, 0).numpy(), n, seed=seed).psnr


def fit_psnr(n: int, seed: int, extra: list[str]) -> tuple[float, float]:
    """PSNR and loop+output seconds of ``tritri fit --triangles n`` (in-process)."""
    from tritri.fitting.cli import main

    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        rc = main(["--triangles", str(n), "--seed", str(seed), "--out", out, "-q", *extra])
        seconds = time.perf_counter() - t0
        if rc != 0:
            raise SystemExit(f"tritri fit exited with {rc}")
        data = json.loads((Path(out) / "triangles.json").read_text())
    return float(data["psnr"]), seconds


def default_run_seconds(threads: int | None) -> float:
    """Wall time of ``tritri fit`` (all defaults) in a fresh process, start-up included."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "tritri", "fit", "--out", out, "-q"],
            check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[64, 256, 1024], help="triangle counts")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per N (0, 1, ...)")
    parser.add_argument("--size", type=int, default=256, help="longest side (the fit's default)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (0 = torch's choice)")
    parser.add_argument("--no-default-run", action="store_true", help="skip the timed default run")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("fit_args", nargs="*", help="extra tritri fit options (after --)")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    extra = ["--size", str(args.size), *args.fit_args]
    rows = []
    print(f"tritri fit vs Delaunay mosaic, sample image at {args.size} px, {args.seeds} seed(s)")
    print("| N | mosaic PSNR (dB) | fit PSNR (dB) | gain (dB) | fit time (s) |")
    print("|---:|---:|---:|---:|---:|")
    ok = True
    for n in args.n:
        mos, fit, secs = [], [], []
        for seed in range(args.seeds):
            mos.append(mosaic_psnr(n, seed, args.size))
            p, s = fit_psnr(n, seed, extra)
            fit.append(p)
            secs.append(s)
        row = {
            "n": n,
            "mosaic_psnr": statistics.fmean(mos),
            "fit_psnr": statistics.fmean(fit),
            "gain": statistics.fmean(fit) - statistics.fmean(mos),
            "fit_seconds": statistics.fmean(secs),
        }
        ok &= row["gain"] >= TARGET_GAIN_DB
        rows.append(row)
        print(
            f"| {n} | {row['mosaic_psnr']:.2f} | {row['fit_psnr']:.2f} | {row['gain']:+.2f} | "
            f"{row['fit_seconds']:.1f} |",
            flush=True,
        )
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": args.threads,
        "rows": rows,
    }
    print(
        f"target: fit beats the mosaic by >= {TARGET_GAIN_DB} dB at every N: "
        f"{'yes' if ok else 'NO'}"
    )
    if not args.no_default_run:
        seconds = default_run_seconds(args.threads)
        result["default_run_seconds"] = seconds
        verdict = "within" if seconds < TIME_BUDGET_S else "OVER"
        print(
            f"default `tritri fit`: {seconds:.1f} s wall "
            f"({verdict} the {TIME_BUDGET_S:.0f} s budget)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
