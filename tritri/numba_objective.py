"""The pixel passes of the torch-free CPU fit (:mod:`tritri.fitting.cpu_fit`), in numba.

Two passes over the ``(C, H, W)`` pixels per step instead of a dozen numpy temporaries: one
composites the background and gathers every sum the step needs (the losses, the clamped PSNR's
error, the image's per-channel moments), the other writes the gradient of the objective with
respect to the rasterizer's outputs. Both run over image rows on the rasterizer's threads
(:func:`tritri.numba_raster._parallel`); each row's sums go to their own float64 row, summed in
row order afterwards, so the result does not depend on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_OPTS = {"cache": True, "nogil": True, "error_model": "numpy", "boundscheck": False}

#: Layout of :func:`pixel_sums`' result: |d|, d², (clamp(image) - target)², then per channel
#: the sum and the sum of squares of the image.
SUM_ABS, SUM_SQ, SUM_SQ_CLAMPED, CHANNEL_SUMS = 0, 1, 2, 3


@njit(**_OPTS)
def _sums_rows(color, T, background, target, image, out, y0, y1, step):
    """Rows ``range(y0, y1, step)`` of :func:`pixel_sums`: the image and ``out[y]`` (3 + 2C,)."""
    C, H, W = target.shape
    for y in range(y0, y1, step):
        for k in range(3 + 2 * C):
            out[y, k] = 0.0
        for c in range(C):
            bg = background[c]
            s = 0.0
            ss = 0.0
            for x in range(W):
                v = color[c, y, x] + T[y, x] * bg
                image[c, y, x] = v
                d = float(v) - float(target[c, y, x])
                out[y, 0] += abs(d)
                out[y, 1] += d * d
                dc = min(max(float(v), 0.0), 1.0) - float(target[c, y, x])
                out[y, 2] += dc * dc
                s += v
                ss += float(v) * float(v)
            out[y, 3 + 2 * c] = s
            out[y, 4 + 2 * c] = ss


def pixel_sums(color, T, background, target, image) -> np.ndarray:
    """``image = color + T * background`` (written, (C, H, W)) and its sums (see SUM_*), float64
    (3 + 2C,).

    color (C, H, W), T (H, W), background (C,), target (C, H, W); float32.
    """
    from tritri.numba_raster import _parallel

    C, H, _ = target.shape
    rows = np.empty((H, 3 + 2 * C), np.float64)
    _parallel(_sums_rows, H, color, T, background, target, image, rows)
    return rows.sum(axis=0)


@njit(**_OPTS)
def _grads_rows(image, target, w_abs, w_sq, T, background, grad_color, grad_T, out, y0, y1, step):
    """Rows ``range(y0, y1, step)`` of :func:`pixel_grads`; ``out[y]`` (C,): that row's part of
    the background's gradient."""
    C, H, W = target.shape
    for y in range(y0, y1, step):
        for x in range(W):
            grad_T[y, x] = 0.0
        for c in range(C):
            bg = background[c]
            acc = 0.0
            for x in range(W):
                d = image[c, y, x] - target[c, y, x]
                sgn = 1.0 if d > 0 else (-1.0 if d < 0 else 0.0)
                g = w_abs * sgn + w_sq * d
                grad_color[c, y, x] = g
                grad_T[y, x] += g * bg
                acc += g * T[y, x]
            out[y, c] = acc


def pixel_grads(image, target, w_abs, w_sq, T, background, grad_color, grad_T) -> np.ndarray:
    """With ``g = w_abs * sign(image - target) + w_sq * (image - target)``: ``grad_color = g``
    (C, H, W), ``grad_T = sum_c g * background_c`` (H, W); returns ``sum_pixels g * T`` (C,)
    float64, the background's gradient."""
    from tritri.numba_raster import _parallel

    C, H, _ = target.shape
    rows = np.empty((H, C), np.float64)
    _parallel(
        _grads_rows, H, image, target, float(w_abs), float(w_sq), T, background, grad_color,
        grad_T, rows,
    )  # fmt: skip
    return rows.sum(axis=0)
