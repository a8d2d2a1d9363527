"""``tritri check``: every kernel compiles for real GPUs (sm_80, sm_90) and the raster kernels
meet their register / spill / instruction budgets at the default config.

The compile runs once per module in a subprocess without the Triton interpreter (the kernels must
import as compilable functions), into the user's Triton cache, as ``tritri check`` does: a second
run of the suite (CI's TRITON_INTERPRET=0 step) finds the cubins there. It needs no GPU.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tritri.kernels import FP_FUSION
from tritri.tuning import kernel_cost

# One worker runs this whole file under pytest-xdist (--dist loadgroup: conftest.py's
# ONE_WORKER_FILES), so that the compile runs once.
# CI's oldest-stack step checks one arch (TRITRI_CHECK_ARCHS=90) to stay within its time budget
ARCHS = tuple(int(a) for a in os.environ.get("TRITRI_CHECK_ARCHS", "80,90").split(","))

# Budgets at the default config (issue 10): flat colors; per-vertex colors within 1.5x.
FORWARD = {"registers": 64, "instructions_per_pair": 40}
BACKWARD = {"registers": 128, "instructions_per_pair": 120}
PER_VERTEX = 1.5
# The backward without lane shuffles (a tl.sum per column: where the compiler does not lay the rows
# along the lanes, triton 3.6; test_backward_shuffles_run_along_the_lanes says where): correct,
# and held to what it costs there (flat 140-201, per-vertex 248-384 instructions per pair on
# triton 3.6, sm_80 / sm_90) with a few percent to spare.
BACKWARD_FALLBACK = {"registers": 128, "instructions_per_pair": 210}
PER_VERTEX_FALLBACK = 1.9


def _check_env(cache: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # Triton's default the other way round: a launcher that does not pin FP fusion shows
    env["TRITON_DEFAULT_FP_FUSION"] = "0" if FP_FUSION else "1"
    if cache is not None:
        env["TRITON_CACHE_DIR"] = str(cache)
    return env


# session scope: under xdist a worker may run other files between this file's tests, which tears
# a module fixture down and compiles everything again
@pytest.fixture(scope="session")
def check_rows(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("check")
    out = tmp / "rows.json"
    arch = ",".join(map(str, ARCHS))
    proc = subprocess.run(
        [sys.executable, "-m", "tritri", "check", "--arch", arch, "--json", str(out)],
        env=_check_env(), capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    # a clean exit (triton 3.9's nanobind reported leaked objects after tritri's exit-time freeze)
    assert "leaked" not in proc.stderr, proc.stderr[-4000:]
    rows = json.loads(out.read_text())
    assert rows, "tritri check wrote no rows"
    return rows


def test_every_kernel_variant_compiles_for_each_arch(check_rows):
    assert not [r for r in check_rows if "error" in r]
    seen = {(r["arch"], r["kernel"]) for r in check_rows}
    kernels = {"raster_forward_kernel", "raster_backward_kernel", "loss_level_fwd_kernel",
               "loss_level_bwd_kernel", "log_sum_kernel"}  # fmt: skip
    assert seen == {(a, k) for a in ARCHS for k in kernels}
    raster = {(r["arch"], r["kernel"], r["variant"]) for r in check_rows if "raster" in r["kernel"]}
    for arch in ARCHS:
        for colors in ("flat", "per-vertex"):
            for c in (1, 3, 4):
                name = f"{colors} C={c}"
                for walk in ("scan", "sorted", "sorted, overflow scan"):
                    assert (arch, "raster_forward_kernel", f"{name} {walk}") in raster
                    assert (arch, "raster_backward_kernel", f"{name} {walk}") in raster
                assert (arch, "raster_backward_kernel", f"{name} sorted deterministic") in raster
    required = {"arch", "kernel", "variant", "config", "default", "registers", "spill_bytes",
                "shared_bytes", "occupancy", "loop_instructions", "pairs_per_trip",
                "instructions_per_pair"}  # fmt: skip
    assert all(required <= set(r) for r in check_rows)


def test_no_default_config_spills(check_rows):
    spills = [(r["arch"], r["kernel"], r["variant"], r["spill_bytes"]) for r in check_rows
              if r["default"] and r["spill_bytes"]]  # fmt: skip
    assert not spills


def test_raster_kernels_meet_their_budgets(check_rows):
    over = []
    for r in check_rows:
        if "raster" not in r["kernel"]:
            continue
        per_vertex = r["variant"].startswith("per-vertex")
        if "forward" in r["kernel"]:
            budget, scale = FORWARD, PER_VERTEX if per_vertex else 1.0
        elif r.get("shuffles", True):
            budget, scale = BACKWARD, PER_VERTEX if per_vertex else 1.0
        else:
            budget, scale = BACKWARD_FALLBACK, PER_VERTEX_FALLBACK if per_vertex else 1.0
        for key, limit in budget.items():
            if r[key] > limit * scale:
                over.append((r["arch"], r["kernel"], r["variant"], key, r[key], limit * scale))
        assert r["loop_instructions"] and r["pairs_per_trip"] >= 1
    assert not over


def test_backward_warps_follow_the_per_pixel_state():
    """At the default tile 16 and one warp a thread holds 8 pixels, each with T, its stop
    threshold, the remaining color and C gradient channels: (3 + C) * 8 registers. The launcher
    doubles the warps when that passes the architecture's limit (48; 40 on sm_100-119, where
    ptxas spills flat C = 3 at one warp), which is what keeps every default above spill-free."""
    from tritri.kernels.raster_backward import backward_warps

    assert [backward_warps(16, 1, c, 90) for c in (1, 3, 4)] == [1, 1, 2]
    assert [backward_warps(16, 1, c, 100) for c in (1, 3, 4)] == [1, 2, 2]
    assert [backward_warps(16, 1, c, 120) for c in (1, 3, 4)] == [1, 1, 2]
    assert backward_warps(16, 2, 3, 90) == 2  # never fewer than asked
    assert backward_warps(8, 1, 4, 90) == 1  # 2 pixels per thread: room enough


def _res_usage(cubin: str) -> tuple[int, int]:
    """Registers and stack + local bytes, read with cuobjdump independently of kernel_cost."""
    text = subprocess.run([kernel_cost.tool_path("cuobjdump"), "-res-usage", cubin],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    fields = dict(re.findall(r"(\w+):(\d+)", text.split("Function", 1)[1]))
    return int(fields["REG"]), int(fields["STACK"]) + int(fields["LOCAL"])


def test_rows_agree_with_cuobjdump(check_rows):
    for r in check_rows:
        assert Path(r["cubin"]).is_file()
        assert _res_usage(r["cubin"]) == (r["registers"], r["spill_bytes"]), r["variant"]
        arch = re.search(r"arch\s*=\s*sm_(\d+)", kernel_cost._run("cuobjdump", "-elf", r["cubin"]))
        assert arch is None or int(arch.group(1)) == r["arch"]


def _triton_version() -> tuple[int, int]:
    import triton

    return tuple(int(x) for x in re.findall(r"\d+", triton.__version__)[:2])


def test_backward_shuffles_run_along_the_lanes(check_rows):
    """The backward sums a triangle's gradient row with butterfly shuffles in inline PTX, which
    assume that axis 2 of the walk's [1, WARPS, 32] blocks is the warp's 32 lanes. The interpreter
    cannot check that (it emulates the shuffle by index); the compiled layout can. Every launch
    ``tritri check`` compiles is the launcher's own choice: with shuffles, every shuffle operand
    is one float per thread, 32 threads along axis 2, the warps along axis 1 (a row of K columns
    takes 2**ceil(log2 K) - 1 shuffles, plus one per lane bit above that); without (the launcher
    found another layout: triton 3.6), no shuffle is left and each column is a reduction along
    axis 2, which the compiler lowers right whatever the layout."""
    rows = [r for r in check_rows if r["kernel"] == "raster_backward_kernel"]
    assert rows
    for r in rows:
        ttgir = Path(r["cubin"]).with_suffix(".ttgir").read_text()
        layouts = dict(re.findall(r"^(#blocked\d*) = #ttg\.blocked<\{(.*)\}>", ttgir, re.M))
        shuffles = re.findall(
            r'"shfl\.sync\.bfly\.b32 [^"]*".*?: tensor<1x(\d+)x32xf32, (#blocked\d*)> ->', ttgir
        )
        axis2_sums = re.findall(r'"tt\.reduce"\(.*\) <\{axis = 2 : i32\}>', ttgir)
        C = int(re.search(r"C=(\d)", r["variant"]).group(1))
        K = 19 + 3 * C if r["variant"].startswith("per-vertex") else 10 + C
        log2 = (K - 1).bit_length()
        warps = r["config"]["num_warps"]
        assert r["shuffles"] in (True, False), r["variant"]
        if not r["shuffles"]:
            assert ttgir.count("shfl.sync") == 0, r["variant"]
            assert len(axis2_sums) >= K, r["variant"]  # one per column (and the early exit's)
            continue
        assert ttgir.count("shfl.sync.bfly") == len(shuffles), r["variant"]
        assert len(shuffles) == 2**log2 - 1 + 5 - log2, r["variant"]
        for n, name in shuffles:
            assert int(n) == warps
            layout = layouts[name]
            assert "sizePerThread = [1, 1, 1]" in layout, layout
            assert "threadsPerWarp = [1, 1, 32]" in layout, layout
            assert f"warpsPerCTA = [1, {warps}, 1]" in layout, layout
    if _triton_version() >= (3, 7):
        # these compilers lay the rows along the lanes: the fast path is what the budgets measure
        assert all(r["shuffles"] for r in rows), [r["variant"] for r in rows if not r["shuffles"]]


# A shuffle as triton 3.6 compiles the backward (the rows spread over 4 lanes x 8 registers) and
# as 3.7 does (one float per lane), cut from their TTGIR.
_TTGIR_36 = """#blocked = #ttg.blocked<{sizePerThread = [1, 1, 1], threadsPerWarp = [8, 1, 4], \
warpsPerCTA = [1, 1, 1], order = [0, 1, 2]}>
#blocked1 = #ttg.blocked<{sizePerThread = [1, 1, 1], threadsPerWarp = [1, 1, 32], \
warpsPerCTA = [1, 1, 1], order = [2, 1, 0]}>
  %1 = tt.elementwise_inline_asm "shfl.sync.bfly.b32 $0, $1, 8, 0x1f, -1;" {constraints = \
"=r,r", packed_element = 1 : i32, pure = true} %0 : tensor<1x1x32xf32, #blocked> -> \
tensor<1x1x32xf32, #blocked> loc(#loc5)
"""


def test_lane_shuffles_hold_only_for_rows_along_the_lanes():
    from tritri.kernels.raster_backward import lane_shuffles_hold

    lanes = _TTGIR_36.replace("tensor<1x1x32xf32, #blocked>", "tensor<1x1x32xf32, #blocked1>")
    assert lane_shuffles_hold(lanes, 1)
    assert not lane_shuffles_hold(_TTGIR_36, 1)  # triton 3.6's layout
    assert not lane_shuffles_hold(lanes, 2)  # the warps are not along axis 1
    assert not lane_shuffles_hold(lanes.replace("sizePerThread = [1, 1, 1]", "sizePerThread = "
                                                "[1, 1, 2]"), 1)  # fmt: skip
    two_warps = lanes.replace("warpsPerCTA = [1, 1, 1]", "warpsPerCTA = [1, 2, 1]")
    assert lane_shuffles_hold(two_warps.replace("1x1x32", "1x2x32"), 2)
    assert not lane_shuffles_hold(lanes.replace("#blocked1>", "#linear>"), 1)  # unknown layout
    assert not lane_shuffles_hold(lanes + lanes.splitlines()[-1].replace("#blocked1", "#b"), 1)
    assert not lane_shuffles_hold("", 1)  # no shuffle: nothing to launch with shuffles


def test_every_launch_pins_fp_fusion(check_rows):
    """The launchers pass enable_fp_fusion (tritri.kernels.FP_FUSION) rather than take Triton's
    default, which the check runs with the other value: every cubin, read back through its
    metadata, has FP_FUSION, the raster forward's and backward's alike (the backward replays the
    forward's decisions)."""
    for r in check_rows:
        meta = json.loads(Path(r["cubin"]).with_suffix(".json").read_text())
        assert meta["enable_fp_fusion"] is FP_FUSION is r["fp_fusion"], (r["kernel"], r["variant"])


def test_instructions_per_pair_is_the_hot_loop_over_its_pairs(check_rows):
    # one raster row per (kernel, colors, C) on one arch: reading every cubin's SASS again cost
    # 16 s, and the rows of one kind differ only in the walk the check already tells apart
    seen = set()
    for r in check_rows:
        kind = (r["kernel"], *r["variant"].split()[:2])  # (kernel, "per-vertex", "C=3")
        if r["pairs_per_trip"] and r["arch"] == ARCHS[-1] and kind not in seen:
            seen.add(kind)
            loop = kernel_cost.hot_loop(kernel_cost.sass_instructions(r["cubin"]))
            assert len([t for t in loop if not t.startswith("NOP")]) == r["loop_instructions"]
            assert r["instructions_per_pair"] == round(
                r["loop_instructions"] / r["pairs_per_trip"], 1
            )


# ---------------------------------------------------------------------------------------------
# the pieces, on synthetic input


def _sass(lines: list[str]) -> list[tuple[int, str]]:
    return [(16 * i, text) for i, text in enumerate(lines)]


def test_hot_loop_is_the_largest_innermost_loop():
    code = _sass([
        "MOV R0, RZ",  # 0x00
        "IADD3 R1, R1, 0x1, RZ",  # 0x10 outer head
        "FADD R2, R2, 1",  # 0x20 inner head
        "FADD R2, R2, 1",
        "FADD R2, R2, 1",
        "@P0 BRA 0x20",  # 0x50 inner back edge: 4 instructions
        "IADD3 R3, R3, 0x1, RZ",
        "@P1 BRA 0x10",  # 0x70 outer back edge
        "FMUL R4, R4, R4",  # 0x80 second loop head
        "FMUL R4, R4, R4",
        "@P2 BRA P3, 0x80",  # 0xa0 back edge with a second predicate: 3 instructions
        "EXIT",
        "BRA 0xc0",  # the self-branch after EXIT is no loop
        "FFMA R9, R9, R9, R9",  # 0xd0 unreachable block branching back: no loop
        "BRA 0x20",
    ])  # fmt: skip
    loop = kernel_cost.hot_loop(code)
    assert loop == ["FADD R2, R2, 1"] * 3 + ["@P0 BRA 0x20"]
    assert kernel_cost.hot_loop(_sass(["MOV R0, RZ", "EXIT", "BRA 0x20"])) is None


def test_occupancy_by_registers_warps_and_shared_memory():
    # 65536 registers / (128 regs * 32 threads) = 16 one-warp blocks
    assert kernel_cost.occupancy_warps(90, 128, 1, 0) == 16
    # 64 registers, 2 warps: 65536 / (64 * 64) = 16 blocks by registers -> 32 warps
    assert kernel_cost.occupancy_warps(90, 64, 2, 1024) == 32
    # allocation is per warp in units of 256 registers: 65 regs count as 72
    assert kernel_cost.occupancy_warps(90, 65, 4, 0) == 4 * (65536 // (72 * 32 * 4))
    # sm_86 holds 48 warps; shared memory limits blocks: 100 KB / (40 KB + 1 KB) = 2
    assert kernel_cost.occupancy_warps(86, 32, 4, 40 * 1024) == 8


def test_a_global_the_compiler_rejects_is_a_compile_failure(tmp_path):
    """The bug that broke every raster kernel on every GPU while the interpreter was happy: an
    annotated module global. Compiling for a real target catches it."""
    module = tmp_path / "broken_kernel.py"
    module.write_text(
        "import triton\nimport triton.language as tl\n\n"
        "LIMIT: tl.constexpr = 0.5\n\n\n"
        "@triton.jit\ndef broken(x_ptr):\n"
        "    tl.store(x_ptr, tl.minimum(tl.load(x_ptr), LIMIT))\n"
    )
    script = (
        "import sys, torch\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from tritri.tuning.kernel_cost import capture_launches, compile_launch\n"
        "import broken_kernel\n"
        "with capture_launches() as launches:\n"
        "    broken_kernel.broken[(1,)](torch.ones(1))\n"
        "try:\n"
        "    compile_launch(launches[0], 90)\n"
        "except Exception as err:\n"
        "    print('FAILED', type(err).__name__, err)\n"
        "else:\n"
        "    print('COMPILED')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], env=_check_env(tmp_path / "cache"),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert "FAILED" in proc.stdout and "LIMIT" in proc.stdout, proc.stdout + proc.stderr


def test_failures_name_kernel_variant_and_arch():
    from tritri.tuning.check import failures

    rows = [
        {"arch": 80, "kernel": "k1", "variant": "v1", "default": True, "error": "boom"},
        {"arch": 90, "kernel": "k2", "variant": "v2", "default": True, "spill_bytes": 8},
        {"arch": 90, "kernel": "k3", "variant": "v3", "default": False, "spill_bytes": 8},
        {"arch": 90, "kernel": "k4", "variant": "v4", "default": True, "spill_bytes": 0},
    ]
    lines = failures(rows)
    assert len(lines) == 2
    assert "k1 [v1] sm_80" in lines[0] and "boom" in lines[0]
    assert "k2 [v2] sm_90" in lines[1] and "8 B" in lines[1]


def test_kernels_option_names_the_families():
    import argparse

    from tritri.tuning import check

    assert {v.family for v in check.variants()} == set(check.FAMILIES)
    assert check._families("log_sum, raster_forward") == ("log_sum", "raster_forward")
    for bad in ("nope", "", "log_sum,raster"):
        with pytest.raises(argparse.ArgumentTypeError, match="--kernels"):
            check._families(bad)
