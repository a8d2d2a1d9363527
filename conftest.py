"""Root pytest setup, loaded before tests/ and perf/.

Without a CUDA GPU (no ``nvidia-smi`` on PATH) the Triton kernels run under the Triton interpreter,
which must be switched on before any kernel module is imported. With a GPU they run natively unless
TRITON_INTERPRET is set explicitly.
"""

from __future__ import annotations

import os
import shutil

if "TRITON_INTERPRET" not in os.environ and shutil.which("nvidia-smi") is None:
    os.environ["TRITON_INTERPRET"] = "1"
