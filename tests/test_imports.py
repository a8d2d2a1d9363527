"""Import costs and the package's lazy names: the torch-free modules of the CPU fit path, and every
public name importable."""

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
    "tritri.fitting.cli",
    "tritri.fitting.session",
    "tritri.fitting.many",
    "tritri.fitting",
    "tritri.fitting.export",
    "tritri.fitting.images",
    "tritri.fitting.outputs",
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


def test_render_is_the_function() -> None:
    code = (
        "import sys, types\n"
        "import tritri\n"
        "assert 'torch' not in sys.modules\n"
        "f = tritri.render\n"  # the lazy attribute imports tritri.rendering
        "assert callable(f) and not isinstance(f, types.ModuleType), f\n"
        "from tritri.rendering import render, TriangleRenderer\n"
        "assert render is f and tritri.TriangleRenderer is TriangleRenderer\n"
        "print('ok')\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr


#: The public names README and docs/SPEC.md show, by module: each must import and be what it says.
PUBLIC = {
    "tritri": [
        "render",
        "TriangleRenderer",
        "fitting",
        "losses",
        "reference",
        "tuning",
        "__version__",
    ],
    "tritri.fitting": None,  # None: the module's __all__
    "tritri.losses": None,
    "tritri.tuning": None,
    "tritri.cpu": None,
    "tritri.reference": ["render_dense"],
}


def test_every_public_name_imports() -> None:
    import importlib

    for module_name, names in PUBLIC.items():
        module = importlib.import_module(module_name)
        names = names if names is not None else module.__all__
        assert names, module_name
        for name in names:
            value = getattr(module, name)
            assert value is not None, f"{module_name}.{name}"
            assert name in dir(module), f"{module_name}.{name} missing from dir()"


def test_package_names_in_process() -> None:
    import tritri

    assert callable(tritri.render) and not isinstance(tritri.render, types.ModuleType)
    assert tritri.render is sys.modules["tritri.rendering"].render
    assert tritri.TriangleRenderer is sys.modules["tritri.rendering"].TriangleRenderer
    assert {"render", "TriangleRenderer", "__version__"} <= set(dir(tritri))
    assert tritri.losses is sys.modules["tritri.losses"]
    import tritri.fitting

    assert callable(tritri.fitting.save_triangles_json)
    assert {"TriangleParams", "fit_triangles", "load_image"} <= set(dir(tritri.fitting))
