"""``tritri check``: compile every Triton kernel for real NVIDIA GPUs, without one, and say what it
costs (``docs/SPEC.md`` section 6).

Usage::

    tritri check [--arch 80,90] [--all-configs] [--kernels NAME,...] [--json PATH] [--jobs N]

Each *variant* below runs a launcher of ``tritri.kernels`` on tiny CPU tensors inside
:func:`tritri.tuning.kernel_cost.capture_launches`, so what is compiled is exactly what the launcher
would launch (argument types, constexprs, ``num_warps``); the launch is then compiled for each
``sm_<arch>`` through Triton's normal path (cubins land in Triton's cache) and read with the
``cuobjdump`` of the triton wheel. Raster kernels are compiled at their default config and, with
``--all-configs``, at every ``tritri tune`` candidate (:mod:`tritri.tuning.candidates`); the loss
kernels at the default config of each problem shape shown.

Columns: registers per thread; spill bytes per thread (stack + local); shared memory per block
(Triton's dynamic allocation + static); occupancy (theoretical resident warps per SM); the SASS
instruction count of the hot loop (the largest innermost loop: the raster kernels' triangle
walk); (triangle, pixel) pairs
one thread handles per trip through that loop (triangles per trip x pixels per thread) and the
loop's instructions per pair.

Exit codes: 0 all compiled and no default config spills; 1 a compile failure or a default-config
spill (each named with kernel, variant and arch), or the kernels already imported under the Triton
interpreter; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

__all__ = ["Variant", "add_arguments", "check_rows", "run", "variants"]

DEFAULT_ARCHS = (80, 90)
_PROG = "tritri check"


@dataclass(frozen=True)
class Variant:
    """One way a launcher launches a kernel: ``launch()`` calls the launcher on tiny tensors."""

    family: str  # raster_forward, raster_backward, loss_level_forward, ...
    launch_names: tuple[str, ...]  # one per launch the launcher makes, in order
    config: dict[str, Any]
    default: bool
    launch: Callable[[], Any]
    pairs_per_trip: Callable[[dict[str, Any]], int] | None = None
    """(triangle, pixel) pairs per thread per trip through the hot loop, from a launch's kwargs."""


# ---------------------------------------------------------------------------------------------
# variants


_RASTER_SIZE = 128  # image side of the check scenes; the cost does not depend on it
_RASTER_N = 100


def _raster_scene(per_vertex: bool, channels: int):
    import torch

    from tritri.geometry import prepare_triangles

    g = torch.Generator().manual_seed(0)
    verts = torch.rand(1, _RASTER_N, 3, 2, generator=g)
    shape = (1, _RASTER_N, 3, channels) if per_vertex else (1, _RASTER_N, channels)
    colors = torch.rand(*shape, generator=g)
    opacity = torch.rand(1, _RASTER_N, generator=g)
    return prepare_triangles(verts, colors, opacity, _RASTER_SIZE, _RASTER_SIZE, 0.5)


def _raster_launch(direction: str, per_vertex: bool, channels: int, binning: str,
                   deterministic: bool, config: dict[str, int]):  # fmt: skip
    def launch():
        import torch

        from tritri.binning import bin_triangles
        from tritri.kernels.raster_backward import raster_backward
        from tritri.kernels.raster_forward import raster_forward

        prep = _raster_scene(per_vertex, channels)
        size, tile = _RASTER_SIZE, config["tile"]
        chunk, warps = config["chunk"], config["num_warps"]
        bins = None
        if binning == "sorted" or deterministic:
            capacity = None if deterministic else 16 * _RASTER_N
            bins = bin_triangles(prep.edges, prep.cull, size, size, tile, capacity=capacity)
        if direction == "forward":
            raster_forward(prep.edges, prep.bary, prep.colors, prep.opacity, prep.cull, bins,
                           size, size, tile, chunk, warps)  # fmt: skip
        else:
            color = torch.zeros(1, channels, size, size)
            T = torch.ones(1, size, size)
            raster_backward(color, T, color, T, prep.edges, prep.bary, prep.colors, prep.opacity,
                            prep.cull, bins, size, size, tile, chunk, deterministic,
                            warps)  # fmt: skip

    return launch


