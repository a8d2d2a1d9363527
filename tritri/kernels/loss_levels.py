"""Fused per-level perceptual + LPIPS reductions (forward and backward) and their launchers.

For one VGG level with pred features ``F`` and target features ``T`` of shape ``(B, C, H, W)``
(``P = H*W`` pixels), per sample ``n``:

* perceptual sum ``S_perc[n] = Σ_{c,p} |F - T|`` (or ``(F - T)²`` with ``MSE``);
* LPIPS sum ``S_lpips[n] = Σ_p Σ_c w_c (a_c - b_c)²`` with ``a = F / sqrt(Σ_c F_c² + eps)`` and
  ``b = T / sqrt(Σ_c T_c² + eps)`` (eps inside the square root: finite gradients at zero-norm
  features, unlike lpips's ``F / (sqrt(Σ F²) + 1e-10)``).

The forward kernel reads each ``(C, BLOCK_P)`` tile of F and T once, computes both sums and writes
one partial per program; the launcher finishes the sums in torch (deterministic, no atomics).
The backward kernel gets per-sample coefficients ``gp[n] = ∂Loss/∂S_perc[n]`` and
``gl[n] = ∂Loss/∂S_lpips[n]`` and writes ``∂Loss/∂F``::

    gp·sign(F - T)  (or gp·2(F - T))  +  g/s - F·(Σ_k g_k F_k)/s³

with ``g = 2·gl·w·(a - b)`` and ``s = sqrt(Σ_c F_c² + eps)``.

Features are read through strides, so NCHW-contiguous and channels-last tensors both work without a
copy; any dtype is loaded and cast to fp32 before the math (this also makes bf16 safe under the
interpreter). Offsets are int64.

When the whole channel axis fits one tile (``SINGLE_TILE``, the case for every VGG level with the
default config) each element of F and T is loaded exactly once per kernel. Otherwise the kernel
loops over channel chunks: two passes (forward) or three passes (backward) over the tile, the later
passes mostly hitting cache.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from tritri.configs.defaults import LEVEL_KERNELS, LEVEL_PROBLEM_KEYS
from tritri.configs.lookup import launch_config
from tritri.kernels import FP_FUSION

__all__ = [
    "LEVEL_KERNELS",
    "LEVEL_PROBLEM_KEYS",
    "level_losses_backward",
    "level_losses_forward",
]


@triton.jit
def loss_level_fwd_kernel(
    f_ptr, t_ptr, w_ptr, perc_part_ptr, lpips_part_ptr,
    C, P, n_pblocks,
    f_sn, f_sc, f_sp, t_sn, t_sc, t_sp,
    eps,
    DO_PERC: tl.constexpr, DO_LPIPS: tl.constexpr, MSE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, SINGLE_TILE: tl.constexpr,
):  # fmt: skip
    """Grid ``(n_pblocks, B)``. f/t: features (any float dtype, strides in elements); w: (C,) lin
    weights; perc_part/lpips_part: (B, n_pblocks) fp32 partial sums."""
    pid_p = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    p = pid_p.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    p_mask = p < P
    f_base = f_ptr + n * f_sn + p[None, :] * f_sp
    t_base = t_ptr + n * t_sn + p[None, :] * t_sp
    cc = tl.arange(0, BLOCK_C).to(tl.int64)[:, None]
    perc_acc = tl.zeros([BLOCK_P], tl.float32)
    lp_acc = tl.zeros([BLOCK_P], tl.float32)
    if SINGLE_TILE:
        m = (cc < C) & p_mask[None, :]
        f = tl.load(f_base + cc * f_sc, mask=m, other=0.0).to(tl.float32)
        t = tl.load(t_base + cc * t_sc, mask=m, other=0.0).to(tl.float32)
        if DO_PERC:
            d = f - t
            if MSE:
                perc_acc += tl.sum(d * d, axis=0)
            else:
                perc_acc += tl.sum(tl.abs(d), axis=0)
        if DO_LPIPS:
            w = tl.load(w_ptr + cc, mask=cc < C, other=0.0).to(tl.float32)
            inv_f = 1.0 / tl.sqrt(tl.sum(f * f, axis=0) + eps)
            inv_t = 1.0 / tl.sqrt(tl.sum(t * t, axis=0) + eps)
            dd = f * inv_f[None, :] - t * inv_t[None, :]
            lp_acc += tl.sum(w * dd * dd, axis=0)
    else:
        ssf = tl.zeros([BLOCK_P], tl.float32)
        sst = tl.zeros([BLOCK_P], tl.float32)
        for c0 in range(0, C, BLOCK_C):
            c = cc + c0
            m = (c < C) & p_mask[None, :]
            f = tl.load(f_base + c * f_sc, mask=m, other=0.0).to(tl.float32)
            t = tl.load(t_base + c * t_sc, mask=m, other=0.0).to(tl.float32)
            if DO_PERC:
                d = f - t
                if MSE:
                    perc_acc += tl.sum(d * d, axis=0)
                else:
                    perc_acc += tl.sum(tl.abs(d), axis=0)
            ssf += tl.sum(f * f, axis=0)
            sst += tl.sum(t * t, axis=0)
        if DO_LPIPS:
            inv_f = 1.0 / tl.sqrt(ssf + eps)
            inv_t = 1.0 / tl.sqrt(sst + eps)
            for c0 in range(0, C, BLOCK_C):
                c = cc + c0
                m = (c < C) & p_mask[None, :]
                f = tl.load(f_base + c * f_sc, mask=m, other=0.0).to(tl.float32)
                t = tl.load(t_base + c * t_sc, mask=m, other=0.0).to(tl.float32)
                w = tl.load(w_ptr + c, mask=c < C, other=0.0).to(tl.float32)
                dd = f * inv_f[None, :] - t * inv_t[None, :]
                lp_acc += tl.sum(w * dd * dd, axis=0)
    out = n * n_pblocks + pid_p
    if DO_PERC:
        tl.store(perc_part_ptr + out, tl.sum(perc_acc, axis=0))
    if DO_LPIPS:
        tl.store(lpips_part_ptr + out, tl.sum(lp_acc, axis=0))


@triton.jit
def _level_grad_tile(f, t, w, inv_f, inv_t, dot, gp, gl,
                     DO_PERC: tl.constexpr, DO_LPIPS: tl.constexpr, MSE: tl.constexpr):  # fmt: skip
    """∂Loss/∂F on one (BLOCK_C, BLOCK_P) tile, given the per-pixel norms and Σ_k g_k F_k."""
    df = tl.zeros(f.shape, tl.float32)
    if DO_PERC:
        d = f - t
        if MSE:
            df += (2.0 * gp) * d
        else:
            df += gp * tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0))
    if DO_LPIPS:
        g = (2.0 * gl) * w * (f * inv_f[None, :] - t * inv_t[None, :])
        df += g * inv_f[None, :] - f * (dot * inv_f * inv_f * inv_f)[None, :]
    return df


@triton.jit
def loss_level_bwd_kernel(
    f_ptr, t_ptr, w_ptr, gp_ptr, gl_ptr, df_ptr,
    C, P,
    f_sn, f_sc, f_sp, t_sn, t_sc, t_sp, d_sn, d_sc, d_sp,
    eps,
    DO_PERC: tl.constexpr, DO_LPIPS: tl.constexpr, MSE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, SINGLE_TILE: tl.constexpr,
):  # fmt: skip
    """Grid ``(n_pblocks, B)``. gp/gl: (B,) fp32 coefficients of the perceptual / LPIPS sums;
    df: output gradient, same shape as f (its own strides), written in df's dtype."""
    pid_p = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    p = pid_p.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    p_mask = p < P
    f_base = f_ptr + n * f_sn + p[None, :] * f_sp
    t_base = t_ptr + n * t_sn + p[None, :] * t_sp
    d_base = df_ptr + n * d_sn + p[None, :] * d_sp
    cc = tl.arange(0, BLOCK_C).to(tl.int64)[:, None]
    gp = 0.0
    gl = 0.0
    if DO_PERC:
        gp = tl.load(gp_ptr + n).to(tl.float32)
    if DO_LPIPS:
        gl = tl.load(gl_ptr + n).to(tl.float32)
    if SINGLE_TILE:
        m = (cc < C) & p_mask[None, :]
        f = tl.load(f_base + cc * f_sc, mask=m, other=0.0).to(tl.float32)
        t = tl.load(t_base + cc * t_sc, mask=m, other=0.0).to(tl.float32)
        w = tl.zeros([BLOCK_C, 1], tl.float32)
        inv_f = tl.zeros([BLOCK_P], tl.float32)
        inv_t = tl.zeros([BLOCK_P], tl.float32)
        dot = tl.zeros([BLOCK_P], tl.float32)
        if DO_LPIPS:
            w = tl.load(w_ptr + cc, mask=cc < C, other=0.0).to(tl.float32)
            inv_f = 1.0 / tl.sqrt(tl.sum(f * f, axis=0) + eps)
            inv_t = 1.0 / tl.sqrt(tl.sum(t * t, axis=0) + eps)
            g = (2.0 * gl) * w * (f * inv_f[None, :] - t * inv_t[None, :])
            dot = tl.sum(g * f, axis=0)
        df = _level_grad_tile(f, t, w, inv_f, inv_t, dot, gp, gl, DO_PERC, DO_LPIPS, MSE)
        tl.store(d_base + cc * d_sc, df.to(df_ptr.dtype.element_ty), mask=m)
    else:
        inv_f = tl.zeros([BLOCK_P], tl.float32)
        inv_t = tl.zeros([BLOCK_P], tl.float32)
        dot = tl.zeros([BLOCK_P], tl.float32)
        if DO_LPIPS:
            ssf = tl.zeros([BLOCK_P], tl.float32)
            sst = tl.zeros([BLOCK_P], tl.float32)
            for c0 in range(0, C, BLOCK_C):
                c = cc + c0
                m = (c < C) & p_mask[None, :]
                f = tl.load(f_base + c * f_sc, mask=m, other=0.0).to(tl.float32)
                t = tl.load(t_base + c * t_sc, mask=m, other=0.0).to(tl.float32)
                ssf += tl.sum(f * f, axis=0)
                sst += tl.sum(t * t, axis=0)
            inv_f = 1.0 / tl.sqrt(ssf + eps)
            inv_t = 1.0 / tl.sqrt(sst + eps)
            for c0 in range(0, C, BLOCK_C):
                c = cc + c0
                m = (c < C) & p_mask[None, :]
                f = tl.load(f_base + c * f_sc, mask=m, other=0.0).to(tl.float32)
                t = tl.load(t_base + c * t_sc, mask=m, other=0.0).to(tl.float32)
                w = tl.load(w_ptr + c, mask=c < C, other=0.0).to(tl.float32)
                g = (2.0 * gl) * w * (f * inv_f[None, :] - t * inv_t[None, :])
                dot += tl.sum(g * f, axis=0)
        for c0 in range(0, C, BLOCK_C):
            c = cc + c0
            m = (c < C) & p_mask[None, :]
            f = tl.load(f_base + c * f_sc, mask=m, other=0.0).to(tl.float32)
            t = tl.load(t_base + c * t_sc, mask=m, other=0.0).to(tl.float32)
            w = tl.zeros([BLOCK_C, 1], tl.float32)
            if DO_LPIPS:
                w = tl.load(w_ptr + c, mask=c < C, other=0.0).to(tl.float32)
            df = _level_grad_tile(f, t, w, inv_f, inv_t, dot, gp, gl, DO_PERC, DO_LPIPS, MSE)
            tl.store(d_base + c * d_sc, df.to(df_ptr.dtype.element_ty), mask=m)


