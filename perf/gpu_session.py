"""One command for a lent GPU: native tests, ``tritri check``, timings, the loss stack, a tune.

A GPU is lent for minutes (the device tool: about 10 minutes a command, 15 a session), so the
session is prepared here and measures there::

    python3 perf/gpu_session.py --out "$OUT"            # on the GPU machine, ~8 minutes
    python perf/gpu_session.py --dry-run --out /tmp/s    # any CPU: every step at tiny sizes,
                                                         # under the Triton interpreter (the suite
                                                         # runs it)

Steps, in this order, each in a process of its own under its own time limit (``--budget`` seconds
shared in proportion to :data:`STEP_SHARE`); a step that fails or runs over is recorded as such
and the session goes on:

1. ``env`` -- versions, the GPU, its compute capability;
2. ``tests`` -- the GPU-marked and Triton tests, natively (:data:`TRITON_TESTS`);
3. ``check`` -- ``tritri check --arch <this GPU's>`` (registers, spills, instructions per pair);
4. ``timings`` -- forward and forward + backward at B = 64 x 256² x 1000 and 16 x 512² x 4000
   triangles, flat and per-vertex colors, fp32 and bf16: the Triton backend against the torch
   backend, the dense reference where it fits, and ``torch.compile`` (inductor) of the Triton
   path (:data:`CASES`);
5. ``losses`` -- the loss stack against the naive composition (``perf/bench_losses.py``);
6. ``tune`` -- ``tritri tune --quick`` writing ``OUT/configs/<gpu-slug>.json``;
7. ``pairs`` -- measured ns per (triangle, pixel) pair of the raster kernels beside the check's
   static instructions per pair.

Everything lands in ``OUT``: ``session.md`` (the tables), ``session.json`` (every figure),
``session.log`` (each step's output), ``check.json`` and ``configs/<gpu-slug>.json`` -- five files,
within what the device tool brings back. Never ship a figure or config that such a session did not
measure on that GPU.

On the device machine (no network; its image has torch, triton, numba, pytest): run from the
repository root with ``PYTHONPATH=.``; the naive loss stack needs the ``lpips`` package, carried as
a wheel (README, "A GPU session").
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

#: Share of ``--budget`` each step may take (the rest of the budget is slack for start-up).
STEP_SHARE = {"env": 0.02, "tests": 0.30, "check": 0.12, "timings": 0.30, "losses": 0.08,
              "tune": 0.12, "pairs": 0.06}  # fmt: skip
STEPS = tuple(STEP_SHARE)

#: The tests that run Triton kernels (and every ``gpu``-marked one: they live in these files).
TRITON_TESTS = (
    "tests/test_render.py",
    "tests/test_render_api.py",
    "tests/test_losses_kernels.py",
    "tests/test_losses_image.py",
    "tests/test_losses_parity.py",
    "tests/test_raster_tuning.py",
    "tests/test_memory.py",
)
#: The dry run's share of them (the interpreter is slow).
DRY_TESTS = ("tests/test_losses_kernels.py", "-k", "log_sum")

#: name: (batch, height, width, triangles, triangle size as a fraction of the image side)
CASES = {
    "b64-256px-n1000": (64, 256, 256, 1000, 0.12),
    "b16-512px-n4000": (16, 512, 512, 4000, 0.06),
}
DRY_CASES = {"b2-16px-n6": (2, 16, 16, 6, 0.5)}


# ---------------------------------------------------------------------------------------------
# the driver


def _step_command(step: str, args: argparse.Namespace, work: Path) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--step", step, "--out", str(args.out),
           "--work", str(work), "--budget", str(args.budget)]  # fmt: skip
    return cmd + (["--dry-run"] if args.dry_run else [])


def _env(dry_run: bool) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if dry_run:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)  # compile for the GPU
    return env


def drive(args: argparse.Namespace) -> int:
    """Run every selected step in its own process; write session.md / .json / .log."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = [s for s in STEPS if s not in set(args.skip)]
    log = (out / "session.log").open("w", encoding="utf-8")
    results: dict[str, Any] = {"dry_run": args.dry_run, "budget_s": args.budget, "steps": {}}
    t_session = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu_session_") as tmp:
        work = Path(tmp)
        for step in steps:
            limit = max(5.0, args.budget * STEP_SHARE[step])
            t0 = time.monotonic()
            print(f"== {step} (limit {limit:.0f} s)", flush=True)
            log.write(f"\n===== {step} (limit {limit:.0f} s)\n")
            log.flush()
            try:
                proc = subprocess.run(
                    _step_command(step, args, work), cwd=REPO, env=_env(args.dry_run),
                    stdout=log, stderr=subprocess.STDOUT, timeout=limit,
                )  # fmt: skip
                status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
            except subprocess.TimeoutExpired:
                status = f"stopped at its {limit:.0f}-s limit"
            seconds = round(time.monotonic() - t0, 1)
            part = work / f"{step}.json"
            data = json.loads(part.read_text()) if part.is_file() else {}
            results["steps"][step] = {"status": status, "seconds": seconds, **data}
            print(f"   {status} in {seconds} s", flush=True)
    results["seconds"] = round(time.monotonic() - t_session, 1)
    log.close()
    (out / "session.json").write_text(json.dumps(results, indent=1))
    report = markdown(results)
    (out / "session.md").write_text(report)
    print(report)
    return 0 if all(s["status"] == "ok" for s in results["steps"].values()) else 1


