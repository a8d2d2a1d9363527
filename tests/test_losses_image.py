"""ImageLosses behaviour: one trunk pass, encoded targets, reductions, gradients, weights, errors.

Random trunk (weights=None) and 32x32 images throughout; parity with lpips / torchvision is in
test_losses_parity.py.
"""

from __future__ import annotations

import copy
import urllib.error

import pytest
import torch
from devices import triton_device
from torch import nn

from tritri.losses import ImageLosses
from tritri.losses.vgg import VGG16Features

ALL = ("l1", "perceptual", "lpips")


@pytest.fixture(scope="module")
def crit():
    torch.manual_seed(0)
    return ImageLosses(ALL, weights=None, reduction="none", use_triton=False)


def _images(batch=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=g), torch.rand(
        batch, 3, size, size, generator=g
    )


def _count_convs(module: nn.Module) -> tuple[list[int], list]:
    calls = [0]
    handles = [
        m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        for m in module.modules()
        if isinstance(m, nn.Conv2d)
    ]
    return calls, handles


def test_trunk_runs_once_per_image_set(crit):
    """13 convolutions up to relu5_3: pred + raw target = 26 (the naive stack runs 46), an encoded
    target 13, the encoding itself 13 once."""
    n_convs = sum(isinstance(m, nn.Conv2d) for m in crit.trunk.modules())
    assert n_convs == 13
    pred, target = _images()
    calls, handles = _count_convs(crit.trunk)
    try:
        crit(pred.requires_grad_(), target)
        assert calls[0] == 2 * n_convs
        calls[0] = 0
        enc = crit.encode(target)
        assert calls[0] == n_convs
        calls[0] = 0
        for _ in range(3):
            out = crit(pred, enc)
        assert calls[0] == 3 * n_convs
        sum(out.values()).sum().backward()
        assert calls[0] == 3 * n_convs  # the backward runs no extra forward
    finally:
        for h in handles:
            h.remove()


def test_perceptual_only_stops_at_relu4_3_and_l1_only_has_no_trunk():
    perc = ImageLosses(("perceptual",), weights=None, use_triton=False)
    assert sum(isinstance(m, nn.Conv2d) for m in perc.trunk.modules()) == 10
    l1 = ImageLosses("l1", weights=None)
    assert l1.trunk is None
    pred, target = _images()
    torch.testing.assert_close(l1(pred, target)["l1"], (pred - target).abs().mean())


def test_encoded_target_gives_the_same_losses_and_gradients(crit):
    pred, target = _images(seed=1)
    x1 = pred.clone().requires_grad_()
    x2 = pred.clone().requires_grad_()
    raw = crit(x1, target)
    enc = crit(x2, crit.encode(target))
    for name in ALL:
        torch.testing.assert_close(raw[name], enc[name], rtol=0, atol=0)
    sum(v.sum() for v in raw.values()).backward()
    sum(v.sum() for v in enc.values()).backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=0)
    assert list(raw) == list(ALL)


def test_per_sample_reduction_matches_single_samples(crit):
    pred, target = _images(batch=3, seed=2)
    out = crit(pred, target)
    singles = [crit(pred[i : i + 1], target[i : i + 1]) for i in range(3)]
    for name in ALL:
        assert out[name].shape == (3,)
        for i in range(3):
            single = singles[i][name]
            torch.testing.assert_close(out[name][i : i + 1], single, rtol=1e-5, atol=1e-7)
    crit.reduction = "mean"
    try:
        got = crit(pred, target)
    finally:
        crit.reduction = "none"
    for name in ALL:
        assert got[name].dim() == 0
        torch.testing.assert_close(got[name], out[name].mean())


def test_target_batch_of_one_is_broadcast(crit):
    pred, target = _images(batch=2, seed=3)
    one = target[:1]
    out = crit(pred, one)
    ref = crit(pred, one.expand(2, -1, -1, -1).contiguous())
    for name in ALL:
        torch.testing.assert_close(out[name], ref[name])