# ---------------------------------------------------------------------------------------------
# launchers


def _spatial_strides(x: Tensor, name: str) -> tuple[Tensor, int, int, int]:
    """(tensor, stride_n, stride_c, stride_p) with H and W flattened into one pixel axis p."""
    if x.dim() != 4:
        raise ValueError(f"{name} must be (B, C, H, W), got shape {tuple(x.shape)}")
    sn, sc, sh, sw = x.stride()
    _, _, h, w = x.shape
    if not (sh == w * sw or h == 1):
        x = x.contiguous()
        sn, sc, sh, sw = x.stride()
    return x, sn, sc, sw


def _check(f: Tensor, t: Tensor, lin_w: Tensor | None, do_lpips: bool) -> None:
    if f.dim() != 4 or t.dim() != 4:
        raise ValueError(
            f"pred_features and target_features must be (B, C, H, W), got {tuple(f.shape)} and "
            f"{tuple(t.shape)}"
        )
    if t.shape[1:] != f.shape[1:] or t.shape[0] not in (1, f.shape[0]):
        raise ValueError(
            f"target_features {tuple(t.shape)} does not match pred_features {tuple(f.shape)} "
            "(its batch may be 1 or the same)"
        )
    if t.device != f.device:
        raise ValueError(f"target_features is on {t.device}, pred_features on {f.device}")
    if do_lpips and (lin_w is None or lin_w.numel() != f.shape[1]):
        raise ValueError(f"lin_weights must have C={f.shape[1]} values")