def _raster_configs(all_configs: bool) -> list[tuple[str, dict[str, int], bool]]:
    """(direction, config, is default) of every raster launch config to check."""
    from tritri.configs.defaults import raster_backward_default, raster_default
    from tritri.tuning.candidates import BACKWARD_CANDIDATES, FORWARD_CANDIDATES

    def launch_keys(cfg: dict[str, Any]) -> dict[str, int]:
        return {k: int(cfg[k]) for k in ("tile", "chunk", "num_warps")}

    problem = {"batch": 1, "n_triangles": _RASTER_N}
    fwd, bwd = raster_default(problem), raster_backward_default(problem)
    out = [("forward", launch_keys(fwd), True), ("backward", launch_keys(bwd), True)]
    if all_configs:
        tiles = set()
        for cand in FORWARD_CANDIDATES:
            cfg = launch_keys({**fwd, **cand})
            tiles.add(cfg["tile"])
            out.append(("forward", cfg, False))
        # the backward runs at the forward's tile with a chunk and warps of its own
        for tile in sorted(tiles):
            for cand in BACKWARD_CANDIDATES:
                out.append(("backward", launch_keys({**bwd, **cand, "tile": tile}), False))
    seen, unique = set(), []
    for direction, cfg, is_default in out:
        key = (direction, *cfg.values())
        if key not in seen:
            seen.add(key)
            unique.append((direction, cfg, is_default))
    return unique


def _raster_variants(all_configs: bool) -> Iterator[Variant]:
    for direction, config, is_default in _raster_configs(all_configs):
        for per_vertex in (False, True):
            for channels in (1, 3, 4):
                colors = f"{'per-vertex' if per_vertex else 'flat'} C={channels}"
                modes = [("scan", False), ("sorted", False)]
                if direction == "backward":
                    modes.append(("sorted", True))
                for binning, det in modes:
                    if det:
                        names = (f"{colors} sorted deterministic",)
                    elif binning == "sorted":
                        names = (f"{colors} sorted", f"{colors} sorted, overflow scan")
                    else:
                        names = (f"{colors} scan",)
                    yield Variant(
                        family=f"raster_{direction}",
                        launch_names=names,
                        config=config,
                        default=is_default,
                        launch=_raster_launch(
                            direction, per_vertex, channels, binning, det, config
                        ),  # fmt: skip
                        pairs_per_trip=_raster_pairs_per_trip,
                    )


def _raster_pairs_per_trip(kwargs: dict[str, Any]) -> int:
    from tritri.kernels.raster_common import pairs_per_trip

    return pairs_per_trip(kwargs["TILE"], kwargs["WARPS"])


# (channels, pixels) of the loss-level problems checked: a first VGG16 level, the widest one, and
# a channel count above the single-tile limit (the channel-loop path).
_LEVEL_SHAPES = ((64, 4096), (512, 256), (1024, 64))
_LEVEL_MODES = {
    "perceptual L1": (True, False, False),
    "perceptual MSE": (True, False, True),
    "lpips": (False, True, False),
    "perceptual L1 + lpips": (True, True, False),
    "perceptual MSE + lpips": (True, True, True),
}


