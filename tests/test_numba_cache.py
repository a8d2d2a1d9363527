"""numba's on-disk cache when no location is writable (docs/SPEC.md section 2.2): tritri falls
back to a private temporary directory, or to no disk cache, with one line saying so, and never
fails to import or run.

numba looks for a cache location next to the source (``__pycache__``), then in the user's cache
directory (``$XDG_CACHE_HOME/numba``), unless ``NUMBA_CACHE_DIR`` names one; with none of them
writable it raises "cannot cache function ...: no locator available" when a ``cache=True``
function is defined (at import). The subprocess test builds that situation without needing a
non-root user: a copy of the package whose ``__pycache__`` entries are plain files and an
``XDG_CACHE_HOME`` that is a file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Every module of the package that defines numba functions (all through tritri.cpu.numba_cache).
NUMBA_MODULES = (
    "tritri.cpu.numba_kernels",
    "tritri.fitting.greedy",
    "tritri.fitting.delaunay",
    "tritri.fitting.cpu_geometry",
    "tritri.fitting.cpu_objective",
)

_SCRIPT = f"""
import importlib, math
for name in {NUMBA_MODULES!r}:
    importlib.import_module(name)
from tritri.fitting.cpu_geometry import _finite
assert _finite(1.0) and not _finite(math.nan)  # compiles and runs (and caches if it can)
print("ok")
"""


def _unwritable_package(tmp_path: Path) -> Path:
    """A copy of the tritri package where numba finds no writable cache location."""
    root = tmp_path / "site"
    shutil.copytree(REPO / "tritri", root / "tritri",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
    for folder in [root / "tritri", *(p for p in (root / "tritri").rglob("*") if p.is_dir())]:
        (folder / "__pycache__").write_text("not a directory\n")
    return root


def _run(tmp_path: Path, root: Path, tmpdir: Path) -> subprocess.CompletedProcess:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a cache directory would go\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env.update(PYTHONPATH=str(root), XDG_CACHE_HOME=str(blocker), HOME=str(blocker),
               TMPDIR=str(tmpdir), PYTHONDONTWRITEBYTECODE="1")  # fmt: skip
    return subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)  # fmt: skip


def test_no_writable_cache_location_falls_back_to_a_temporary_directory(tmp_path):
    root = _unwritable_package(tmp_path)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = _run(tmp_path, root, tmpdir)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout.strip() == "ok"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "numba" in lines[0] and str(tmpdir) in lines[0] and "NUMBA_CACHE_DIR" in lines[0]
    # The compiled function was cached there (index files of cpu_geometry).
    cached = list(tmpdir.rglob("cpu_geometry*.nbi"))
    assert cached, sorted(str(p) for p in tmpdir.rglob("*"))
    # A second process finds the same directory and says the same one line.
    again = _run(tmp_path, root, tmpdir)
    assert again.returncode == 0 and len(again.stderr.strip().splitlines()) == 1, again.stderr


def test_without_any_cache_location_numba_compiles_in_memory(monkeypatch, caplog):
    """No location at all, not even a temporary one: the functions compile without a disk
    cache, and one line says so."""
    numba_caching = pytest.importorskip("numba.core.caching")
    from tritri.cpu import numba_cache

    impl = getattr(numba_caching, "CacheImpl", None) or numba_caching._CacheImpl
    monkeypatch.setattr(impl, "_locator_classes", [])  # numba finds no location anywhere
    monkeypatch.setattr(numba_cache, "_policy", None)  # decide afresh

    @numba_cache.njit()
    def twice(x):
        return 2 * x

    assert twice(21) == 42
    assert numba_cache._policy == numba_cache.NO_DISK_CACHE
    messages = [r.getMessage() for r in caplog.records if r.name == "tritri"]
    assert len(messages) == 1 and "without a disk cache" in messages[0], messages


def test_every_numba_function_goes_through_the_one_policy():
    """No module defines numba functions with numba's own decorator (the policy is in one place:
    tritri.cpu.numba_cache)."""
    offenders = []
    for path in (REPO / "tritri").rglob("*.py"):
        if path.name == "numba_cache.py":
            continue
        text = path.read_text(encoding="utf-8")
        if "from numba import njit" in text or "numba.njit" in text or "cache=True" in text:
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders, offenders