# ---------------------------------------------------------------------------------------------
# the steps (each runs in a process of its own and writes WORK/<step>.json)


def step_env(args: argparse.Namespace) -> dict[str, Any]:
    import numpy
    import torch
    import triton

    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "triton": triton.__version__, "numpy": numpy.__version__,
        "cuda": torch.version.cuda, "machine": platform.machine(),
        "cpus": os.cpu_count(), "interpreter": os.environ.get("TRITON_INTERPRET") == "1",
    }  # fmt: skip
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                    arch=10 * props.major + props.minor, sms=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1))  # fmt: skip
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.mem",
                                  "--format=csv,noheader"], capture_output=True, text=True,
                                 timeout=20)  # fmt: skip
            info["nvidia_smi"] = smi.stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as err:
            info["nvidia_smi"] = f"unavailable: {err}"
    elif not args.dry_run:
        raise SystemExit("no CUDA GPU here: run with --dry-run for the CPU rehearsal")
    print(json.dumps(info, indent=1))
    return info


def _arch(args: argparse.Namespace) -> int:
    """This GPU's compute capability as a number (90 for sm_90); 90 in a dry run."""
    import torch

    if args.dry_run or not torch.cuda.is_available():
        return 90
    major, minor = torch.cuda.get_device_capability(0)
    return 10 * major + minor


def step_tests(args: argparse.Namespace) -> dict[str, Any]:
    tests = list(DRY_TESTS if args.dry_run else TRITON_TESTS)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", *tests]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    print(proc.stdout[-20000:], proc.stderr[-5000:], sep="\n")
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    return {"command": " ".join(cmd[1:]), "exit": proc.returncode, "summary": summary}


def step_check(args: argparse.Namespace) -> dict[str, Any]:
    arch = _arch(args)
    path = Path(args.out) / "check.json"
    cmd = [sys.executable, "-m", "tritri", "check", "--arch", str(arch), "--json", str(path)]
    if args.dry_run:
        cmd += ["--kernels", "log_sum"]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # it compiles
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    print(proc.stdout[-20000:], proc.stderr[-5000:], sep="\n")
    rows = json.loads(path.read_text()) if path.is_file() else []
    keep = ("kernel", "variant", "config", "default", "registers", "spill_bytes", "occupancy",
            "loop_instructions", "pairs_per_trip", "instructions_per_pair")  # fmt: skip
    return {"exit": proc.returncode, "arch": arch,
            "rows": [{k: r.get(k) for k in keep} for r in rows if r.get("default")],
            "failures": [ln for ln in proc.stderr.splitlines() if "spills" in ln
                         or "failed" in ln]}  # fmt: skip


def _timer(dry_run: bool) -> Callable[[Callable[[], Any], float], tuple[float, int]]:
    """``time(fn, seconds) -> (median ms, calls)``: CUDA events through triton's do_bench on a
    GPU, the host clock on the CPU; about ``seconds`` of repeats after a warm-up call."""
    import torch

    def cpu_time(fn: Callable[[], Any], seconds: float) -> tuple[float, int]:
        if seconds > 0:
            fn()  # warm-up (a dry run, seconds = 0, times one call only)
        times: list[float] = []
        t_end = time.perf_counter() + seconds
        while not times or (time.perf_counter() < t_end and len(times) < 50):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times), len(times)

    if dry_run or not torch.cuda.is_available():
        return cpu_time

    from triton.testing import do_bench

    def gpu_time(fn: Callable[[], Any], seconds: float) -> tuple[float, int]:
        t0 = time.perf_counter()
        fn()  # compile / warm
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        if first > seconds:  # too slow to repeat in the budget: one more timed call
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            return (time.perf_counter() - t0) * 1e3, 1
        ms = do_bench(fn, warmup=min(100, seconds * 100), rep=seconds * 1000,
                      return_mode="median")  # fmt: skip
        return float(ms), max(1, int(seconds * 1000 / max(ms, 1e-3)))

    return gpu_time