@pytest.mark.parametrize("use_triton", [False, True])
@pytest.mark.parametrize("pred_value,target_value", [(0.0, 1.0), (0.5, 0.5), (1.0, None)])
def test_constant_images_give_finite_gradients(crit, use_triton, pred_value, target_value):
    device = triton_device() if use_triton else torch.device("cpu")
    pred = torch.full((1, 3, 32, 32), pred_value, device=device, requires_grad=True)
    target = torch.full_like(pred, target_value) if target_value is not None else _images(1)[1]
    if device.type != "cpu":  # the shared CPU module stays where it is
        crit = copy.deepcopy(crit).to(device)
    crit.use_triton = use_triton
    try:
        out = crit(pred, target.to(device))
    finally:
        crit.use_triton = False
    total = sum(v.sum() for v in out.values())
    total.backward()
    assert torch.isfinite(total)
    assert torch.isfinite(pred.grad).all()
    if target_value == pred_value:
        # zero up to rounding (an FMA in a - b may leave ~1e-16 per element)
        assert all(0.0 <= v.item() < 1e-10 for v in out.values())


def test_zero_norm_features_give_finite_gradients():
    """A trunk whose relu1_2 is exactly zero everywhere (conv1_2 bias very negative): lpips's
    normalization has an infinite/NaN derivative there, ours stays finite."""
    crit = ImageLosses(("lpips",), weights=None, reduction="mean", use_triton=False)
    with torch.no_grad():
        crit.trunk.features[2].bias.fill_(-1e4)
    pred, target = _images(batch=1, seed=4)
    x = pred.requires_grad_()
    feats = crit.trunk(x)
    assert feats["relu1_2"].abs().max().item() == 0.0
    out = crit(x, target)["lpips"]
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(x.grad).all()


def test_trunk_is_frozen_and_stays_in_eval(crit):
    crit.train()
    assert crit.trunk.training is False and crit.trunk.features.training is False
    assert all(not p.requires_grad for p in crit.parameters())
    pred, target = _images(seed=5)
    x = pred.requires_grad_()
    sum(v.sum() for v in crit(x, target).values()).backward()
    assert all(p.grad is None for p in crit.parameters())
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    crit.eval()


def test_half_precision_pred_keeps_fp32_loss_math(crit):
    pred, target = _images(seed=6)
    ref = crit(pred, target)
    x = pred.half().requires_grad_()
    out = crit(x, target)
    for name in ALL:
        assert out[name].dtype == torch.float32
        torch.testing.assert_close(out[name], ref[name], rtol=2e-3, atol=1e-4)
    sum(v.sum() for v in out.values()).backward()
    assert x.grad.dtype == torch.float16 and torch.isfinite(x.grad).all()


def test_weights_state_dict_layouts_load_the_same(tmp_path):
    """features-only keys ('0.weight') and full-model keys ('features.0.weight', plus classifier
    entries that are ignored) give the same trunk."""
    a = VGG16Features(None, ("relu2_2",))
    feats_only = {k: v.clone() for k, v in a.features.state_dict().items()}
    full = {f"features.{k}": v for k, v in feats_only.items()}
    full["classifier.0.weight"] = torch.zeros(2, 2)
    b = VGG16Features(feats_only, ("relu2_2",))
    path = tmp_path / "vgg.pth"
    torch.save(full, path)
    c = VGG16Features(path, ("relu2_2",))
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    ref = a(x)["relu2_2"]
    torch.testing.assert_close(b(x)["relu2_2"], ref, rtol=0, atol=0)
    torch.testing.assert_close(c(x)["relu2_2"], ref, rtol=0, atol=0)


def _assert_names_options(message: str) -> None:
    assert "'DEFAULT'" in message and "path" in message and "weights=None" in message


def test_unavailable_weights_name_the_three_options(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError) as e:
        ImageLosses(ALL, weights="DEFAULT")
    _assert_names_options(str(e.value))
    with pytest.raises(FileNotFoundError) as e:
        ImageLosses(ALL, weights=str(tmp_path / "missing.pth"))
    _assert_names_options(str(e.value))
    path = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(ValueError) as e:
        ImageLosses(ALL, weights=path)
    _assert_names_options(str(e.value))


