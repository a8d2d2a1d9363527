"""Root pytest setup, loaded before tests/ and perf/.

Without a CUDA GPU (no ``nvidia-smi`` on PATH) the Triton kernels run under the Triton interpreter,
which must be switched on before any kernel module is imported. With a GPU they run natively unless
TRITON_INTERPRET is set explicitly. Under pytest-xdist (README's test command) it also caps each
worker's torch / BLAS threads at its share of the cores.
"""

from __future__ import annotations

import os
import shutil

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
