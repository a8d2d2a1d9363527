"""``tritri fit DIR``: many images in one command, images per second.

K images (crops of the bundled photo, mirrored and turned so that no two are alike) fitted by one
``tritri fit DIR -q --out OUT`` process each round, as a user runs it (start-up included):

- ``processes``: the CPU fit in worker processes, one per core (the default on a CPU);
- ``one-by-one``: the CPU fit, one image after the other, each on all cores (``--jobs 1``);
- ``batch`` (GPU only): the torch loop, the images through the renderer as one batch.

Group ``fit-many``; ``extra_info``: ``images``, ``cores`` (the CPUs the run may use),
``workers`` and ``impl``; images per second = ``images`` / the time. Timed (``perf/run.py``): 16
images of 256 px, the default N = 256; in the test run (``--benchmark-disable``) each case runs
once, untimed, on 4 images of 32 px with 8 triangles. Measured figures: README, "Performance".
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from tritri.fitting.export import sample_image_path
from tritri.fitting.many import cpu_cores, plan_jobs

pytest.importorskip("numba")

ROOT = Path(__file__).resolve().parents[1]


def make_images(folder: Path, count: int, size: int) -> Path:
    """``count`` distinct ``size``-px crops of the bundled photo in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(sample_image_path()) as im:
        big = im.convert("RGB").resize((512, 512), Image.LANCZOS)
    for k in range(count):
        i, j = k % 4, (k // 4) % 4
        crop = big.crop((i * 64, j * 64, i * 64 + 320, j * 64 + 320)).resize((size, size))
        if (i + j) % 2:
            crop = ImageOps.mirror(crop)
        if k % 3 == 0:
            crop = crop.rotate(90)
        crop.save(folder / f"img{k:02d}.png")
    return folder


@pytest.mark.parametrize("impl", ["processes", "one-by-one", "batch"])
def test_fit_many(benchmark, tmp_path, impl, on_gpu):
    if impl == "batch" and not on_gpu:
        pytest.skip("the batch runs the torch loop on a GPU")
    timed = not benchmark.disabled
    count, size, extra = (16, 256, []) if timed else (4, 32, ["-n", "8", "--steps", "10"])
    folder = make_images(tmp_path / "images", count, size)
    cores = cpu_cores()
    jobs = {"processes": None, "one-by-one": 1, "batch": None}[impl]
    workers = plan_jobs(count, cores, jobs)[0] if impl != "batch" else 1
    benchmark.group = "fit-many"
    benchmark.extra_info.update(impl=impl, images=count, cores=cores, workers=workers)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "tritri", "fit", str(folder), "-q", "--size", str(size), *extra,
           "--out", str(tmp_path / "out")]  # fmt: skip
    if jobs is not None:
        cmd += ["--jobs", str(jobs)]
    # the CPU cases on the CPU fit even where there is a GPU; the batch with the pixel losses
    cmd += ["--losses", "l1,mse"] if impl == "batch" else ["--device", "cpu"]

    def run() -> None:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stderr

    benchmark.pedantic(run, rounds=3 if timed else 1, iterations=1)
    rows = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    assert len(rows) == count + 1 and all(r.endswith(",ok") for r in rows[1:])