def test_bad_arguments_are_named(crit):
    with pytest.raises(ValueError, match="names"):
        ImageLosses(("l1", "ssim"), weights=None)
    with pytest.raises(ValueError, match="reduction"):
        ImageLosses(ALL, weights=None, reduction="sum")
    with pytest.raises(ValueError, match="perceptual_distance"):
        ImageLosses(("perceptual",), weights=None, perceptual_distance="l3")
    with pytest.raises(ValueError, match="layers"):
        ImageLosses(("perceptual",), weights=None, perceptual_layers=("relu9_9",))
    with pytest.raises(ValueError, match="perceptual_weights"):
        ImageLosses(("perceptual",), weights=None, perceptual_weights=(1.0,))
    pred, target = _images()
    with pytest.raises(ValueError, match="pred"):
        crit(pred[:, :2], target)
    with pytest.raises(ValueError, match="pred"):
        crit(pred[..., :8, :8], target[..., :8, :8])  # relu5_3 needs 16x16
    with pytest.raises(ValueError, match="target"):
        crit(pred, target[..., :16, :16])
    with pytest.raises(TypeError, match="target"):
        crit(pred, target.numpy())


def test_torch_level_sums_are_accurate_on_large_maps():
    """fp32 sums over a relu1_2-sized map (2x64x128x128) stay within 1e-6 of float64 (a naive
    running sum would be ~1e-4 off), and the hand-written backward matches autograd."""
    from tritri.losses.image_losses import level_losses_torch

    g = torch.Generator().manual_seed(0)
    f = (torch.randn(2, 64, 128, 128, generator=g).relu() * 3).requires_grad_()
    t = torch.randn(2, 64, 128, 128, generator=g).relu() * 3
    w = torch.rand(64, generator=g)
    for mse in (False, True):
        perc, lp = level_losses_torch(f, t, w, mse=mse)
        fd, td, wd = f.detach().double().requires_grad_(), t.double(), w.double()
        d = fd - td
        perc_ref = (d * d if mse else d.abs()).sum(dim=(1, 2, 3))
        a = fd / torch.sqrt((fd * fd).sum(1, keepdim=True) + 1e-10)
        b = td / torch.sqrt((td * td).sum(1, keepdim=True) + 1e-10)
        lp_ref = ((a - b) ** 2 * wd.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
        torch.testing.assert_close(perc.double(), perc_ref.detach(), rtol=1e-6, atol=0)
        torch.testing.assert_close(lp.double(), lp_ref.detach(), rtol=1e-6, atol=0)
        gp, gl = torch.tensor([0.3, -2.0]), torch.tensor([1.5, 0.25])
        (grad,) = torch.autograd.grad((perc * gp).sum() + (lp * gl).sum(), f)
        (grad_ref,) = torch.autograd.grad(
            (perc_ref * gp.double()).sum() + (lp_ref * gl.double()).sum(), fd
        )
        torch.testing.assert_close(grad.double(), grad_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
def test_cuda_fused_path_matches_torch_path_and_autocast():
    torch.manual_seed(0)
    crit = ImageLosses(ALL, weights=None, reduction="none").cuda()
    pred, target = (x.cuda() for x in _images(batch=2, size=64, seed=8))
    enc = crit.encode(target)
    grads, outs = [], []
    for use_triton in (True, False):
        crit.use_triton = use_triton
        x = pred.clone().requires_grad_()
        out = crit(x, enc)
        sum(v.sum() for v in out.values()).backward()
        outs.append(out)
        grads.append(x.grad)
    for name in ALL:
        torch.testing.assert_close(outs[0][name], outs[1][name], rtol=1e-5, atol=1e-7)
    scale = grads[1].abs().max().item()
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-4 * scale)
    crit.use_triton = None
    x = pred.clone().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = crit(x, enc)
    assert all(v.dtype == torch.float32 for v in out.values())
    sum(v.sum() for v in out.values()).backward()
    assert torch.isfinite(x.grad).all()
    for name in ALL:
        torch.testing.assert_close(out[name], outs[1][name], rtol=5e-2, atol=1e-3)
