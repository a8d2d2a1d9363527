"""Helpers the fit tests share (imported as a plain module, like ``devices``)."""

from __future__ import annotations

import numpy as np


def smooth_target(H: int = 24, W: int = 32, seed: int = 0) -> np.ndarray:
    """``(3, H, W)`` float32 in [0, 1]: six smooth colored blobs, something triangles can fit."""
    y, x = np.mgrid[0:H, 0:W] / max(H, W)
    rng = np.random.default_rng(seed)
    img = np.zeros((3, H, W), np.float32)
    for _ in range(6):
        cx, cy, r = rng.random(3) * [1.3, 1.0, 0.3] + [0, 0, 0.1]
        img += rng.random((3, 1, 1)) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / r**2)
    return np.clip(img / img.max(), 0, 1).astype(np.float32)


def one_line_error(err: str, *needles: str) -> str:
    """The ``tritri fit: error:`` line of ``err``, asserting there is exactly one, no traceback,
    and that it contains each of ``needles``."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("tritri fit: error:")]
    assert len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]
