"""Helpers for the perf suites: CUDA-synchronized calls, memory checks, the backend to time."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch


def tritri_backend() -> str:
    """Triton on a GPU; on the CPU the tiled torch backend (the interpreter is not worth timing)."""
    return "triton" if torch.cuda.is_available() else "torch"


def synced(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Wrap ``fn`` so each call waits for the GPU work it queued."""
    if not torch.cuda.is_available():
        return fn

    def call():
        out = fn()
        torch.cuda.synchronize()
        return out

    return call


def fits_in_memory(n_bytes: float, device: torch.device, fraction: float = 0.5) -> bool:
    """Whether a working set of n_bytes fits in a fraction of the device's memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return n_bytes < fraction * free
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return n_bytes < fraction * pages
