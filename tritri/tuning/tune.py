"""``tritri tune``: benchmark kernel configs on this GPU and write its config file.

Usage::

    tritri tune [--out DIR] [--kernels NAME[,NAME...]] [--quick]

Imports the modules of :data:`TUNABLE_MODULES` (they register their kernels' tunables with
:func:`tritri.tuning.register_tunable`: candidate configs, problems, runners), tunes each selected
kernel over its problem grid (see :mod:`tritri.tuning.tuner`) and writes ``DIR/<gpu-slug>.json``
atomically. Kernels not tuned in this run are kept from an existing file of the same GPU and
triton / torch versions.

Exit codes: 0 written; 1 no CUDA GPU (or the Triton interpreter is on), nothing tunable, nothing
measured, or the file cannot be written; 2 unknown kernel name.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from tritri.configs import lookup
from tritri.configs.slug import device_slug
from tritri.tuning import tuner

TUNABLE_MODULES = ("tritri.tuning.candidates",)
"""The modules that register tunables: the one place ``tritri tune`` finds them."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``tritri tune`` options to ``parser``."""
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help=f"directory of the config file (default: ${lookup.ENV_CONFIG_DIR} if set, else the "
        "package's configs directory)",
    )
    parser.add_argument(
        "--kernels",
        metavar="NAME",
        nargs="+",
        default=None,
        help="kernels to tune, space- or comma-separated (default: every registered tunable)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small problem grid and short timings (a smoke run; not for shipped files)",
    )


def _err(message: str) -> None:
    print(f"tritri tune: {message}", file=sys.stderr)


def _gpu_problem() -> str | None:
    """Why tuning cannot run here, or None."""
    try:
        import torch

        available = torch.cuda.is_available()
    except Exception as err:  # noqa: BLE001 - a broken CUDA setup is "no GPU" here
        return f"no CUDA GPU is available ({type(err).__name__}: {err}); tuning needs one"
    if not available:
        return "no CUDA GPU is available; tuning measures configs on the GPU it runs on"
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return "TRITON_INTERPRET is set; unset it to time kernels on the GPU"
    return None


def import_tunables(modules: tuple[str, ...] = TUNABLE_MODULES) -> list[str]:
    """Import ``modules`` (registering their tunables); return failures as text."""
    failures: list[str] = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - one broken module must not stop tuning
            failures.append(f"{name}: {type(err).__name__}: {err}")
    return failures


def _selected(names: list[str] | None) -> tuple[list[tuner.Tunable], list[str]]:
    """The tunables named in ``--kernels`` (all if None) and the unknown names."""
    registry = tuner.tunables()
    if names is None:
        return list(registry.values()), []
    wanted = [n for arg in names for n in arg.split(",") if n]
    unknown = [n for n in wanted if n not in registry]
    return [registry[n] for n in dict.fromkeys(wanted) if n in registry], unknown


def make_time_fn(quick: bool) -> tuner.TimeFn:
    """The timer ``run`` uses (a seam for tests)."""
    return tuner.make_cuda_time_fn(quick=quick)


def run(args: argparse.Namespace) -> int:
    """Run ``tritri tune``; return the exit code."""
    problem = _gpu_problem()
    if problem is not None:
        _err(problem)
        return 1
    import torch

    for failure in import_tunables():
        _err(f"warning: could not import tunables {failure}")
    selected, unknown = _selected(args.kernels)
    if unknown:
        known = ", ".join(tuner.tunables()) or "(none)"
        _err(f"unknown kernel(s) {', '.join(unknown)}; tunable kernels: {known}")
        return 2
    if not selected:
        _err("no tunable kernels are registered; nothing to tune")
        return 1

    device_name = torch.cuda.get_device_name(torch.cuda.current_device())
    out_dir = Path(args.out or os.environ.get(lookup.ENV_CONFIG_DIR) or lookup.SHIPPED_CONFIG_DIR)
    path = out_dir / f"{device_slug(device_name)}.json"
    print(f"tritri tune: {device_name} -> {path}")
    kernels = tuner.tune_kernels(selected, make_time_fn(args.quick), quick=args.quick)
    if not kernels:
        _err("no config ran for any problem; nothing written")
        return 1
    major, minor = torch.cuda.get_device_capability()
    doc = tuner.build_document(
        device_name, kernels, extra={"capability": f"{major}.{minor}", "quick": bool(args.quick)}
    )
    kept = tuner.merge_with_existing(path, doc)
    if kept:
        print(f"tritri tune: kept earlier entries for {', '.join(kept)}")
    try:
        tuner.write_config_file(path, doc)
    except OSError as err:
        _err(f"cannot write {path}: {err}")
        return 1
    lookup.clear_cache()
    print(f"tritri tune: wrote {path}")
    return 0
