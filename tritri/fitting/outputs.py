"""The files ``tritri fit`` writes to ``--out`` (docs/SPEC.md section 5, "Outputs").

- :func:`prepare_out_dir` before the fit: creates the directory, checks that a file can be
  created in it (so a read-only ``--out`` is a one-line error before any work), and removes the
  previous run's ``metrics.jsonl`` (the monitor appends to it, one line per logged step, while
  the fit runs).
- :func:`write_outputs` after it: each output is written on its own (a failure in one is
  reported and the others are still written) and atomically (:mod:`tritri.fitting.files`: a
  temporary name renamed into place, so a second Ctrl-C never leaves half a file). An output with
  nothing in it (``loss.png`` of a fit with no logged step) is not written; ``metrics.jsonl`` of
  such a fit is empty. Afterwards ``--out`` holds this run's outputs only: a file of the same name
  left by an earlier run is removed where this run writes none (nothing to draw, a failure, a
  Ctrl-C before its turn).

Torch-free.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tritri.fitting import export, loss_plot, starts

__all__ = ["OUTPUTS", "FitOutputs", "Written", "prepare_out_dir", "write_outputs"]

#: The files of a fit, in the order they are written.
OUTPUTS = ("final.png", "comparison.png", "triangles.svg", "triangles.json", "metrics.jsonl",
           "loss.png")  # fmt: skip
METRICS = "metrics.jsonl"


def prepare_out_dir(out: str | os.PathLike[str], *, clean: bool = True) -> Path:
    """Create ``out`` (and its parents), check a file can be created in it, and (``clean``)
    remove the previous run's ``metrics.jsonl``. Raises ``ValueError`` in one line naming the
    directory."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create {str(out)!r}: {_reason(err)}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".tritri-write-check.", dir=out)
        os.close(fd)
        os.unlink(probe)
        if clean:
            (out / METRICS).unlink(missing_ok=True)
    except OSError as err:
        raise ValueError(f"cannot write in {str(out)!r}: {_reason(err)}") from None
    return out


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


@dataclass
class FitOutputs:
    """What a finished (or interrupted) fit leaves to write.

    Attributes:
        target, image: ``(3, H, W)`` arrays in [0, 1], the target and the fit's render.
        values: the triangles (numpy values dict of :mod:`tritri.fitting.starts`).
        sigma: edge softness of the render, px.
        psnr, steps, best_step: the fit's PSNR (dB), steps run, and the step its triangles are
            from.
        losses: the loss names; image_name: the image file (for triangles.json).
        history: the records written to metrics.jsonl (drawn in loss.png).
        shown_image, shown_target: ``(3, H', W')`` the fit rendered at ``--render-size`` and
            the target at that size, for final.png and comparison.png (None: ``image`` and
            ``target``, the fit's size). triangles.svg and triangles.json keep the fit's size.
    """

    target: np.ndarray
    image: np.ndarray
    values: dict[str, Any]
    sigma: float
    psnr: float
    steps: int
    best_step: int
    losses: Sequence[str]
    image_name: str
    history: Sequence[dict[str, Any]] = field(default_factory=list)
    shown_image: np.ndarray | None = None
    shown_target: np.ndarray | None = None


@dataclass
class Written:
    """What :func:`write_outputs` did: ``files`` written (complete), ``failed`` (name, reason in
    one line) not written, ``interrupted``: a Ctrl-C stopped the writing (the outputs after it
    were not written)."""

    files: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False


def _writers(out: Path, fit: FitOutputs) -> list[tuple[str, Callable[[Path], Path | None]]]:
    _, H, W = fit.target.shape
    v = fit.values
    n = len(v["opacity"])
    extra = {
        "psnr": round(float(fit.psnr), 4),
        "steps": fit.steps,
        "best_step": fit.best_step,
        "losses": list(fit.losses),
        "image": fit.image_name,
    }

    def metrics(path: Path) -> Path:
        path.touch()  # the monitor wrote the records while the fit ran; none: an empty file
        return path

    shown = fit.image if fit.shown_image is None else fit.shown_image
    shown_target = fit.target if fit.shown_target is None else fit.shown_target
    # the writers are looked up in their modules at call time (tests replace them there)
    return [
        ("final.png", lambda p: export.save_png(shown, p)),
        ("comparison.png", lambda p: export.save_comparison(shown_target, shown, p)),
        ("triangles.svg", lambda p: export.save_svg(
            v["verts"], v["colors"], v["opacity"], v["background"], p, width=W, height=H,
            title=f"tritri fit: {n} triangles, PSNR {fit.psnr:.2f} dB", sigma=fit.sigma)),
        ("triangles.json", lambda p: starts.write_triangles_json(
            v, p, width=W, height=H, sigma=fit.sigma, extra=extra)),
        (METRICS, metrics),
        ("loss.png", lambda p: loss_plot.save_loss_plot(fit.history, p, title="tritri fit")),
    ]  # fmt: skip


def _remove_stale(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # the failure that brought us here is reported already


def write_outputs(out: str | os.PathLike[str], fit: FitOutputs) -> Written:
    """Write every output of ``fit`` to ``out`` (module docstring); never raises for one output
    (its failure is in the result) and stops at a Ctrl-C (``interrupted``)."""
    out = Path(out)
    done = Written()
    writers = _writers(out, fit)
    for i, (name, write) in enumerate(writers):
        path = out / name
        try:
            result = write(path)
        except KeyboardInterrupt:
            done.interrupted = True
            for later, _ in writers[i:]:  # not written by this run: an older file would be stale
                if later != METRICS:
                    _remove_stale(out / later)
                elif (out / METRICS).is_file():  # this run's: written during the fit
                    done.files.append(out / METRICS)
            break
        except Exception as err:  # reported, and the other outputs are still written
            done.failed.append((name, _reason(err)))
            if name != METRICS:
                _remove_stale(path)
            continue
        if result is None:
            _remove_stale(path)
        else:
            done.files.append(path)
    return done