def _launch_setup(kernel: str, f: Tensor, t: Tensor, lin_weights: Tensor | None,
                  do_lpips: bool, config: dict | None):  # fmt: skip
    """Shared launcher prologue: validate, pick the config, flatten spatial strides.

    Returns B, C, P = H*W, the config and (tensor, n/c/p strides) for pred and target; a target
    batch of 1 broadcasts (batch stride 0).
    """
    _check(f, t, lin_weights, do_lpips)
    B, C, H, W = f.shape
    P = H * W
    cfg = config or launch_config(kernel, {"batch": B, "channels": C, "pixels": P}, f.device)
    f_spec = _spatial_strides(f, "pred_features")
    t, t_sn, t_sc, t_sp = _spatial_strides(t, "target_features")
    if t.shape[0] == 1:
        t_sn = 0
    return B, C, P, cfg, f_spec, (t, t_sn, t_sc, t_sp)


def level_losses_forward(
    pred_features: Tensor,
    target_features: Tensor,
    lin_weights: Tensor | None,
    *,
    do_perc: bool = True,
    do_lpips: bool = True,
    mse: bool = False,
    eps: float = 1e-10,
    config: dict | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """Raw per-sample sums ``(S_perc (B,), S_lpips (B,))`` in fp32 (None for a term not asked).

    ``pred_features`` is ``(B, C, H, W)``; ``target_features`` is ``(B, C, H, W)`` or ``(1, C, H,
    W)`` (broadcast); ``lin_weights`` is ``(C,)``. Divide by ``C*H*W`` (perceptual) or ``H*W``
    (LPIPS) for means. Kernel name ``loss_level_forward``, problem keys
    :data:`LEVEL_PROBLEM_KEYS`; ``config`` defaults to
    :func:`tritri.configs.defaults.level_default`.
    """
    B, C, P, cfg, (f, f_sn, f_sc, f_sp), (t, t_sn, t_sc, t_sp) = _launch_setup(
        "loss_level_forward", pred_features, target_features, lin_weights, do_lpips, config
    )
    block_c, block_p = cfg["BLOCK_C"], cfg["BLOCK_P"]
    w = lin_weights.contiguous() if lin_weights is not None else f.new_empty(1)
    n_pblocks = triton.cdiv(P, block_p)
    perc = torch.empty((B, n_pblocks), device=f.device, dtype=torch.float32)
    lp = torch.empty((B, n_pblocks), device=f.device, dtype=torch.float32)
    loss_level_fwd_kernel[(n_pblocks, B)](
        f, t, w, perc, lp, C, P, n_pblocks,
        f_sn, f_sc, f_sp, t_sn, t_sc, t_sp, float(eps),
        DO_PERC=do_perc, DO_LPIPS=do_lpips, MSE=mse,
        BLOCK_C=block_c, BLOCK_P=block_p, SINGLE_TILE=block_c >= C,
        num_warps=cfg.get("num_warps", 4), enable_fp_fusion=FP_FUSION,
    )  # fmt: skip
    return (perc.sum(1) if do_perc else None), (lp.sum(1) if do_lpips else None)


def level_losses_backward(
    pred_features: Tensor,
    target_features: Tensor,
    lin_weights: Tensor | None,
    grad_perc: Tensor | None,
    grad_lpips: Tensor | None,
    *,
    mse: bool = False,
    eps: float = 1e-10,
    config: dict | None = None,
) -> Tensor:
    """``∂Loss/∂pred_features`` given ``grad_perc = ∂Loss/∂S_perc`` and ``grad_lpips =
    ∂Loss/∂S_lpips`` (each ``(B,)`` or None for a term that is absent), same shape, dtype and
    memory format as ``pred_features``. Kernel name ``loss_level_backward``, problem keys
    :data:`LEVEL_PROBLEM_KEYS`.
    """
    do_perc, do_lpips = grad_perc is not None, grad_lpips is not None
    B, C, P, cfg, (f, f_sn, f_sc, f_sp), (t, t_sn, t_sc, t_sp) = _launch_setup(
        "loss_level_backward", pred_features, target_features, lin_weights, do_lpips, config
    )
    block_c, block_p = cfg["BLOCK_C"], cfg["BLOCK_P"]
    df = torch.empty_like(f)
    df, d_sn, d_sc, d_sp = _spatial_strides(df, "grad")
    dummy = f.new_zeros(1, dtype=torch.float32)
    gp = grad_perc.to(torch.float32).contiguous() if do_perc else dummy
    gl = grad_lpips.to(torch.float32).contiguous() if do_lpips else dummy
    w = lin_weights.contiguous() if lin_weights is not None else dummy
    if not (do_perc or do_lpips):
        return df.zero_()
    n_pblocks = triton.cdiv(P, block_p)
    loss_level_bwd_kernel[(n_pblocks, B)](
        f, t, w, gp, gl, df, C, P,
        f_sn, f_sc, f_sp, t_sn, t_sc, t_sp, d_sn, d_sc, d_sp, float(eps),
        DO_PERC=do_perc, DO_LPIPS=do_lpips, MSE=mse,
        BLOCK_C=block_c, BLOCK_P=block_p, SINGLE_TILE=block_c >= C,
        num_warps=cfg.get("num_warps", 4), enable_fp_fusion=FP_FUSION,
    )  # fmt: skip
    return df
