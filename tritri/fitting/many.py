"""Several images in one ``tritri fit`` run: ``tritri fit a.jpg b.png photos/ --out DIR``.

Each image is fitted as ``tritri fit IMAGE --out DIR/NAME`` would fit it, into a folder of its own
(NAME: the file's stem; names that clash get the suffix, then a number: :func:`folder_names`),
and ``DIR/summary.csv`` gets one row per image (:data:`SUMMARY_COLUMNS`). A folder stands for its
image files (by suffix, as Pillow registers them; not its subfolders). An image that fails
(unreadable, an output not written, even a bug) is reported and skipped, never the rest; the exit
status is then 1 (130 after Ctrl-C, 0 when all went well).

How the images share the machine:

- **the CPU fit** (:mod:`tritri.fitting.cpu_fit`): ``--jobs`` worker processes, each fitting one
  image at a time with the rasterizer on ``cores // jobs`` threads (default: a process per core,
  at most one per image: :func:`plan_jobs`). Measured on a 2-core machine, 16 images of 256 px:
  see the README (processes beat one image after the other on both cores: most of a CPU fit's
  step is serial numpy and Python between the rasterizer's parallel calls).
- **the torch loop** (a GPU, ``--backend torch/triton``, other losses or balancers): the images
  go through the renderer together, ``--batch`` at a time (:mod:`tritri.fitting.batch_fit`, from
  :func:`tritri.fitting.session.fit_batch`).

Each image's fit is :func:`tritri.fitting.session.fit_image`; this module does not import
:mod:`tritri.fitting.cli`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import io
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tritri.fitting.session import (
    FRESH_STARTS,
    PROG,
    Outcome,
    UsageError,
    cpu_fit_applies,
    fit_batch,
    fit_image,
    out_dir,
    skip_blas_probe,
)

__all__ = ["SUMMARY_COLUMNS", "collect_images", "folder_names", "plan_jobs", "run_many",
           "write_summary"]  # fmt: skip

#: The columns of ``summary.csv``: the image as given, its output folder (relative to --out;
#: empty when none was made: an image that could not be read),
#: the triangles, the PSNR (dB, at the fit's size), the wall time of its fit (s; in a batch: the
#: batch's divided among its images) and ``ok``, ``failed: <why>`` or ``interrupted``.
SUMMARY_COLUMNS = ("image", "folder", "N", "PSNR", "seconds", "status")
SUMMARY = "summary.csv"


def _image_suffixes() -> set[str]:
    from PIL import Image

    Image.init()
    return {ext.lower() for ext in Image.registered_extensions()}


def collect_images(specs: Sequence[str | os.PathLike[str]]) -> tuple[list[Path], list[str]]:
    """The image files ``specs`` name, in order, each once: a file as given (whatever its
    suffix: it is tried, and fails if it is no image), a folder's files whose suffix Pillow
    reads (sorted by name; hidden files and subfolders left out). Returns them and notes (a
    folder with no image, files passed over)."""
    suffixes = _image_suffixes()
    images: list[Path] = []
    seen: set[str] = set()
    notes: list[str] = []

    def add(path: Path) -> None:
        key = os.path.normcase(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            images.append(path)

    for spec in specs:
        path = Path(spec)
        if not path.is_dir():
            add(path)
            continue
        found = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        kept = [p for p in found if p.suffix.lower() in suffixes]
        if not kept:
            notes.append(f"{path}: no image files in this folder")
        elif len(kept) < len(found):
            notes.append(f"{path}: {len(found) - len(kept)} files that are not images by their "
                         "suffix passed over")  # fmt: skip
        for p in kept:
            add(p)
    return images, notes


def folder_names(images: Sequence[Path]) -> list[str]:
    """One output folder name per image, distinct even where file systems ignore case: the
    stem; where stems clash, ``stem_suffix`` (``a.jpg``, ``a.png`` -> ``a_jpg``, ``a_png``);
    where those still clash, a number (``a_jpg_2``)."""
    stems = [p.stem or p.name for p in images]
    lower = [s.lower() for s in stems]
    names = []
    for path, stem, low in zip(images, stems, lower, strict=True):
        clash = lower.count(low) > 1 or low == SUMMARY
        names.append(f"{stem}_{path.suffix[1:]}" if clash and path.suffix else stem)
    taken: set[str] = {SUMMARY}
    unique = []
    for name in names:
        candidate, k = name, 2
        while candidate.lower() in taken:
            candidate, k = f"{name}_{k}", k + 1
        taken.add(candidate.lower())
        unique.append(candidate)
    return unique


def cpu_cores() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def plan_jobs(n_images: int, cores: int, jobs: int | None = None) -> tuple[int, int]:
    """``(processes, threads each)`` for ``n_images`` CPU fits on ``cores`` cores: ``jobs``
    processes if given, else one per core (at most one per image); the cores shared out
    among them. One process means the fits run one after the other in this process."""
    procs = max(1, min(n_images, jobs if jobs is not None else cores))
    return procs, max(1, cores // procs)


def write_summary(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``summary.csv`` (atomically): a header of :data:`SUMMARY_COLUMNS`, one row each."""
    from tritri.fitting.files import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in SUMMARY_COLUMNS})
    return Path(path)


