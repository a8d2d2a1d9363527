"""Root pytest setup, loaded before tests/ and perf/.

Without a CUDA GPU (no ``nvidia-smi`` on PATH) the Triton kernels run under the Triton interpreter,
which must be switched on before any kernel module is imported. With a GPU they run natively unless
TRITON_INTERPRET is set explicitly. Under pytest-xdist (README's test command) it also caps each
worker's torch / BLAS threads at its share of the cores.
"""

from __future__ import annotations

import os
import shutil

import pytest

if "TRITON_INTERPRET" not in os.environ and shutil.which("nvidia-smi") is None:
    os.environ["TRITON_INTERPRET"] = "1"

# Under pytest-xdist each worker's torch (OpenMP) and BLAS threads share the cores with the other
# workers': without a cap they oversubscribe and spin (CI's Triton tests ran 1.5x slower on 2
# cores). Each worker gets its share, unless the caller set a count; numba keeps its own.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
if _WORKERS > 1:
    _share = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, _share)


#: Test files whose tests must run on one pytest-xdist worker (they share an expensive session
#: fixture: the compile check's rows). ``--dist loadgroup`` groups them here, by path: pytest 9
#: keeps a node's id in ``Node._id``, and xdist 3.8 rewrites ``_nodeid`` for its own
#: ``xdist_group`` marker, which so groups nothing.
ONE_WORKER_FILES = ("tests/test_kernel_check.py",)

try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # no pytest-xdist: the suite runs in one process
    pass
else:

    class _FileGroups(LoadScopeScheduling):
        """``load`` (a test at a time to the next free worker), except for ONE_WORKER_FILES."""

        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if path in ONE_WORKER_FILES else nodeid

    @pytest.hookimpl(optionalhook=True)  # `-p no:xdist` leaves the hook undeclared
    def pytest_xdist_make_scheduler(config, log):
        if config.getoption("dist") != "loadgroup":
            return None
        return _FileGroups(config, log)
