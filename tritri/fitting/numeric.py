"""The numpy math the fit's modules share: logits, sigmoids, array conversion and PSNR.

Torch-free (a tensor is converted without importing torch), so the CPU fit, the starts and the
writers all use these one definitions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["LOGIT_EPS", "as_numpy", "logit", "psnr", "sigmoid"]

LOGIT_EPS = 1e-3  # values are clamped to [LOGIT_EPS, 1 - LOGIT_EPS] before taking logits


def logit(x: np.ndarray) -> np.ndarray:
    """``log(x / (1 - x))`` with ``x`` clamped to ``[1e-3, 1 - 1e-3]`` (like the torch params)."""
    x = np.clip(np.asarray(x), LOGIT_EPS, 1.0 - LOGIT_EPS)
    return np.log(x) - np.log1p(-x)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))``, without overflow for large ``|x|``; keeps a float dtype."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    e = np.exp(-np.abs(x))  # in (0, 1]
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


def as_numpy(x: Any, dtype: type = np.float32) -> np.ndarray:
    """A torch tensor (any device, with or without grad) or array-like as a numpy array of
    ``dtype`` (float32 or float64), without importing torch."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = (x.double() if dtype == np.float64 else x.float()).numpy()
    return np.asarray(x, dtype=dtype)


def psnr(pred: Any, target: Any) -> float:
    """PSNR in dB of an image in [0, 1] against ``target`` (``pred`` is clamped to [0, 1] first;
    inf when equal). Torch tensors are reduced on their own device in float32, arrays in float64."""
    if hasattr(pred, "detach"):
        diff = pred.detach().float().clamp(0, 1) - target.detach().float()
        mse = float((diff * diff).mean())
    else:
        diff = np.clip(np.asarray(pred, np.float64), 0.0, 1.0) - np.asarray(target, np.float64)
        mse = float(np.mean(diff * diff))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)