def _level_launch(direction: str, channels: int, pixels: int, perc: bool, lpips: bool,
                  mse: bool) -> Callable[[], Any]:  # fmt: skip
    def launch():
        import torch

        from tritri.kernels.loss_levels import level_losses_backward, level_losses_forward

        f = torch.rand(2, channels, pixels // 16, 16)
        t = torch.rand(2, channels, pixels // 16, 16)
        w = torch.rand(channels)
        if direction == "forward":
            level_losses_forward(f, t, w, do_perc=perc, do_lpips=lpips, mse=mse)
        else:
            g = torch.ones(2)
            level_losses_backward(f, t, w, g if perc else None, g if lpips else None, mse=mse)

    return launch


def _loss_variants() -> Iterator[Variant]:
    from tritri.configs.defaults import level_default, log_sum_default
    from tritri.kernels.log_sum import log_sum_forward

    for channels, pixels in _LEVEL_SHAPES:
        config = level_default({"batch": 2, "channels": channels, "pixels": pixels})
        # every mode at the first shape; the combined modes at the others
        modes = (
            _LEVEL_MODES
            if channels == _LEVEL_SHAPES[0][0]
            else {k: v for k, v in _LEVEL_MODES.items() if "+" in k}
        )
        for mode, (perc, lpips, mse) in modes.items():
            for direction in ("forward", "backward"):
                yield Variant(
                    family=f"loss_level_{direction}",
                    launch_names=(f"{mode} C={channels}",),
                    config=config,
                    default=True,
                    launch=_level_launch(direction, channels, pixels, perc, lpips, mse),
                )

    def log_sum_launch(batch: int) -> Callable[[], Any]:
        def launch():
            import torch

            log_sum_forward(torch.rand(batch, 3), torch.full((batch,), 1e-8), 1e-4, 0.01)

        return launch

    for batch in (8, 4096):
        yield Variant(
            family="log_sum",
            launch_names=(f"B={batch} K=3",),
            config=log_sum_default({"batch": batch, "n_losses": 3}),
            default=True,
            launch=log_sum_launch(batch),
        )


def variants(all_configs: bool = False) -> list[Variant]:
    """Every kernel variant the launchers can launch (raster candidates with ``all_configs``)."""
    return [*_raster_variants(all_configs), *_loss_variants()]


# ---------------------------------------------------------------------------------------------
# compiling and measuring


def _rows(variant: Variant, arch: int) -> list[dict[str, Any]]:
    """Compile one variant's launches for one arch and measure them (runs in a worker process).

    A variant whose launcher makes several launches (sorted binning: the list walk, then the scan
    of overflowed images) gives one row per launch, named by ``Variant.launch_names``.
    """
    from tritri.tuning.kernel_cost import (
        capture_launches,
        compile_launch,
        cubin_cost,
        occupancy_warps,
    )

    def row_for(name: str) -> dict[str, Any]:
        return {"arch": arch, "kernel": variant.family, "variant": name,
                "config": variant.config, "default": variant.default}  # fmt: skip

    def error(row: dict[str, Any], err: BaseException) -> dict[str, Any]:
        # a CompilationError chains one error per inlined jit function; the innermost one says
        # what went wrong, and its first line where
        while err.__cause__ is not None:
            err = err.__cause__
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        # where (first line) and what (the last lines; the source excerpt between can be long)
        text = " / ".join(lines) if len(lines) <= 4 else " / ".join([lines[0], "...", *lines[-3:]])
        row["error"] = f"{type(err).__name__}: {text[:600]}"
        return row

    try:
        with capture_launches(arch) as launches:
            variant.launch()
        if len(launches) != len(variant.launch_names):
            raise RuntimeError(
                f"the launcher made {len(launches)} launches, expected {len(variant.launch_names)}"
            )
    except Exception as err:  # noqa: BLE001 - reported per row, the run goes on
        return [error(row_for(variant.launch_names[0]), err)]
    rows = []
    for launch, name in zip(launches, variant.launch_names, strict=True):
        row = row_for(name)
        row["kernel"] = launch.name
        if "num_warps" in row["config"]:  # the launcher may run more warps than configured
            row["config"] = {**row["config"], "num_warps": launch.num_warps}
        try:
            compiled = compile_launch(launch, arch)
            cubin = next(p for n, p in compiled.metadata_group.items() if n.endswith(".cubin"))
            cost = cubin_cost(cubin)
        except Exception as err:  # noqa: BLE001 - reported per row, the run goes on
            rows.append(error(row, err))
            continue
        shared = int(compiled.metadata.shared) + cost.static_shared_bytes
        pairs = None if variant.pairs_per_trip is None else variant.pairs_per_trip(launch.kwargs)
        per_pair = None
        if pairs and cost.loop_instructions is not None:
            per_pair = round(cost.loop_instructions / pairs, 1)
        row.update(
            # the backward's warp-shuffle row sums (None: a kernel without that choice)
            shuffles=launch.kwargs.get("SHUFFLES"),
            fp_fusion=bool(compiled.metadata.enable_fp_fusion),
            num_warps=launch.num_warps,
            registers=cost.registers,
            spill_bytes=cost.spill_bytes,
            shared_bytes=shared,
            occupancy=occupancy_warps(arch, cost.registers, launch.num_warps, shared),
            loop_instructions=cost.loop_instructions,
            pairs_per_trip=pairs,
            instructions_per_pair=per_pair,
            cubin=str(cubin),
        )
        rows.append(row)
    return rows


_WORK: list[tuple[Variant, int]] = []


def _work_item(i: int) -> list[dict[str, Any]]:
    variant, arch = _WORK[i]
    return _rows(variant, arch)


def check_rows(archs: tuple[int, ...] = DEFAULT_ARCHS, all_configs: bool = False,
               jobs: int | None = None, kernels: tuple[str, ...] | None = None,
               ) -> list[dict[str, Any]]:  # fmt: skip
    """Compile every variant (of the ``kernels`` families, default all) for every arch; one result
    row each (see the module docstring)."""
    _require_compiler()
    global _WORK
    _WORK = [(v, arch) for arch in archs for v in variants(all_configs)
             if kernels is None or v.family in kernels]  # fmt: skip
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(_WORK)))
    if jobs == 1:
        return [row for i in range(len(_WORK)) for row in _work_item(i)]
    import multiprocessing

    # fork: the workers inherit the variant list (its launch closures do not pickle)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        return [row for rows in pool.map(_work_item, range(len(_WORK))) for row in rows]


