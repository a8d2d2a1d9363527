"""perf/gpu_session.py: the one-command GPU session, rehearsed on the CPU so that it cannot rot.

The dry run executes every step (the interpreter, tiny sizes, ``tritri check`` of one kernel
family, ``tritri tune --help``); the report is checked on a rehearsal and on a made-up GPU
session with skipped and failed cells.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_dry_run_runs_every_step_and_writes_what_the_device_tool_brings_back(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "perf" / "gpu_session.py"), "--dry-run", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["check.json", "session.json", "session.log", "session.md"]
    # the device tool brings back at most 8 files, 2 folders deep, plainly named
    assert all(re.fullmatch(r"[A-Za-z0-9._/-]+", f) and f.count("/") <= 2 for f in files)
    result = json.loads((out / "session.json").read_text())
    steps = result["steps"]
    assert list(steps) == ["env", "tests", "check", "timings", "losses", "tune", "pairs"]
    assert all(s["status"] == "ok" for s in steps.values()), steps
    assert steps["env"]["interpreter"] is True
    assert "passed" in steps["tests"]["summary"]
    assert {r["kernel"] for r in steps["check"]["rows"]} == {"log_sum_kernel"}
    timings = steps["timings"]["rows"]
    impls = {r["impl"] for r in timings}
    assert impls == {"triton", "compiled", "torch", "dense"}
    assert {(r["colors"], r["dtype"], r["pass"]) for r in timings} == {
        (c, d, p) for c in ("flat", "per-vertex") for d in ("float32", "bfloat16")
        for p in ("forward", "forward+backward")
    }  # fmt: skip
    assert all(r["ms"] > 0 for r in timings), [r for r in timings if "ms" not in r]
    assert any("median ratio" in line for line in steps["losses"]["lines"])
    pairs = steps["pairs"]["rows"]
    assert [r["kernel"] for r in pairs] == ["raster_forward_kernel", "raster_backward_kernel"]
    # 2 images x (16 px)² of (16-px tiles): every (tile, triangle) pair of the exact binning
    assert all(r["pairs"] > 0 and r["pairs"] % 256 == 0 and r["ns_per_pair"] > 0 for r in pairs)
    report = (out / "session.md").read_text()
    for heading in ("## Tests", "## tritri check, sm_90", "## Timings", "## Loss stack",
                    "## Tune", "## ns per"):  # fmt: skip
        assert heading in report


def test_report_of_a_gpu_session_with_gaps(perf_script):
    session = perf_script("gpu_session")
    rows = [
        {"case": "c", "colors": "flat", "dtype": "float32", "pass": "forward", "impl": "triton",
         "ms": 2.0},
        {"case": "c", "colors": "flat", "dtype": "float32", "pass": "forward", "impl": "torch",
         "ms": 50.0},
        {"case": "c", "colors": "flat", "dtype": "float32", "pass": "forward", "impl": "dense",
         "skipped": "does not fit"},
        {"case": "c", "colors": "flat", "dtype": "float32", "pass": "forward", "impl": "compiled",
         "error": "boom"},
    ]  # fmt: skip
    results = {
        "dry_run": False,
        "steps": {
            "env": {"status": "ok", "seconds": 1, "gpu": "NVIDIA H200", "capability": "9.0"},
            "timings": {"status": "stopped at its 144-s limit", "seconds": 144, "rows": rows},
            "tune": {"status": "exit 1", "seconds": 3, "command": "-m tritri tune", "exit": 1},
        },
    }
    text = session.markdown(results)
    assert "- gpu: NVIDIA H200" in text
    assert "| timings | stopped at its 144-s limit | 144 |" in text
    assert "| c | flat | float32 | forward | 2.0 | error | 50.0 | does not fit | 25x | - |" in text
    assert "wrote nothing" in text
