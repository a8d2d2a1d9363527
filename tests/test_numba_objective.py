"""The CPU fit's pixel passes (tritri.fitting.cpu_objective) against numpy written out directly."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from tritri.fitting import cpu_objective as no  # noqa: E402


def _inputs(seed: int = 0, C: int = 3, H: int = 13, W: int = 37):
    rng = np.random.default_rng(seed)
    color = rng.uniform(-0.1, 1.1, (C, H, W)).astype(np.float32)
    T = rng.random((H, W), dtype=np.float32)
    background = rng.random(C, dtype=np.float32)
    target = rng.random((C, H, W), dtype=np.float32)
    target[:, 0, :3] = color[:, 0, :3] + T[0, :3] * background[:, None]  # d == 0 exactly
    return color, T, background, target


@pytest.mark.parametrize("C", [1, 3])
def test_pixel_sums_match_numpy(C):
    color, T, bg, target = _inputs(C=C)
    image = np.empty_like(color)
    sums = no.pixel_sums(color, T, bg, target, image)
    want_image = color + T * bg[:, None, None]
    np.testing.assert_allclose(image, want_image, rtol=1e-6, atol=1e-7)
    d = want_image.astype(np.float64) - target
    dc = np.clip(want_image.astype(np.float64), 0, 1) - target
    assert sums.shape == (3 + 2 * C,)
    np.testing.assert_allclose(sums[no.SUM_ABS], np.abs(d).sum(), rtol=1e-6)
    np.testing.assert_allclose(sums[no.SUM_SQ], np.square(d).sum(), rtol=1e-6)
    np.testing.assert_allclose(sums[no.SUM_SQ_CLAMPED], np.square(dc).sum(), rtol=1e-6)
    m = want_image.astype(np.float64).reshape(C, -1)
    np.testing.assert_allclose(sums[no.CHANNEL_SUMS :: 2], m.sum(1), rtol=1e-6)
    np.testing.assert_allclose(sums[no.CHANNEL_SUMS + 1 :: 2], np.square(m).sum(1), rtol=1e-6)


@pytest.mark.parametrize("C", [1, 3])
def test_pixel_grads_match_numpy(C):
    color, T, bg, target = _inputs(seed=1, C=C)
    image = color + T * bg[:, None, None]
    image[:, 0, :3] = target[:, 0, :3]  # sign(0) = 0
    w_abs, w_sq = 0.25, 3.0
    grad_color = np.full_like(image, np.nan)
    grad_T = np.full_like(T, np.nan)
    g_bg = no.pixel_grads(image, target, w_abs, w_sq, T, bg, grad_color, grad_T)
    d = image.astype(np.float64) - target
    g = w_abs * np.sign(d) + w_sq * d
    np.testing.assert_allclose(grad_color, g, rtol=1e-5, atol=1e-6)
    assert np.all(grad_color[:, 0, :3] == 0)
    np.testing.assert_allclose(grad_T, (g * bg[:, None, None]).sum(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_bg, (g * T).reshape(C, -1).sum(1), rtol=1e-5, atol=1e-6)