def _scene(case: tuple, per_vertex: bool, dtype, device, grad: bool, seed: int = 0):
    import torch

    B, H, W, N, size = case
    g = torch.Generator().manual_seed(seed)
    center = torch.rand(B, N, 1, 2, generator=g)
    verts = center + (torch.rand(B, N, 3, 2, generator=g) - 0.5) * size
    colors = torch.rand(B, N, 3, 3, generator=g) if per_vertex else torch.rand(B, N, 3, generator=g)
    opacity = torch.rand(B, N, generator=g) * 0.5 + 0.5
    return [t.to(device=device, dtype=dtype).requires_grad_(grad) for t in (verts, colors, opacity)]


def _dense_fits(case: tuple, backward: bool, device) -> bool:
    """Whether the dense reference's working set fits (it keeps ~6 float32 N·B·H·W intermediates
    for backward, one B·H·W set per triangle forward) and runs in reasonable time."""
    import torch

    B, H, W, N, _ = case
    need = (6 * N if backward else 8) * B * H * W * 4
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return need < 0.5 * free and N <= 20_000
    return need < 2**30


def _impls(H: int, W: int, compiled: Callable[..., Any] | None) -> dict[str, Callable[..., Any]]:
    """The renderers a timing row compares, each ``f(verts, colors, opacity) -> image``: the
    Triton backend, the torch backend, the dense reference and (given) ``torch.compile``'s
    Triton path."""
    import tritri
    from tritri.reference import render_dense

    impls = {
        "triton": lambda v, c, o: tritri.render(v, c, o, height=H, width=W, backend="triton"),
        "torch": lambda v, c, o: tritri.render(v, c, o, height=H, width=W, backend="torch"),
        "dense": lambda v, c, o: render_dense(v, c, o, height=H, width=W),
    }
    if compiled is not None:
        impls["compiled"] = lambda v, c, o: compiled(v, c, o, height=H, width=W, backend="triton")
    return impls