def _row(image: Path, folder: str, outcome: Any) -> dict[str, Any]:
    if outcome is None:
        status = "interrupted (not fitted)"
    elif outcome.status == 0:
        status = "ok"
    elif outcome.status == 130:
        status = "interrupted"
    else:
        status = f"failed: {outcome.error or 'exit status ' + str(outcome.status)}"
    psnr = getattr(outcome, "psnr", None)
    return {
        "image": str(image),
        "folder": folder,
        "N": getattr(outcome, "n", None) or "",
        "PSNR": f"{psnr:.2f}" if psnr is not None else "",
        "seconds": f"{outcome.seconds:.2f}" if outcome is not None else "",
        "status": status,
    }


def run_one(job: argparse.Namespace) -> tuple[Outcome, str]:
    """Fit one image (:func:`~tritri.fitting.session.fit_image`) with its messages captured;
    ``(outcome, messages)``. Any exception becomes a failed outcome (status 2 for a
    :class:`~tritri.fitting.session.UsageError`: a bad image), so one image never stops the
    others; Ctrl-C outside the fit loop (which handles it itself) is an interrupted outcome."""
    captured = io.StringIO()
    begin = time.perf_counter()
    try:
        with contextlib.redirect_stderr(captured):
            outcome = fit_image(job)
    except UsageError as err:
        outcome = Outcome(2, error=str(err))
    except KeyboardInterrupt:
        outcome = Outcome(130, error="interrupted")
    except Exception as err:  # a bug with one image: reported, the others go on
        lines = str(err).strip().splitlines()
        outcome = Outcome(1, error=f"{type(err).__name__}: {lines[0] if lines else ''}")
    if not outcome.seconds:
        outcome.seconds = time.perf_counter() - begin
    text = captured.getvalue()
    if outcome.status == 2:
        text += f"{PROG}: error: {outcome.error}\n"
    elif outcome.status == 1 and outcome.error and "could not write" not in text:
        text += f"{PROG}: error: {job.image}: {outcome.error}\n"
    return outcome, text


_STOP: Any = None  # a worker's multiprocessing.Event: set, no further image starts


def _worker_init(threads: int, stop: Any) -> None:
    """A worker process: the rasterizer on ``threads`` threads; Ctrl-C ignored between images
    (during a fit :func:`_work` lets it through); ``stop`` set: the images queued to it are not
    started."""
    global _STOP
    from tritri import _startup
    from tritri.cpu import set_num_threads

    _startup.resume_gc()
    set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _STOP = stop


def _work(job: argparse.Namespace) -> tuple[Outcome, str] | None:
    """:func:`run_one` in a worker process, with Ctrl-C stopping the fit (which writes its
    outputs, as a single fit does, and stops the images queued after it); None when the run was
    stopped before this image."""
    if _STOP is not None and _STOP.is_set():
        return None
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        outcome, text = run_one(job)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if outcome.status == 130 and _STOP is not None:
        _STOP.set()
    return outcome, text


def _jobs(args: argparse.Namespace, images: list[Path], names: list[str], top: Path):
    jobs = []
    for image, name in zip(images, names, strict=True):
        job = copy.copy(args)
        job.image = str(image)
        job.images = [str(image)]
        job.out = str(top / name)
        job.quiet = True
        if args.animation is not None:
            job.animation = str(top / name / Path(args.animation).name)
        jobs.append(job)
    return jobs


