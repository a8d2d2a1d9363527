"""Run the perf suites against this machine's stored baseline.

    python perf/run.py compare   # fail on a median regression over 10% vs the stored baseline
    python perf/run.py save      # record a new baseline for this machine
    python perf/run.py table     # run once and print the tritri / reference / naive ratio table

Baselines live in ``perf/baselines/<machine-slug>/`` (the GPU model's config slug on a GPU, else
``cpu_<model>_<cores>c``). Extra arguments go to pytest (e.g. ``-k render``).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
THRESHOLD = "median:10%"


def machine_slug() -> str:
    import torch

    from tritri.tuning import device_slug

    if torch.cuda.is_available():
        return device_slug(torch.cuda.get_device_name())
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1] for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu_{device_slug(model).strip('_')}_{os.cpu_count()}c"


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("compare", "save", "table"):
        print(__doc__)
        return 2
    action, extra = argv[0], argv[1:]
    storage = HERE / "baselines" / machine_slug()
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(HERE),
        "-q",
        "--benchmark-enable",
        f"--benchmark-storage=file://{storage}",
        "--benchmark-columns=min,median,iqr,rounds",
    ]
    if action == "save":
        cmd.append("--benchmark-save=baseline")
    elif action == "compare":
        if not storage.exists():
            print(f"no baseline for this machine in {storage}: run `python perf/run.py save` first")
            return 1
        cmd += ["--benchmark-compare", f"--benchmark-compare-fail={THRESHOLD}"]
    else:
        out = storage / "last-run.json"
        storage.mkdir(parents=True, exist_ok=True)
        cmd.append(f"--benchmark-json={out}")
    rc = subprocess.call(cmd + extra)
    if action == "table" and rc == 0:
        rc = subprocess.call(
            [sys.executable, str(HERE / "report.py"), str(storage / "last-run.json")]
        )
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