def step_timings(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import tritri

    device = torch.device("cpu" if args.dry_run else "cuda")
    cases = DRY_CASES if args.dry_run else CASES
    per_call = 0.0 if args.dry_run else 0.4  # seconds of repeats per figure
    timer = _timer(args.dry_run)
    compiled = torch.compile(tritri.render, backend="inductor")
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + args.limit - 5
    for case_name, case in cases.items():
        B, H, W, N, _ = case
        for per_vertex in (False, True):
            for dtype in (torch.float32, torch.bfloat16):
                plain = not per_vertex and dtype == torch.float32
                impls = _impls(H, W, compiled if plain else None)
                for backward in (False, True):
                    for impl, fn in impls.items():
                        row = {"case": case_name, "colors": "per-vertex" if per_vertex else "flat",
                               "dtype": str(dtype).removeprefix("torch."),
                               "pass": "forward+backward" if backward else "forward",
                               "impl": impl}  # fmt: skip
                        if impl == "dense" and not _dense_fits(case, backward, device):
                            rows.append({**row, "skipped": "does not fit"})
                            continue
                        if time.monotonic() > deadline:
                            rows.append({**row, "skipped": "out of time"})
                            continue
                        leaves = _scene(case, per_vertex, dtype, device, grad=backward)
                        weight = torch.rand(B, 3, H, W, device=device)

                        def run(fn=fn, leaves=leaves, weight=weight, backward=backward):
                            if not backward:
                                with torch.no_grad():
                                    return fn(*leaves)
                            for t in leaves:
                                t.grad = None
                            (fn(*leaves).float() * weight).sum().backward()

                        try:
                            ms, calls = timer(run, per_call)
                            rows.append({**row, "ms": round(ms, 4), "calls": calls})
                        except Exception as err:  # noqa: BLE001 - recorded, the table goes on
                            rows.append({**row, "error": f"{type(err).__name__}: {err}"[:300]})
                        print(rows[-1], flush=True)
                        del leaves
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
    return {"rows": rows}


def step_losses(args: argparse.Namespace) -> dict[str, Any]:
    if args.dry_run:
        extra = ["--device", "cpu", "--batch", "1", "--size", "32", "--iters", "2", "--warmup", "1"]
    else:
        extra = ["--device", "cuda", "--batch", "8", "--size", "256", "--bandwidth"]
    cmd = [sys.executable, str(REPO / "perf" / "bench_losses.py"), *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    print(proc.stdout, proc.stderr[-5000:], sep="\n")
    return {"command": " ".join(cmd[1:]), "exit": proc.returncode,
            "lines": proc.stdout.strip().splitlines()[-8:]}  # fmt: skip


def step_tune(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out) / "configs"
    if args.dry_run:  # tuning times kernels on a GPU; the rehearsal checks the command parses
        cmd = [sys.executable, "-m", "tritri", "tune", "--help"]
    else:
        cmd = [sys.executable, "-m", "tritri", "tune", "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    print(proc.stdout[-10000:], proc.stderr[-5000:], sep="\n")
    files = sorted(str(p.relative_to(args.out)) for p in out.glob("*.json"))
    return {"command": " ".join(cmd[1:]), "exit": proc.returncode, "files": files}


def step_pairs(args: argparse.Namespace) -> dict[str, Any]:
    """Raster kernels alone: forward and backward launch time over the (triangle, pixel) pairs
    their hot loop visits (every (tile, triangle) pair of the exact binning times the tile's
    pixels; pixels that stopped early still count), beside the check's instructions per pair."""
    import torch

    from tritri.binning import bin_triangles
    from tritri.geometry import prepare_triangles
    from tritri.kernels.ops import rasterize, rasterize_backward
    from tritri.kernels.raster import raster_config

    device = torch.device("cpu" if args.dry_run else "cuda")
    cases = DRY_CASES if args.dry_run else CASES
    timer = _timer(args.dry_run)
    check_rows = []
    check_path = Path(args.work) / "check.json"
    if check_path.is_file():
        check_rows = json.loads(check_path.read_text()).get("rows", [])
    rows = []
    for case_name, case in cases.items():
        B, H, W, N, _ = case
        verts, colors, opacity = _scene(case, False, torch.float32, device, grad=False)
        prep = prepare_triangles(verts, colors, opacity, H, W, 0.5)
        fwd, bwd = raster_config(B, N, H, W, device)
        tile = int(fwd["tile"])
        bins = bin_triangles(prep.edges, prep.cull, H, W, tile, capacity=None)
        pairs = int(bins.tri.numel()) * tile * tile
        launch = (prep.edges, prep.edges.new_empty(0), prep.colors, prep.opacity, prep.cull, H, W,
                  tile, int(fwd["chunk"]), int(fwd["num_warps"]), int(bwd["chunk"]),
                  int(bwd["num_warps"]), str(fwd["binning"]), int(fwd["pairs_per_triangle"]),
                  False)  # fmt: skip
        color, T = rasterize(*launch)
        grads = (torch.rand_like(color), torch.rand_like(T), color, T)
        backward = (*grads, *launch[:8], *launch[10:])  # rasterize_backward's arguments
        seconds = 0.0 if args.dry_run else 0.5
        ms_f, _ = timer(lambda launch=launch: rasterize(*launch), seconds)
        ms_b, _ = timer(lambda backward=backward: rasterize_backward(*backward), seconds)
        walk = "scan" if fwd["binning"] == "scan" else "sorted"
        for kernel, ms in (("raster_forward_kernel", ms_f), ("raster_backward_kernel", ms_b)):
            static = next((r for r in check_rows if r["kernel"] == kernel
                           and r["variant"] == f"flat C=3 {walk}"), None)  # fmt: skip
            rows.append({
                "case": case_name, "kernel": kernel, "binning": walk, "pairs": pairs,
                "ms": round(ms, 4), "ns_per_pair": round(ms * 1e6 / max(pairs, 1), 4),
                "instructions_per_pair": None if static is None
                else static["instructions_per_pair"],
            })  # fmt: skip
            print(rows[-1], flush=True)
    return {"rows": rows}


STEP_FUNCTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "env": step_env, "tests": step_tests, "check": step_check, "timings": step_timings,
    "losses": step_losses, "tune": step_tune, "pairs": step_pairs,
}  # fmt: skip


def run_step(args: argparse.Namespace) -> int:
    """Run one step in this process; write WORK/<step>.json (the figures) even when it fails."""
    work = Path(args.work)
    result: dict[str, Any] = {}
    code = 0
    try:
        result = STEP_FUNCTIONS[args.step](args)
    except SystemExit as err:
        result, code = {"error": str(err)}, 1
    except Exception as err:  # noqa: BLE001 - recorded in the session, which goes on
        import traceback

        traceback.print_exc()
        result, code = {"error": f"{type(err).__name__}: {err}"[:500]}, 1
    (work / f"{args.step}.json").write_text(json.dumps(result, indent=1, default=str))
    if args.step == "check":  # pairs reads it
        (work / "check.json").write_text(json.dumps(result, default=str))
    bad = result.get("exit", 0) not in (0, None)
    return code or int(bad)


# ---------------------------------------------------------------------------------------------
# report


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join("-" if c is None else str(c) for c in r) + " |" for r in rows]
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The session as markdown: one section per step."""
    steps = results["steps"]
    env = steps.get("env", {})
    title = "GPU session" + (
        " (dry run: CPU, interpreter, tiny sizes)" if results["dry_run"] else ""
    )
    lines = [f"# {title}", ""]
    lines += [f"- {k}: {env[k]}" for k in ("gpu", "capability", "torch", "triton", "cuda",
                                          "nvidia_smi", "python") if k in env]  # fmt: skip
    lines += ["", "| step | status | seconds |", "|---|---|---:|"]
    lines += [f"| {name} | {s['status']} | {s['seconds']} |" for name, s in steps.items()]
    if "tests" in steps:
        lines += ["", "## Tests", "", f"`{steps['tests'].get('command', '')}`: "
                  f"{steps['tests'].get('summary', steps['tests'].get('error', ''))}"]  # fmt: skip
    if steps.get("check", {}).get("rows"):
        c = steps["check"]
        lines += ["", f"## tritri check, sm_{c['arch']} (static)", ""]
        lines += _table(
            ["kernel", "variant", "regs", "spill B", "warps/SM", "instr/pair"],
            [
                [
                    r["kernel"],
                    r["variant"],
                    r["registers"],
                    r["spill_bytes"],
                    r["occupancy"],
                    r["instructions_per_pair"],
                ]
                for r in c["rows"]
            ],
        )
        lines += [f"- {f}" for f in c.get("failures", [])]
    if steps.get("timings", {}).get("rows"):
        lines += ["", "## Timings (median ms)", ""]
        table: dict[tuple, dict[str, Any]] = {}
        for r in steps["timings"]["rows"]:
            key = (r["case"], r["colors"], r["dtype"], r["pass"])
            value = r.get("ms", r.get("skipped", "error" if "error" in r else None))
            table.setdefault(key, {})[r["impl"]] = value
        impls = ["triton", "compiled", "torch", "dense"]
        body = []
        for key, cells in table.items():
            t = cells.get("triton")
            ratio = [
                f"{cells[i] / t:.3g}x"
                if isinstance(cells.get(i), float) and isinstance(t, float) and t > 0
                else "-"
                for i in ("torch", "dense")
            ]
            body.append([*key, *[cells.get(i) for i in impls], *ratio])
        lines += _table(["case", "colors", "dtype", "pass", *impls, "torch / triton",
                         "dense / triton"], body)  # fmt: skip
    if "losses" in steps:
        lines += [
            "",
            "## Loss stack vs the naive composition",
            "",
            "```",
            *steps["losses"].get("lines", [steps["losses"].get("error", "")]),
            "```",
        ]
    if "tune" in steps:
        t = steps["tune"]
        lines += ["", "## Tune", "", f"`{t.get('command', '')}`: exit {t.get('exit')}, "
                  f"wrote {', '.join(t.get('files', [])) or 'nothing'}"]  # fmt: skip
    if steps.get("pairs", {}).get("rows"):
        lines += ["", "## ns per (triangle, pixel) pair, measured, beside the static count", ""]
        lines += _table(["case", "kernel", "binning", "pairs", "ms", "ns/pair", "instr/pair"],
                        [[r["case"], r["kernel"], r["binning"], r["pairs"], r["ms"],
                          r["ns_per_pair"], r["instructions_per_pair"]]
                         for r in steps["pairs"]["rows"]])  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (the device tool's $OUT)")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU rehearsal: the interpreter, tiny sizes, no tuning")  # fmt: skip
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole session (default 480: 8 minutes; a dry run, "
                    "whose limits only catch a hang, 1800)")  # fmt: skip
    ap.add_argument("--skip", nargs="*", default=[], choices=STEPS, help="steps to leave out")
    ap.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)  # one step (internal)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.budget is None:
        args.budget = 1800.0 if args.dry_run else 480.0
    if args.step is None:
        return drive(args)
    args.limit = args.budget * STEP_SHARE[args.step]
    return run_step(args)


if __name__ == "__main__":
    sys.exit(main())