def _require_compiler() -> None:
    """Make sure the kernels import as compilable functions, not under the interpreter."""
    interpreted = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if interpreted and any(m.startswith("tritri.kernels.") for m in sys.modules):
        raise RuntimeError(
            "the Triton interpreter is on (TRITON_INTERPRET=1) and the kernels are already "
            "imported as interpreted functions; run tritri check without TRITON_INTERPRET"
        )
    os.environ["TRITON_INTERPRET"] = "0"
    from triton import knobs

    knobs.runtime.interpret = False


# ---------------------------------------------------------------------------------------------
# report


def failures(rows: list[dict[str, Any]]) -> list[str]:
    """Compile failures and default-config spills, one line each."""
    out = []
    for r in rows:
        where = f"{r['kernel']} [{r['variant']}] sm_{r['arch']}"
        if "error" in r:
            out.append(f"{where}: compile failed: {r['error']}")
        elif r["default"] and r["spill_bytes"] > 0:
            out.append(f"{where}: spills {r['spill_bytes']} B/thread at its default config")
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the rows."""
    head = ("arch", "kernel", "variant", "config", "regs", "spill B", "smem B", "warps/SM",
            "loop instr", "pairs/trip", "instr/pair")  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cfg = ",".join(f"{k}={v}" for k, v in r["config"].items()) + ("" if r["default"] else "")
        cfg = cfg + (" (default)" if r["default"] else "")
        if "error" in r:
            cells = [f"sm_{r['arch']}", r["kernel"], r["variant"], cfg, "FAILED", "", "", "", "",
                     "", ""]  # fmt: skip
        else:
            cells = [f"sm_{r['arch']}", r["kernel"], r["variant"], cfg, r["registers"],
                     r["spill_bytes"], r["shared_bytes"], r["occupancy"], r["loop_instructions"],
                     r["pairs_per_trip"], r["instructions_per_pair"]]  # fmt: skip
        lines.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines)


def _archs(text: str) -> tuple[int, ...]:
    try:
        archs = tuple(int(a.strip().removeprefix("sm_")) for a in text.split(",") if a.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--arch wants numbers like 80,90, got {text!r}") from None
    if not archs or any(a < 70 for a in archs):
        raise argparse.ArgumentTypeError(f"--arch wants compute capabilities >= 70, got {text!r}")
    return archs


FAMILIES = ("raster_forward", "raster_backward", "loss_level_forward", "loss_level_backward",
            "log_sum")  # fmt: skip
"""The kernel families a :class:`Variant` belongs to (``--kernels``)."""


def _families(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in FAMILIES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"--kernels wants some of {', '.join(FAMILIES)}; got {text!r}"
        )
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``tritri check``'s options on ``parser``."""
    parser.add_argument(
        "--arch", type=_archs, default=DEFAULT_ARCHS,
        help="compute capabilities to compile for, comma-separated (default: 80,90)",
    )  # fmt: skip
    parser.add_argument(
        "--all-configs", action="store_true",
        help="also compile every tritri tune candidate of the raster kernels",
    )  # fmt: skip
    parser.add_argument(
        "--kernels", type=_families, default=None, metavar="NAME,...",
        help=f"only these kernel families (default: all): {', '.join(FAMILIES)}",
    )  # fmt: skip
    parser.add_argument("--json", metavar="PATH", help="write the rows as a JSON list to PATH")
    parser.add_argument(
        "--jobs", type=int, default=None, help="parallel compiles (default: the CPU count)"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``tritri check``; return the exit code."""
    try:
        rows = check_rows(tuple(args.arch), bool(args.all_configs), args.jobs,
                          getattr(args, "kernels", None))  # fmt: skip
    except RuntimeError as err:
        print(f"{_PROG}: {err}", file=sys.stderr)
        return 1
    print(format_table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1)
    bad = failures(rows)
    for line in bad:
        print(f"{_PROG}: {line}", file=sys.stderr)
    n_ok = sum("error" not in r for r in rows)
    print(f"{_PROG}: {n_ok}/{len(rows)} compiled for sm_{', sm_'.join(map(str, args.arch))}",
          file=sys.stderr)  # fmt: skip
    return 1 if bad else 0