def run_many(args: argparse.Namespace) -> int:
    """Fit every image ``args.images`` names (module docstring); the exit status."""
    from tqdm import tqdm

    from tritri import _startup

    images, notes = collect_images(args.images)
    if not images:
        raise UsageError(f"no image files in {', '.join(map(str, args.images))}")
    for note in notes:
        print(f"{PROG}: {note}", file=sys.stderr)
    if args.init not in FRESH_STARTS:
        raise UsageError(
            "--init FILE.json continues one fit; with several images use greedy, delaunay or random"
        )
    top = out_dir(args)
    names = folder_names(images)
    jobs = _jobs(args, images, names, top)
    cpu = cpu_fit_applies(args)
    _startup.resume_gc()
    procs, threads = plan_jobs(len(jobs), cpu_cores(), args.jobs) if cpu else (1, 0)
    how = f"{procs} processes x {threads} threads" if procs > 1 else "one after the other"
    if not cpu:
        how = f"the torch loop, up to {args.batch} images a batch"
    print(f"{PROG}: fitting {len(jobs)} images into {top}/ ({how})", file=sys.stderr)
    outcomes: list[Any] = [None] * len(jobs)
    bar = tqdm(total=len(jobs), desc="images", unit="image", dynamic_ncols=True,
               disable=args.quiet, file=sys.stderr)  # fmt: skip

    said: set[str] = set()

    def done(i: int, outcome: Any, text: str) -> None:
        outcomes[i] = outcome
        for line in text.rstrip("\n").splitlines():
            if line not in said:  # a note about every image (e.g. the VGG losses') once
                said.add(line)
                tqdm.write(line, file=sys.stderr)
        bar.update(1)
        if outcome.psnr is not None:
            bar.set_postfix({"psnr": f"{outcome.psnr:.2f}"}, refresh=False)

    interrupted = False
    try:
        if not cpu:
            interrupted = _run_batches(jobs, args.batch, done)
        elif procs == 1:
            interrupted = _run_here(jobs, done)
        else:
            skip_blas_probe()
            interrupted = _run_pool(jobs, procs, threads, done)
    finally:
        bar.close()
    rows = [_row(image, name if (top / name).is_dir() else "", outcome)
            for image, name, outcome in zip(images, names, outcomes, strict=True)]  # fmt: skip
    try:
        summary = write_summary(top / SUMMARY, rows)
    except OSError as err:
        print(f"{PROG}: error: could not write {top / SUMMARY}: {err.strerror or err}",
              file=sys.stderr)  # fmt: skip
        summary = None
    ok = sum(r["status"] == "ok" for r in rows)
    failed = [r for r in rows if r["status"].startswith("failed")]
    interrupted = interrupted or any(o is not None and o.status == 130 for o in outcomes)
    print(f"{PROG}: {ok} of {len(rows)} images fitted"
          + (f", {len(failed)} failed ({', '.join(r['image'] for r in failed)})" if failed else "")
          + ("; interrupted" if interrupted else "")
          + (f"; wrote {summary}" if summary is not None else ""), file=sys.stderr)  # fmt: skip
    if interrupted:
        return 130
    return 1 if failed or summary is None else 0


def _run_here(jobs: list[argparse.Namespace], done: Callable[..., None]) -> bool:
    """The images one after the other in this process; whether Ctrl-C stopped them."""
    for i, job in enumerate(jobs):
        outcome, text = run_one(job)
        done(i, outcome, text)
        if outcome.status == 130:
            return True
    return False


def _run_pool(jobs: list[argparse.Namespace], procs: int, threads: int,
              done: Callable[..., None]) -> bool:  # fmt: skip
    """The images on ``procs`` worker processes; whether Ctrl-C stopped them. After a Ctrl-C
    (which the workers' fits also get: each writes its outputs) no further image starts."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # fork (where there is one): the workers start with this process's imports (numba among
    # them), no second start-up; nothing here has started a thread yet
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    stop = context.Event()
    pool = ProcessPoolExecutor(max_workers=procs, mp_context=context,
                               initializer=_worker_init, initargs=(threads, stop))  # fmt: skip
    pending = {pool.submit(_work, job): i for i, job in enumerate(jobs)}
    interrupted = False
    try:
        while pending:
            try:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            except KeyboardInterrupt:
                interrupted = True
                stop.set()
                for future in pending:
                    future.cancel()
                continue
            for future in finished:
                i = pending.pop(future)
                if future.cancelled():
                    continue
                try:
                    result = future.result()
                except Exception as err:  # the worker died (killed, out of memory)
                    outcome = Outcome(1, error=f"worker process failed: "
                                               f"{type(err).__name__}")  # fmt: skip
                    result = (outcome, f"{PROG}: error: {jobs[i].image}: {outcome.error}\n")
                if result is None:  # not started: the run was stopped
                    continue
                outcome, text = result
                interrupted |= outcome.status == 130
                done(i, outcome, text)
                if interrupted:
                    stop.set()
                    for other in pending:
                        other.cancel()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return interrupted


def _run_batches(jobs: list[argparse.Namespace], batch: int,
                 done: Callable[..., None]) -> bool:  # fmt: skip
    """The images through the torch loop, ``batch`` at a time
    (:func:`~tritri.fitting.session.fit_batch`; one after the other where the objective cannot be
    batched); whether Ctrl-C stopped them."""
    for first in range(0, len(jobs), batch):
        group = jobs[first : first + batch]
        results = fit_batch(group)
        if results is None:
            results = [run_one(job) for job in group]
        for k, (outcome, own) in enumerate(results):
            done(first + k, outcome, own)
        if any(o.status == 130 for o, _ in results):
            return True
    return False
