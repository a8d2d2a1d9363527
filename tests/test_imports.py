"""Import costs and the package's lazy names: the torch-free modules of the CPU fit path, and
``tritri.render`` staying the function whichever way it is first reached."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Modules that must import without importing torch (``import torch`` costs seconds).
TORCH_FREE = [
    "tritri",
    "tritri.cli",
    "tritri.fit",
    "tritri.fitting",
    "tritri.fitting.export",
    "tritri.fitting.starts",
    "tritri.losses",
    "tritri.losses.checks",
    "tritri.losses.monitor",
    "tritri.fitting.schedule",  # the numpy loop's schedule, where this build has it
]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def _exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_torch_free_modules_do_not_import_torch() -> None:
    names = [name for name in TORCH_FREE if _exists(name)]
    code = (
        "import sys\n"
        f"import {', '.join(names)}\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not loaded, [m for m in sys.modules if m.startswith('tritri')]\n"
        "print('ok')\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_render_is_the_function_however_it_is_reached() -> None:
    code = (
        "import sys, types\n"
        "import tritri\n"
        "assert 'torch' not in sys.modules\n"
        "f = tritri.render\n"  # the lazy attribute imports the submodule
        "assert callable(f) and not isinstance(f, types.ModuleType), f\n"
        "import tritri.render\n"
        "assert tritri.render is f, tritri.render\n"
        "from tritri.render import render, TriangleRenderer\n"
        "assert render is f and tritri.TriangleRenderer is TriangleRenderer\n"
        "assert isinstance(sys.modules['tritri.render'], types.ModuleType)\n"
        "print('ok')\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    # the submodule imported first, by the import statement
    proc2 = _run(
        "import types, tritri.render\n"
        "assert callable(tritri.render) and not isinstance(tritri.render, types.ModuleType)\n"
        "print('ok')\n"
    )
    assert proc2.returncode == 0, proc2.stderr


def test_package_names_in_process() -> None:
    import tritri
    import tritri.render  # the submodule import must not shadow the function

    module = sys.modules["tritri.render"]
    assert tritri.render is module.render and callable(tritri.render)
    assert tritri.TriangleRenderer is module.TriangleRenderer
    assert not isinstance(tritri.render, types.ModuleType)
    assert tritri.__all__ == [
        "render",
        "TriangleRenderer",
        "losses",
        "reference",
        "tuning",
        "__version__",
    ]
    assert {"render", "TriangleRenderer", "__version__"} <= set(dir(tritri))
    assert tritri.losses is sys.modules["tritri.losses"]
    import tritri.fitting

    assert callable(tritri.fitting.save_triangles_json)
    assert {"TriangleParams", "fit_triangles", "load_image"} <= set(dir(tritri.fitting))
