"""The fused loss kernels against plain torch formulas (interpreter on CPU; tiny shapes)."""

from __future__ import annotations

import pytest
import torch

from tritri.configs.defaults import level_default as default_level_config
from tritri.kernels.log_sum import log_sum_forward
from tritri.kernels.loss_levels import level_losses_backward, level_losses_forward

EPS = 1e-10


def _ref_sums(f, t, w, mse, eps=EPS):
    """Per-sample sums in float64, straight from the definitions."""
    f, t = f.double(), t.double()
    d = f - t
    perc = (d * d if mse else d.abs()).sum(dim=(1, 2, 3))
    a = f / torch.sqrt((f * f).sum(1, keepdim=True) + eps)
    b = t / torch.sqrt((t * t).sum(1, keepdim=True) + eps)
    lp = ((a - b) ** 2 * w.double().view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
    return perc, lp


def _features(shape, seed, dtype=torch.float32, sparse=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    return (x.relu() if sparse else x).to(dtype)


CONFIGS = {
    "default": None,  # single tile: every channel in one load
    "chunked": {"BLOCK_C": 4, "BLOCK_P": 16, "num_warps": 1},  # channel loop, 2-3 passes
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("mse", [False, True])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_level_kernel_forward_backward(device, config, mse, layout):
    B, C, H, W = 2, 11, 5, 7  # C and H*W not powers of two: masks are exercised
    f = _features((B, C, H, W), 0).to(device)
    t = _features((1 if layout == "nchw" else B, C, H, W), 1).to(device)  # batch-1 broadcast
    if layout == "channels_last":
        f = f.contiguous(memory_format=torch.channels_last)
    w = torch.rand(C, generator=torch.Generator().manual_seed(2)).to(device)
    cfg = CONFIGS[config]
    perc, lp = level_losses_forward(f, t, w, mse=mse, eps=EPS, config=cfg)
    perc_ref, lp_ref = _ref_sums(f.cpu(), t.cpu().expand(B, -1, -1, -1), w.cpu(), mse)
    torch.testing.assert_close(perc.cpu().double(), perc_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lp.cpu().double(), lp_ref, rtol=1e-5, atol=1e-6)

    gp = torch.tensor([0.7, -1.3], dtype=torch.float64)
    gl = torch.tensor([2.0, 0.5], dtype=torch.float64)
    fr = f.cpu().double().requires_grad_()
    pr, lr = _ref_sums(fr, t.cpu().expand(B, -1, -1, -1), w.cpu(), mse)
    (g_ref,) = torch.autograd.grad((pr * gp).sum() + (lr * gl).sum(), fr)
    g = level_losses_backward(f, t, w, gp.float().to(device), gl.float().to(device), mse=mse,
                              eps=EPS, config=cfg)  # fmt: skip
    assert g.shape == f.shape and g.dtype == f.dtype
    if layout == "channels_last":
        assert g.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(g.cpu().double(), g_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("term", ["perceptual", "lpips"])
def test_level_kernel_single_term(device, term):
    """Each term alone: the other output is None and the gradient has only that term."""
    B, C, H, W = 2, 6, 4, 4
    f = _features((B, C, H, W), 3).to(device)
    t = _features((B, C, H, W), 4).to(device)
    w = torch.rand(C, generator=torch.Generator().manual_seed(20)).to(device)
    do_perc = term == "perceptual"
    perc, lp = level_losses_forward(
        f, t, w if not do_perc else None, do_perc=do_perc, do_lpips=not do_perc
    )
    perc_ref, lp_ref = _ref_sums(f.cpu(), t.cpu(), w.cpu(), False)
    got, ref = (perc, perc_ref) if do_perc else (lp, lp_ref)
    assert (lp if do_perc else perc) is None
    torch.testing.assert_close(got.cpu().double(), ref, rtol=1e-5, atol=1e-6)
    fr = f.cpu().double().requires_grad_()
    pr, lr = _ref_sums(fr, t.cpu(), w.cpu(), False)
    (g_ref,) = torch.autograd.grad((pr if do_perc else lr).sum(), fr)
    ones = torch.ones(B, device=device)
    g = level_losses_backward(
        f, t, None if do_perc else w, ones if do_perc else None, None if do_perc else ones
    )
    torch.testing.assert_close(g.cpu().double(), g_ref, rtol=1e-4, atol=1e-5)


def test_level_kernel_half_precision_inputs(device):
    """fp16 features are read as fp32: same sums as the fp32 copy; the gradient comes back fp16."""
    B, C, H, W = 2, 8, 4, 4
    f = _features((B, C, H, W), 5).half().to(device)
    t = _features((B, C, H, W), 6).half().to(device)
    w = torch.rand(C, generator=torch.Generator().manual_seed(21)).to(device)
    perc, lp = level_losses_forward(f, t, w)
    perc32, lp32 = level_losses_forward(f.float(), t.float(), w)
    torch.testing.assert_close(perc, perc32)
    torch.testing.assert_close(lp, lp32)
    g = level_losses_backward(f, t, w, torch.ones(B, device=device), torch.ones(B, device=device))
    assert g.dtype == torch.float16 and torch.isfinite(g).all()


def test_level_kernel_zero_norm_pixel_is_finite(device):
    """A pixel whose feature vector is all zeros: finite gradient equal to the eps-inside-sqrt
    derivative, where lpips's f / (sqrt(Σf²) + 1e-10) gives NaN."""
    B, C, H, W = 1, 5, 3, 3
    f = _features((B, C, H, W), 7)
    f[:, :, 1, 1] = 0.0
    t = _features((B, C, H, W), 8, sparse=False).abs() + 0.1
    w = torch.rand(C, generator=torch.Generator().manual_seed(22))
    g = level_losses_backward(f.to(device), t.to(device), w.to(device), None,
                              torch.ones(B, device=device))  # fmt: skip
    assert torch.isfinite(g).all()
    fr = f.double().requires_grad_()
    _, lr = _ref_sums(fr, t, w, False)
    (g_ref,) = torch.autograd.grad(lr.sum(), fr)
    torch.testing.assert_close(g.cpu().double(), g_ref, rtol=1e-4, atol=1e-3)
    # The lpips package's formula on the same input:
    fl = f.double().requires_grad_()
    a = fl / (torch.sqrt((fl * fl).sum(1, keepdim=True)) + 1e-10)
    b = t.double() / (torch.sqrt((t.double() ** 2).sum(1, keepdim=True)) + 1e-10)
    (g_lpips,) = torch.autograd.grad(((a - b) ** 2 * w.double().view(1, -1, 1, 1)).sum(), fl)
    assert torch.isnan(g_lpips).any()


def test_default_level_config_covers_vgg_levels():
    for c in (64, 128, 256, 512):
        cfg = default_level_config({"batch": 2, "channels": c, "pixels": 1024})
        assert cfg["BLOCK_C"] >= c  # single tile: each element read once
        assert cfg["BLOCK_P"] >= 16
    assert default_level_config({"batch": 1, "channels": 4096, "pixels": 4})["BLOCK_C"] < 4096


def test_level_kernel_rejects_bad_shapes(device):
    f = torch.rand(2, 4, 3, 3, device=device)
    with pytest.raises(ValueError, match="target_features"):
        level_losses_forward(f, torch.rand(3, 4, 3, 3, device=device), torch.rand(4))
    with pytest.raises(ValueError, match="lin_weights"):
        level_losses_forward(f, f, torch.rand(5, device=device))


def _ref_log_sum(L, eps, m, w):
    L = L.double()
    x = L + eps.double()[:, None]
    gap = (m - L).clamp_min(0.0)
    return torch.log(x).sum(0), (w * gap * gap).sum(0), (1 / x - 2 * w * gap) / L.shape[0]


@pytest.mark.parametrize("config", [None, {"BLOCK_B": 2, "num_warps": 1}])
def test_log_sum_kernel(device, config):
    g = torch.Generator().manual_seed(0)
    B, K = 5, 3
    L = torch.rand(B, K, generator=g) * 2
    L[0, 1] = 3e-5  # under the floor m: the penalty and its gradient act
    L[3, 2] = 0.0
    eps = torch.full((B,), 1e-8)
    eps[2] = 1e-3
    m, w = 0.6, 2.0  # a high floor, so the penalty's share of the gradient is large
    log_s, reg_s, grad = log_sum_forward(L.to(device), eps.to(device), m, w, config=config)
    log_r, reg_r, grad_r = _ref_log_sum(L, eps, m, w)
    torch.testing.assert_close(log_s.cpu().double(), log_r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reg_s.cpu().double(), reg_r, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(grad.cpu().double(), grad_r, rtol=1e-5, atol=1e-6)
    assert (L < m).sum() >= 3 and (L > m).sum() >= 3


def test_log_sum_kernel_rejects_bad_eps(device):
    with pytest.raises(ValueError, match="eps"):
        log_sum_forward(torch.rand(2, 3, device=device), torch.rand(3, device=device), 1e-4, 0.01)


@pytest.mark.gpu
def test_level_kernel_bf16_on_gpu():
    """bf16 features (the interpreter cannot do bf16 math; a GPU can): fp32 sums of the bf16
    values, bf16 gradient close to the fp32 one."""
    B, C, H, W = 2, 64, 16, 16
    f = _features((B, C, H, W), 9).cuda().bfloat16()
    t = _features((B, C, H, W), 10).cuda().bfloat16()
    w = torch.rand(C, device="cuda")
    perc, lp = level_losses_forward(f, t, w)
    perc_ref, lp_ref = _ref_sums(f.float().cpu(), t.float().cpu(), w.cpu(), False)
    torch.testing.assert_close(perc.cpu().double(), perc_ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(lp.cpu().double(), lp_ref, rtol=1e-5, atol=1e-4)
    ones = torch.ones(B, device="cuda")
    g = level_losses_backward(f, t, w, ones, ones)
    g32 = level_losses_backward(f.float(), t.float(), w, ones, ones)
    assert g.dtype == torch.bfloat16
    torch.testing.assert_close(g.float(), g32, rtol=1e-2, atol=1e-2 * g32.abs().max().item())
